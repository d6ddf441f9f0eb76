// Bundle size of the SDK as an application ships it: dist/index.js bundled
// and minified by esbuild (MessagePack external: it is loaded only for
// format "msgpack"), then gzipped. Target: under 10 KB.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const LIMIT = 10 * 1024;
const out = await build({
  entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  external: ["@msgpack/msgpack"],
  write: false,
});
const code = out.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
console.log(`@gateway/client: ${code.length} B minified, ${gz} B minified+gzip (limit ${LIMIT} B)`);
if (gz >= LIMIT) {
  console.error("bundle over the limit");
  process.exit(1);
}
