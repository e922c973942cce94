// The browser page's runtime, from the pinned onnxruntime-web in node_modules (`npm ci`), into
// vendor/ort-<version>/ with a gzip copy of each file that the service sends to browsers that
// accept it. Only the wasm-only build (no WebGPU, no WebGL): the ES module that bundles its
// loader, and the SIMD wasm binary it fetches.
//
//   npm ci --prefix serving/web --ignore-scripts && node serving/web/vendor.mjs
//
// `make setup` runs both; so does the Dockerfile's web stage.
import { copyFileSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { constants, gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "onnxruntime-web", "dist");
const { version } = JSON.parse(
  readFileSync(join(here, "node_modules", "onnxruntime-web", "package.json"), "utf8"),
);
const FILES = ["ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs"];

// Written beside, then renamed into place: an interrupted run leaves no half-written vendor/.
const vendor = join(here, "vendor");
const staging = join(here, "vendor.tmp");
rmSync(staging, { recursive: true, force: true });
const out = join(staging, `ort-${version}`);
mkdirSync(out, { recursive: true });
for (const name of FILES) {
  copyFileSync(join(dist, name), join(out, name));
  const gz = gzipSync(readFileSync(join(dist, name)), { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(join(out, `${name}.gz`), gz);
}
writeFileSync(join(staging, "runtime.json"), JSON.stringify({ "onnxruntime-web": version, files: FILES }) + "\n");
rmSync(vendor, { recursive: true, force: true });
renameSync(staging, vendor);
console.log(`serving/web/vendor/ort-${version}: ${FILES.join(", ")} (+ .gz)`);
