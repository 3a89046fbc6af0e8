-- A partner that lost sight of a record learns nothing more about it. Each
-- audience row says whether its partner still sees the record (`lost_at`
-- NULL) or at which change it stopped (`lost_at`, `lost_time`, and whether
-- that change `deleted` the record): the feed tells a caller once, when its
-- cursor is before `lost_at`, and later edits tell it nothing. Rows are
-- kept only while the record is restricted (every partner sees a public
-- one); `changes` says the same of the partners that saw it while it was
-- public (`public_until`, `public_lost_at`, `public_deleted`).
ALTER TABLE record_audience ADD COLUMN lost_at INTEGER;
ALTER TABLE record_audience ADD COLUMN lost_time INTEGER;
ALTER TABLE record_audience ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE changes ADD COLUMN public_lost_at INTEGER;
ALTER TABLE changes ADD COLUMN public_deleted INTEGER NOT NULL DEFAULT 0;

DELETE FROM record_audience WHERE name NOT IN (SELECT name FROM changes);
DELETE FROM record_audience
WHERE name IN (SELECT name FROM changes WHERE public_until = 9223372036854775807);
INSERT OR IGNORE INTO record_audience (name, partner)
SELECT name, owner FROM records WHERE tlp IN (3, 4, 5);
INSERT OR IGNORE INTO record_audience (name, partner)
SELECT r.name, x.partner FROM record_recipients x JOIN records r ON r.id = x.record
WHERE r.tlp IN (3, 4, 5);
-- Everyone else lost sight at some change up to the record's current one;
-- which is not recorded, so the current one: callers before it are told,
-- as before this migration, and those past it nothing more.
UPDATE record_audience
SET lost_at = c.seq, lost_time = c.commit_time, deleted = c.deleted
FROM changes c
WHERE c.name = record_audience.name
  AND NOT EXISTS (
      SELECT 1 FROM records r
      WHERE r.name = record_audience.name AND r.tlp IN (3, 4, 5)
        AND (r.owner = record_audience.partner OR EXISTS (
            SELECT 1 FROM record_recipients x
            WHERE x.record = r.id AND x.partner = record_audience.partner)));
-- Likewise for records public once: the loss was a delete if it came at the
-- tombstone's time.
UPDATE changes
SET public_lost_at = seq, public_deleted = (deleted AND public_until = commit_time)
WHERE public_until IS NOT NULL AND public_until <> 9223372036854775807;

-- Rows of partners that lost sight are pruned once the purge horizon
-- passes them (no cursor before it is taken).
CREATE INDEX record_audience_lost ON record_audience (lost_at) WHERE lost_at IS NOT NULL;
