"""The follower as a separate process, for the kill -9 test: applies every
change to a SQLite log in the same transaction as its cursor."""

import sys
import time

import copex_client as copex

profile, db, mode = sys.argv[1], sys.argv[2], sys.argv[3]
store = copex.SqliteCursorStore(db)
store.connection.execute("CREATE TABLE IF NOT EXISTS applied (seq INTEGER PRIMARY KEY, cursor TEXT, name TEXT, type INTEGER)")
store.connection.commit()


def apply(change: copex.sync_pb2.Change) -> None:
    # Not committed here: the follower commits it with the cursor.
    store.connection.execute(
        "INSERT INTO applied (cursor, name, type) VALUES (?, ?, ?)", (change.cursor, change.name, change.type)
    )
    time.sleep(0.002)


with copex.connect(profile=profile) as client:
    follower = copex.Follower(client, apply, store)
    print("following", flush=True)
    follower.run(until_caught_up=(mode == "once"))
