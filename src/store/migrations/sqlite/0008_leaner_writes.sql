-- Less written per record (measured on the bench's database: the two FTS5
-- content tables held a quarter of its pages, the two value indexes a
-- twelfth).
--
-- The search indexes become contentless: searches read only row ids and
-- bm25 from them (snippets come from the records), so the copy of the text
-- FTS5 kept beside each index was never read. `contentless_delete` keeps
-- DELETE by row id working.
DROP TABLE record_search;
DROP TABLE record_search_short;
CREATE VIRTUAL TABLE record_search USING fts5 (
    title, summary, terms, people, body,
    content = '', contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE record_search_short USING fts5 (
    title, summary, terms, people,
    content = '', contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
-- The store rebuilds both indexes from the records at start.
UPDATE hub SET search_version = 0;

-- Filters look values up per record (`a.record = r.id AND a.field = ..`),
-- which the primary key (record, field, str, num) answers; SQLite never
-- needs these two.
DROP INDEX record_attrs_by_str;
DROP INDEX record_attrs_by_num;
