// A partner's first calls to a copex hub from Node.js with @copex/client:
// connect with a partner certificate, create a tool, list and search tools,
// follow the change feed until the new tool arrives, and delete it again.
//
// Settings come from ./copex.toml, COPEX_PROFILE, or COPEX_HUB, COPEX_CA,
// COPEX_CERT and COPEX_KEY; without any, the development defaults of a hub
// started with `cargo run --release -- serve` in the repository root.

import path from "node:path";
import { fileURLToPath } from "node:url";
import { ChangeType, Code, connect, CopexError, MemoryCursorStore, RecordKind, Tlp, ToolCategory } from "@copex/client";

const pki = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "copex-data", "pki");
const defaults = process.env.COPEX_HUB || process.env.COPEX_PROFILE
  ? {}
  : { hub: "https://localhost:50051", ca: `${pki}/ca.pem`, cert: `${pki}/admin.pem`, key: `${pki}/admin.key` };
const copex = connect(defaults);

const me = await copex.whoami();
console.log("connected as", me.name);

// Follow the feed from its head, so the new tool is the change to wait for.
// The change can arrive before createTool's answer does, so remember every
// upsert and look for the new name once it is known.
const upserted = new Set();
let wanted;
let arrived;
const seen = new Promise((resolve) => (arrived = resolve));
const follower = copex.follower({
  store: new MemoryCursorStore(),
  onChange: (change) => {
    console.log("change:", ChangeType[change.type], change.name);
    if (change.type !== ChangeType.UPSERTED) return;
    upserted.add(change.name);
    if (change.name === wanted) arrived();
  },
  onCaughtUp: () => console.log("feed: caught up"),
});
await follower.catchUp();
const following = follower.run(); // from the cursor the catch-up stored

const created = await copex.tool.createTool({
  parent: me.name,
  tool: {
    displayName: "Grooming detection in chat (Node example)",
    capabilities: ["text classification", "Portuguese"],
    category: ToolCategory.CLASSIFIER,
    regions: ["BR"],
    sharing: { tlp: Tlp.GREEN },
  },
});
console.log("created", created.name);
wanted = created.name;
if (upserted.has(wanted)) arrived();

const inBrazil = [];
for await (const tool of copex.listTools({ filter: 'regions:"BR"' })) inBrazil.push(tool.name);
console.log("tools in BR:", inBrazil.join(", "));
if (!inBrazil.includes(created.name)) throw new Error("the new tool is missing from the list");

// waitForIndex: the search sees every write committed before it.
let found = false;
for await (const hit of copex.searchHits({ query: '"grooming detection" portuguese', kinds: [RecordKind.TOOL], waitForIndex: true })) {
  console.log(`search hit ${hit.score.toFixed(2)} ${hit.record?.kind.value?.name}: ${hit.snippet}`);
  found ||= hit.record?.kind.value?.name === created.name;
}
if (!found) throw new Error("the new tool is missing from the search hits");

try {
  await copex.tool.getTool({ name: `${me.name}/tools/no-such-tool` });
  throw new Error("expected NOT_FOUND");
} catch (err) {
  if (!(err instanceof CopexError) || err.code !== Code.NotFound) throw err;
  console.log("missing tool: NOT_FOUND -", err.reason);
}

const timer = setTimeout(() => {
  console.error("the change did not arrive within 10 s");
  process.exit(1);
}, 10_000);
await seen;
clearTimeout(timer);
follower.stop();
await following;

await copex.tool.deleteTool({ name: created.name, etag: created.etag });
console.log("deleted", created.name);
copex.close();
