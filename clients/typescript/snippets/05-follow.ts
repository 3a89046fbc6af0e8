// Step 6: follow the change feed into your own store. The cursor is saved in
// copex-cursor.json only after your handler returns, so a restart resumes
// where it stopped. Stop with Ctrl-C.
import { ChangeType, connect, FileCursorStore } from "@copex/client";

const copex = connect();
const follower = copex.follower({
  store: new FileCursorStore("copex-cursor.json"),
  onChange: async (change) => {
    // Replace with writes to your database; keep them idempotent (upsert or
    // delete by name), or keep the cursor in the same transaction.
    if (change.type === ChangeType.UPSERTED) console.log("upsert", change.name);
    else console.log("remove", change.name); // DELETED, or UNSHARED with you
  },
  onResync: async (why) => {
    // The hub can no longer resume from the saved cursor (why.reason is
    // CURSOR_EXPIRED): drop your copy; the feed then replays every current record.
    console.log(`resync (${why.reason}): dropping the local copy`);
  },
  onCaughtUp: () => console.log("caught up; following live changes"),
});
process.on("SIGINT", () => follower.stop());
process.on("SIGTERM", () => follower.stop());
await follower.run();
copex.close();
