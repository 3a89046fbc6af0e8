//! The sync commands of a partner system: `push` (batch upserts from a JSONL
//! file with a per-line report), `export` (every visible record as JSONL) and
//! `mirror` (a local SQLite copy kept in sync through the change feed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::{RpcStatusExt, StatusExt};

use super::json;
use crate::pb;

type SyncClient = pb::sync_service_client::SyncServiceClient<Channel>;

/// The most records BatchUpsertRecords takes in one request.
pub const MAX_BATCH: usize = 1000;
/// Changes per ListChanges page (the hub's maximum); halved while a page is
/// larger than `MAX_MESSAGE`.
const FEED_PAGE: i32 = 5000;
/// The largest response accepted: pages and watch messages carry whole
/// records, so they outgrow gRPC's default of 4 MiB.
const MAX_MESSAGE: usize = 64 << 20;
/// The hub sends a bookmark at least every 10 s; a stream silent for longer
/// than this is dead.
const WATCH_SILENCE: Duration = Duration::from_secs(35);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `mirror --once` gives up after this many failed attempts in a row.
const ONCE_ATTEMPTS: u32 = 8;
/// What a `push` exits with when some lines failed.
const SOME_LINES_FAILED: u8 = 2;

/// A record kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum RecordKindArg {
    Workshop,
    Practice,
    Tool,
}

impl RecordKindArg {
    pub fn to_proto(self) -> pb::RecordKind {
        match self {
            RecordKindArg::Workshop => pb::RecordKind::Workshop,
            RecordKindArg::Practice => pb::RecordKind::Practice,
            RecordKindArg::Tool => pb::RecordKind::Tool,
        }
    }

    fn singular(self) -> &'static str {
        match self {
            RecordKindArg::Workshop => "workshop",
            RecordKindArg::Practice => "practice",
            RecordKindArg::Tool => "tool",
        }
    }
}

/// Sorted, without repeats.
fn unique_kinds(kinds: &[RecordKindArg]) -> Vec<RecordKindArg> {
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    kinds
}

fn kinds_to_proto(kinds: &[RecordKindArg]) -> Vec<i32> {
    unique_kinds(kinds)
        .into_iter()
        .map(|k| k.to_proto() as i32)
        .collect()
}

fn sync_client(channel: Channel) -> SyncClient {
    SyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

/// Whether a call failed because its response was larger than we accept.
fn too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

/// One page of ListChanges, with fewer changes per page while a page does
/// not fit in `MAX_MESSAGE`; `page_size` keeps what worked.
async fn list_changes(
    client: &mut SyncClient,
    cursor: &str,
    kinds: &[i32],
    page_size: &mut i32,
) -> Result<pb::ListChangesResponse, Status> {
    loop {
        let request = pb::ListChangesRequest {
            cursor: cursor.to_owned(),
            kinds: kinds.to_vec(),
            page_size: *page_size,
        };
        match client.list_changes(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if too_large(&status) && *page_size > 1 => {
                *page_size = (*page_size / 2).max(1);
                tracing::debug!(page_size = *page_size, "page too large; asking for fewer");
            }
            Err(status) => return Err(status),
        }
    }
}

// ---------------------------------------------------------------------------
// push

/// A parsed line waiting for its batch.
struct Pending {
    line: usize,
    text: String,
    record: pb::Record,
}

#[derive(Debug, Default)]
struct Tally {
    created: u64,
    updated: u64,
    unchanged: u64,
    failed: u64,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} created, {} updated, {} unchanged, {} failed",
            self.created, self.updated, self.unchanged, self.failed
        )
    }
}

/// Prints a line on stdout without tearing the progress bar.
fn report(bar: &ProgressBar, text: &str) -> anyhow::Result<()> {
    bar.suspend(|| -> anyhow::Result<()> {
        out!("{text}");
        Ok(())
    })
}

/// `line N: NAME: CODE: message`, then the field violations and the reason.
/// Field paths are given relative to the record (`tool.sharing.tlp`): the
/// line number already says which record. When there are violations the
/// message only repeats them, so they stand in for it.
fn describe_item_error(
    line: usize,
    name: &str,
    index: usize,
    error: &tonic_types::pb::Status,
) -> String {
    let code = crate::api::status::code_name(Code::from(error.code));
    let name = if name.is_empty() { "(no name)" } else { name };
    let details = error.get_error_details();
    let violations = details
        .bad_request()
        .map(|b| b.field_violations.as_slice())
        .unwrap_or_default();
    let mut text = if violations.is_empty() {
        format!("line {line}: {name}: {code}: {}", error.message)
    } else {
        format!("line {line}: {name}: {code}: invalid fields:")
    };
    let prefix = format!("records[{index}].");
    for v in violations {
        let field = v.field.strip_prefix(&prefix).unwrap_or(&v.field);
        text.push_str(&format!("\n  {field}: {}", v.description));
    }
    if let Some(info) = details.error_info() {
        text.push_str(&format!("\n  reason: {}", info.reason));
    }
    text
}

/// The request id of a batch: derived from the content of its lines only, so
/// running the same push again (after a crash, say) within 24 hours gets the
/// hub's first answer instead of writing twice.
fn request_id(batch: &[Pending]) -> String {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for item in batch {
        digest.update(item.text.as_bytes());
        digest.update(b"\n");
    }
    let hex: String = digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("push-{hex}")
}

/// Batches `copex push` keeps in flight: the hub writes one while the next
/// is on the wire and the one after is parsed.
const PUSH_IN_FLIGHT: usize = 4;

/// A batch sent and not yet accounted for: the lines it holds (number and
/// record name) and its call, running on its own task.
struct InFlight {
    lines: Vec<(usize, String)>,
    call: tokio::task::JoinHandle<Result<pb::BatchUpsertRecordsResponse, Status>>,
}

struct Pusher {
    client: SyncClient,
    bar: ProgressBar,
    tally: Tally,
    in_flight: std::collections::VecDeque<InFlight>,
}

impl Pusher {
    /// Sends a batch, first accounting for the oldest one in flight when
    /// `PUSH_IN_FLIGHT` are.
    async fn send(&mut self, batch: Vec<Pending>) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.in_flight.len() >= PUSH_IN_FLIGHT {
            self.account_oldest().await?;
        }
        let request_id = request_id(&batch);
        let (lines, records): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|p| ((p.line, p.record.name().to_owned()), p.record))
            .unzip();
        let mut client = self.client.clone();
        let call = tokio::spawn(async move {
            client
                .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                    records,
                    request_id,
                })
                .await
                .map(tonic::Response::into_inner)
        });
        self.in_flight.push_back(InFlight { lines, call });
        Ok(())
    }

    /// Waits for every batch in flight, in the order they were sent.
    async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.account_oldest().await?;
        }
        Ok(())
    }

    async fn account_oldest(&mut self) -> anyhow::Result<()> {
        let Some(InFlight { lines, call }) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (Some(&(first, _)), Some(&(last, _))) = (lines.first(), lines.last()) else {
            return Ok(());
        };
        let outcome = call
            .await
            .map_err(|err| Status::internal(format!("the call's task ended: {err}")))
            .and_then(|result| result);
        let response = match outcome {
            Ok(response) => response,
            Err(status) => {
                self.bar.finish_and_clear();
                out!("{} (before the error)", self.tally);
                bail!(
                    "the batch of lines {first} to {last} failed and was not written; every line before it was, and lines after it already on their way may have been: {}\nrun the same command again to resume: batches already written are answered from the hub's memory of them",
                    super::describe_status(&status)
                );
            }
        };
        if response.results.len() != lines.len() {
            self.bar.finish_and_clear();
            bail!(
                "the hub answered the batch of lines {first} to {last} with {} results for {} records; line {first} and every line after it are in doubt",
                response.results.len(),
                lines.len()
            );
        }
        for (index, ((line, sent_name), result)) in lines.iter().zip(&response.results).enumerate()
        {
            let name = if result.name.is_empty() {
                sent_name
            } else {
                &result.name
            };
            match pb::UpsertOutcome::try_from(result.outcome) {
                Ok(pb::UpsertOutcome::Created) => self.tally.created += 1,
                Ok(pb::UpsertOutcome::Updated) => self.tally.updated += 1,
                Ok(pb::UpsertOutcome::Unchanged) => self.tally.unchanged += 1,
                Ok(pb::UpsertOutcome::Failed) => {
                    self.tally.failed += 1;
                    let error = result.error.clone().unwrap_or(tonic_types::pb::Status {
                        code: Code::Unknown as i32,
                        message: "the hub gave no reason".into(),
                        details: Vec::new(),
                    });
                    report(&self.bar, &describe_item_error(*line, name, index, &error))?;
                }
                Ok(pb::UpsertOutcome::Unspecified) | Err(_) => {
                    self.tally.failed += 1;
                    report(
                        &self.bar,
                        &format!(
                            "line {line}: {name}: the hub answered with outcome {}, which this copex does not know",
                            result.outcome
                        ),
                    )?;
                }
            }
        }
        self.bar.set_message(self.tally.to_string());
        Ok(())
    }
}

fn progress_bar(total_bytes: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total_bytes), target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({eta}) {wide_msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// `copex push FILE.jsonl`.
pub async fn push(channel: Channel, file: &Path, batch_size: usize) -> anyhow::Result<ExitCode> {
    if batch_size == 0 || batch_size > MAX_BATCH {
        bail!("--batch-size must be 1 to {MAX_BATCH}, not {batch_size}");
    }
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let total = opened.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::new(opened);
    let mut pusher = Pusher {
        client: sync_client(channel),
        bar: progress_bar(total),
        tally: Tally::default(),
        in_flight: std::collections::VecDeque::with_capacity(PUSH_IN_FLIGHT),
    };
    let mut batch: Vec<Pending> = Vec::with_capacity(batch_size);
    let mut bytes = Vec::new();
    let mut line = 0usize;
    loop {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("cannot read {} after line {line}", file.display()))?;
        if read == 0 {
            break;
        }
        line += 1;
        pusher.bar.inc(read as u64);
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text.trim(),
            Err(err) => {
                pusher.tally.failed += 1;
                report(
                    &pusher.bar,
                    &format!("line {line}: not a Record: not UTF-8 ({err})"),
                )?;
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        match json::from_json::<pb::Record>(text) {
            Ok(record) => batch.push(Pending {
                line,
                text: text.to_owned(),
                record,
            }),
            Err(err) => {
                pusher.tally.failed += 1;
                report(&pusher.bar, &format!("line {line}: not a Record: {err:#}"))?;
            }
        }
        if batch.len() >= batch_size {
            pusher.send(std::mem::take(&mut batch)).await?;
        }
    }
    pusher.send(batch).await?;
    pusher.finish().await?;
    pusher.bar.finish_and_clear();
    out!("{}", pusher.tally);
    Ok(if pusher.tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(SOME_LINES_FAILED)
    })
}

// ---------------------------------------------------------------------------
// export

/// One `list_changes` page fetched on a task of its own, so the next page is
/// on its way while this one is converted; returns the page size it settled on.
fn fetch_page(
    mut client: SyncClient,
    cursor: String,
    kinds: Vec<i32>,
    mut page_size: i32,
) -> tokio::task::JoinHandle<(Result<pb::ListChangesResponse, Status>, i32)> {
    tokio::spawn(async move {
        let page = list_changes(&mut client, &cursor, &kinds, &mut page_size).await;
        (page, page_size)
    })
}

/// `copex export`: every record the caller can see, one proto3-JSON `Record`
/// per line, ordered by name.
pub async fn export(channel: Channel, kinds: &[RecordKindArg]) -> anyhow::Result<ExitCode> {
    let client = sync_client(channel);
    let kinds = kinds_to_proto(kinds);
    // The state at the end of the feed: a record written while we page moves
    // to a later position of the log, so the last entry per name wins. Each
    // record is converted to JSON as its page arrives, while the next page
    // is fetched.
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    let mut cursor = String::new();
    let mut next = Some(fetch_page(
        client.clone(),
        cursor.clone(),
        kinds.clone(),
        FEED_PAGE,
    ));
    while let Some(fetching) = next.take() {
        let (page, page_size) = fetching.await.context("the page's task ended")?;
        let page = page.map_err(super::call_error)?;
        if !page.caught_up {
            if page.next_cursor.is_empty() || page.next_cursor == cursor {
                bail!("the hub's change feed did not advance (cursor {cursor:?})");
            }
            cursor = page.next_cursor.clone();
            next = Some(fetch_page(
                client.clone(),
                cursor.clone(),
                kinds.clone(),
                page_size,
            ));
        }
        for change in page.changes {
            match pb::ChangeType::try_from(change.r#type) {
                Ok(pb::ChangeType::Upserted) => {
                    let record = change.record.with_context(|| {
                        format!(
                            "the hub sent {} as upserted without the record",
                            change.name
                        )
                    })?;
                    lines.insert(change.name, json::to_json(&record)?);
                }
                Ok(pb::ChangeType::Deleted | pb::ChangeType::Unshared) => {
                    lines.remove(&change.name);
                }
                Ok(pb::ChangeType::Unspecified) | Err(_) => bail!(
                    "the hub sent a change of type {} for {}, which this copex does not know",
                    change.r#type,
                    change.name
                ),
            }
        }
    }
    // One write per buffer, not per line (stdout is line-buffered).
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    for line in lines.values() {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// mirror

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
            super::describe_status(&status)
        )),
        _ => Next::Retry {
            at_least: details
                .retry_info()
                .and_then(|r| r.retry_delay)
                .unwrap_or(Duration::ZERO),
            why: super::describe_status(&status).replace('\n', ";"),
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
