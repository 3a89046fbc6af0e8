//! The change feed and batch upserts.
