-- Full-text search: one row per record, the searched text in five columns
-- and a weighted tsvector over them (title A; terms and people B; summary
-- C; long text D) with a GIN index.
CREATE TABLE record_search (
    rowid BIGINT PRIMARY KEY REFERENCES records (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    summary TEXT NOT NULL,
    terms TEXT NOT NULL,
    people TEXT NOT NULL,
    body TEXT NOT NULL,
    -- Written as on SQLite, where searches filter by it; here the records
    -- table answers for visibility.
    audience TEXT NOT NULL,
    document tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', terms || ' ' || people), 'B')
        || setweight(to_tsvector('english', summary), 'C')
        || setweight(to_tsvector('english', body), 'D')
    ) STORED
);
CREATE INDEX record_search_document ON record_search USING GIN (document);

-- Which version of the searched fields the index holds (see the store).
ALTER TABLE hub ADD COLUMN search_version INTEGER NOT NULL DEFAULT 0;
