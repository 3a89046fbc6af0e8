// The feed follower against a live hub: catch-up then live changes, resuming
// from the stored cursor, resync when the hub cannot resume, reconnecting
// after the hub restarts, and a failing handler stopping it.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ChangeType, Code, connect, CopexError, MemoryCursorStore, type Change, type CopexClient } from "../src/index.js";
import { Hub, tool, type Identity } from "./support.js";

let hub: Hub;
let ngo: Identity;
let copex: CopexClient;

before(async () => {
  hub = await new Hub().start();
  ngo = hub.issue("ngo");
  copex = connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
});
after(async () => {
  copex.close();
  await hub.close();
});

/** Resolves when `predicate` holds, checking every 20 ms; fails after `ms`. */
async function until(predicate: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const create = (id: string) => copex.tool.createTool({ parent: "partners/ngo", toolId: id, tool: { ...tool("ngo", id).kind.value, name: "" } });

test("catches up, then follows live changes; the cursor is stored after each change", async () => {
  for (const id of ["f-1", "f-2", "f-3"]) await create(id);
  // Logs handovers and saves, to show each change's cursor is stored right after its handler returns.
  const events: string[] = [];
  const store = new (class extends MemoryCursorStore {
    override async save(cursor: string) {
      events.push(`save ${cursor}`);
      await super.save(cursor);
    }
  })();
  const seen: Change[] = [];
  let caughtUp = 0;
  const follower = copex.follower({
    store,
    onChange: async (change) => {
      await new Promise((r) => setTimeout(r, 5));
      events.push(`change ${change.cursor}`);
      seen.push(change);
    },
    onCaughtUp: () => void caughtUp++,
  });
  const running = follower.run();
  await until(() => caughtUp === 1, "the catch-up");
  assert.deepEqual(
    seen.map((c) => c.name),
    ["partners/ngo/tools/f-1", "partners/ngo/tools/f-2", "partners/ngo/tools/f-3"],
  );
  assert.ok(seen.every((c) => c.type === ChangeType.UPSERTED && c.record?.kind.case === "tool"));

  await create("f-4");
  await copex.tool.deleteTool({ name: "partners/ngo/tools/f-1" });
  await until(() => seen.length === 5, "two live changes");
  assert.equal(seen[3].name, "partners/ngo/tools/f-4");
  assert.equal(seen[4].type, ChangeType.DELETED);
  await until(() => events.includes(`save ${seen[4].cursor}`), "the cursor after the last change");
  follower.stop();
  await running;
  events.forEach((event, i) => {
    if (event.startsWith("change ")) assert.equal(events[i + 1], `save ${event.slice(7)}`);
  });

  // A new follower from the stored cursor sees only what came after.
  await create("f-5");
  const later: string[] = [];
  let done!: () => void;
  const caught = new Promise<void>((r) => (done = r));
  const second = copex.follower({ store, onChange: (c) => void later.push(c.name), onCaughtUp: () => done() });
  const secondRun = second.run();
  await caught;
  second.stop();
  await secondRun;
  assert.deepEqual(later, ["partners/ngo/tools/f-5"]);
});

test("a cursor the hub cannot resume from calls the resync hook and replays from the start", async () => {
  const other = await new Hub().start();
  const foreign = connect({ hub: other.url, ca: other.ca, cert: other.admin.cert, key: other.admin.key, env: {} });
  const page = await foreign.sync.listChanges({ cursor: "" });
  foreign.close();
  await other.close();
  assert.notEqual(page.nextCursor, "");

  // Without a hook the follower stops with the hub's error.
  const store = new MemoryCursorStore();
  store.cursor = page.nextCursor;
  const stopped = await copex
    .follower({ store, onChange: () => undefined })
    .run()
    .then(() => undefined, (e: unknown) => e);
  assert.ok(stopped instanceof CopexError, String(stopped));
  assert.equal(store.cursor, page.nextCursor);

  const resyncs: CopexError[] = [];
  const names = new Set<string>();
  let done!: () => void;
  const caught = new Promise<void>((r) => (done = r));
  const follower = copex.follower({
    store,
    onChange: (c) => void (c.type === ChangeType.UPSERTED ? names.add(c.name) : names.delete(c.name)),
    onResync: (why) => {
      resyncs.push(why);
      names.clear();
    },
    onCaughtUp: () => done(),
  });
  const running = follower.run();
  await caught;
  follower.stop();
  await running;
  assert.equal(resyncs.length, 1);
  assert.ok(["CURSOR_FROM_OTHER_HUB", "CURSOR_EXPIRED"].includes(resyncs[0].reason) || resyncs[0].fieldViolations.some((v) => v.field === "cursor"));
  const listed: string[] = [];
  for await (const t of copex.listTools({ parent: "partners/ngo" })) listed.push(t.name);
  assert.deepEqual([...names].filter((n) => n.startsWith("partners/ngo/tools/")).sort(), listed.sort());
});

test("reconnects after the hub restarts and resumes where it stopped", async () => {
  const store = new MemoryCursorStore();
  const names: string[] = [];
  const retries: CopexError[] = [];
  let caughtUp = false;
  const follower = copex.follower({
    store,
    onChange: (c) => void names.push(c.name),
    onCaughtUp: () => void (caughtUp = true),
    onRetry: (e) => void retries.push(e),
  });
  const running = follower.run();
  await until(() => caughtUp, "the catch-up");
  const before = names.length;

  await hub.stop();
  await new Promise((r) => setTimeout(r, 500));
  await hub.start(hub.port);
  await create("after-restart");
  await until(() => names.includes("partners/ngo/tools/after-restart"), "the change made after the restart", 30_000);
  follower.stop();
  await running;
  assert.ok(retries.length >= 1);
  // A hub shutting down resets open streams (CANCELLED), then refuses connections (UNAVAILABLE).
  assert.ok(
    retries.every((e) => e.code === Code.Unavailable || e.code === Code.Canceled),
    retries.map((e) => `${e.name} ${e.codeName} ${e.reason} ${e.message}`).join("; "),
  );
  assert.equal(names.length, before + 1, "nothing repeated, nothing lost");
});

test("a handler that throws stops the follower, and its change's cursor is not stored", async () => {
  const store = new MemoryCursorStore();
  const boom = new Error("disk full");
  let first = "";
  const err = await copex
    .follower({
      store,
      onChange: (c) => {
        if (first === "") {
          first = c.cursor;
          return;
        }
        throw boom;
      },
    })
    .run()
    .catch((e: unknown) => e);
  assert.equal(err, boom);
  assert.equal(store.cursor, first);
});
