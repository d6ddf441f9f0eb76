// The client's state machine over scripted in-memory transports (unit level:
// the real-network versions of these behaviours are in node-*.test.mjs and
// browser-*.test.mjs). This is also where the SSE path is exercised until
// the server's /sse exists: URLs, cursors, the drain `close` frame, `auto`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Gateway } from "../dist/index.js";

/** A WebSocket whose server side the test scripts. */
function fakeWebSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
    // server side
    open(welcome = {}) {
      this.readyState = 1;
      this.recv({ type: "welcome", conn: "c", user: "alice", node: "n", heartbeat: 25, ...welcome });
    }
    recv(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    end(code) {
      this.readyState = 3;
      this.onclose?.({ code, reason: "" });
    }
    /** Answers the last request of `type` (ok + extra fields). */
    reply(type, extra = {}) {
      const req = this.sent.filter((f) => f.type === type).at(-1);
      this.recv({ type: "ok", id: req.id, ...extra });
      return req;
    }
  }
  return { sockets, FakeWebSocket };
}

/** Resolves after queued microtasks and promise callbacks have run. */
const settled = () => new Promise((ok) => setImmediate(ok));

function setup(opts = {}) {
  const { sockets, FakeWebSocket } = fakeWebSockets();
  const states = [];
  const resyncs = [];
  const errors = [];
  const events = [];
  const gw = new Gateway("ws://gw.test/ws", {
    token: "tok",
    WebSocket: FakeWebSocket,
    backoff: { minMs: 1, maxMs: 2, drainWindowMs: 1 },
    ...opts,
  });
  gw.on("state", (s) => states.push(s));
  gw.on("resync", (r) => resyncs.push(r));
  gw.on("error", (e) => errors.push(e.code));
  const until = async (pred) => {
    for (let i = 0; i < 500 && !pred(); i++) await new Promise((ok) => setTimeout(ok, 2));
    assert.ok(pred(), "condition not reached");
  };
  return { gw, sockets, states, resyncs, errors, events, until };
}

test("welcome -> connected; subscribe waits for the ok; duplicates by offset are dropped", async () => {
  const { gw, sockets, states, events, until } = setup();
  const sub = gw.subscribe("lobby", (d, ctx) => events.push([ctx.offset, d]));
  await until(() => sockets.length === 1);
  assert.deepEqual(sockets[0].protocols, ["v1.json"]);
  assert.equal(sockets[0].url.searchParams.get("token"), "tok");
  sockets[0].open();
  assert.deepEqual(states, ["connecting", "connected"]);
  sockets[0].reply("subscribe", { offset: 5, epoch: "e1" });
  await sub.ready;
  for (const o of [5, 6, 6, 7, 3]) sockets[0].recv({ type: "event", channel: "room:lobby", offset: o, data: o });
  sockets[0].recv({ type: "event", channel: "room:other", offset: 8, data: "not subscribed" });
  assert.deepEqual(events, [[6, 6], [7, 7]]);
  gw.close();
  assert.equal(states.at(-1), "closed");
});

test("reconnect resumes rooms with since, the user and broadcast channels on the URL", async () => {
  const { gw, sockets, until, resyncs } = setup();
  gw.subscribe("lobby", () => {});
  await until(() => sockets.length === 1);
  sockets[0].open({ position: { offset: 9, epoch: "u1" }, broadcast_position: { offset: 3, epoch: "b1" } });
  sockets[0].reply("subscribe", { offset: 41, epoch: "k3" });
  sockets[0].recv({ type: "event", channel: "user:alice", offset: 10, data: 1 });
  sockets[0].end(1006);
  await until(() => sockets.length === 2);
  const q = sockets[1].url.searchParams;
  assert.deepEqual([q.get("user_offset"), q.get("user_epoch"), q.get("broadcast_offset"), q.get("broadcast_epoch")], ["10", "u1", "3", "b1"]);
  sockets[1].open({ position: { offset: 12, epoch: "u1" }, recovered: true, broadcast_position: { offset: 3, epoch: "b1" }, broadcast_recovered: true });
  const again = sockets[1].sent.find((f) => f.type === "subscribe");
  assert.deepEqual(again.since, { offset: 41, epoch: "k3" });
  sockets[1].reply("subscribe", { offset: 50, epoch: "k9", recovered: false });
  await settled();
  assert.deepEqual(resyncs, [{ channel: "room:lobby", offset: 50, epoch: "k9" }]);
  sockets[1].recv({ type: "resync", channel: "user:alice", offset: 20, epoch: "u2" });
  assert.deepEqual(resyncs[1], { channel: "user:alice", offset: 20, epoch: "u2" });
  gw.close();
});

test("publish: offline at once, offset on ok, the server's code on error, disconnected when the socket drops", async () => {
  const { gw, sockets, until } = setup();
  await assert.rejects(gw.publish("lobby", 1), { code: "offline" });
  await until(() => sockets.length === 1);
  sockets[0].open();
  const p1 = gw.publish("lobby", { a: 1 });
  sockets[0].reply("publish", { offset: 58 });
  assert.deepEqual(await p1, { offset: 58 });
  const p2 = gw.publish("lobby", { a: 2 });
  const req = sockets[0].sent.at(-1);
  sockets[0].recv({ type: "error", id: req.id, code: "forbidden", message: "no" });
  await assert.rejects(p2, { code: "forbidden" });
  const p3 = gw.publish("lobby", { a: 3 });
  sockets[0].end(1006);
  await assert.rejects(p3, { code: "disconnected" });
  gw.close();
});

test("4003 closes for good; 4001 asks token() again", async () => {
  let n = 0;
  const { gw, sockets, states, until, errors } = setup({ token: async () => `t${++n}` });
  await until(() => sockets.length === 1);
  sockets[0].open();
  sockets[0].end(4001);
  await until(() => sockets.length === 2);
  assert.equal(sockets[1].url.searchParams.get("token"), "t2");
  sockets[1].open();
  sockets[1].end(4003);
  await settled();
  assert.equal(states.at(-1), "closed");
  assert.ok(errors.includes("kicked"));
  await new Promise((ok) => setTimeout(ok, 20)); // longer than any backoff here
  assert.equal(sockets.length, 2, "no reconnect after 4003");
  gw.close();
});

test("silence for 2 heartbeats replaces the connection; pings go out every heartbeat", async () => {
  const { gw, sockets, until } = setup();
  await until(() => sockets.length === 1);
  const t0 = Date.now();
  sockets[0].open({ heartbeat: 0.05 }); // 50 ms
  await until(() => sockets[0].sent.some((f) => f.type === "ping"));
  await until(() => sockets.length === 2);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 100, `replaced after ${elapsed} ms`);
  gw.close();
});

test("the token is refreshed in place at 80 % of its lifetime", async () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Date.now() / 1000;
  const jwt = (k) => `${b64({ alg: "HS256" })}.${b64({ sub: "alice", iat: now, exp: now + 0.1, k })}.s`;
  let n = 0;
  const { gw, sockets, until } = setup({ token: async () => jwt(++n) });
  await until(() => sockets.length === 1);
  sockets[0].open();
  await until(() => sockets[0].sent.some((f) => f.type === "refresh"));
  const r = sockets[0].reply("refresh");
  assert.equal(r.token, jwt(2));
  assert.equal(sockets.length, 1, "no reconnect");
  gw.close();
});

/** An EventSource whose server side the test scripts. */
function fakeEventSources() {
  const streams = [];
  class FakeEventSource {
    constructor(url) {
      this.url = new URL(url);
      this.closed = false;
      streams.push(this);
    }
    close() {
      this.closed = true;
    }
    msg(frame, id = "") {
      this.onmessage?.({ data: JSON.stringify(frame), lastEventId: id });
    }
  }
  return { streams, FakeEventSource };
}

test("SSE: rooms and token in the URL, cursor resumes, drain close frame reconnects, publish unsupported", async () => {
  const { streams, FakeEventSource } = fakeEventSources();
  const { gw, states, until, sockets } = setup({ transport: "sse", EventSource: FakeEventSource });
  const got = [];
  const sub = gw.subscribe("a", (d, ctx) => got.push(ctx.offset));
  await until(() => streams.length === 1);
  assert.equal(sockets.length, 0);
  const u = streams[0].url;
  assert.equal(u.href.split("?")[0], "http://gw.test/sse");
  assert.equal(u.searchParams.get("token"), "tok");
  assert.equal(u.searchParams.get("rooms"), "a");
  streams[0].msg({ type: "welcome", user: "alice", heartbeat: 25 });
  await sub.ready;
  assert.equal(states.at(-1), "connected");
  streams[0].msg({ type: "event", channel: "room:a", offset: 1, data: 1 }, "cur-1");
  streams[0].msg({ type: "event", channel: "room:a", offset: 1, data: 1 }, "cur-1");
  assert.deepEqual(got, [1]);
  await assert.rejects(gw.publish("a", 1), { code: "unsupported" });
  // A new room reopens the stream with both rooms, at the cursor.
  gw.subscribe("b", () => {});
  await until(() => streams.length === 2);
  assert.ok(streams[0].closed);
  assert.equal(streams[1].url.searchParams.get("rooms"), "a,b");
  assert.equal(streams[1].url.searchParams.get("since"), "cur-1");
  streams[1].msg({ type: "welcome", user: "alice" });
  streams[1].msg({ type: "event", channel: "room:a", offset: 2, data: 2 }, "cur-2");
  streams[1].msg({ type: "close", code: 1012 });
  await until(() => streams.length === 3);
  assert.equal(streams[2].url.searchParams.get("since"), "cur-2");
  assert.ok(states.includes("disconnected"));
  // A refused room arrives in the stream: forgotten and reported.
  streams[2].msg({ type: "welcome", user: "alice" });
  streams[2].msg({ type: "error", code: "forbidden", room: "b", message: "no" });
  gw.close();
  assert.deepEqual(got, [1, 2]);
});

test("auto: SSE when the WebSocket cannot open, and it stays on SSE once connected", async () => {
  const { streams, FakeEventSource } = fakeEventSources();
  const { gw, sockets, until, states } = setup({ transport: "auto", EventSource: FakeEventSource });
  await until(() => sockets.length === 1);
  sockets[0].end(1006); // refused upgrade: the browser reports 1006
  await until(() => streams.length === 1);
  streams[0].msg({ type: "welcome", user: "alice" });
  assert.equal(gw.transport, "sse");
  assert.equal(states.at(-1), "connected");
  streams[0].onerror();
  await until(() => streams.length === 2);
  assert.equal(sockets.length, 1, "no WebSocket attempt after SSE worked");
  gw.close();
});
