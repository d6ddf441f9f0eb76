// A TCP proxy on loopback in front of a gateway, for failures a real
// network has: `freeze()` stops carrying bytes on the open connections
// without closing them (a dead peer behind a NAT), and `refuseUpgrades`
// answers WebSocket upgrades with 403 (a network that blocks WebSockets)
// while passing plain HTTP (SSE) through.
import { createServer, connect } from "node:net";

export class Proxy {
  static async start(targetPort) {
    const p = new Proxy();
    p.targetPort = targetPort;
    p.conns = new Set();
    p.refuseUpgrades = false;
    p.server = createServer((client) => p.#accept(client));
    await new Promise((ok) => p.server.listen(0, "127.0.0.1", ok));
    p.port = p.server.address().port;
    return p;
  }

  #accept(client) {
    const upstream = connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream, frozen: false };
    this.conns.add(pair);
    const end = () => {
      this.conns.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    let first = true;
    client.on("data", (b) => {
      if (pair.frozen) return;
      if (first && this.refuseUpgrades && /^upgrade:\s*websocket/im.test(b.toString("latin1"))) {
        client.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        upstream.destroy();
        return;
      }
      first = false;
      upstream.write(b);
    });
    upstream.on("data", (b) => {
      if (!pair.frozen) client.write(b);
    });
  }

  /** Open connections stop carrying bytes (both ways) but stay open. */
  freeze() {
    for (const c of this.conns) c.frozen = true;
  }

  /** Cuts every open connection (a network drop). */
  cut() {
    for (const c of this.conns) {
      c.client.destroy();
      c.upstream.destroy();
    }
  }

  close() {
    this.cut();
    return new Promise((ok) => this.server.close(ok));
  }
}
