// Publish to the gateway from Node.js: FCALL gw_publish over a Redis Cluster
// client (node-redis, the npm package `redis`), and the HTTP API with fetch.
//
//     npm ci
//     REDIS_NODES=127.0.0.1:7000 GW_URL=http://127.0.0.1:8080 GW_API_KEY=... \
//         node publish.mjs lobby alice
//
// publishes to room "lobby", to user "alice" (every socket of that user, on
// every node) and to everyone, each once through Redis and once through the
// HTTP API, then once with a plain SPUBLISH. Prints one JSON line per
// publication; exits non-zero on any failure. `publishRedis` and
// `publishHttp` are the parts to copy.

import { createCluster } from "redis";

// The channel key prefix (`broker.redis.prefix` in the gateway's configuration).
const PREFIX = "gw:";

/**
 * FCALL gw_publish: stores the event in the channel's history and publishes
 * it, atomically; resolves to its offset (0: history is off for that channel,
 * the event is delivered without one). `channel` is "room:<R>", "user:<U>" or
 * "broadcast". The gateway loads the function into every master at start-up.
 */
async function publishRedis(cluster, channel, data) {
  return cluster.fCall("gw_publish", {
    keys: [PREFIX + channel], // routes the call to the master owning the channel
    arguments: [JSON.stringify(data)],
  });
}

/**
 * POST /api/publish on any gateway node: 202 {"ok":true,"offset":N};
 * resolves to the offset (null: history is off for that channel).
 */
async function publishHttp(url, apiKey, channel, data) {
  const response = await fetch(new URL("/api/publish", url), {
    method: "POST",
    headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({ channel, data }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await response.text();
  if (response.status !== 202) {
    throw new Error(`publish answered ${response.status}: ${body}`); // the body names the error
  }
  return JSON.parse(body).offset ?? null;
}

async function main() {
  const [room, user] = process.argv.slice(2);
  if (!room || !user) {
    throw new Error("usage: node publish.mjs <room> <user>   (env: REDIS_NODES, GW_URL, GW_API_KEY)");
  }
  const { REDIS_NODES, GW_URL, GW_API_KEY } = process.env;
  const cluster = createCluster({
    rootNodes: REDIS_NODES.split(",").map((node) => ({ url: `redis://${node}` })),
  });
  cluster.on("error", (e) => console.error("redis:", e.message));
  await cluster.connect();
  const show = (line) => {
    if ("offset" in line && !line.offset) {
      throw new Error(`no offset for ${line.channel}: is [history] off in the gateway?`);
    }
    console.log(JSON.stringify(line));
  };
  try {
    for (const channel of [`room:${room}`, `user:${user}`, "broadcast"]) {
      let offset = await publishRedis(cluster, channel, { from: "node", via: "fcall" });
      show({ via: "fcall", channel, offset });
      offset = await publishHttp(GW_URL, GW_API_KEY, channel, { from: "node", via: "http" });
      show({ via: "http", channel, offset });
    }

    // A plain SPUBLISH (PUBLISH with `pubsub = "classic"`) still reaches the
    // sockets, but the event gets no offset and no history: a client that was
    // offline at that moment never gets it. Prefer gw_publish.
    const receivers = await cluster.sPublish(
      PREFIX + `room:${room}`,
      JSON.stringify({ from: "node", via: "spublish" }),
    );
    show({ via: "spublish", channel: `room:${room}`, receivers });
  } finally {
    await cluster.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
