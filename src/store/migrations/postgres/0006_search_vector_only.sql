-- The search index keeps only the tsvector. Searches never read the text
-- columns (snippets come from the records), and storing them beside the
-- tsvector doubled what each write put in the heap and the WAL. Writes now
-- compute the same weighted document from the text they bind
-- (store/search.rs).
DROP TABLE record_search;
CREATE TABLE record_search (
    rowid BIGINT PRIMARY KEY REFERENCES records (id) ON DELETE CASCADE,
    document tsvector NOT NULL
);
ALTER TABLE record_search SET (toast_tuple_target = 8160);
CREATE INDEX record_search_document ON record_search USING GIN (document);
-- The store rebuilds the index from the records at start.
UPDATE hub SET search_version = 0;
