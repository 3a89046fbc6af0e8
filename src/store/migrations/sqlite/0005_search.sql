-- Full-text search: one row per record (rowid = records.id * 4 + kind), the
-- searched text in five columns ranked by bm25 with per-column weights,
-- English stemming (porter) as PostgreSQL's 'english' configuration does.
-- `audience` (who may see a restricted record, as tokens) lets a search
-- filter inside FTS5; see store/search.rs.
CREATE VIRTUAL TABLE record_search USING fts5 (
    title, summary, terms, people, body, audience,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

-- Which version of the searched fields the index holds; the store rebuilds
-- the index from the records when it is older than the code's.
ALTER TABLE hub ADD COLUMN search_version INTEGER NOT NULL DEFAULT 0;
