-- Search moves out of the database: a tantivy index in the data directory
-- follows the change feed (src/search/), so writes carry no full-text work.
DROP TABLE record_search;
DROP TABLE record_search_short;
ALTER TABLE hub DROP COLUMN search_version;
