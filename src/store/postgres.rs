//! The PostgreSQL backend, for several stateless hub instances on one
//! database.
//!
//! The feed stays gap-free across instances because a writer takes its feed
//! positions by updating the one `hub` row late in its transaction: the row
//! lock is held until commit, so the next writer gets later positions only
//! after this one's are committed. A plain sequence would not do: its values
//! are visible before their transactions commit, so a reader could pass a
//! position that commits later. Readers take the rows and the head from one
//! REPEATABLE READ snapshot.
//!
//! Other instances' commits wake local watchers through LISTEN/NOTIFY; a
//! notification is only a hint (lost while the listener reconnects), so the
//! head is also polled every second.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};

use super::backend::Backend;
use super::error::db_error;
use super::idle::IdleConnections;
use super::read_bounds::ReadBounds;
use super::records::records_in;
use super::sql::Dialect;
use super::sql_filter::SqlParam;
use super::sql_store::SqlStore;
use super::{FeedPage, StoredRecord, feed_reads};
use crate::domain::{Error, Result};
use crate::feed::Head;

/// The channel commits are announced on.
const CHANNEL: &str = "copex_feed";
const POLL: Duration = Duration::from_secs(1);

/// The connection for Get reads, outside the pool (`IdleConnections`); one
/// batch reads at a time (`store/reads.rs`). sqlx pings every connection
/// that goes back to its pool, a round trip as long as the read itself
/// (`docs/performance.md`).
struct DirectReads {
    options: PgConnectOptions,
    idle: IdleConnections<PgConnection>,
}

impl DirectReads {
    /// An idle connection, or a new one; true when it was idle.
    async fn take(&self) -> Result<(PgConnection, bool)> {
        match self.idle.take() {
            Some(conn) => Ok((conn, true)),
            None => Ok((self.connect().await?, false)),
        }
    }

    async fn connect(&self) -> Result<PgConnection> {
        // As the pool's: UNAVAILABLE rather than a hang.
        tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&self.options))
            .await
            .map_err(|elapsed| super::error::unreachable(&elapsed))?
            .map_err(db_error)
    }
}

/// How long a call waits for a connection before UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time after which a pooled connection is pinged before use.
const PING_WHEN_IDLE: Duration = Duration::from_secs(1);

/// The PostgreSQL store.
pub type PgStore = SqlStore<PostgresBackend>;

/// What is PostgreSQL's own: direct reads for Get, and the task that
/// follows other instances' commits.
pub struct PostgresBackend {
    direct: DirectReads,
    follower: tokio::task::AbortHandle,
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Connects to the database at `url` with a pool of `max_connections`,
/// migrating it unless told not to.
pub async fn open(url: &str, max_connections: u32, migrate: bool) -> Result<PgStore> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|err| {
            Error::Unavailable(format!(
                "the database URL is not valid: {}",
                redact(&err.to_string())
            ))
        })?
        // LLVM compiles a costly filter's plan (hundreds of subplans)
        // for tens of seconds without looking at statement_timeout or
        // a cancel, so a call past its deadline would keep a backend
        // busy; the hub's statements are short and gain nothing from it.
        .options([("jit", "off")]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        // Calls fail with UNAVAILABLE while the database is down rather
        // than hang.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings a connection when it goes back to the pool, and by
        // default again when it is taken out: a round trip of its own
        // before every statement. Only a connection that sat idle long
        // enough for the server to have gone away is pinged before use.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|err| {
            Error::Unavailable(format!(
                "cannot connect to PostgreSQL: {}",
                redact(&err.to_string())
            ))
        })?;
    if migrate {
        sqlx::migrate!("src/store/migrations/postgres")
            .run(&pool)
            .await
            .map_err(super::migrate::refused)?;
    }
    let head: i64 = sqlx::query_scalar("SELECT feed_seq FROM hub WHERE singleton = 1")
        .fetch_one(&pool)
        .await
        .map_err(db_error)?;
    let head = Head::new(head);
    let follower = tokio::spawn(follow_other_instances(pool.clone(), head.clone())).abort_handle();
    Ok(SqlStore::new(
        PostgresBackend {
            direct: DirectReads {
                options,
                idle: IdleConnections::new(1),
            },
            follower,
        },
        pool.clone(),
        pool,
        head,
    ))
}

#[tonic::async_trait]
impl Backend for PostgresBackend {
    type Db = sqlx::Postgres;
    const DIALECT: Dialect = Dialect::Postgres;
    /// PostgreSQL has no single-writer rule: one pool serves both.
    const SEPARATE_WRITER: bool = false;

    async fn begin_snapshot(conn: &mut PgConnection) -> Result<()> {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(db_error)
    }

    /// Announces the new head to every instance; delivered on commit.
    async fn before_commit(conn: &mut PgConnection, head: i64) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(head.to_string())
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(db_error)
    }

    /// A `statement_timeout` of the time left, local to the transaction, so
    /// PostgreSQL stops the statement itself at the deadline; and the
    /// backend's process id, for `cancel_running` when the call ends sooner
    /// (the client hung up). One round trip.
    async fn limit_reads(conn: &mut PgConnection, bounds: &Arc<ReadBounds>) -> Result<()> {
        if bounds.should_stop() {
            return Err(bounds.ran_out());
        }
        // At least 1 ms: 0 would turn the timeout off.
        let ms = bounds.remaining().as_millis().clamp(1, i32::MAX as u128);
        let pid: i32 = sqlx::query_scalar(
            "SELECT pg_backend_pid() FROM (SELECT set_config('statement_timeout', $1, true)) AS s",
        )
        .bind(ms.to_string())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
        bounds
            .backend_pid
            .store(pid, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Cancels the statement of a read whose call was dropped: closing the
    /// connection would not stop it, PostgreSQL notices a client gone only
    /// when it sends. The connection is closed, not reused (`Bounded`), so
    /// the cancel cannot hit another call's statement.
    fn cancel_running(pool: &PgPool, bounds: &Arc<ReadBounds>) {
        let pid = bounds
            .backend_pid
            .load(std::sync::atomic::Ordering::Relaxed);
        if pid == 0 {
            return;
        }
        let pool = pool.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %err, "a dropped call's statement was not cancelled");
                }
            });
        }
    }

    /// On the direct reads' connection. A connection kept from an earlier
    /// read may have died with a restart of the server: the read is tried
    /// once more on a new one.
    async fn read_by_name(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        let (mut conn, reused) = self.direct.take().await?;
        let mut found = records_in::<Self>(&mut conn, names).await;
        if reused && matches!(found, Err(Error::Unavailable(_))) {
            conn = self.direct.connect().await?;
            found = records_in::<Self>(&mut conn, names).await;
        }
        if found.is_ok() {
            self.direct.idle.put_back(conn);
        }
        found
    }

    /// Through the reader pool, in one REPEATABLE READ snapshot.
    async fn read_feed(
        &self,
        readers: &PgPool,
        sql: String,
        params: Vec<SqlParam>,
    ) -> Result<FeedPage> {
        feed_reads::page::<Self>(readers, sql, params).await
    }
}

/// Connection errors can quote the URL; keep a password out of logs.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…{}", &text[..scheme], &text[at..])
        }
        _ => text.to_owned(),
    }
}

/// Moves the local head forward when any instance commits, until the store
/// is dropped (which aborts this task).
async fn follow_other_instances(pool: PgPool, head: Head) {
    let mut listener: Option<PgListener> = None;
    let mut poll = tokio::time::interval(POLL);
    loop {
        if listener.is_none()
            && let Ok(mut l) = PgListener::connect_with(&pool).await
            && l.listen(CHANNEL).await.is_ok()
        {
            listener = Some(l);
        }
        let notified = match listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    message = l.try_recv() => match message {
                        Ok(Some(notification)) => notification.payload().parse::<i64>().ok(),
                        // The connection was lost; catch up by polling.
                        Ok(None) | Err(_) => {
                            listener = None;
                            None
                        }
                    },
                    _ = poll.tick() => None,
                }
            }
            None => {
                poll.tick().await;
                None
            }
        };
        match notified {
            Some(seq) => head.advance(seq),
            None => {
                if let Ok(seq) =
                    sqlx::query_scalar::<_, i64>("SELECT feed_seq FROM hub WHERE singleton = 1")
                        .fetch_one(&pool)
                        .await
                {
                    head.advance(seq);
                }
            }
        }
    }
}
