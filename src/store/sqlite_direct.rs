//! SQLite's direct reads: Get calls' reads and the feed's pages, through
//! rusqlite on read-only connections of their own, beside sqlx (both link
//! the one libsqlite3-sys). This is the only module that uses rusqlite.
//!
//! Why a second driver: sqlx runs each SQLite connection on a thread of its
//! own and hands every statement, and every row, over to it and back. For
//! a Get, whose read takes microseconds, the hand-offs were most of the
//! cost; for the feed's pages (500 changes of a few KiB each), copying each
//! row into an owned value and handing it over took as much as SQLite's
//! own work. Both moves were measured (Get's hub CPU per call and
//! ListChanges' records/s); the figures and how to reproduce them are in
//! `docs/performance.md`. In WAL mode these reads never wait for the
//! writer.
//!
//! Get's reads are batched (`reads.rs`) and run on the batching task's
//! thread; the feed's run on tokio's blocking threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::idle::IdleConnections;
use super::rows::{self, ReadRow, Value};
use super::sql_filter::SqlParam;
use super::{FeedPage, StoredRecord, sql};
use crate::domain::{Error, Result};

/// What rusqlite reads a column into (a bound of `rows::Value`).
pub trait DirectValue: rusqlite::types::FromSql {}

impl<T: rusqlite::types::FromSql> DirectValue for T {}

impl ReadRow for rusqlite::Row<'_> {
    fn get<T: Value>(&self, column: &str) -> Result<T> {
        rusqlite::Row::get(self, column).map_err(direct_error)
    }

    fn at<T: Value>(&self, index: usize) -> Result<T> {
        rusqlite::Row::get(self, index).map_err(direct_error)
    }
}

impl rusqlite::ToSql for SqlParam {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            SqlParam::Text(text) => ValueRef::Text(text.as_bytes()),
            SqlParam::Int(n) => ValueRef::Integer(*n),
            SqlParam::Null => ValueRef::Null,
            SqlParam::Bool(b) => ValueRef::Integer(i64::from(*b)),
            SqlParam::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

/// As `error::db_error`: the database's own text goes to the log only.
fn direct_error(err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            super::error::unreachable(&err)
        }
        _ => super::error::failed(&err),
    }
}

/// Read-only connections to one SQLite database.
pub struct DirectReads {
    path: PathBuf,
    busy_timeout: std::time::Duration,
    /// One for Get's batch of reads (one at a time, `reads.rs`), plus the
    /// feed's; a read opens another when none is idle.
    idle: IdleConnections<rusqlite::Connection>,
    /// Feed reads at once: a thousand watchers starting together must not
    /// take a thousand threads and connections.
    feed_slots: tokio::sync::Semaphore,
}

impl DirectReads {
    /// Opens the first connection now, so a file it cannot open fails at
    /// start rather than per call. `feed_reads` feed pages may be read at
    /// once.
    pub fn open(
        path: &Path,
        busy_timeout: std::time::Duration,
        feed_reads: usize,
    ) -> Result<Arc<Self>> {
        let reads = Self {
            path: path.to_owned(),
            busy_timeout,
            idle: IdleConnections::new(1 + feed_reads),
            feed_slots: tokio::sync::Semaphore::new(feed_reads),
        };
        reads.idle.put_back(reads.connect()?);
        Ok(Arc::new(reads))
    }

    fn connect(&self) -> Result<rusqlite::Connection> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            rusqlite::Connection::open_with_flags(&self.path, flags).map_err(direct_error)?;
        conn.busy_timeout(self.busy_timeout).map_err(direct_error)?;
        Ok(conn)
    }

    /// `read` on an idle connection, kept again afterwards.
    fn on_connection<T>(&self, read: impl FnOnce(&rusqlite::Connection) -> Result<T>) -> Result<T> {
        let conn = match self.idle.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let answer = read(&conn);
        self.idle.put_back(conn);
        answer
    }

    /// Records by name, with their recipients, on the calling thread.
    pub fn records(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        self.on_connection(|conn| {
            let mut found = HashMap::with_capacity(names.len());
            for chunk in names.chunks(sql::NAMES_PER_STATEMENT) {
                let mut statement = conn
                    .prepare_cached(&sql::Dialect::Sqlite.records_by_name(chunk.len()))
                    .map_err(direct_error)?;
                let mut found_rows = statement
                    .query(rusqlite::params_from_iter(chunk))
                    .map_err(direct_error)?;
                while let Some(row) = found_rows.next().map_err(direct_error)? {
                    let record = rows::record_with_recipients(row)?;
                    found.insert(record.name.clone(), record);
                }
            }
            Ok(found)
        })
    }

    /// A feed page (`sql::feed_query`) and the head, in one read
    /// transaction, on a blocking thread: it takes milliseconds.
    pub async fn feed(self: &Arc<Self>, sql: String, params: Vec<SqlParam>) -> Result<FeedPage> {
        let _slot = self.feed_slots.acquire().await.map_err(Error::internal)?;
        let reads = self.clone();
        tokio::task::spawn_blocking(move || {
            reads.on_connection(|conn| Self::feed_in_snapshot(conn, &sql, &params))
        })
        .await
        .map_err(Error::internal)?
    }

    fn feed_in_snapshot(
        conn: &rusqlite::Connection,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<FeedPage> {
        let tx = conn.unchecked_transaction().map_err(direct_error)?;
        let found = {
            let mut statement = tx.prepare_cached(sql).map_err(direct_error)?;
            // SQLite numbers `$N` parameters in the order they first appear
            // in the text, not by N: bind each by its name.
            for (n, param) in params.iter().enumerate() {
                let index = statement
                    .parameter_index(&format!("${}", n + 1))
                    .map_err(direct_error)?
                    .ok_or_else(|| Error::internal(format!("no parameter ${} in {sql}", n + 1)))?;
                statement
                    .raw_bind_parameter(index, param)
                    .map_err(direct_error)?;
            }
            let mut found_rows = statement.raw_query();
            let mut out = Vec::new();
            while let Some(row) = found_rows.next().map_err(direct_error)? {
                out.push(rows::feed_row(row)?);
            }
            out
        };
        let (head, purge_horizon) = tx
            .prepare_cached(sql::FEED_HEAD)
            .and_then(|mut head| head.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
            .map_err(direct_error)?;
        tx.commit().map_err(direct_error)?;
        Ok(FeedPage {
            rows: found,
            head,
            purge_horizon,
        })
    }
}
