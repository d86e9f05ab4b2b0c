// Runs the scripted session of tests/reference_session.rs against any MCP memory server over
// stdio and prints the transcript as JSON. Not part of CI (it needs node and the TypeScript SDK);
// it is how the expectations in the Rust tests were checked against the reference server:
//
//   mkdir probe && cd probe && npm init -y && npm install @modelcontextprotocol/server-memory@2026.8.31
//   cp .../crates/engram-mcp/tests/integration/reference/probe.mjs .     (node resolves the SDK next to the script)
//   MEMORY_FILE_PATH=$(mktemp -u) node probe.mjs node node_modules/@modelcontextprotocol/server-memory/dist/index.js > reference.json
//   node probe.mjs engram mcp --data "$(mktemp -d)" > engram.json      (once the binary exists)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error("usage: node probe.mjs COMMAND [ARGS...]");
  process.exit(2);
}
const transport = new StdioClientTransport({ command, args, env: process.env });
const client = new Client({ name: "engram-probe", version: "1" });
await client.connect(transport);
const transcript = [{ step: "tools/list", result: await client.listTools() }];
const calls = [
  ["create_entities", { entities: [
    { name: "Alice", entityType: "person", observations: ["works at Acme Corp", "likes tea"] },
    { name: "Bob", entityType: "person", observations: ["likes programming"] },
    { name: "Acme Corp", entityType: "company", observations: ["tech company"] }] }],
  ["create_entities", { entities: [
    { name: "Alice", entityType: "robot", observations: [] },
    { name: "Carol", entityType: "person", observations: ["lives in Paris"] }] }],
  ["create_relations", { relations: [
    { from: "Alice", to: "Acme Corp", relationType: "works_at" },
    { from: "Alice", to: "Bob", relationType: "knows" },
    { from: "Carol", to: "Dave", relationType: "knows" }] }],
  ["create_relations", { relations: [
    { from: "Alice", to: "Bob", relationType: "knows" },
    { from: "Bob", to: "Alice", relationType: "knows" }] }],
  ["add_observations", { observations: [
    { entityName: "Alice", contents: ["likes tea", "has a dog"] },
    { entityName: "Bob", contents: ["uses Rust"] }] }],
  ["add_observations", { observations: [
    { entityName: "Bob", contents: ["likes chess"] },
    { entityName: "Ghost", contents: ["boo"] }] }],
  ["open_nodes", { names: ["Bob"] }],
  ["search_nodes", { query: "ACME" }],
  ["search_nodes", { query: "paris" }],
  ["open_nodes", { names: [] }],
  ["delete_observations", { deletions: [
    { entityName: "Alice", observations: ["likes tea", "never said this"] },
    { entityName: "Nobody", observations: ["x"] }] }],
  ["delete_relations", { relations: [
    { from: "Alice", to: "Bob", relationType: "knows" },
    { from: "Alice", to: "Bob", relationType: "hates" }] }],
  ["delete_entities", { entityNames: ["Bob", "Nobody"] }],
  ["read_graph", {}],
  ["create_entities", { entities: [{ name: "X", entityType: 5, observations: [] }] }],
  ["create_entities", {}],
  ["no_such_tool", {}],
];
for (const [name, args] of calls) {
  try {
    transcript.push({ step: name, args, result: await client.callTool({ name, arguments: args }) });
  } catch (e) {
    transcript.push({ step: name, args, error: { code: e.code, message: e.message } });
  }
}
transcript.push({ step: "resources/list", result: await client.listResources() });
transcript.push({ step: "resources/read", result: await client.readResource({ uri: "memory://knowledge-graph" }) });
console.log(JSON.stringify(transcript, null, 2));
await client.close();
