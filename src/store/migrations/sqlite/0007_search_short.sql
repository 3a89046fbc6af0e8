-- The short columns (title, summary, terms, people) in an index of their
-- own, row ids as in record_search: a search that matches many records
-- ranks those with every word in them first, and matching there costs a
-- fraction of a column filter over the full index (see store/search.rs).
CREATE VIRTUAL TABLE record_search_short USING fts5 (
    title, summary, terms, people,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
-- The store rebuilds both indexes from the records at start.
UPDATE hub SET search_version = 0;
