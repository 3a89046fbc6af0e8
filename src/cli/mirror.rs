//! `mirror`: a local SQLite copy kept in sync through the change feed.

use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::json;
use super::output::describe_status;
use super::sync::{
    FEED_PAGE, MAX_MESSAGE, RecordKindArg, SyncClient, kinds_to_proto, list_changes, sync_client,
    too_large, unique_kinds,
};
use crate::pb;

/// The hub sends a bookmark at least every 10 s; a stream silent for longer
/// than this is dead.
const WATCH_SILENCE: Duration = Duration::from_secs(35);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `mirror --once` gives up after this many failed attempts in a row.
const ONCE_ATTEMPTS: u32 = 8;

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS records (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        update_time TEXT NOT NULL,
        json TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS records_by_kind ON records (kind, name)",
    // One row: where to resume, and what the cursor belongs to.
    "CREATE TABLE IF NOT EXISTS sync_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cursor TEXT NOT NULL,
        hub TEXT,
        kinds TEXT NOT NULL DEFAULT ''
    )",
    "INSERT OR IGNORE INTO sync_state (id, cursor, hub, kinds) VALUES (1, '', NULL, '')",
];

/// Why a round of syncing stopped.
enum Interrupt {
    /// The hub answered with an error status.
    Remote(Status),
    /// The watch stream ended without a status.
    Ended,
    /// Nothing, not even a bookmark, arrived for too long.
    Silent,
    /// The local database failed, or the hub sent something unusable.
    Local(anyhow::Error),
}

impl From<anyhow::Error> for Interrupt {
    fn from(err: anyhow::Error) -> Self {
        Interrupt::Local(err)
    }
}

/// What to do about an interruption.
enum Next {
    Retry { at_least: Duration, why: String },
    Resync(String),
    Fatal(anyhow::Error),
}

fn next_step(interrupt: Interrupt, cursor: &str) -> Next {
    let status = match interrupt {
        Interrupt::Local(err) => return Next::Fatal(err),
        Interrupt::Ended => {
            return Next::Retry {
                at_least: Duration::ZERO,
                why: "the watch stream ended".into(),
            };
        }
        Interrupt::Silent => {
            return Next::Retry {
                at_least: Duration::ZERO,
                why: format!(
                    "the watch stream was silent for {} s",
                    WATCH_SILENCE.as_secs()
                ),
            };
        }
        Interrupt::Remote(status) if too_large(&status) => {
            return Next::Fatal(anyhow::anyhow!(
                "a message of the hub's change feed is larger than the {} MiB this copex accepts: {}",
                MAX_MESSAGE >> 20,
                status.message()
            ));
        }
        Interrupt::Remote(status) => status,
    };
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.as_str())
        .unwrap_or("");
    match status.code() {
        Code::FailedPrecondition
            if matches!(reason, "CURSOR_EXPIRED" | "CURSOR_FROM_OTHER_HUB") =>
        {
            Next::Resync(format!("{reason}: {}", status.message()))
        }
        // The hub does not know our cursor at all (say, its database was
        // restored from a backup): the contract says resync.
        Code::InvalidArgument
            if !cursor.is_empty()
                && details
                    .bad_request()
                    .is_some_and(|b| b.field_violations.iter().any(|v| v.field == "cursor")) =>
        {
            Next::Resync(format!(
                "the hub refused the stored cursor: {}",
                status.message()
            ))
        }
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::Unimplemented => Next::Fatal(anyhow::anyhow!(
            "the hub refused to sync: {}",
            describe_status(&status)
        )),
        _ => Next::Retry {
            at_least: details
                .retry_info()
                .and_then(|r| r.retry_delay)
                .unwrap_or(Duration::ZERO),
            why: describe_status(&status).replace('\n', ";"),
        },
    }
}

/// 200 ms doubling to 30 s; back to the start after a good message.
struct Backoff {
    next: Duration,
    failures: u32,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_FIRST,
            failures: 0,
        }
    }

    fn reset(&mut self) {
        *self = Self::new();
    }

    fn step(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.failures += 1;
        delay
    }
}

/// The local copy and where it stands in the hub's feed.
struct Mirror {
    pool: SqlitePool,
    client: SyncClient,
    kinds: Vec<i32>,
    cursor: String,
}

impl Mirror {
    async fn open(
        path: &Path,
        hub: &str,
        client: SyncClient,
        kinds: &[RecordKindArg],
    ) -> anyhow::Result<Mirror> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut tx = pool.begin().await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        let row = sqlx::query("SELECT cursor, kinds FROM sync_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let mut cursor: String = row.try_get("cursor")?;
        let stored_kinds: String = row.try_get("kinds")?;
        let wanted_kinds: Vec<&str> = unique_kinds(kinds)
            .into_iter()
            .map(RecordKindArg::singular)
            .collect();
        let wanted_kinds = wanted_kinds.join(",");
        if stored_kinds != wanted_kinds {
            // The cursor says nothing about kinds it did not follow.
            let show = |k: &str| {
                if k.is_empty() {
                    "all".to_owned()
                } else {
                    k.to_owned()
                }
            };
            if !cursor.is_empty() {
                tracing::warn!(
                    "{} mirrored kinds {}; starting over for kinds {}",
                    path.display(),
                    show(&stored_kinds),
                    show(&wanted_kinds)
                );
            }
            sqlx::query("DELETE FROM records").execute(&mut *tx).await?;
            cursor.clear();
        }
        sqlx::query("UPDATE sync_state SET cursor = $1, hub = $2, kinds = $3 WHERE id = 1")
            .bind(&cursor)
            .bind(hub)
            .bind(&wanted_kinds)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Mirror {
            pool,
            client,
            kinds: kinds_to_proto(kinds),
            cursor,
        })
    }

    /// Applies the changes of one page or message and stores the cursor
    /// after them, all in one transaction.
    async fn apply(&mut self, changes: &[pb::Change], cursor: &str) -> anyhow::Result<()> {
        // A message always carries a cursor; should one not, resuming from
        // the previous one repeats changes, which is harmless.
        let cursor = if cursor.is_empty() {
            self.cursor.clone()
        } else {
            cursor.to_owned()
        };
        let mut tx = self.pool.begin().await?;
        for change in changes {
            match pb::ChangeType::try_from(change.r#type) {
                Ok(pb::ChangeType::Upserted) => {
                    let record = change.record.as_ref().with_context(|| {
                        format!(
                            "the hub sent {} as upserted without the record",
                            change.name
                        )
                    })?;
                    let kind = record
                        .record_kind()
                        .context("the hub sent a record with no kind set")?
                        .singular();
                    let update_time = record
                        .update_time()
                        .or(change.commit_time)
                        // RFC 3339, as proto3 JSON writes a Timestamp.
                        .and_then(|t| match serde_json::to_value(t) {
                            Ok(serde_json::Value::String(text)) => Some(text),
                            _ => None,
                        })
                        .unwrap_or_default();
                    let json = json::to_json(record)?;
                    sqlx::query(
                        "INSERT OR REPLACE INTO records (name, kind, update_time, json) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&change.name)
                    .bind(kind)
                    .bind(update_time)
                    .bind(json)
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(pb::ChangeType::Deleted | pb::ChangeType::Unshared) => {
                    sqlx::query("DELETE FROM records WHERE name = $1")
                        .bind(&change.name)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(pb::ChangeType::Unspecified) | Err(_) => bail!(
                    "the hub sent a change of type {} for {}, which this copex does not know",
                    change.r#type,
                    change.name
                ),
            }
        }
        sqlx::query("UPDATE sync_state SET cursor = $1 WHERE id = 1")
            .bind(&cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.cursor = cursor;
        Ok(())
    }

    /// Drops the copy and the cursor together, to start over.
    async fn reset(&mut self) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM records").execute(&mut *tx).await?;
        sqlx::query("UPDATE sync_state SET cursor = '' WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.cursor.clear();
        Ok(())
    }

    async fn count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM records")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Pages through ListChanges until caught up.
    async fn catch_up(&mut self, backoff: &mut Backoff) -> Result<(), Interrupt> {
        let mut page_size = FEED_PAGE;
        loop {
            let page = list_changes(&mut self.client, &self.cursor, &self.kinds, &mut page_size)
                .await
                .map_err(Interrupt::Remote)?;
            let before = self.cursor.clone();
            self.apply(&page.changes, &page.next_cursor).await?;
            backoff.reset();
            if page.caught_up {
                return Ok(());
            }
            if self.cursor == before && page.changes.is_empty() {
                return Err(Interrupt::Local(anyhow::anyhow!(
                    "the hub's change feed did not advance (cursor {before:?})"
                )));
            }
        }
    }

    /// Follows WatchChanges until the stream breaks.
    async fn watch(&mut self, backoff: &mut Backoff) -> Interrupt {
        let request = pb::WatchChangesRequest {
            cursor: self.cursor.clone(),
            kinds: self.kinds.clone(),
        };
        let mut stream = match self.client.watch_changes(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Interrupt::Remote(status),
        };
        loop {
            match tokio::time::timeout(WATCH_SILENCE, stream.message()).await {
                Err(_) => return Interrupt::Silent,
                Ok(Err(status)) => return Interrupt::Remote(status),
                Ok(Ok(None)) => return Interrupt::Ended,
                Ok(Ok(Some(message))) => {
                    if let Err(err) = self.apply(&message.changes, &message.cursor).await {
                        return Interrupt::Local(err);
                    }
                    backoff.reset();
                }
            }
        }
    }

    /// Decides what an interruption means; Err ends the mirror.
    async fn recover(
        &mut self,
        interrupt: Interrupt,
        backoff: &mut Backoff,
        max_failures: Option<u32>,
    ) -> anyhow::Result<()> {
        match next_step(interrupt, &self.cursor) {
            Next::Fatal(err) => Err(err),
            Next::Resync(why) => {
                tracing::warn!("{why}; dropping the local copy and syncing from the start");
                self.reset().await?;
                // Should the hub keep refusing, do not spin.
                let delay = backoff.step();
                if backoff.failures > 1 {
                    tokio::time::sleep(delay).await;
                }
                Ok(())
            }
            Next::Retry { at_least, why } => {
                if max_failures.is_some_and(|max| backoff.failures + 1 >= max) {
                    bail!("giving up after {} attempts: {why}", backoff.failures + 1);
                }
                let delay = backoff.step().max(at_least);
                tracing::warn!(
                    "{why}; reconnecting in {}",
                    humantime::format_duration(delay)
                );
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

/// `copex mirror --into FILE.db [--once]`.
pub async fn mirror(
    channel: Channel,
    hub: &str,
    into: &Path,
    once: bool,
    kinds: &[RecordKindArg],
) -> anyhow::Result<ExitCode> {
    let mut mirror = Mirror::open(into, hub, sync_client(channel), kinds).await?;
    let mut backoff = Backoff::new();
    let max_failures = once.then_some(ONCE_ATTEMPTS);
    // Catch up with ListChanges first: it pages faster and says when the
    // copy is complete.
    while let Err(interrupt) = mirror.catch_up(&mut backoff).await {
        mirror
            .recover(interrupt, &mut backoff, max_failures)
            .await?;
    }
    // Not the cursor: it is opaque, and sealed afresh on every answer.
    out!("mirror: {} records, caught up", mirror.count().await?);
    if once {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let interrupt = mirror.watch(&mut backoff).await;
        mirror.recover(interrupt, &mut backoff, None).await?;
    }
}
