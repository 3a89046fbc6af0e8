-- Search moves out of the database: each instance keeps a tantivy index in
-- its data directory that follows the shared change feed (src/search/), so
-- writes carry no full-text work.
DROP TABLE record_search;
ALTER TABLE hub DROP COLUMN search_version;
