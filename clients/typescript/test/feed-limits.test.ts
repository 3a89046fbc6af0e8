// The follower against the hub's own limits: a cursor older than the
// tombstone retention (CURSOR_EXPIRED) and a watcher cut off for being slow
// (WATCHER_TOO_SLOW). Each hub here runs with short limits.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ChangeType, connect, MemoryCursorStore, type CopexError } from "../src/index.js";
import { Hub, tool } from "./support.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function listed(copex: ReturnType<typeof connect>): Promise<string[]> {
  const names: string[] = [];
  for await (const t of copex.listTools()) names.push(t.name);
  return names.sort();
}

test("a cursor past the tombstone retention: CURSOR_EXPIRED calls onResync, and the copy ends right", async () => {
  const hub = await new Hub(["--tombstone-retention", "1s"]).start();
  try {
    const ngo = hub.issue("ngo");
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
    await copex.batchUpsert([tool("ngo", "kept"), tool("ngo", "gone")]);
    const store = new MemoryCursorStore();
    await copex.follower({ store, onChange: () => undefined }).catchUp();
    const stale = store.cursor;

    await copex.tool.deleteTool({ name: "partners/ngo/tools/gone" });
    await copex.batchUpsert([tool("ngo", "later")]);
    await sleep(2500); // past the retention and the purge that follows it

    const copy = new Set<string>(["partners/ngo/tools/kept", "partners/ngo/tools/gone"]);
    const resyncs: CopexError[] = [];
    const follower = copex.follower({
      store,
      onChange: (c) => void (c.type === ChangeType.UPSERTED ? copy.add(c.name) : copy.delete(c.name)),
      onResync: (why) => {
        resyncs.push(why);
        copy.clear();
      },
    });
    await follower.catchUp();
    assert.equal(resyncs.length, 1, "one resync");
    assert.equal(resyncs[0].reason, "CURSOR_EXPIRED");
    assert.notEqual(store.cursor, stale);
    assert.deepEqual([...copy].filter((n) => n.includes("/tools/")).sort(), await listed(copex));
    copex.close();
  } finally {
    await hub.close();
  }
});

test("a watcher cut off as too slow (WATCHER_TOO_SLOW) resumes from its cursor and misses nothing", { timeout: 120_000 }, async () => {
  const hub = await new Hub(["--watch-stall-timeout", "200ms", "--watch-memory", "64KiB"]).start();
  try {
    const ngo = hub.issue("ngo");
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
    const copy = new Set<string>();
    const retries: CopexError[] = [];
    let caughtUp = false;
    let slow = true;
    const follower = copex.follower({
      store: new MemoryCursorStore(),
      onChange: async (c) => {
        // Stall on the first live change while the writes pile up at the hub.
        if (caughtUp && slow) {
          slow = false;
          await sleep(3000);
        }
        if (c.type === ChangeType.UPSERTED) copy.add(c.name);
        else copy.delete(c.name);
      },
      onCaughtUp: () => void (caughtUp = true),
      onRetry: (e) => void retries.push(e),
    });
    const running = follower.run();
    while (!caughtUp) await sleep(20);
    const long = "x".repeat(20_000);
    for (let round = 0; round < 10; round++) {
      await copex.batchUpsert(Array.from({ length: 50 }, (_, i) => tool("ngo", `w${round}-${i}`, { description: long })));
    }
    const want = await listed(copex);
    const deadline = Date.now() + 60_000;
    while ([...copy].sort().join() !== want.join()) {
      if (Date.now() > deadline) assert.fail(`the copy has ${copy.size} of ${want.length} records`);
      await sleep(50);
    }
    follower.stop();
    await running;
    assert.ok(
      retries.some((e) => e.reason === "WATCHER_TOO_SLOW"),
      `no WATCHER_TOO_SLOW among ${retries.map((e) => `${e.codeName} ${e.reason}`).join(", ")}`,
    );
    copex.close();
  } finally {
    await hub.close();
  }
});
