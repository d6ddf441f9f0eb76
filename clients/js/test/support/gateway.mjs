// A real gateway process for the SDK's tests: the binary Cargo built
// (GATEWAY_BIN, set by tests/sdk.rs; else target/debug/gateway), started on
// a free loopback port in a scratch directory with only the GATEWAY_*
// variables set here, stopped by its PID. Plus real HS256 JWTs and the
// server API (contract section 8).
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The HMAC secret every test gateway verifies with. */
export const SECRET = "sdk-test-secret-0123456789abcdef0123456789abcdef";
/** The server API key of every test gateway. */
export const API_KEY = "sdk-test-key";
/** Bound on any awaited condition: reaching it fails the test, it never paces one. */
export const DEADLINE_MS = 20_000;

const here = fileURLToPath(new URL(".", import.meta.url));
export const BIN = process.env.GATEWAY_BIN || resolve(here, "../../../../target/debug/gateway");

/** A loopback port free at the time of the call. */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** Seconds since the Unix epoch. */
export const now = () => Math.floor(Date.now() / 1000);

/** An HS256 JWT for `sub`, granting `rooms` (and publish to them unless `publish` says otherwise). */
export function mint(sub, { rooms = ["*"], publish = rooms, ttl = 3600, jti, iat = now() } = {}) {
  const claims = { sub, iat, exp: iat + ttl, rooms, publish };
  if (jti) claims.jti = jti;
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url(claims);
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A running gateway process. */
export class TestGateway {
  static async start({ env = {}, port } = {}) {
    const g = new TestGateway();
    g.port = port ?? (await freePort());
    g.dir = mkdtempSync(join(tmpdir(), "gw-sdk-"));
    g.env = env;
    await g.#spawn();
    return g;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }
  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async #spawn() {
    const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEWAY_")));
    Object.assign(childEnv, {
      GATEWAY_SERVER_LISTEN: `127.0.0.1:${this.port}`,
      GATEWAY_AUTH_HS_SECRET: SECRET,
      GATEWAY_API_KEYS: API_KEY,
      GATEWAY_AUTH_LEEWAY_SECONDS: "0",
      GATEWAY_SERVER_DRAIN_SECONDS: "1",
      GATEWAY_LOG_LEVEL: "warn",
      ...this.env,
    });
    const log = openSync(join(this.dir, "gateway.log"), "a");
    this.child = spawn(BIN, ["serve"], { cwd: this.dir, env: childEnv, stdio: ["ignore", log, log] });
    this.exited = new Promise((ok) => this.child.once("exit", (code, signal) => ok({ code, signal })));
    const spawnError = new Promise((_, fail) => this.child.once("error", fail));
    await Promise.race([this.#ready(), spawnError]);
  }

  async #ready() {
    const until = Date.now() + DEADLINE_MS;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`gateway exited with ${this.child.exitCode}; log in ${this.dir}`);
      try {
        const r = await fetch(`${this.http}/readyz`);
        if (r.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > until) throw new Error(`gateway on ${this.port} not ready within ${DEADLINE_MS} ms`);
      await new Promise((r) => setTimeout(r, 25)); // readiness poll interval, bounded by the deadline
    }
  }

  /** SIGTERM (drain) and wait for the exit. */
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGTERM");
    return this.exited;
  }

  /** SIGKILL and wait: the node dies without closing its sockets cleanly. */
  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    return this.exited;
  }

  /** Stops and starts the process again on the same port (a new embedded broker: history and epochs are new). */
  async restart() {
    await this.kill();
    await this.#spawn();
  }

  /** Calls the server API; returns the parsed JSON body and asserts the status. */
  async api(method, path, body, expect = [200, 202]) {
    const r = await fetch(this.http + path, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!expect.includes(r.status)) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** POST /api/publish; returns the offset. */
  async publish(channel, data) {
    return (await this.api("POST", "/api/publish", { channel, data })).offset;
  }
}

/**
 * Collects what a client reports and lets a test await a condition on it:
 * checked on every push, rejected at the deadline (never a sleep).
 */
export class Recorder {
  items = [];
  #waiters = [];
  push(item) {
    this.items.push(item);
    this.#check();
  }
  #check() {
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.pred(this.items)) return true;
      clearTimeout(w.timer);
      w.ok(this.items);
      return false;
    });
  }
  /** Resolves once `pred(items)` holds. */
  until(pred, what = "condition", ms = DEADLINE_MS) {
    if (pred(this.items)) return Promise.resolve(this.items);
    return new Promise((ok, fail) => {
      const w = { pred, ok };
      w.timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        fail(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.items).slice(0, 2000)}`));
      }, ms);
      this.#waiters.push(w);
    });
  }
}
