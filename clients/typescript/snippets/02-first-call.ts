// Step 3, continued: a first call. Publish a tool in your own name, then read it back.
import { connect, Code, CopexError, Tlp, ToolCategory } from "@copex/client";

const copex = connect();
const me = await copex.whoami();

// A fixed id, so running this again finds the tool instead of adding another.
const name = `${me.name}/tools/grooming-detection-chat`;
try {
  const created = await copex.tool.createTool({
    parent: me.name,
    toolId: "grooming-detection-chat",
    tool: {
      displayName: "Grooming detection in chat",
      summary: "Flags grooming patterns in Portuguese chat messages",
      category: ToolCategory.CLASSIFIER,
      capabilities: ["text classification", "Portuguese"],
      regions: ["BR"],
      sharing: { tlp: Tlp.GREEN },
    },
  });
  console.log("created", created.name);
} catch (err) {
  if (!(err instanceof CopexError) || err.code !== Code.AlreadyExists) throw err;
  console.log("already there from an earlier run:", name);
}

const fetched = await copex.tool.getTool({ name });
console.log("read back", fetched.displayName, "etag", fetched.etag);

// Errors carry the status code, the hub's reason and the fields it refused.
try {
  await copex.tool.createTool({ parent: me.name, tool: { displayName: "No sharing marking" } });
} catch (err) {
  if (!(err instanceof CopexError) || err.code !== Code.InvalidArgument) throw err;
  for (const v of err.fieldViolations) console.log(`refused: ${v.field}: ${v.description}`);
}
copex.close();
