// The SDK in Node 20 against a real gateway process over real sockets (the
// `ws` package supplies the WebSocket Node 20 lacks). Each test drives the
// server the way production does: the server API's disconnect and revoke,
// token expiry, a restart, a frozen TCP path, rate limits.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Gateway } from "../dist/index.js";
import { Proxy } from "./support/proxy.mjs";
import { Recorder, TestGateway, mint } from "./support/gateway.mjs";

/** Every client a test made, closed when the file ends however its tests ended. */
const clients = [];
after(() => clients.forEach((c) => c.close()));

/** A client plus everything it reported, in order. */
function client(url, opts = {}) {
  const log = new Recorder();
  const tokens = new Recorder(); // every token handed out by token()
  const tokenFn =
    opts.token ??
    (() => {
      const t = mint(opts.sub ?? "alice", opts.claims);
      tokens.push(t);
      return Promise.resolve(t);
    });
  const gw = new Gateway(url, {
    WebSocket,
    backoff: { minMs: 20, maxMs: 200, drainWindowMs: 100, ...opts.backoff },
    ...opts,
    token: tokenFn,
  });
  clients.push(gw);
  gw.on("state", (s) => log.push({ kind: "state", s, at: Date.now() }));
  gw.on("resync", (r) => log.push({ kind: "resync", ...r }));
  gw.on("error", (e) => log.push({ kind: "error", code: e.code, message: e.message }));
  const room = (name) => {
    const sub = gw.subscribe(name, (data, ctx) => log.push({ kind: "event", data, ...ctx }));
    return sub;
  };
  gw.onUser((data, ctx) => log.push({ kind: "event", data, ...ctx }));
  return { gw, log, room, tokens };
}

const states = (log) => log.items.filter((i) => i.kind === "state").map((i) => i.s);
const events = (log, channel) => log.items.filter((i) => i.kind === "event" && i.channel === channel);
const count = (s) => (items) => items.filter((i) => i.kind === "state" && i.s === s).length;
const connectedTimes = (n) => (items) => count("connected")(items) >= n;

describe("node: SDK against a real gateway", { timeout: 120_000 }, () => {
  let server;
  before(async () => {
    server = await TestGateway.start({
      env: { GATEWAY_WEBSOCKET_HEARTBEAT_SECONDS: "1", GATEWAY_WEBSOCKET_HEARTBEAT_TIMEOUT_SECONDS: "3" },
    });
  });
  after(() => server.stop());

  test("connect, subscribe, receive with channel and offset", async () => {
    const { gw, log, room } = client(server.ws, { sub: "recv" });
    const sub = room("recv-room");
    await sub.ready;
    assert.deepEqual(states(log), ["connecting", "connected"]);
    const offset = await server.publish("room:recv-room", { text: "hello" });
    assert.equal(offset, 1);
    await log.until((i) => events({ items: i }, "room:recv-room").length === 1, "the event");
    const [e] = events(log, "room:recv-room");
    assert.deepEqual(e.data, { text: "hello" });
    assert.equal(e.offset, 1);
    gw.close();
    assert.equal(states(log).at(-1), "closed");
  });

  test("publish resolves with the offset, rejects with the server's code, and at once when offline", async () => {
    const { gw, room } = client(server.ws, { sub: "pub", claims: { rooms: ["pub-room", "other"], publish: ["pub-room"] } });
    await room("pub-room").ready;
    assert.deepEqual(await gw.publish("pub-room", { n: 1 }), { offset: 1 });
    assert.deepEqual(await gw.publish("pub-room", { n: 2 }), { offset: 2 });
    await assert.rejects(gw.publish("other", { n: 3 }), { code: "forbidden" });
    gw.close();
    await assert.rejects(gw.publish("pub-room", {}), { code: "closed" });

    // Nothing listens on this port: the client is never connected.
    const dead = client("ws://127.0.0.1:9/ws", { sub: "pub" });
    const started = Date.now();
    await assert.rejects(dead.gw.publish("pub-room", { n: 4 }), { code: "offline" });
    assert.ok(Date.now() - started < 100, "offline publish must not wait");
    dead.gw.close();
  });

  test("a refused subscription rejects `ready` and is reported", async () => {
    const { gw, log, room } = client(server.ws, { sub: "refused", claims: { rooms: ["mine"] } });
    await assert.rejects(room("not-mine").ready, { code: "forbidden" });
    await log.until((i) => i.some((x) => x.kind === "error" && x.code === "forbidden"), "the error event");
    gw.close();
  });

  test("1012 from the server: reconnects, resumes every room and the user channel, no loss, no duplicates", async () => {
    const { gw, log, room } = client(server.ws, { sub: "resume" });
    await room("resume-room").ready;
    for (let i = 1; i <= 3; i++) await server.publish("room:resume-room", { i });
    await server.publish("user:resume", { u: 1 });
    await log.until((i) => events({ items: i }, "room:resume-room").length === 3 && events({ items: i }, "user:resume").length === 1);
    // Publish while the client is away: the moment it notices the close.
    let away;
    gw.on("state", (s) => {
      if (s === "disconnected" && !away) {
        away = (async () => {
          for (let i = 4; i <= 8; i++) await server.publish("room:resume-room", { i });
          await server.publish("user:resume", { u: 2 });
        })();
      }
    });
    await server.api("POST", "/api/disconnect", { user: "resume", reconnect: true });
    await log.until(connectedTimes(2), "the reconnect");
    await away;
    for (let i = 9; i <= 10; i++) await server.publish("room:resume-room", { i });
    await server.publish("user:resume", { u: 3 });
    await log.until((i) => events({ items: i }, "room:resume-room").length >= 10 && events({ items: i }, "user:resume").length >= 3, "every event");
    assert.deepEqual(events(log, "room:resume-room").map((e) => e.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(events(log, "room:resume-room").map((e) => e.data.i), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(events(log, "user:resume").map((e) => e.data.u), [1, 2, 3]);
    assert.ok(!log.items.some((i) => i.kind === "resync"), "no resync expected");
    assert.deepEqual(states(log), ["connecting", "connected", "disconnected", "connecting", "connected"]);
    gw.close();
  });

  test("4003 (disconnect, reconnect:false): state closed, no reconnect", async () => {
    const { gw, log, room } = client(server.ws, { sub: "kicked" });
    await room("k").ready;
    await server.api("POST", "/api/disconnect", { user: "kicked", reconnect: false });
    await log.until((i) => i.some((x) => x.kind === "state" && x.s === "closed"), "closed");
    assert.deepEqual(states(log), ["connecting", "connected", "closed"]);
    assert.ok(log.items.some((i) => i.kind === "error" && i.code === "kicked"));
    assert.equal(gw.currentState, "closed");
    await assert.rejects(gw.publish("k", {}), { code: "closed" });
  });

  test("4001 (token revoked): token() is called again and the client reconnects with the new token", async () => {
    let n = 0;
    const issued = [];
    const { gw, log, room } = client(server.ws, {
      token: async () => {
        const t = mint("revoked", { jti: `jti-${++n}` });
        issued.push(t);
        return t;
      },
    });
    await room("r").ready;
    assert.equal(issued.length, 1);
    await server.api("POST", "/api/revoke", { jti: "jti-1" });
    await log.until(connectedTimes(2), "the reconnect with a new token");
    assert.equal(issued.length, 2, "exactly one new token");
    await assert.doesNotReject(gw.publish("r", { after: "revoke" }));
    gw.close();
  });

  test("token refreshed in place before exp: no reconnect across several lifetimes", async () => {
    const { gw, log, room, tokens } = client(server.ws, { sub: "fresh", claims: { ttl: 2 } });
    await room("f").ready;
    // 80 % of 2 s: refreshes at ~1.6 s and ~3.2 s; the first token expired
    // at 2 s (leeway 0), so without the refresh the server would close 4001.
    await tokens.until((t) => t.length >= 3, "two refreshes");
    const after = await gw.publish("f", { final: true }); // the second refresh's reply came before this
    assert.ok(after.offset > 0);
    assert.deepEqual(states(log), ["connecting", "connected"], "the socket outlived its first token");
    gw.close();
  });

  test("dead connection (nothing received for 2 heartbeats) is replaced and resumes", async () => {
    const proxy = await Proxy.start(server.port);
    try {
      const { gw, log, room } = client(`ws://127.0.0.1:${proxy.port}/ws`, { sub: "dead" });
      await room("dead-room").ready;
      await server.publish("room:dead-room", { i: 1 });
      await log.until((i) => events({ items: i }, "room:dead-room").length === 1);
      const frozenAt = Date.now();
      proxy.freeze();
      await server.publish("room:dead-room", { i: 2 }); // lost on the frozen path, replayed on resume
      await log.until((i) => i.some((x) => x.kind === "state" && x.s === "disconnected"), "the dead connection noticed");
      const noticed = log.items.find((x) => x.kind === "state" && x.s === "disconnected").at - frozenAt;
      // welcome announced heartbeat 1 s: silence over 2 s is death; checks run every 250 ms.
      assert.ok(noticed >= 1900 && noticed < 5000, `noticed after ${noticed} ms`);
      await log.until(connectedTimes(2), "the replacement connection");
      await log.until((i) => events({ items: i }, "room:dead-room").length === 2, "the missed event");
      assert.deepEqual(events(log, "room:dead-room").map((e) => e.offset), [1, 2]);
      gw.close();
    } finally {
      await proxy.close();
    }
  });

  test("MessagePack: subscribe, receive and publish in binary frames", async () => {
    const { gw, log, room } = client(server.ws, { sub: "mp", format: "msgpack" });
    await room("mp-room").ready;
    const { offset } = await gw.publish("mp-room", { text: "packed", n: [1, 2, 3] });
    assert.equal(offset, 1);
    await log.until((i) => events({ items: i }, "room:mp-room").length === 1);
    assert.deepEqual(events(log, "room:mp-room")[0].data, { text: "packed", n: [1, 2, 3] });
    assert.equal(await gw.presence("mp-room").then((p) => p.clients), 1);
    gw.close();
  });

  test("presence: the contract's object, across two clients", async () => {
    const a = client(server.ws, { sub: "pa" });
    const b = client(server.ws, { sub: "pb" });
    await Promise.all([a.room("pres").ready, b.room("pres").ready]);
    const p = await a.gw.presence("pres");
    assert.equal(p.users, 2);
    assert.equal(p.clients, 2);
    assert.deepEqual([...p.members].sort(), ["pa", "pb"]);
    assert.equal(p.truncated, false);
    a.gw.close();
    b.gw.close();
  });

  test("unsubscribe: the last handler leaves the room", async () => {
    const { gw, log, room } = client(server.ws, { sub: "unsub" });
    const s1 = room("u");
    const s2 = room("u");
    await s1.ready;
    s1.unsubscribe();
    assert.equal((await gw.presence("u")).clients, 1, "still in with the second handler");
    s2.unsubscribe();
    // The unsubscribe frame goes before this presence request: replies keep request order.
    assert.equal((await gw.presence("u")).clients, 0);
    await server.publish("room:u", { late: true });
    await gw.publish("u", { own: true }).catch(() => {});
    assert.equal(events(log, "room:u").length, 0);
    gw.close();
  });
});

describe("node: continuity lost is surfaced, never swallowed", { timeout: 120_000 }, () => {
  test("a restarted embedded node (new epoch): resync for the room, the user channel and broadcast", async () => {
    const server = await TestGateway.start();
    try {
      const { gw, log, room } = client(server.ws, { sub: "epoch" });
      await room("e").ready;
      await server.publish("room:e", { before: 1 });
      await server.publish("user:epoch", { before: 1 });
      await log.until((i) => events({ items: i }, "room:e").length === 1 && events({ items: i }, "user:epoch").length === 1);
      await server.restart();
      await log.until(connectedTimes(2), "the reconnect");
      await log.until((i) => i.filter((x) => x.kind === "resync").length >= 3, "three resyncs");
      const resyncs = log.items.filter((x) => x.kind === "resync").map((r) => r.channel).sort();
      assert.deepEqual(resyncs, ["broadcast", "room:e", "user:epoch"]);
      // After a resync, new events of the new epoch flow (offset 1 again).
      await server.publish("room:e", { after: 1 });
      await log.until((i) => events({ items: i }, "room:e").length === 2);
      assert.deepEqual(events(log, "room:e").map((e) => [e.offset, e.data]), [[1, { before: 1 }], [1, { after: 1 }]]);
      gw.close();
    } finally {
      await server.stop();
    }
  });
});

describe("node: backoff by close code", { timeout: 120_000 }, () => {
  test("4029 (rate limited) waits the longer overload backoff, 1012 a short window", async () => {
    const server = await TestGateway.start({
      env: { GATEWAY_LIMITS_MESSAGES_PER_SECOND: "1", GATEWAY_LIMITS_MESSAGE_BURST: "2", GATEWAY_LIMITS_RATE_LIMIT_STRIKES: "1" },
    });
    try {
      const { gw, log, room } = client(server.ws, {
        sub: "flood",
        backoff: { drainWindowMs: 50, overloadMinMs: 800, overloadMaxMs: 1200 },
      });
      await room("fl").ready;
      // Over the burst: the server answers rate_limited, then closes with 4029.
      await Promise.allSettled([1, 2, 3, 4, 5, 6].map((i) => gw.publish("fl", { i })));
      await log.until(connectedTimes(2), "the reconnect after 4029");
      const gap = (items, from) => {
        const d = items.findIndex((x, k) => k > from && x.kind === "state" && x.s === "disconnected");
        const c = items.findIndex((x, k) => k > d && x.kind === "state" && x.s === "connecting");
        return [items[c].at - items[d].at, c];
      };
      const [overload, at] = gap(log.items, 0);
      assert.ok(overload >= 800, `4029 retried after ${overload} ms`);
      await server.api("POST", "/api/disconnect", { user: "flood", reconnect: true });
      await log.until(connectedTimes(3), "the reconnect after 1012");
      const [drain] = gap(log.items, at);
      assert.ok(drain < 300, `1012 retried after ${drain} ms`);
      gw.close();
    } finally {
      await server.stop();
    }
  });
});
