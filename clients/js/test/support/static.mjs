// A static file server on loopback for the browser tests: the SDK's dist/,
// the demo page, the test pages and the MessagePack ESM build (for an import
// map). Serves only the directories mapped here, never `..`.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const js = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const ROOTS = {
  "/dist/": join(js, "dist"),
  "/clients/js/dist/": join(js, "dist"), // where the demo page imports it from
  "/test/": join(js, "test/browser"),
  "/examples/chat/": resolve(js, "../../examples/chat"),
  "/vendor/msgpack/": join(js, "node_modules/@msgpack/msgpack/dist.esm"),
};
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".map": "application/json" };

export async function startStatic() {
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const prefix = Object.keys(ROOTS).find((p) => path.startsWith(p));
    const tail = prefix && path.slice(prefix.length);
    const rel = prefix && (tail === "" || tail.endsWith("/") ? normalize(tail + "index.html") : normalize(tail));
    if (!prefix || rel.startsWith("..")) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(join(ROOTS[prefix], rel));
      res.writeHead(200, { "content-type": TYPES[extname(rel)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((ok) => server.close(ok)) };
}
