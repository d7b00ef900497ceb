// The TypeScript SDK's client against groundhog-mcp over stdio (run by .ci/mcp-conformance from the
// node-tools folder, whose @modelcontextprotocol/sdk it imports). After listTools the client
// validates structuredContent against each tool's outputSchema, error results included: a tool
// error's {"error": {code, ...}} must pass that check, or the call throws instead of returning it.
// Usage: node --input-type=module - SERVER DATABASE < ts-client-errors.mjs; prints JSON.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [command, database] = process.argv.slice(-2);
const transport = new StdioClientTransport({ command, args: ["--database", database], stderr: "ignore" });
const client = new Client({ name: "ts-check", version: "0" });
await client.connect(transport);
const out = {};
await client.listTools();
await client.callTool({ name: "register_context", arguments: { name: "c", state: { data: { n: 1 } } } });
await client.callTool({ name: "update_state", arguments: { name: "c", data: { n: 2 }, expected_revision: 1 } });
for (const [label, name, args] of [
  ["conflict", "update_state", { name: "c", data: { n: 3 }, expected_revision: 1 }],
  ["missing", "get_state", { name: "nope" }],
]) {
  try {
    const r = await client.callTool({ name, arguments: args });
    out[label] = { isError: r.isError, error: r.structuredContent?.error };
  } catch (e) {
    out[label] = { thrown: String(e.message).slice(0, 200) };
  }
}
console.log(JSON.stringify(out));
await client.close();
