// Calls through the library against a live hub: errors with their details,
// paging of List and Search, and batchUpsert's chunks and report.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { BatchUpsertError, Code, connect, CopexError, RecordKind, type CopexClient } from "../src/index.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { Hub, tool } from "./support.js";

let hub: Hub;
let copex: CopexClient;
let admin: CopexClient;

before(async () => {
  hub = await new Hub().start();
  const ngo = hub.issue("ngo");
  copex = connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
  admin = connect({ hub: hub.url, ca: hub.ca, cert: hub.admin.cert, key: hub.admin.key, env: {} });
});
after(async () => {
  copex.close();
  admin.close();
  await hub.close();
});

const all = async <T>(items: AsyncIterable<T>): Promise<T[]> => {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
};

test("a request over the hub's size limit: RESOURCE_EXHAUSTED, REQUEST_TOO_LARGE, not retryable", async () => {
  const huge = "x".repeat(5 * 1024 * 1024);
  await assert.rejects(
    copex.tool.createTool({ parent: "partners/ngo", toolId: "huge", tool: { ...tool("ngo", "huge").kind.value, name: "", description: huge } }),
    (err: unknown) => {
      assert.ok(err instanceof CopexError, String(err));
      assert.equal(err.code, Code.ResourceExhausted);
      assert.equal(err.reason, "REQUEST_TOO_LARGE");
      assert.equal(err.retryable, false);
      return true;
    },
  );
});

test("a malformed record is a CopexError with the field violations, and nothing is created", async () => {
  const before = await all(copex.listTools({ parent: "partners/ngo" }));
  await assert.rejects(
    copex.tool.createTool({ parent: "partners/ngo", toolId: "bad", tool: { displayName: "No sharing" } }),
    (err: unknown) => {
      assert.ok(err instanceof CopexError);
      assert.equal(err.code, Code.InvalidArgument);
      assert.equal(err.codeName, "INVALID_ARGUMENT");
      assert.equal(err.reason, "INVALID_FIELD");
      assert.deepEqual(
        err.fieldViolations.map((v) => v.field),
        ["tool.sharing.tlp"],
      );
      assert.equal(err.retryable, false);
      return true;
    },
  );
  assert.deepEqual(await all(copex.listTools({ parent: "partners/ngo" })), before);
  await assert.rejects(copex.tool.getTool({ name: "partners/ngo/tools/bad" }), (err: unknown) => {
    assert.ok(err instanceof CopexError);
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.reason, "RESOURCE_NOT_FOUND");
    return true;
  });
});

test("writing under another partner's name is PERMISSION_DENIED with a reason", async () => {
  await assert.rejects(
    copex.tool.createTool({ parent: "partners/admin", tool: tool("admin", "x").kind.value }),
    (err: unknown) => err instanceof CopexError && err.code === Code.PermissionDenied && err.reason !== "",
  );
});

test("listTools and searchHits page through every item exactly once", async () => {
  for (let i = 0; i < 7; i++) {
    await copex.tool.createTool({
      parent: "partners/ngo",
      toolId: `pager-${i}`,
      tool: { ...tool("ngo", `pager-${i}`).kind.value, name: "", displayName: `Pager zebrafinch ${i}` },
    });
  }
  const listed = await all(copex.listTools({ parent: "partners/ngo", filter: 'display_name >= "Pager"', pageSize: 3, orderBy: "name" }));
  assert.deepEqual(
    listed.map((t) => t.name),
    [0, 1, 2, 3, 4, 5, 6].map((i) => `partners/ngo/tools/pager-${i}`),
  );
  // The index follows the feed within about a second.
  let hits: string[] = [];
  for (let attempt = 0; attempt < 50 && hits.length < 7; attempt++) {
    await new Promise((r) => setTimeout(r, 100));
    hits = (await all(copex.searchHits({ query: "zebrafinch", kinds: [RecordKind.TOOL], pageSize: 2 }))).map((h) =>
      h.record?.kind.case === "tool" ? h.record.kind.value.name : "",
    );
  }
  assert.equal(hits.length, 7);
  assert.equal(new Set(hits).size, 7);
  const partners = await all(admin.listPartners({ pageSize: 1 }));
  assert.deepEqual(partners.map((p) => p.name).sort(), ["partners/admin", "partners/ngo"]);
});

test("a negative page size is INVALID_ARGUMENT from the helper too", async () => {
  await assert.rejects(all(copex.listTools({ pageSize: -1 })), (err: unknown) => err instanceof CopexError && err.code === Code.InvalidArgument);
});

test("batchUpsert chunks to 1,000, reports every item, and a repeat is UNCHANGED", async () => {
  const records = Array.from({ length: 2100 }, (_, i) => tool("ngo", `batch-${i}`));
  const chunks: number[] = [];
  const report = await copex.batchUpsert(records, { onChunk: (items) => void chunks.push(items.length) });
  assert.deepEqual(chunks, [1000, 1000, 100]);
  assert.equal(report.created, 2100);
  assert.equal(report.failed, 0);
  assert.equal(report.items.length, 2100);
  assert.deepEqual(
    report.items.slice(0, 2).map((i) => [i.index, i.name, i.outcome]),
    [
      [0, "partners/ngo/tools/batch-0", "CREATED"],
      [1, "partners/ngo/tools/batch-1", "CREATED"],
    ],
  );
  assert.ok(report.items.every((i) => i.etag !== ""));

  // One changed, one invalid, the rest as before; smaller chunks.
  const again = records.slice(0, 10);
  again[3] = tool("ngo", "batch-3", { summary: "changed" });
  again[5] = tool("ngo", "batch-5", { sharing: {} });
  const second = await copex.batchUpsert(again, { chunkSize: 4 });
  assert.deepEqual(
    [second.created, second.updated, second.unchanged, second.failed],
    [0, 1, 8, 1],
  );
  const failed = second.items[5];
  assert.equal(failed.outcome, "FAILED");
  assert.ok(failed.error instanceof CopexError);
  assert.equal(failed.error.code, Code.InvalidArgument);
  assert.deepEqual(
    failed.error.fieldViolations.map((v) => v.field),
    ["tool.sharing.tlp"],
  );
  assert.equal(second.items[3].outcome, "UPDATED");

  const stored = await copex.tool.getTool({ name: "partners/ngo/tools/batch-5" });
  assert.equal(stored.summary, "test tool batch-5");
  await assert.rejects(copex.batchUpsert(records, { chunkSize: 1001 }), RangeError);
});

test("an item under another partner's name fails alone, with its reason", async () => {
  const report = await copex.batchUpsert([tool("ngo", "ok-1"), tool("ngo", "ok-2"), tool("admin", "not-mine")], { chunkSize: 2 });
  assert.deepEqual(
    report.items.map((i) => i.outcome),
    ["CREATED", "CREATED", "FAILED"],
  );
  assert.equal(report.items[2].error?.code, Code.PermissionDenied);
  assert.equal(report.items[2].error?.reason, "NOT_OWNER");
  await assert.rejects(copex.tool.getTool({ name: "partners/admin/tools/not-mine" }), (e: unknown) => e instanceof CopexError && e.code === Code.NotFound);
});

test("a batch the hub refuses as a whole is a BatchUpsertError saying where it stopped", async () => {
  const who = hub.issue("reader", { role: "reader" });
  const reader = connect({ hub: hub.url, ca: hub.ca, cert: who.cert, key: who.key, env: {} });
  const err = await reader.batchUpsert([tool("reader", "a"), tool("reader", "b")]).catch((e: unknown) => e);
  reader.close();
  assert.ok(err instanceof BatchUpsertError, String(err));
  assert.equal(err.firstUnsent, 0);
  assert.equal(err.report.items.length, 0);
  assert.equal(err.cause.code, Code.PermissionDenied);
  assert.equal(err.cause.retryable, false);
});

test("retryable: the codes worth repeating, except the reasons the same request meets again", () => {
  const error = (code: Code, reason = "") =>
    new CopexError("m", code, { fieldViolations: [], errorInfo: reason ? create(ErrorInfoSchema, { reason, domain: "copex" }) : undefined });
  for (const code of [Code.Unavailable, Code.ResourceExhausted, Code.DeadlineExceeded]) assert.equal(error(code).retryable, true, Code[code]);
  assert.equal(error(Code.DeadlineExceeded, "SEARCH_INDEX_BEHIND").retryable, true);
  assert.equal(error(Code.DeadlineExceeded, "QUERY_TOO_LONG").retryable, false);
  assert.equal(error(Code.ResourceExhausted, "REQUEST_TOO_LARGE").retryable, false);
  for (const code of [Code.InvalidArgument, Code.NotFound, Code.Aborted, Code.PermissionDenied, Code.Internal]) {
    assert.equal(error(code).retryable, false, Code[code]);
  }
});
