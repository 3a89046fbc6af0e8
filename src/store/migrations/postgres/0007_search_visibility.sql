-- Searches decide visibility from the restricted records the caller may
-- not see, read from this partial index, rather than by joining `records`
-- per match (see store/search.rs), as on SQLite.
CREATE INDEX records_restricted ON records (id) WHERE tlp IN (3, 4, 5);
