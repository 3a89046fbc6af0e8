//! How long an expensive read (a filtered list, a filtered search, a
//! filtered audit list) may hold a database connection, and the connection
//! it runs on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;

use super::backend::{Backend, Conn};
use super::error::db_error;
use crate::domain::{Error, Result};

/// How long one expensive read may run when its call has no deadline (or a
/// later one): a partner that sets none, or hangs up, cannot hold a
/// database connection for longer.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(10);

/// VM instructions between two looks of SQLite's progress handler at
/// `ReadBounds`: some tens of microseconds.
pub const PROGRESS_OPS: i32 = 10_000;

/// When an expensive read (a filtered list, a search, a filtered audit
/// list) must stop: at its call's deadline, or `MAX_QUERY_TIME` after it
/// began, or as soon as its call is dropped (the client cancelled, or the
/// call layer answered DEADLINE_EXCEEDED).
///
/// Dropping the future of a statement does not stop the database: SQLite
/// goes on stepping it on sqlx's connection thread, PostgreSQL goes on
/// running it, and the pool connection stays busy until it ends. So each
/// backend arms the database itself (`limit_reads`): SQLite a progress
/// handler that asks `should_stop` every `PROGRESS_OPS` instructions and
/// interrupts the statement; PostgreSQL a `statement_timeout` of the time
/// left, local to the read's transaction, and `pg_cancel_backend` when the
/// call is dropped before it.
#[derive(Debug)]
pub struct ReadBounds {
    pub until: Instant,
    /// Whether `until` is the client's deadline rather than the hub's cap.
    client_deadline: bool,
    /// The call was dropped before its read finished.
    stopped: AtomicBool,
    /// The read finished: a progress handler left on the connection must
    /// no longer stop anything.
    finished: AtomicBool,
    /// PostgreSQL's process serving the read, to cancel; 0 before known.
    pub backend_pid: AtomicI32,
}

impl ReadBounds {
    /// The bounds of a read made now, for the call this task serves.
    pub fn for_this_call() -> Self {
        let now = Instant::now();
        let cap = now + MAX_QUERY_TIME;
        let (until, client_deadline) = match crate::telemetry::call_deadline() {
            Some(deadline) if deadline < cap => (deadline, true),
            _ => (cap, false),
        };
        Self {
            until,
            client_deadline,
            stopped: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            backend_pid: AtomicI32::new(0),
        }
    }

    /// Whether the database should stop the read now.
    pub fn should_stop(&self) -> bool {
        !self.finished.load(Ordering::Relaxed)
            && (self.stopped.load(Ordering::Relaxed) || Instant::now() >= self.until)
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Time left, for PostgreSQL's `statement_timeout`.
    pub fn remaining(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// The read's outcome, an error named for the bound it ran into when
    /// it was stopped.
    pub fn outcome<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match result {
            Err(_) if Instant::now() >= self.until => Err(self.ran_out()),
            other => other,
        }
    }

    pub fn ran_out(&self) -> Error {
        if self.client_deadline {
            Error::DeadlineExceeded {
                reason: "CALL_DEADLINE",
                message: "the client's deadline passed before the call finished".into(),
            }
        } else {
            Error::DeadlineExceeded {
                reason: "QUERY_TOO_LONG",
                message: format!(
                    "the query ran longer than the hub allows one query ({} s); narrow the filter or the search",
                    MAX_QUERY_TIME.as_secs()
                ),
            }
        }
    }
}

/// A reader connection for one expensive read, stopped as `ReadBounds`
/// says. When it is dropped before `finish`, the read is stopped and the
/// connection closed rather than reused: it may still be busy with the
/// statement, and on SQLite it carries a progress handler that would stop
/// the next one.
pub struct Bounded<B: Backend> {
    conn: PoolConnection<B::Db>,
    bounds: Arc<ReadBounds>,
    pool: sqlx::Pool<B::Db>,
}

impl<B: Backend> Bounded<B> {
    pub async fn acquire(pool: &sqlx::Pool<B::Db>) -> Result<Self> {
        let bounds = Arc::new(ReadBounds::for_this_call());
        let conn = pool.acquire().await.map_err(db_error)?;
        Ok(Self {
            conn,
            bounds,
            pool: pool.clone(),
        })
    }

    /// Runs `read` in a transaction on this connection with the bounds
    /// armed (`Backend::limit_reads`); its error is named for the bound it
    /// ran into when it was stopped.
    pub async fn read<T, F>(mut self, read: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut Conn<B>) -> BoxFuture<'c, Result<T>>,
    {
        let bounds = self.bounds.clone();
        let result = async {
            let mut tx = sqlx::Connection::begin(&mut *self.conn)
                .await
                .map_err(db_error)?;
            B::limit_reads(&mut *tx, &bounds).await?;
            let value = read(&mut *tx).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(value)
        }
        .await;
        let value = bounds.outcome(result)?;
        self.bounds.finish();
        Ok(value)
    }
}

impl<B: Backend> Drop for Bounded<B> {
    fn drop(&mut self) {
        if !self.bounds.finished() {
            self.bounds.stop();
            self.conn.close_on_drop();
            B::cancel_running(&self.pool, &self.bounds);
        }
    }
}
