// Cursors: what a reconnect resumes from, and deduplication by offset.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Cursors } from "../dist/index.js";

test("a fresh subscribe starts at the channel's top; older offsets are duplicates", () => {
  const c = new Cursors();
  assert.equal(c.settle("room:a", { offset: 5, epoch: "e1" }, undefined, false), false);
  assert.deepEqual(c.get("room:a"), { offset: 5, epoch: "e1" });
  assert.equal(c.accept("room:a", 5), false);
  assert.equal(c.accept("room:a", 6), true);
  assert.equal(c.accept("room:a", 6), false);
  assert.equal(c.accept("room:a", 4), false);
  assert.equal(c.accept("room:a", 7), true);
  assert.deepEqual(c.get("room:a"), { offset: 7, epoch: "e1" });
});

test("events without offset are never filtered", () => {
  const c = new Cursors();
  c.settle("room:a", { offset: 5, epoch: "e1" }, undefined, false);
  assert.equal(c.accept("room:a", undefined), true);
  assert.equal(c.accept("room:a", undefined), true);
});

test("recovered:true keeps the cursor so the replay that follows is delivered", () => {
  const c = new Cursors();
  c.settle("room:a", { offset: 3, epoch: "e1" }, undefined, false);
  c.accept("room:a", 4);
  // reconnect: since {4, e1}; ok says top 7, recovered
  assert.equal(c.settle("room:a", { offset: 7, epoch: "e1" }, true, true), false);
  assert.deepEqual([5, 6, 7].map((o) => c.accept("room:a", o)), [true, true, true]);
  assert.equal(c.accept("room:a", 6), false);
});

test("recovered:false is a loss: the cursor jumps to the server's position", () => {
  const c = new Cursors();
  c.settle("room:a", { offset: 3, epoch: "e1" }, undefined, false);
  assert.equal(c.settle("room:a", { offset: 1, epoch: "e2" }, false, true), true);
  assert.deepEqual(c.get("room:a"), { offset: 1, epoch: "e2" });
  assert.equal(c.accept("room:a", 2), true); // new epoch, lower offsets are new
});

test("resync moves the cursor, even backwards into a new epoch", () => {
  const c = new Cursors();
  c.settle("room:a", { offset: 90, epoch: "e1" }, undefined, false);
  c.resync("room:a", 10, "e2");
  assert.deepEqual(c.get("room:a"), { offset: 10, epoch: "e2" });
  assert.equal(c.accept("room:a", 11), true);
});

test("no history: nothing to resume from", () => {
  const c = new Cursors();
  c.settle("room:a", { offset: 3, epoch: "e1" }, undefined, false);
  c.settle("room:a", undefined, undefined, false);
  assert.equal(c.get("room:a"), undefined);
  c.delete("room:b");
  c.settle("room:b", { offset: 3, epoch: "e1" }, undefined, false);
  c.delete("room:b");
  assert.equal(c.get("room:b"), undefined);
});

test("an offset seen before the position is known does not make a resume position", () => {
  const c = new Cursors();
  assert.equal(c.accept("room:a", 3), true);
  assert.equal(c.accept("room:a", 3), false);
  assert.equal(c.get("room:a"), undefined); // no epoch yet
});
