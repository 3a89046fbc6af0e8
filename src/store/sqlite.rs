//! The embedded SQLite backend: WAL, `synchronous=NORMAL`, one writer
//! connection beside a pool of readers (a deferred transaction that reads then
//! writes would otherwise fail with SQLITE_BUSY instead of waiting).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// The newest feed position, for watchers; sent after each commit.
    head: tokio::sync::watch::Sender<i64>,
}

impl SqliteStore {
    /// The writer is a pool of its own, beside the readers.
    const SEPARATE_WRITER: bool = true;

    pub async fn open(path: &Path, migrate: bool) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // A page cache of 64 MiB rather than 2: index pages of a large
            // catalogue stay in memory instead of being read back per batch.
            .pragma("cache_size", "-65536")
            // Checkpoint less often than every 4 MiB of WAL under batches.
            .pragma("wal_autocheckpoint", "8192")
            .page_size(8192);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|err| Error::Unavailable(format!("cannot open {}: {err}", path.display())))?;
        if migrate {
            sqlx::migrate!("src/store/migrations/sqlite")
                .run(&writer)
                .await
                .map_err(|err| Error::internal(format!("migration failed: {err}")))?;
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|err| Error::Unavailable(format!("cannot open {}: {err}", path.display())))?;
        let head: i64 = sqlx::query_scalar("SELECT feed_seq FROM hub WHERE singleton = 1")
            .fetch_one(&readers)
            .await
            .map_err(db_error)?;
        let store = Self {
            writer,
            readers,
            head: tokio::sync::watch::Sender::new(head),
        };
        if migrate {
            store.ensure_search_index().await?;
        }
        Ok(store)
    }

    /// A deferred SQLite transaction reads one snapshot already.
    async fn begin_snapshot(_tx: &mut Transaction<'static, sqlx::Sqlite>) -> Result<()> {
        Ok(())
    }

    /// One process writes an SQLite database: watchers are woken after the
    /// commit, in `write_records`.
    async fn before_commit(_tx: &mut Transaction<'static, sqlx::Sqlite>, _head: i64) -> Result<()> {
        Ok(())
    }
}

super::backend::sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    super::sql::Dialect::Sqlite
);
