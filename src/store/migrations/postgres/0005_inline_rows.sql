-- Rows up to 8 KB stay inline and uncompressed: search rows (the text and
-- its tsvector) and larger record rows passed the default target of 2 KB
-- and were compressed with pglz on every write (6% of the server's CPU
-- during batch upserts) and decompressed on every read.
ALTER TABLE records SET (toast_tuple_target = 8160);
ALTER TABLE record_search SET (toast_tuple_target = 8160);
