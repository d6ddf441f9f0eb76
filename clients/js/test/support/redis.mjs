// A throwaway redis-server (Redis 7: history needs functions and streams) on
// a free loopback port, no persistence, stopped by its PID.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEADLINE_MS, freePort } from "./gateway.mjs";

/** Whether redis-server is installed. */
export const haveRedis = () => spawnSync("redis-server", ["--version"]).status === 0;

const pong = (port) =>
  new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    s.on("error", () => ok(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (b) => {
      s.destroy();
      ok(b.toString().startsWith("+PONG"));
    });
  });

export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "gw-sdk-redis-"));
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", "redis.log"],
    { cwd: dir, stdio: "ignore" },
  );
  const exited = new Promise((ok) => child.once("exit", ok));
  const until = Date.now() + DEADLINE_MS;
  while (!(await pong(port))) {
    if (child.exitCode !== null || Date.now() > until) throw new Error(`redis-server on ${port} did not start (log in ${dir})`);
    await new Promise((r) => setTimeout(r, 25)); // readiness poll interval, bounded by the deadline
  }
  return {
    port,
    stop: () => {
      if (child.exitCode === null) child.kill("SIGKILL");
      return exited;
    },
  };
}
