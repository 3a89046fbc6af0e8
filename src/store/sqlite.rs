//! The embedded SQLite backend: WAL, `synchronous=NORMAL`, one writer
//! connection beside a pool of readers (a deferred transaction that reads then
//! writes would otherwise fail with SQLITE_BUSY instead of waiting).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::kept::Kept;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// How long a statement waits for a lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader connections.
const READERS: u32 = 4;

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Get calls' reads, outside sqlx.
    point: PointReads,
    /// The newest feed position, for watchers; sent after each commit.
    head: tokio::sync::watch::Sender<i64>,
    checkpoints: tokio::task::AbortHandle,
}

impl Drop for SqliteStore {
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
/// under a sustained load the file grew past 1.7 GB for 100,000 records,
/// every frame written into new file space. Past `WAL_RESTART_FRAMES` a
/// RESTART checkpoint runs on the writer connection between two
/// transactions, and the next write starts the WAL again at its beginning
/// (BatchUpsertRecords 7.5-7.8k -> 8.7k records/s in the bench).
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

/// Reads of records by name on the calling thread, through connections of
/// their own (rusqlite, on the SQLite library sqlx links).
///
/// sqlx runs each SQLite connection on a thread of its own, so a statement
/// is a hand-off to that thread and back. For Get, whose read takes a few
/// microseconds, the hand-offs were most of the cost: hub CPU per GetTool
/// at concurrency 1 went from 196-201 µs to 130-141 with the read made here
/// (bench, 100,000 records). A read here holds the calling thread as long
/// as SQLite takes, like any work a call does; in WAL mode it never waits
/// for the writer.
struct PointReads {
    path: PathBuf,
    /// About one per thread that runs calls; a read opens another when none
    /// is idle.
    kept: Kept<rusqlite::Connection>,
}

impl PointReads {
    fn open(path: &Path) -> Result<Self> {
        let reads = Self {
            path: path.to_owned(),
            kept: Kept::new(4),
        };
        // The first now: a file it cannot open fails at start, not per call.
        reads.kept.put_back(reads.connect()?);
        Ok(reads)
    }

    fn connect(&self) -> Result<rusqlite::Connection> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags).map_err(point_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(point_error)?;
        Ok(conn)
    }

    fn read(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        let conn = match self.kept.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let found = Self::read_on(&conn, names);
        self.kept.put_back(conn);
        found
    }

    fn read_on(
        conn: &rusqlite::Connection,
        names: &[String],
    ) -> Result<HashMap<String, StoredRecord>> {
        let mut found = HashMap::with_capacity(names.len());
        for chunk in names.chunks(sql::NAMES_PER_STATEMENT) {
            let mut statement = conn
                .prepare_cached(&sql::Dialect::Sqlite.records_by_name(chunk.len()))
                .map_err(point_error)?;
            let mut rows = statement
                .query(rusqlite::params_from_iter(chunk))
                .map_err(point_error)?;
            while let Some(row) = rows.next().map_err(point_error)? {
                let mut record = super::backend::stored_record!(row, get, point_error);
                record.recipients =
                    super::backend::recipients(row.get("recipients").map_err(point_error)?);
                found.insert(record.name.clone(), record);
            }
        }
        Ok(found)
    }
}

/// As `backend::db_error`: the database's own text goes to the log only.
fn point_error(err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            super::backend::unreachable(&err)
        }
        _ => super::backend::failed(&err),
    }
}

impl SqliteStore {
    /// The writer is a pool of its own, beside the readers.
    const SEPARATE_WRITER: bool = true;
    /// Reads by name take microseconds on the calling thread
    /// (`PointReads`): nothing to share.
    const COALESCE_READS: bool = false;

    pub async fn open(path: &Path, migrate: bool) -> Result<Self> {
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
        // cost GetTool about a fifth of its time.
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
                .map_err(|err| Error::internal(format!("migration failed: {err}")))?;
        }
        // Readers keep SQLite's default cache of 2 MiB each: each connection
        // has its own, and the operating system caches the file for all.
        // Four: they serve lists, search and the feed; Get reads elsewhere
        // (`PointReads`).
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
        let point = PointReads::open(path)?;
        let checkpoints =
            tokio::spawn(checkpoint_in_background(readers.clone(), writer.clone())).abort_handle();
        let store = Self {
            writer,
            readers,
            point,
            head: tokio::sync::watch::Sender::new(head),
            checkpoints,
        };
        if migrate {
            store.ensure_search_index().await?;
        }
        Ok(store)
    }

    async fn read_by_name(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        self.point.read(names)
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
