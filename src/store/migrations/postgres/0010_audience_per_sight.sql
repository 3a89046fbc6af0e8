-- A partner that lost sight of a record learns nothing more about it (see
-- the SQLite migration of the same name): each audience row says at which
-- change its partner stopped seeing the record, NULL while it still does;
-- `changes` says the same of the partners that saw it while it was public.
ALTER TABLE record_audience
    ADD COLUMN lost_at BIGINT,
    ADD COLUMN lost_time BIGINT,
    ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE changes
    ADD COLUMN public_lost_at BIGINT,
    ADD COLUMN public_deleted BOOLEAN NOT NULL DEFAULT false;

DELETE FROM record_audience a WHERE NOT EXISTS (SELECT 1 FROM changes c WHERE c.name = a.name);
DELETE FROM record_audience a USING changes c
WHERE c.name = a.name AND c.public_until = 9223372036854775807;
INSERT INTO record_audience (name, partner)
SELECT name, owner FROM records WHERE tlp IN (3, 4, 5)
ON CONFLICT DO NOTHING;
INSERT INTO record_audience (name, partner)
SELECT r.name, x.partner FROM record_recipients x JOIN records r ON r.id = x.record
WHERE r.tlp IN (3, 4, 5)
ON CONFLICT DO NOTHING;
-- Everyone else lost sight at some change up to the record's current one;
-- which is not recorded, so the current one.
UPDATE record_audience a
SET lost_at = c.seq, lost_time = c.commit_time, deleted = c.deleted
FROM changes c
WHERE c.name = a.name
  AND NOT EXISTS (
      SELECT 1 FROM records r
      WHERE r.name = a.name AND r.tlp IN (3, 4, 5)
        AND (r.owner = a.partner OR EXISTS (
            SELECT 1 FROM record_recipients x WHERE x.record = r.id AND x.partner = a.partner)));
UPDATE changes
SET public_lost_at = seq, public_deleted = (deleted AND public_until = commit_time)
WHERE public_until IS NOT NULL AND public_until <> 9223372036854775807;

CREATE INDEX record_audience_lost ON record_audience (lost_at) WHERE lost_at IS NOT NULL;
