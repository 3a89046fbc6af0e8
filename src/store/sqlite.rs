//! The embedded SQLite backend: WAL, `synchronous=NORMAL`, one writer
//! connection beside a pool of readers (a deferred transaction that reads then
//! writes would otherwise fail with SQLITE_BUSY instead of waiting).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::backend::Backend;
use super::error::db_error;
use super::read_bounds::{PROGRESS_OPS, ReadBounds};
use super::sql::Dialect;
use super::sql_filter::SqlParam;
use super::sql_store::SqlStore;
use super::sqlite_direct::DirectReads;
use super::{FeedPage, StoredRecord};
use crate::domain::{Error, Result};
use crate::feed::Head;

/// How long a statement waits for a lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader connections.
const READERS: u32 = 4;

/// Narrows a database an earlier version made (0644), and its -wal and -shm
/// files, which SQLite made with its mode, to 0600.
fn make_private(path: &Path) -> Result<()> {
    let sidecar = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    for file in [path.to_path_buf(), sidecar("-wal"), sidecar("-shm")] {
        let tightened =
            crate::data_dir::restrict(&file, crate::data_dir::FILE_MODE).map_err(|err| {
                Error::Unavailable(format!(
                    "cannot make {} private to this user: {err}",
                    file.display()
                ))
            })?;
        if tightened {
            tracing::warn!(
                path = %file.display(),
                "tightened permissions an earlier version left open: the database is for the hub's user only"
            );
        }
    }
    Ok(())
}

/// The SQLite store.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// What is SQLite's own: direct reads (rusqlite) and the WAL checkpoints.
pub struct SqliteBackend {
    /// Get calls' and the feed's reads, outside sqlx (`sqlite_direct`).
    direct: Arc<DirectReads>,
    checkpoints: tokio::task::AbortHandle,
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        self.checkpoints.abort();
    }
}

/// How often committed pages are copied from the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// WAL frames (pages of 8 KiB: 32 MiB) past which the WAL is restarted.
const WAL_RESTART_FRAMES: i64 = 4096;

/// Copies the WAL into the database beside the writer: a PASSIVE checkpoint
/// never waits for the writer or readers, it copies what it can.
///
/// The WAL starts over only when a write transaction begins after a
/// checkpoint has copied all of it, which never happens while writes follow
/// each other without a pause (each begins right after the last commit):
/// under a sustained load the file grows without bound, every frame
/// written into new file space. Past `WAL_RESTART_FRAMES` a RESTART
/// checkpoint runs on the writer connection between two transactions, and
/// the next write starts the WAL again at its beginning.
async fn checkpoint_in_background(readers: SqlitePool, writer: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The WAL's length at the last restart: until a write starts it over,
    // another restart would find nothing to do.
    let mut restarted_at = 0;
    loop {
        tick.tick().await;
        let frames = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&readers)
            .await;
        let log = match frames {
            Ok((_, log, _)) => log,
            Err(err) => {
                tracing::warn!(error = %err, "a WAL checkpoint failed");
                continue;
            }
        };
        if log > WAL_RESTART_FRAMES && log != restarted_at {
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&writer)
                .await
            {
                Ok((_, log, _)) => restarted_at = log,
                Err(err) => tracing::warn!(error = %err, "a WAL restart failed"),
            }
        }
    }
}

/// Opens (or makes) the database at `path`, migrating it unless told not to.
pub async fn open(path: &Path, migrate: bool) -> Result<SqliteStore> {
    // SQLite would make the database with the umask's mode (0644 by
    // default) and its -wal and -shm files with the database's: made
    // here first, it is 0600 and so are they.
    crate::data_dir::create_private_file(path)
        .map_err(|err| Error::Unavailable(format!("cannot create {}: {err}", path.display())))?;
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(db_error)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
        // No checkpoint inside a commit: one of a large WAL held up the
        // commit that crossed the threshold by 200 ms, and the watchers
        // waiting for it. `checkpoint_in_background` does it instead.
        .pragma("wal_autocheckpoint", "0")
        // Statement journals (multi-row upserts need them) stay in
        // memory rather than spilling to a temporary file.
        .pragma("temp_store", "MEMORY")
        .page_size(8192);
    // No ping before each use: an embedded file has no connection to
    // lose, and the ping is a round trip to the connection's thread that
    // costs a Get much of its time.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
        // A page cache of 16 MiB rather than 2: index pages of a large
        // catalogue stay in memory instead of being read back per batch.
        .connect_with(options.clone().pragma("cache_size", "-16384"))
        .await
        .map_err(|err| Error::Unavailable(format!("cannot open {}: {err}", path.display())))?;
    if migrate {
        sqlx::migrate!("src/store/migrations/sqlite")
            .run(&writer)
            .await
            .map_err(super::migrate::refused)?;
    }
    // Readers keep SQLite's default cache of 2 MiB each: each connection
    // has its own, and the operating system caches the file for all.
    // Four: they serve lists and search; Get and the feed read elsewhere
    // (`sqlite_direct`).
    let readers = SqlitePoolOptions::new()
        .max_connections(READERS)
        .min_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.row_buffer_size(1024))
        .await
        .map_err(|err| Error::Unavailable(format!("cannot open {}: {err}", path.display())))?;
    let head: i64 = sqlx::query_scalar("SELECT feed_seq FROM hub WHERE singleton = 1")
        .fetch_one(&readers)
        .await
        .map_err(db_error)?;
    let direct = DirectReads::open(path, BUSY_TIMEOUT, READERS as usize)?;
    make_private(path)?;
    let checkpoints =
        tokio::spawn(checkpoint_in_background(readers.clone(), writer.clone())).abort_handle();
    Ok(SqlStore::new(
        SqliteBackend {
            direct,
            checkpoints,
        },
        writer,
        readers,
        Head::new(head),
    ))
}

#[tonic::async_trait]
impl Backend for SqliteBackend {
    type Db = sqlx::Sqlite;
    const DIALECT: Dialect = Dialect::Sqlite;
    /// The one writer is a pool of its own, beside the readers.
    const SEPARATE_WRITER: bool = true;

    /// A deferred SQLite transaction reads one snapshot already.
    async fn begin_snapshot(_conn: &mut SqliteConnection) -> Result<()> {
        Ok(())
    }

    /// One process writes an SQLite database: its watchers are woken after
    /// the commit, and there is no one else to tell.
    async fn before_commit(_conn: &mut SqliteConnection, _head: i64) -> Result<()> {
        Ok(())
    }

    /// A progress handler that interrupts the statement (SQLITE_INTERRUPT)
    /// once the bounds say stop. It is what makes the stop real: sqlx's
    /// connection thread goes on stepping a statement whose future was
    /// dropped.
    async fn limit_reads(conn: &mut SqliteConnection, bounds: &Arc<ReadBounds>) -> Result<()> {
        if bounds.should_stop() {
            return Err(bounds.ran_out());
        }
        let bounds = bounds.clone();
        conn.lock_handle()
            .await
            .map_err(db_error)?
            .set_progress_handler(PROGRESS_OPS, move || !bounds.should_stop());
        Ok(())
    }

    /// The progress handler (`limit_reads`) sees the stop by itself.
    fn cancel_running(_pool: &SqlitePool, _bounds: &Arc<ReadBounds>) {}

    async fn read_by_name(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        self.direct.records(names)
    }

    async fn read_feed(
        &self,
        _readers: &SqlitePool,
        sql: String,
        params: Vec<SqlParam>,
    ) -> Result<FeedPage> {
        self.direct.feed(sql, params).await
    }
}
