//! The task that keeps the index following the change feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::schema::Term;
use tantivy::{IndexWriter, TantivyDocument};
use tokio::sync::watch;

use super::{COMMIT_INTERVAL, LAYOUT_VERSION, Payload, SearchIndex, document, index_error};
use crate::domain::{Result, record};
use crate::metrics::Metrics;
use crate::store::DynStore;

/// Changes read per feed page.
const PAGE: usize = 1000;
/// Memory the writer buffers documents in before it writes a segment.
const WRITER_MEMORY: usize = 15_000_000;
/// How long a caught-up indexer waits for news of a change before it looks
/// at the feed anyway (another instance's notice may be lost).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Follows the feed from the position the index covers, until `stop` turns
/// true, or with `until_caught_up` until the index covers the feed head.
/// Returns how many changes it indexed.
pub async fn run(
    index: Arc<SearchIndex>,
    store: DynStore,
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<bool>,
    until_caught_up: bool,
) -> Result<u64> {
    let mut writer = open_writer(&index, &mut stop).await?;
    // The writer's lock file is new.
    index.tighten();
    let mut head = store.feed_head();
    let fields = index.fields().clone();
    let mut position = index.indexed();
    if let Some(metrics) = &metrics {
        metrics.search_indexed(position, 0.0);
    }
    let mut indexed_total = 0u64;
    // Changes added since the last commit, and the commit time of the
    // oldest of them.
    let mut pending = 0usize;
    let mut oldest: Option<i64> = None;
    let mut last_commit = Instant::now();
    loop {
        // A dropped sender (a hub whose serving task was aborted) stops it
        // too.
        if *stop.borrow() || stop.has_changed().is_err() {
            break;
        }
        let page = match store.read_index_feed(position, PAGE).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(%err, "the search index cannot read the change feed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        if position > 0 && position < page.purge_horizon {
            // Tombstones it has not seen were purged: only a rebuild
            // removes what they deleted.
            tracing::warn!(
                position,
                "the search index fell behind the purged tombstones: rebuilding it"
            );
            writer.delete_all_documents().map_err(index_error)?;
            position = 0;
            continue;
        }
        let caught_up = page.changes.len() < PAGE;
        for change in &page.changes {
            writer.delete_term(Term::from_field_text(fields.name, &change.name));
            if let Some(record) = &change.record {
                match document(&fields, record) {
                    Ok(doc) => {
                        writer.add_document(doc).map_err(index_error)?;
                    }
                    // The record stays out of search rather than stopping it.
                    Err(err) => {
                        tracing::error!(name = %change.name, %err, "a record could not be indexed")
                    }
                }
            }
            position = change.seq;
            oldest.get_or_insert(change.commit_time);
            pending += 1;
        }
        indexed_total += page.changes.len() as u64;
        if caught_up {
            // Everything up to the head of this snapshot is read, also
            // where a later change or a purge left no row.
            position = position.max(page.head);
        }
        if pending > 0 && (caught_up || last_commit.elapsed() >= COMMIT_INTERVAL) {
            writer = commit(&index, writer, position).await?;
            let lag = oldest
                .take()
                .map(|t| (record::now_micros() - t).max(0) as f64 / 1e6)
                .unwrap_or_default();
            // The metrics first: a search that waited for the position then
            // finds them up to date.
            if let Some(metrics) = &metrics {
                metrics.search_indexed(position, lag);
            }
            index.indexed.send_replace(position);
            pending = 0;
            last_commit = Instant::now();
        } else if pending == 0 && position > index.indexed() {
            if let Some(metrics) = &metrics {
                metrics.search_indexed(position, 0.0);
            }
            index.indexed.send_replace(position);
        }
        if caught_up {
            if until_caught_up {
                break;
            }
            tokio::select! {
                _ = head.wait_for(|h| *h > position) => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }
    if pending > 0 {
        writer = commit(&index, writer, position).await?;
        index.indexed.send_replace(position);
    }
    // Waits for the writer's merges, so the next writer finds the lock free.
    tokio::task::spawn_blocking(move || writer.wait_merging_threads())
        .await
        .map_err(index_error)?
        .map_err(index_error)?;
    index.tighten();
    Ok(indexed_total)
}

/// The index's writer; an earlier indexer of this process (a hub stopped
/// and started again) may still hold it for a moment.
async fn open_writer(
    index: &SearchIndex,
    stop: &mut watch::Receiver<bool>,
) -> Result<IndexWriter<TantivyDocument>> {
    let started = Instant::now();
    loop {
        match index
            .index
            .writer_with_num_threads::<TantivyDocument>(1, WRITER_MEMORY)
        {
            Ok(writer) => return Ok(writer),
            Err(tantivy::TantivyError::LockFailure(..))
                if started.elapsed() < Duration::from_secs(10) && !*stop.borrow() =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(index_error(err)),
        }
    }
}

/// Commits what the writer holds as covering `position`, and reloads the
/// searcher; the caller then publishes the position.
async fn commit(
    index: &Arc<SearchIndex>,
    mut writer: IndexWriter<TantivyDocument>,
    position: i64,
) -> Result<IndexWriter<TantivyDocument>> {
    let shared = index.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<_> {
        let payload = serde_json::to_string(&Payload {
            layout: LAYOUT_VERSION,
            position,
        })
        .map_err(index_error)?;
        let mut prepared = writer.prepare_commit().map_err(index_error)?;
        prepared.set_payload(&payload);
        prepared.commit().map_err(index_error)?;
        shared.reader.reload().map_err(index_error)?;
        shared.tighten();
        Ok(writer)
    })
    .await
    .map_err(index_error)??;
    Ok(writer)
}

/// Rebuilds the index in `dir` from the whole feed (`copex reindex`):
/// returns how many records it indexed.
pub async fn reindex(dir: &std::path::Path, store: DynStore) -> Result<u64> {
    if dir.exists() {
        refuse_if_in_use(dir)?;
        std::fs::remove_dir_all(dir).map_err(index_error)?;
    }
    let index = Arc::new(SearchIndex::open(dir)?);
    let (_stop_tx, stop) = watch::channel(false);
    run(index, store, None, stop, true).await
}

/// A hub serving this data directory holds the index's writer lock (an
/// operating-system file lock); removing the index under it would leave
/// that hub writing to files no longer there.
fn refuse_if_in_use(dir: &std::path::Path) -> Result<()> {
    use tantivy::directory::error::LockError;
    use tantivy::directory::{Directory, INDEX_WRITER_LOCK, MmapDirectory};
    let directory = MmapDirectory::open(dir).map_err(index_error)?;
    match directory.acquire_lock(&INDEX_WRITER_LOCK) {
        Ok(_released_on_drop) => Ok(()),
        Err(LockError::LockBusy) => Err(crate::domain::Error::FailedPrecondition {
            reason: "INDEX_IN_USE",
            message: format!(
                "a running hub is using the search index in {}: stop it first (a hub rebuilds a missing index itself when it starts)",
                dir.display()
            ),
        }),
        Err(err) => Err(index_error(err)),
    }
}
