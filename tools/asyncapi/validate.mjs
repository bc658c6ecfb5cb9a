// Validates an AsyncAPI document (docs/asyncapi.yaml) with the AsyncAPI parser: the AsyncAPI
// 3.0 JSON schema (@asyncapi/specs) plus the parser's own rules. Exit 1 on any error.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs <asyncapi.yaml>");
  process.exit(2);
}
const text = readFileSync(path, "utf8");
const { document, diagnostics } = await new Parser().parse(text, { source: path });
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join(".") : "(document)";
  const level = ["error", "warning", "info", "hint"][d.severity] ?? "note";
  if (d.severity <= 1) console.log(`${path}: ${level}: ${where}: ${d.message} [${d.code}]`);
}
if (errors.length || !document) {
  console.error(`${path}: ${errors.length} error(s): not a valid AsyncAPI document`);
  process.exit(1);
}
const version = document.version();
if (!version.startsWith("3.0")) {
  console.error(`${path}: AsyncAPI ${version}, expected 3.0.x`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${version} (${document.channels().length} channels, ` +
  `${document.operations().length} operations, ${document.messages().length} messages)`);
