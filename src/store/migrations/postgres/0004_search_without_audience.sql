-- Searches no longer read an audience column on SQLite (see
-- store/search.rs); here the records table always answered for visibility.
ALTER TABLE record_search DROP COLUMN audience;
