// A partner's first calls to a copex hub from Node.js: connect with a
// partner certificate, create a tool, list and search tools, and follow the
// change feed until the new tool arrives. Stubs are loaded from the repository's proto/.
//
// Connection settings come from the same variables as the copex CLI
// (COPEX_HUB, COPEX_CA, COPEX_CERT, COPEX_KEY); the defaults fit a hub
// started with `cargo run --release -- serve` in the repository root.

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const root = path.join(__dirname, "..", "..");
const pki = path.join(root, "copex-data", "pki");
const read = (variable, file) => fs.readFileSync(process.env[variable] || path.join(pki, file));

const definition = protoLoader.loadSync(
  ["copex/v1/partner.proto", "copex/v1/tool.proto", "copex/v1/sync.proto", "copex/v1/search.proto"],
  { includeDirs: [path.join(root, "proto")], keepCase: true, longs: String, enums: String, defaults: true },
);
const copex = grpc.loadPackageDefinition(definition).copex.v1;

const hub = (process.env.COPEX_HUB || "https://localhost:50051").replace(/^https:\/\//, "");
const credentials = grpc.credentials.createSsl(read("COPEX_CA", "ca.pem"), read("COPEX_KEY", "admin.key"), read("COPEX_CERT", "admin.pem"));
const partners = new copex.PartnerService(hub, credentials);
const tools = new copex.ToolService(hub, credentials);
const sync = new copex.SyncService(hub, credentials);
const search = new copex.SearchService(hub, credentials);

const call = (client, method, request) =>
  new Promise((resolve, reject) => client[method](request, (err, response) => (err ? reject(err) : resolve(response))));

async function main() {
  const me = await call(partners, "GetCurrentPartner", {});
  console.log("connected as", me.name);

  // Where the feed stands now, so the watch below starts after it.
  let cursor = "";
  for (;;) {
    const page = await call(sync, "ListChanges", { cursor, page_size: 5000 });
    cursor = page.next_cursor;
    if (page.caught_up) break;
  }

  const created = await call(tools, "CreateTool", {
    parent: me.name,
    tool: {
      display_name: "Grooming detection in chat (Node example)",
      capabilities: ["text classification", "Portuguese"],
      category: "TOOL_CATEGORY_CLASSIFIER",
      regions: ["BR"],
      sharing: { tlp: "TLP_GREEN" },
    },
  });
  console.log("created", created.name);

  const listed = await call(tools, "ListTools", { parent: "partners/-", filter: 'regions:"BR"' });
  console.log("tools in BR:", listed.tools.map((t) => t.name).join(", "));
  if (!listed.tools.some((t) => t.name === created.name)) throw new Error("the new tool is missing from the list");

  const found = await call(search, "Search", {
    query: '"grooming detection" portuguese',
    kinds: ["RECORD_KIND_TOOL"],
    page_size: 100,
  });
  for (const hit of found.hits) console.log(`search hit ${hit.score.toFixed(2)} ${hit.record.tool.name}: ${hit.snippet}`);
  if (!found.hits.some((hit) => hit.record.tool.name === created.name)) throw new Error("the new tool is missing from the search hits");

  try {
    await call(tools, "GetTool", { name: `${me.name}/tools/no-such-tool` });
    throw new Error("expected NOT_FOUND");
  } catch (err) {
    if (err.code !== grpc.status.NOT_FOUND) throw err;
    console.log("missing tool: NOT_FOUND -", err.details);
  }

  // Follow the change feed until the new tool arrives.
  await new Promise((resolve, reject) => {
    const stream = sync.WatchChanges({ cursor });
    const timer = setTimeout(() => {
      stream.cancel();
      reject(new Error("the change did not arrive within 10 s"));
    }, 10000);
    stream.on("data", (message) => {
      for (const change of message.changes) {
        console.log("change:", change.type, change.name);
        if (change.name === created.name && change.type === "CHANGE_TYPE_UPSERTED") {
          clearTimeout(timer);
          stream.cancel();
          resolve();
        }
      }
    });
    stream.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });

  await call(tools, "DeleteTool", { name: created.name, etag: created.etag });
  console.log("deleted", created.name);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
