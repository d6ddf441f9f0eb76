// The headline reconnect test: two gateway nodes on one Redis (history is
// shared), a page connected to node A through a TCP load balancer, a backend
// publishing steadily; node A is SIGTERMed mid-stream (drain: 1012), the
// balancer sends new connections to node B, and the page must show every
// offset exactly once, in order.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch } from "./support/browser.mjs";
import { Proxy } from "./support/proxy.mjs";
import { haveRedis, startRedis } from "./support/redis.mjs";
import { startStatic } from "./support/static.mjs";
import { Recorder, TestGateway, mint } from "./support/gateway.mjs";

const skip = !haveRedis();
if (skip) {
  if (process.env.CI) throw new Error("CI is set and redis-server is missing (.ci/run installs it)");
  console.error("SKIPPED browser drain test: redis-server is not installed (apt-get install redis-server)");
}

let browser, redis, site;
before(async () => {
  if (skip) return;
  [browser, redis, site] = await Promise.all([launch(), startRedis(), startStatic()]);
});
after(async () => {
  await browser?.close();
  await site?.close();
  await redis?.stop();
});

const node = (id) =>
  TestGateway.start({
    env: {
      GATEWAY_SERVER_NODE_ID: id,
      GATEWAY_BROKER_KIND: "redis",
      GATEWAY_BROKER_REDIS_NODES: `127.0.0.1:${redis.port}`,
      GATEWAY_BROKER_REDIS_CLUSTER: "false",
      GATEWAY_BROKER_REDIS_PUBSUB: "classic",
    },
  });

test("SIGTERM the node while events flow: the page reconnects to the second node, every offset once", { skip, timeout: 120_000 }, async () => {
  const [a, b] = await Promise.all([node("node-a"), node("node-b")]);
  const lb = await Proxy.start(a.port);
  const page = await browser.newPage();
  try {
    const log = new Recorder();
    await page.exposeFunction("report", (item) => log.push(item));
    await page.exposeFunction("mintToken", (sub) => mint(sub));
    await page.goto(`${site.url}/test/harness.html`);
    await page.waitForFunction(() => window.ready === true);
    const c = await page.evaluate((url) => window.start(url, "drainee"), `ws://127.0.0.1:${lb.port}/ws`);
    assert.equal(await page.evaluate((c) => window.join(c, "ticker"), c), "ok");

    const events = (items) => items.filter((x) => x.kind === "event" && x.channel === "room:ticker");
    const connects = (items) => items.filter((x) => x.kind === "state" && x.s === "connected");
    // Publish before, during and after the move: 20 more once the page is back.
    let drainedAt = 0;
    let N = 0;
    for (let backAt = Infinity; N < backAt + 20 && N < 5000; ) {
      await b.publish("room:ticker", { i: ++N }); // through node B: history in Redis
      if (N === 20) {
        lb.targetPort = b.port; // the balancer sends new connections to B
        drainedAt = Date.now();
        a.stop(); // SIGTERM: A closes its sockets with 1012 over its 1 s drain window
      }
      if (backAt === Infinity && connects(log.items).length >= 2) backAt = N;
    }
    assert.equal((await a.exited).code, 0, "node A drained and exited 0");
    const items = await log.until((i) => events(i).length >= N && connects(i).length >= 2, "every event after the move to B");
    assert.deepEqual(events(items).map((e) => e.offset), Array.from({ length: N }, (_, k) => k + 1), "no loss, no duplicate, in order");
    assert.ok(!items.some((x) => x.kind === "resync"), "history covered the move");
    const down = items.find((x) => x.kind === "state" && x.s === "disconnected").at;
    const up = connects(items)[1].at;
    console.log(`[browser] node drained (SIGTERM): page reconnected to the other node ${up - down} ms after the 1012 (${up - drainedAt} ms after SIGTERM), events lost: 0 of ${N}`);
  } finally {
    await page.close();
    await lb.close();
    await Promise.all([a.stop(), b.stop()]);
  }
});
