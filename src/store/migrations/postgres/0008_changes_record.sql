-- Each change names the row of its record (NULL for a tombstone), so the
-- feed joins records by row id rather than by name (see the SQLite
-- migration of the same name).
ALTER TABLE changes ADD COLUMN record BIGINT;
UPDATE changes c SET record = r.id FROM records r WHERE r.name = c.name AND NOT c.deleted;
