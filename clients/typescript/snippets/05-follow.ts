// Step 6: follow the change feed into a local mirror, exactly once across
// crashes. FileCursorStore writes its `data` (any JSON value of yours, here
// the mirror: record name -> display name or title) atomically together with
// the cursor, after your handler returns; killed at any moment, a restart
// resumes from the last change it saved, losing or repeating none. The file is
// rewritten per change, which suits a small mirror; for a database, implement
// CursorStore and save the cursor in the same transaction as your writes.
// Stop with Ctrl-C.
import { ChangeType, connect, FileCursorStore } from "@copex/client";

const store = new FileCursorStore<Record<string, string>>("copex-mirror.json");
const copex = connect();
const follower = copex.follower({
  store,
  onChange: (change) => {
    // Change only store.data here: the follower saves it with this change's cursor.
    const mirror = (store.data ??= {});
    if (change.type === ChangeType.UPSERTED) {
      const record = change.record?.kind;
      mirror[change.name] = (record?.case === "tool" ? record.value.displayName : record?.value?.title) ?? "";
      console.log("upsert", change.name);
    } else {
      delete mirror[change.name]; // DELETED, or UNSHARED: you may no longer see it
      console.log("remove", change.name);
    }
  },
  onResync: (why) => {
    // The hub can no longer resume from the saved cursor (why.reason is
    // CURSOR_EXPIRED): drop your copy; the feed then replays every current record.
    console.log(`resync (${why.reason}): dropping the local copy`);
    store.data = {};
  },
  onCaughtUp: () => console.log(`caught up; following live changes (${Object.keys(store.data ?? {}).length} records mirrored)`),
});
process.on("SIGINT", () => follower.stop());
process.on("SIGTERM", () => follower.stop());
await follower.run();
copex.close();
