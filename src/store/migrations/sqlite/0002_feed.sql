-- The change feed. `feed_seq` is the position of the newest change; a
-- cursor below `purge_horizon` may have missed a purged tombstone.
ALTER TABLE hub ADD COLUMN feed_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hub ADD COLUMN purge_horizon INTEGER NOT NULL DEFAULT 0;

-- The log, compacted as it is written: one row per record holding its
-- latest change at its feed position. A tombstone (deleted = 1) stays until
-- the retention purges it.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    commit_time INTEGER NOT NULL,
    -- Until when every partner could see the record (CLEAR or GREEN):
    -- NULL if never, 9223372036854775807 while it still is.
    public_until INTEGER
);
CREATE INDEX changes_by_kind ON changes (kind, seq);
CREATE INDEX changes_tombstones ON changes (deleted, commit_time);

-- Partners that could see some version of a record: its owner and every
-- recipient it ever had. Decides who gets UNSHARED and DELETED.
CREATE TABLE record_audience (
    name TEXT NOT NULL,
    partner TEXT NOT NULL,
    PRIMARY KEY (name, partner)
) WITHOUT ROWID;

-- Answers of BatchUpsertRecords by request_id, kept 24 hours.
CREATE TABLE batch_requests (
    partner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    response BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (partner, request_id)
) WITHOUT ROWID;
CREATE INDEX batch_requests_by_time ON batch_requests (create_time);

-- Records written before the feed existed enter it in update order.
INSERT INTO changes (seq, name, kind, deleted, commit_time, public_until)
SELECT ROW_NUMBER() OVER (ORDER BY update_time, name), name, kind, 0, update_time,
       CASE WHEN tlp IN (3, 4, 5) THEN NULL ELSE 9223372036854775807 END
FROM records;
UPDATE hub SET feed_seq = (SELECT COALESCE(MAX(seq), 0) FROM changes);
INSERT INTO record_audience (name, partner) SELECT name, owner FROM records;
INSERT OR IGNORE INTO record_audience (name, partner)
SELECT r.name, x.partner FROM record_recipients x JOIN records r ON r.id = x.record;
