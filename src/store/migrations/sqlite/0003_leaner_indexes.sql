-- Fewer B-trees per write. Filter values move to a table clustered on its
-- key (no rowid, no separate per-record index); a value that is not text is
-- stored with str = '' and one that is not a number with num = 0, which
-- filters never confuse since each field has one type.
CREATE TABLE record_values (
    record INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    str TEXT NOT NULL,
    num INTEGER NOT NULL,
    PRIMARY KEY (record, field, str, num)
) WITHOUT ROWID;
INSERT OR IGNORE INTO record_values (record, field, str, num)
SELECT record, field, COALESCE(str, ''), COALESCE(num, 0) FROM record_attrs;
DROP TABLE record_attrs;
ALTER TABLE record_values RENAME TO record_attrs;
CREATE INDEX record_attrs_by_str ON record_attrs (field, str);
CREATE INDEX record_attrs_by_num ON record_attrs (field, num);

-- The unique index on name already orders by name.
DROP INDEX records_by_name;

-- Only tombstones are looked up by time, to purge them.
DROP INDEX changes_tombstones;
CREATE INDEX changes_tombstones ON changes (commit_time) WHERE deleted = 1;
