//! The embedded SQLite backend: WAL, `synchronous=NORMAL`, one writer
//! connection beside a pool of readers (a deferred transaction that reads then
//! writes would otherwise fail with SQLITE_BUSY instead of waiting).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::kept::Kept;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

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

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Get calls' and the feed's reads, outside sqlx.
    direct: Arc<DirectReads>,
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

/// Reads outside sqlx, through connections of their own (rusqlite, on the
/// SQLite library sqlx links).
///
/// sqlx runs each SQLite connection on a thread of its own and hands every
/// statement, and every row, to it and back. For Get, whose read takes a
/// few microseconds, the hand-offs were most of the cost: hub CPU per
/// GetTool at concurrency 1 went from 196-201 µs to 130-141 with the read
/// made on the calling thread (bench, 100,000 records); in WAL mode it
/// never waits for the writer. Get's reads are now batched (`reads.rs`)
/// and run on the batching task's thread. The feed's reads, 500 changes
/// of a few KiB each, run here too, on tokio's blocking threads: through
/// sqlx, copying each row into an owned value and handing it over took as
/// much as SQLite's own work.
struct DirectReads {
    path: PathBuf,
    /// One for Get's batch of reads (one at a time, `reads.rs`), plus the
    /// feed's; a read opens another when none is idle.
    kept: Kept<rusqlite::Connection>,
    /// Feed reads at once, as many as the sqlx readers: a thousand watchers
    /// starting together must not take a thousand threads and connections.
    feed_slots: tokio::sync::Semaphore,
}

impl DirectReads {
    fn open(path: &Path) -> Result<Self> {
        let reads = Self {
            path: path.to_owned(),
            kept: Kept::new(1 + READERS as usize),
            feed_slots: tokio::sync::Semaphore::new(READERS as usize),
        };
        // The first now: a file it cannot open fails at start, not per call.
        reads.kept.put_back(reads.connect()?);
        Ok(reads)
    }

    fn connect(&self) -> Result<rusqlite::Connection> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            rusqlite::Connection::open_with_flags(&self.path, flags).map_err(direct_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(direct_error)?;
        Ok(conn)
    }

    /// `read` on an idle connection, kept again afterwards.
    fn on_connection<T>(&self, read: impl FnOnce(&rusqlite::Connection) -> Result<T>) -> Result<T> {
        let conn = match self.kept.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let answer = read(&conn);
        self.kept.put_back(conn);
        answer
    }

    fn records(
        conn: &rusqlite::Connection,
        names: &[String],
    ) -> Result<HashMap<String, StoredRecord>> {
        let mut found = HashMap::with_capacity(names.len());
        for chunk in names.chunks(sql::NAMES_PER_STATEMENT) {
            let mut statement = conn
                .prepare_cached(&sql::Dialect::Sqlite.records_by_name(chunk.len()))
                .map_err(direct_error)?;
            let mut rows = statement
                .query(rusqlite::params_from_iter(chunk))
                .map_err(direct_error)?;
            while let Some(row) = rows.next().map_err(direct_error)? {
                let mut record = super::backend::stored_record!(row, get, direct_error);
                record.recipients =
                    super::backend::recipients(row.get("recipients").map_err(direct_error)?);
                found.insert(record.name.clone(), record);
            }
        }
        Ok(found)
    }

    /// A feed chunk and the head, in one read transaction (one snapshot).
    fn feed(conn: &rusqlite::Connection, sql: &str, params: &[SqlParam]) -> Result<FeedPage> {
        let tx = conn.unchecked_transaction().map_err(direct_error)?;
        let rows = {
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
            let mut rows = statement.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(direct_error)? {
                out.push(super::backend::feed_row!(row, get, direct_error)?);
            }
            out
        };
        let (head, purge_horizon) = tx
            .prepare_cached(sql::FEED_HEAD)
            .and_then(|mut head| head.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
            .map_err(direct_error)?;
        tx.commit().map_err(direct_error)?;
        Ok(FeedPage {
            rows,
            head,
            purge_horizon,
        })
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

/// As `backend::db_error`: the database's own text goes to the log only.
fn direct_error(err: rusqlite::Error) -> Error {
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

    pub async fn open(path: &Path, migrate: bool) -> Result<Self> {
        // SQLite would make the database with the umask's mode (0644 by
        // default) and its -wal and -shm files with the database's: made
        // here first, it is 0600 and so are they.
        crate::data_dir::create_private_file(path).map_err(|err| {
            Error::Unavailable(format!("cannot create {}: {err}", path.display()))
        })?;
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
                .map_err(super::migrate::refused)?;
        }
        // Readers keep SQLite's default cache of 2 MiB each: each connection
        // has its own, and the operating system caches the file for all.
        // Four: they serve lists and search; Get and the feed read elsewhere
        // (`DirectReads`).
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
        let direct = Arc::new(DirectReads::open(path)?);
        make_private(path)?;
        let checkpoints =
            tokio::spawn(checkpoint_in_background(readers.clone(), writer.clone())).abort_handle();
        let store = Self {
            writer,
            readers,
            direct,
            head: tokio::sync::watch::Sender::new(head),
            checkpoints,
        };
        Ok(store)
    }

    async fn read_by_name(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        self.direct
            .on_connection(|conn| DirectReads::records(conn, names))
    }

    /// A feed chunk (`DirectReads`), on a blocking thread: it takes
    /// milliseconds.
    async fn read_feed_rows(&self, sql: String, params: Vec<SqlParam>) -> Result<FeedPage> {
        let _slot = self
            .direct
            .feed_slots
            .acquire()
            .await
            .map_err(Error::internal)?;
        let direct = self.direct.clone();
        tokio::task::spawn_blocking(move || {
            direct.on_connection(|conn| DirectReads::feed(conn, &sql, &params))
        })
        .await
        .map_err(Error::internal)?
    }

    /// Arms `ReadBounds` on an expensive read's connection: a progress
    /// handler that interrupts the statement (SQLITE_INTERRUPT) once the
    /// bounds say stop. It is what makes the stop real: sqlx's connection
    /// thread goes on stepping a statement whose future was dropped.
    async fn limit_reads(
        conn: &mut sqlx::SqliteConnection,
        bounds: &Arc<super::backend::ReadBounds>,
    ) -> Result<()> {
        if bounds.should_stop() {
            return Err(bounds.ran_out());
        }
        let bounds = bounds.clone();
        conn.lock_handle()
            .await
            .map_err(db_error)?
            .set_progress_handler(super::backend::PROGRESS_OPS, move || !bounds.should_stop());
        Ok(())
    }

    /// The progress handler (`limit_reads`) sees the stop by itself.
    fn cancel_running(_pool: &SqlitePool, _bounds: &Arc<super::backend::ReadBounds>) {}

    /// A deferred SQLite transaction reads one snapshot already.
    async fn begin_snapshot(_conn: &mut sqlx::SqliteConnection) -> Result<()> {
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
