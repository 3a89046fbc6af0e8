// A feed follower in a process of its own, for the crash test: it keeps a
// small mirror (name -> etag) and the identity of every change it applied in
// the same JSON file as its cursor, so each change is applied and stored at once.
// Usage: node --import tsx test/follow-child.ts STATE.json  (COPEX_* name the hub)

import { ChangeType, connect, FileCursorStore, type Change } from "../src/index.js";

interface State {
  records: Record<string, string>;
  applied: string[];
}

/** What identifies a change, whatever cursor it came with (cursors are sealed afresh on every answer). */
export function changeId(change: Change): string {
  const t = change.commitTime;
  const etag = change.record?.kind.value?.etag ?? "";
  return `${ChangeType[change.type]} ${change.name} ${t?.seconds}.${t?.nanos} ${etag}`;
}

async function main(): Promise<void> {
  const store = new FileCursorStore<State>(process.argv[2]);
  const copex = connect();
  const follower = copex.follower({
    store,
    onChange: (change) => {
      const state = (store.data ??= { records: {}, applied: [] });
      if (change.type === ChangeType.UPSERTED) state.records[change.name] = change.record?.kind.value?.etag ?? "";
      else delete state.records[change.name];
      state.applied.push(changeId(change));
    },
    onResync: () => {
      store.data = { records: {}, applied: [] };
    },
    onCaughtUp: () => console.log("caught up"),
  });
  process.on("SIGTERM", () => follower.stop());
  await follower.run();
  copex.close();
}

if (process.argv[2]) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
