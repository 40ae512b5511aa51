// Validates Compose files against the Compose Specification's JSON schema (draft-07).
//
// usage: node validate-compose.mjs <tools-dir> <compose.yml>...
// <tools-dir> holds the node_modules that `cargo xtask lint` installed from package-lock.json.
// The schema is dclint's schemas/compose.schema.json: byte for byte compose-spec/compose-spec's
// schema/compose-spec.json of 2025-07-21 (see package.json). Prints one line per problem,
// `file:line:column: /json/pointer: message`, and exits 1 if there is any.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";

const [toolsDir, ...files] = process.argv.slice(2);
if (!toolsDir || files.length === 0) {
  console.error("usage: node validate-compose.mjs <tools-dir> <compose.yml>...");
  process.exit(2);
}
const require = createRequire(resolve(toolsDir, "package.json"));
const Ajv = require("ajv");
const { LineCounter, parseDocument, isMap, isSeq } = require("yaml");
// dclint's package exports do not list the schema, so read it by path.
const schemaPath = resolve(toolsDir, "node_modules/dclint/schemas/compose.schema.json");
const schema = JSON.parse(readFileSync(schemaPath, "utf8"));

// strictSchema: a keyword or format this Ajv does not know fails loudly instead of passing
// silently. strictTypes and friends only judge the schema's style (it writes
// `additionalProperties` without `type: object` inside `oneOf`), so they stay off.
const ajv = new Ajv({
  allErrors: true,
  strictSchema: true,
  strictNumbers: true,
  strictTypes: false,
  strictTuples: false,
  strictRequired: false,
});
// The schema names its meta-schema https://json-schema.org/draft-07/schema; Ajv ships draft-07
// under its historical http:// id. Register the same meta-schema under the https id too, so the
// Compose schema is itself checked against draft-07 before it checks anything.
const draft07 = require("ajv/dist/refs/json-schema-draft-07.json");
ajv.addMetaSchema({ ...draft07, $id: schema.$schema });
const validate = ajv.compile(schema);

// The YAML node at a JSON pointer (with `key`, that key's own node in the map there), to turn
// a schema error into a line and column. Stops at the deepest node that exists.
function nodeAt(doc, pointer, key) {
  const keys = pointer.split("/").slice(1).map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"));
  let node = doc.contents;
  for (const [i, k] of [...keys, key].entries()) {
    if (k === undefined) break;
    const last = i === keys.length;
    if (isMap(node)) {
      const pair = node.items.find((p) => String(p.key?.value ?? p.key) === k);
      if (!pair) break;
      node = last ? pair.key : (pair.value ?? pair.key);
    } else if (isSeq(node) && node.items[Number(k)]) {
      node = node.items[Number(k)];
    } else {
      break;
    }
  }
  return node;
}

// Ajv's message plus the detail that names the culprit (the unknown key, the allowed values).
function describe(error) {
  const p = error.params ?? {};
  if (p.additionalProperty !== undefined) return `${error.message}: "${p.additionalProperty}"`;
  if (p.allowedValues !== undefined) return `${error.message}: ${JSON.stringify(p.allowedValues)}`;
  return error.message;
}

let problems = 0;
for (const file of files) {
  const lines = new LineCounter();
  // Compose files may use YAML merge keys (<<: *defaults), as Docker Compose accepts them.
  const doc = parseDocument(readFileSync(file, "utf8"), { lineCounter: lines, merge: true });
  const report = (offset, text) => {
    const { line, col } = offset === undefined ? { line: 1, col: 1 } : lines.linePos(offset);
    problems += 1;
    console.log(`${file}:${line}:${col}: ${text}`);
  };
  for (const e of [...doc.errors, ...doc.warnings]) report(e.pos?.[0], `YAML: ${e.message}`);
  if (doc.errors.length > 0) continue;
  if (!validate(doc.toJS())) {
    for (const error of validate.errors) {
      const at = error.instancePath || "/";
      const node = nodeAt(doc, error.instancePath, error.params?.additionalProperty);
      report(node?.range?.[0], `${at}: ${describe(error)}`);
    }
  }
}
console.log(
  problems === 0
    ? `compose schema: ${files.length} file(s) valid`
    : `compose schema: ${problems} problem(s) in ${files.length} file(s)`,
);
process.exit(problems === 0 ? 0 : 1);
