// The SDK in a real headless Chromium (Debian's), loaded as an ES module
// from dist/, against a real gateway process: the browser's own WebSocket
// and EventSource. Reports come back through an exposed function (a call
// into Node per report), so every wait is on an event, bounded by a deadline.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { launch } from "./support/browser.mjs";
import { Proxy } from "./support/proxy.mjs";
import { startStatic } from "./support/static.mjs";
import { Recorder, TestGateway, mint } from "./support/gateway.mjs";

let browser, server, site;

before(async () => {
  [browser, server, site] = await Promise.all([
    launch(),
    TestGateway.start({ env: { GATEWAY_WEBSOCKET_HEARTBEAT_SECONDS: "1", GATEWAY_WEBSOCKET_HEARTBEAT_TIMEOUT_SECONDS: "3" } }),
    startStatic(),
  ]);
});
after(async () => {
  await browser?.close();
  await server?.stop();
  await site?.close();
});

/** A fresh page with the harness loaded; `log` gets what the SDK reports, `tokens` every token minted for it. */
async function page() {
  const context = await browser.newContext();
  const p = await context.newPage();
  const log = new Recorder();
  const tokens = new Recorder();
  p.on("pageerror", (e) => log.push({ kind: "pageerror", message: String(e) }));
  await p.exposeFunction("report", (item) => log.push(item));
  await p.exposeFunction("mintToken", (sub, claims) => {
    // A `jti` gets the token's ordinal: "x" -> "x-1", "x-2", ...
    const n = tokens.items.length + 1;
    const t = mint(sub, claims?.jti ? { ...claims, jti: `${claims.jti}-${n}` } : (claims ?? undefined));
    tokens.push(t);
    return t;
  });
  await p.goto(`${site.url}/test/harness.html`);
  await p.waitForFunction(() => window.ready === true);
  return { p, log, tokens, close: () => context.close() };
}

const of = (items, channel) => items.filter((i) => i.kind === "event" && i.channel === channel);
const states = (items) => items.filter((i) => i.kind === "state").map((i) => i.s);
const connected = (n) => (items) => states(items).filter((s) => s === "connected").length >= n;

describe("browser (Chromium): SDK against a real gateway", { timeout: 120_000 }, () => {
  test("connect, subscribe, receive; publish resolves with the offset", async () => {
    const { p, log, close } = await page();
    const c = await p.evaluate((url) => window.start(url, "b-recv"), server.ws);
    assert.equal(await p.evaluate((c) => window.join(c, "b-room"), c), "ok");
    await server.publish("room:b-room", { from: "backend" });
    const reply = await p.evaluate((c) => window.publish(c, "b-room", { from: "browser" }), c);
    assert.deepEqual(reply, { ok: { offset: 2 } });
    const items = await log.until((i) => of(i, "room:b-room").length === 2, "both events");
    assert.deepEqual(of(items, "room:b-room").map((e) => [e.offset, e.data.from]), [[1, "backend"], [2, "browser"]]);
    assert.deepEqual(states(items), ["connecting", "connected"]);
    assert.ok(!items.some((i) => i.kind === "pageerror"));
    await close();
  });

  test("server-side 1012 while events flow: reconnects, every offset exactly once, in order", async () => {
    const { p, log, close } = await page();
    const c = await p.evaluate((url) => window.start(url, "b-drop"), server.ws);
    assert.equal(await p.evaluate((c) => window.join(c, "flow"), c), "ok");
    // A backend publishing steadily; the server drops the socket mid-stream.
    const N = 60;
    const publisher = (async () => {
      for (let i = 1; i <= N; i++) {
        await server.publish("room:flow", { i });
        if (i === 20) await server.api("POST", "/api/disconnect", { user: "b-drop", reconnect: true });
      }
    })();
    await publisher;
    const items = await log.until((i) => of(i, "room:flow").length >= N && connected(2)(i), "all events after the reconnect");
    const offsets = of(items, "room:flow").map((e) => e.offset);
    assert.deepEqual(offsets, Array.from({ length: N }, (_, k) => k + 1), "no loss, no duplicate, in order");
    assert.ok(!items.some((i) => i.kind === "resync"));
    const down = items.find((i) => i.kind === "state" && i.s === "disconnected").at;
    const up = items.filter((i) => i.kind === "state" && i.s === "connected")[1].at;
    console.log(`[browser] reconnect after 1012: ${up - down} ms (drain window 100 ms), events lost: 0`);
    await close();
  });

  test("4003 from the server: closed, no reconnect", async () => {
    const { p, log, close } = await page();
    const c = await p.evaluate((url) => window.start(url, "b-kick"), server.ws);
    assert.equal(await p.evaluate((c) => window.join(c, "k"), c), "ok");
    await server.api("POST", "/api/disconnect", { user: "b-kick", reconnect: false });
    const items = await log.until((i) => states(i).includes("closed"), "closed");
    assert.deepEqual(states(items), ["connecting", "connected", "closed"]);
    assert.deepEqual(await p.evaluate((c) => window.publish(c, "k", {}), c), { code: "closed" });
    await close();
  });

  test("token refreshed in place before exp, without a reconnect", async () => {
    const { p, log, tokens, close } = await page();
    const c = await p.evaluate((url) => window.start(url, "b-fresh", { ttl: 2 }), server.ws);
    assert.equal(await p.evaluate((c) => window.join(c, "f"), c), "ok");
    await tokens.until((t) => t.length >= 3, "two in-place refreshes (first token expired at 2 s)");
    const reply = await p.evaluate((c) => window.publish(c, "f", { alive: true }), c);
    assert.ok(reply.ok?.offset > 0, JSON.stringify(reply));
    assert.deepEqual(states(log.items), ["connecting", "connected"]);
    await close();
  });

  test("4001 (revoked): new token, reconnect", async () => {
    const { p, log, tokens, close } = await page();
    const c = await p.evaluate((url) => window.start(url, "b-revoke", { jti: "b-jti" }), server.ws);
    assert.equal(await p.evaluate((c) => window.join(c, "r"), c), "ok");
    await server.api("POST", "/api/revoke", { jti: "b-jti-1" });
    const items = await log.until(connected(2), "the reconnect with a new token");
    assert.deepEqual(states(items), ["connecting", "connected", "disconnected", "connecting", "connected"]);
    assert.equal(tokens.items.length, 2, "token() called again after 4001");
    assert.ok((await p.evaluate((c) => window.publish(c, "r", { again: true }), c)).ok);
    await close();
  });

  test("presence", async () => {
    const { p, close } = await page();
    const [a, b] = await p.evaluate((url) => [window.start(url, "b-pa"), window.start(url, "b-pb")], server.ws);
    assert.deepEqual(await p.evaluate(([a, b]) => Promise.all([window.join(a, "pr"), window.join(b, "pr")]), [a, b]), ["ok", "ok"]);
    const presence = await p.evaluate((a) => window.presence(a, "pr"), a);
    assert.equal(presence.users, 2);
    assert.equal(presence.clients, 2);
    assert.deepEqual([...presence.members].sort(), ["b-pa", "b-pb"]);
    await close();
  });

  test("MessagePack mode (the optional peer dependency through an import map)", async () => {
    const { p, log, close } = await page();
    const c = await p.evaluate((url) => window.start(url, "b-mp", null, { format: "msgpack" }), server.ws);
    assert.equal(await p.evaluate((c) => window.join(c, "mp"), c), "ok");
    assert.deepEqual(await p.evaluate((c) => window.publish(c, "mp", { bin: [1, 2], s: "x" }), c), { ok: { offset: 1 } });
    const items = await log.until((i) => of(i, "room:mp").length === 1);
    assert.deepEqual(of(items, "room:mp")[0].data, { bin: [1, 2], s: "x" });
    await close();
  });
});

describe("browser (Chromium): SSE fallback (contract section 9)", { timeout: 120_000 }, () => {
  test("WebSocket refused by the network: auto falls back to SSE, then resumes over SSE after a drop", async (t) => {
    const probe = await fetch(`${server.http}/sse`);
    await probe.body?.cancel();
    if (probe.status === 404) {
      const msg = "SKIPPED browser SSE fallback test: server has no /sse (404); it runs once the SSE endpoint is merged";
      console.error(msg);
      t.skip(msg);
      return;
    }
    const proxy = await Proxy.start(server.port);
    proxy.refuseUpgrades = true;
    const { p, log, close } = await page();
    try {
      const c = await p.evaluate((url) => window.start(url, "b-sse", null, { transport: "auto" }), `ws://127.0.0.1:${proxy.port}/ws`);
      const sub = p.evaluate((c) => window.join(c, "sse-room"), c);
      await log.until((i) => i.some((x) => x.kind === "state" && x.s === "connected" && x.transport === "sse"), "connected over SSE");
      assert.equal(await sub, "ok");
      for (let i = 1; i <= 3; i++) await server.publish("room:sse-room", { i });
      await log.until((i) => of(i, "room:sse-room").length === 3);
      proxy.cut(); // the stream drops; publish while it is down
      for (let i = 4; i <= 6; i++) await server.publish("room:sse-room", { i });
      const items = await log.until((i) => of(i, "room:sse-room").length >= 6 && connected(2)(i), "resumed over SSE");
      assert.deepEqual(of(items, "room:sse-room").map((e) => e.data.i), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(await p.evaluate((c) => window.publish(c, "sse-room", {}), c), { code: "unsupported" });
    } finally {
      await close();
      await proxy.close();
    }
  });
});
