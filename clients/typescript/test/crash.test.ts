// kill -9 of a following client, again and again, while partners write: the
// mirror it keeps ends equal to what the hub lists, every change the feed
// holds was applied, and none twice.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { connect, type Change, type CopexClient } from "../src/index.js";
import { changeId } from "./follow-child.js";
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface State {
  cursor: string;
  data?: { records: Record<string, string>; applied: string[] };
}

function readState(path: string): State | undefined {
  if (!existsSync(path)) return undefined;
  return JSON.parse(readFileSync(path, "utf8")) as State;
}

function startChild(state: string): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "follow-child.ts"), state], {
    env: { ...process.env, COPEX_HUB: hub.url, COPEX_CA: hub.ca, COPEX_CERT: ngo.cert, COPEX_KEY: ngo.key, COPEX_PROFILE: "" },
    stdio: ["ignore", "ignore", "inherit"],
  });
  return child;
}

async function kill9(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) assert.fail(`the follower exited by itself with ${child.exitCode}`);
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
}

test("a follower killed with -9 mid-stream and restarted never loses or repeats a change", { timeout: 240_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "copex-ts-crash-"));
  const state = join(dir, "state.json");
  await copex.batchUpsert(Array.from({ length: 300 }, (_, i) => tool("ngo", `seed-${i}`)));

  // Writers keep going while the follower is killed and restarted.
  let writing = true;
  const writer = (async () => {
    for (let round = 0; writing && round < 60; round++) {
      await copex.batchUpsert(Array.from({ length: 20 }, (_, i) => tool("ngo", `r${round}-${i}`)));
      await copex.batchUpsert([tool("ngo", `seed-${round}`, { summary: `updated in round ${round}` })]);
      await copex.tool.deleteTool({ name: `partners/ngo/tools/seed-${100 + round}` });
      await sleep(50);
    }
  })();

  let child = startChild(state);
  let applied = 0;
  for (let kill = 0; kill < 4; kill++) {
    // Wait for progress, then kill it wherever it is.
    const target = applied + 60 + Math.floor(Math.random() * 60);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const now = readState(state)?.data?.applied.length ?? 0;
      if (now >= target) break;
      if (Date.now() > deadline) assert.fail(`the follower made no progress past ${now} changes`);
      await sleep(Math.random() * 20);
    }
    await kill9(child);
    applied = readState(state)?.data?.applied.length ?? 0;
    child = startChild(state);
  }
  writing = false;
  await writer;

  // Every change the feed holds now, read afresh.
  const feed: Change[] = [];
  for (let cursor = ""; ; ) {
    const page = await copex.sync.listChanges({ cursor, pageSize: 5000 });
    feed.push(...page.changes);
    cursor = page.nextCursor;
    if (page.caughtUp) break;
  }
  const listed: Record<string, string> = {};
  for await (const t of copex.listTools()) listed[t.name] = t.etag;

  const deadline = Date.now() + 60_000;
  let last: State | undefined;
  for (;;) {
    last = readState(state);
    const records = Object.fromEntries(Object.entries(last?.data?.records ?? {}).filter(([n]) => n.includes("/tools/")));
    if (JSON.stringify(Object.entries(records).sort()) === JSON.stringify(Object.entries(listed).sort())) break;
    if (Date.now() > deadline) {
      assert.deepEqual(records, listed, "the mirror never caught up with the hub");
    }
    await sleep(100);
  }
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));

  const appliedIds = last!.data!.applied;
  const duplicates = appliedIds.filter((id, i) => appliedIds.indexOf(id) !== i);
  assert.deepEqual(duplicates, [], "changes applied twice");
  const missing = feed.map(changeId).filter((id) => !appliedIds.includes(id));
  assert.deepEqual(missing, [], "changes of the feed never applied");
  assert.ok(appliedIds.length >= 300 + 4 * 60, `only ${appliedIds.length} changes applied`);
});
