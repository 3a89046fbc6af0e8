//! What differs between the SQL databases the store runs on. The shared
//! logic (`records`, `partners`, `audit`, `feed_reads`) is generic over a
//! `Backend`; `sqlite.rs` and `postgres.rs` each implement it once.
//!
//! Beside this trait, the SQL text differs only in placeholders, row
//! locks and one aggregate (`sql::Dialect`).

use std::collections::HashMap;
use std::sync::Arc;

use super::read_bounds::ReadBounds;
use super::sql::Dialect;
use super::sql_filter::SqlParam;
use super::statements::SqlxDb;
use super::{FeedPage, StoredRecord};
use crate::domain::Result;

/// A connection of a backend's database (a transaction derefs to one).
pub type Conn<B> = <<B as Backend>::Db as sqlx::Database>::Connection;

/// A backend's pool of connections.
pub type Pool<B> = sqlx::Pool<<B as Backend>::Db>;

#[tonic::async_trait]
pub trait Backend: Send + Sync + Sized + 'static {
    /// The sqlx database.
    type Db: SqlxDb;

    /// The SQL dialect of the statements the shared logic builds.
    const DIALECT: Dialect;

    /// Whether writes go through a pool of their own beside the readers'
    /// (SQLite's single writer), for the pool metrics.
    const SEPARATE_WRITER: bool;

    /// Makes the read transaction just begun on `conn` read one snapshot
    /// (PostgreSQL's REPEATABLE READ; SQLite's deferred transactions do
    /// already).
    async fn begin_snapshot(conn: &mut Conn<Self>) -> Result<()>;

    /// Runs in a write transaction that moved the feed head to `head`, just
    /// before its commit: PostgreSQL announces the head to the other
    /// instances (NOTIFY is delivered on commit). Every backend advances
    /// its own `feed::Head` after the commit.
    async fn before_commit(conn: &mut Conn<Self>, head: i64) -> Result<()>;

    /// Arms `bounds` on the transaction of an expensive read, so that the
    /// database itself stops the statement: SQLite a progress handler,
    /// PostgreSQL a `statement_timeout` local to the transaction.
    async fn limit_reads(conn: &mut Conn<Self>, bounds: &Arc<ReadBounds>) -> Result<()>;

    /// Stops the statement of a bounded read whose call was dropped
    /// (PostgreSQL: `pg_cancel_backend`; SQLite's progress handler sees
    /// the stop by itself).
    fn cancel_running(pool: &Pool<Self>, bounds: &Arc<ReadBounds>);

    /// Get calls' reads (coalesced in `reads.rs`): records by name, with
    /// their recipients, on the backend's direct reads, outside sqlx's
    /// pool.
    async fn read_by_name(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>>;

    /// A page of the feed: the rows of `sql` (`sql::feed_query`, columns as
    /// `rows::feed_row` reads them) and the head, from one snapshot.
    async fn read_feed(
        &self,
        readers: &Pool<Self>,
        sql: String,
        params: Vec<SqlParam>,
    ) -> Result<FeedPage>;
}
