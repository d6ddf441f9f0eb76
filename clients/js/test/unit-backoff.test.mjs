// Pure reconnect timing: full jitter bounds and the reaction to each close code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_BACKOFF, fullJitter, reactToClose } from "../dist/index.js";

const B = DEFAULT_BACKOFF;

test("defaults are 100 ms to 10 s", () => {
  assert.equal(B.minMs, 100);
  assert.equal(B.maxMs, 10_000);
});

test("full jitter spans [0, min(max, min*2^n)) and doubles per attempt", () => {
  const top = 1 - Number.EPSILON;
  assert.equal(fullJitter(0, 100, 10_000, () => 0), 0);
  assert.equal(fullJitter(0, 100, 10_000, () => top), 99);
  assert.equal(fullJitter(1, 100, 10_000, () => top), 199);
  assert.equal(fullJitter(3, 100, 10_000, () => top), 799);
  assert.equal(fullJitter(7, 100, 10_000, () => top), 9_999); // capped
  assert.equal(fullJitter(1000, 100, 10_000, () => top), 9_999); // no overflow
  assert.equal(fullJitter(2, 100, 10_000, () => 0.5), 200);
});

test("full jitter is spread, not a fixed delay", () => {
  const seen = new Set();
  for (let i = 0; i < 200; i++) seen.add(fullJitter(5, 100, 10_000));
  assert.ok(seen.size > 50, `only ${seen.size} distinct delays`);
  for (const d of seen) assert.ok(d >= 0 && d < 3_200);
});

test("4003 stops", () => {
  assert.deepEqual(reactToClose(4003, 0, B), { retry: false });
});

test("1012 and 1001 reconnect at a random instant of the drain window", () => {
  for (const code of [1012, 1001]) {
    assert.equal(reactToClose(code, 0, B, () => 0).delayMs, 0);
    assert.equal(reactToClose(code, 0, B, () => 0.5).delayMs, 1_000);
    assert.equal(reactToClose(code, 0, { ...B, drainWindowMs: 500 }, () => 0.999).delayMs, 499);
    assert.equal(reactToClose(code, 0, B).newToken, false);
    // A second failure in a row is plain backoff again.
    assert.equal(reactToClose(code, 2, B, () => 0.999).delayMs, 399);
  }
});

test("4001 asks for a new token and retries soon", () => {
  const r = reactToClose(4001, 0, B, () => 0.999);
  assert.equal(r.retry, true);
  assert.equal(r.newToken, true);
  assert.ok(r.delayMs < 100);
});

test("4029 and 1013 back off longer than anything else at the same attempt", () => {
  for (const code of [4029, 1013]) {
    for (let attempt = 0; attempt < 10; attempt++) {
      const low = reactToClose(code, attempt, B, () => 0).delayMs;
      const high = reactToClose(code, attempt, B, () => 0.999).delayMs;
      assert.ok(low >= B.overloadMinMs, `${code}#${attempt}: ${low}`);
      assert.ok(high <= B.overloadMaxMs);
      assert.ok(low > reactToClose(1006, attempt, B, () => 0.999).delayMs || attempt > 4);
    }
  }
});

test("network failures (1006), 4008, 1011 use plain backoff", () => {
  for (const code of [1006, 4008, 1011, 1000, 4000]) {
    const r = reactToClose(code, 4, B, () => 0.999);
    assert.deepEqual(r, { retry: true, delayMs: 1_598, newToken: false });
  }
});
