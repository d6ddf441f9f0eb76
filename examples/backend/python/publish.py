#!/usr/bin/env python3
"""Publish to the gateway from Python: FCALL gw_publish over Redis Cluster, and the HTTP API.

    pip install -r requirements.txt
    REDIS_NODES=127.0.0.1:7000 GW_URL=http://127.0.0.1:8080 GW_API_KEY=... \
        python3 publish.py lobby alice

publishes to room "lobby", to user "alice" (every socket of that user, on every
node) and to everyone, each once through Redis and once through the HTTP API,
then once with a plain SPUBLISH. Prints one JSON line per publication; exits
non-zero on any failure. The two functions `publish_redis` and `publish_http`
are the parts to copy.
"""

import json
import os
import sys
import urllib.request
from typing import Optional

from redis.cluster import ClusterNode, RedisCluster

# The channel key prefix (`broker.redis.prefix` in the gateway's configuration).
PREFIX = "gw:"


def publish_redis(rc: RedisCluster, channel: str, data) -> int:
    """FCALL gw_publish: stores the event in the channel's history and publishes it,
    atomically; returns its offset (0: history is off for that channel, the event is
    delivered without one). `channel` is "room:<R>", "user:<U>" or "broadcast".
    The gateway loads the function into every master at start-up."""
    return rc.fcall("gw_publish", 1, PREFIX + channel, json.dumps(data))


def publish_http(url: str, api_key: str, channel: str, data) -> Optional[int]:
    """POST /api/publish on any gateway node: 202 {"ok":true,"offset":N}; returns the
    offset (None: history is off for that channel)."""
    request = urllib.request.Request(
        url.rstrip("/") + "/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    # A status other than 2xx raises urllib.error.HTTPError (its body names the error).
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 202:
            raise RuntimeError(f"publish answered {response.status}")
        return json.load(response).get("offset")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: publish.py <room> <user>   (env: REDIS_NODES, GW_URL, GW_API_KEY)")
    room, user = sys.argv[1], sys.argv[2]
    seeds = [
        ClusterNode(host, int(port))
        for host, port in (n.rsplit(":", 1) for n in os.environ["REDIS_NODES"].split(","))
    ]
    url, api_key = os.environ["GW_URL"], os.environ["GW_API_KEY"]

    def show(**line) -> None:
        if "offset" in line and not line["offset"]:
            raise RuntimeError(f"no offset for {line['channel']}: is [history] off in the gateway?")
        print(json.dumps(line), flush=True)

    rc = RedisCluster(startup_nodes=seeds, decode_responses=True, socket_timeout=10)
    try:
        for channel in (f"room:{room}", f"user:{user}", "broadcast"):
            offset = publish_redis(rc, channel, {"from": "python", "via": "fcall"})
            show(via="fcall", channel=channel, offset=offset)
            offset = publish_http(url, api_key, channel, {"from": "python", "via": "http"})
            show(via="http", channel=channel, offset=offset)

        # A plain SPUBLISH (PUBLISH with `pubsub = "classic"`) still reaches the
        # sockets, but the event gets no offset and no history: a client that was
        # offline at that moment never gets it. Prefer gw_publish.
        receivers = rc.spublish(PREFIX + f"room:{room}", json.dumps({"from": "python", "via": "spublish"}))
        show(via="spublish", channel=f"room:{room}", receivers=receivers)
    finally:
        rc.close()


if __name__ == "__main__":
    main()
