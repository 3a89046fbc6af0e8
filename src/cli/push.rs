//! `push` (batch upserts from a JSONL file with a per-line report) and
//! `export` (every visible record as JSONL).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::RpcStatusExt;

use super::json;
use super::output::{call_error, describe_status};
use super::sync::{
    FEED_PAGE, RecordKindArg, SyncClient, kinds_to_proto, list_changes, sync_client,
};
use crate::domain::record::MAX_BATCH;
use crate::pb;

/// What a `push` exits with when some lines failed.
const SOME_LINES_FAILED: u8 = 2;

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
                    describe_status(&status)
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
        bar: super::output::progress_bar(
            total,
            "{bar:40} {bytes}/{total_bytes} ({eta}) {wide_msg}",
        ),
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
        let page = page.map_err(call_error)?;
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
