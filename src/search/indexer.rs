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
/// How long a caught-up indexer waits for news of a change before it looks
/// at the feed anyway (another instance's notice may be lost).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How an indexer works: a hub's follows the feed beside the calls; a
/// rebuild (`copex reindex`) has the machine to itself and stops when it
/// reaches the head.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Stop once the index covers the feed head.
    pub until_caught_up: bool,
    /// Commit at least this often while changes arrive. While it is caught
    /// up, the indexer also commits at once when its last commit is older
    /// than this, so a single write in a quiet hub is searchable at once,
    /// and a steady load makes segments of this many milliseconds of writes
    /// rather than one per batch (fewer segments to merge).
    pub commit_every: Duration,
    /// tantivy's indexing threads, and the memory they buffer documents in
    /// before writing a segment (tantivy asks 15 MB a thread at least).
    pub threads: usize,
    pub memory: usize,
}

impl Pace {
    /// A hub's: one indexing thread, so writes keep a core.
    pub const FOLLOW: Pace = Pace {
        until_caught_up: false,
        commit_every: COMMIT_INTERVAL,
        threads: 1,
        memory: 15_000_000,
    };
    /// `copex reindex`'s: both cores, larger segments, a commit every few
    /// seconds so an interrupted rebuild resumes near where it stopped.
    pub const REBUILD: Pace = Pace {
        until_caught_up: true,
        commit_every: Duration::from_secs(5),
        threads: 2,
        memory: 60_000_000,
    };
}

/// Told, after each page, the feed position read and the head then.
pub type Progress<'a> = dyn Fn(i64, i64) + Send + Sync + 'a;

/// Follows the feed from the position the index covers, until `stop` turns
/// true, or at `Pace::REBUILD` until the index covers the feed head.
/// Returns how many changes it indexed.
///
/// Each page's documents are built (decoding, language detection) on a
/// blocking thread while the next page is read, so the async runtime that
/// serves calls never waits on them.
pub async fn run(
    index: Arc<SearchIndex>,
    store: DynStore,
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<bool>,
    pace: Pace,
    progress: Option<&Progress<'_>>,
) -> Result<u64> {
    let mut writer = open_writer(&index, &mut stop, pace).await?;
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
    let mut last_commit: Option<Instant> = None;
    // The page after the one being indexed, read meanwhile.
    let mut read_ahead = None;
    loop {
        // A dropped sender (a hub whose serving task was aborted) stops it
        // too.
        if *stop.borrow() || stop.has_changed().is_err() {
            break;
        }
        let page = match read_ahead.take() {
            Some(page) => page,
            None => store.read_index_feed(position, PAGE).await,
        };
        let page = match page {
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
            index.set_following(false);
            position = 0;
            continue;
        }
        let caught_up = page.changes.len() < PAGE;
        let mut end = page.changes.last().map_or(position, |c| c.seq);
        if caught_up {
            // Everything up to the head of this snapshot is read, also
            // where a later change or a purge left no row.
            end = end.max(page.head);
        }
        if let Some(first) = page.changes.first() {
            oldest.get_or_insert(first.commit_time);
        }
        let count = page.changes.len();
        if count > 0 {
            let fields = fields.clone();
            let build = tokio::task::spawn_blocking(move || -> Result<_> {
                add_changes(&writer, &fields, &page.changes)?;
                Ok(writer)
            });
            let built = if caught_up {
                build.await
            } else {
                let (built, next) = tokio::join!(build, store.read_index_feed(end, PAGE));
                read_ahead = Some(next);
                built
            };
            writer = built.map_err(index_error)??;
        }
        position = end;
        if let Some(progress) = progress {
            progress(position, page.head);
        }
        pending += count;
        indexed_total += count as u64;
        let due = last_commit.is_none_or(|at| at.elapsed() >= pace.commit_every);
        if pending > 0 && due {
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
            last_commit = Some(Instant::now());
        } else if pending == 0 && position > index.indexed() {
            if let Some(metrics) = &metrics {
                metrics.search_indexed(position, 0.0);
            }
            index.indexed.send_replace(position);
        }
        if caught_up {
            // Committed up to the head: from now on writes wait for the
            // index when it falls behind.
            if index.indexed() >= position {
                index.set_following(true);
            }
            if pace.until_caught_up {
                break;
            }
            // With changes not yet committed, wait only until their commit
            // is due.
            let wait = match last_commit {
                Some(at) if pending > 0 => pace.commit_every.saturating_sub(at.elapsed()),
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = head.wait_for(|h| *h > position) => {}
                _ = tokio::time::sleep(wait) => {}
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

/// Replaces each changed record's document with its new one (none for a
/// deletion).
fn add_changes(
    writer: &IndexWriter<TantivyDocument>,
    fields: &super::Fields,
    changes: &[crate::store::IndexChange],
) -> Result<()> {
    for change in changes {
        writer.delete_term(Term::from_field_text(fields.name, &change.name));
        if let Some(record) = &change.record {
            match document(fields, record) {
                Ok(doc) => {
                    writer.add_document(doc).map_err(index_error)?;
                }
                // The record stays out of search rather than stopping it.
                Err(err) => {
                    tracing::error!(name = %change.name, %err, "a record could not be indexed")
                }
            }
        }
    }
    Ok(())
}

/// The index's writer; an earlier indexer of this process (a hub stopped
/// and started again) may still hold it for a moment.
async fn open_writer(
    index: &SearchIndex,
    stop: &mut watch::Receiver<bool>,
    pace: Pace,
) -> Result<IndexWriter<TantivyDocument>> {
    let started = Instant::now();
    loop {
        match index
            .index
            .writer_with_num_threads::<TantivyDocument>(pace.threads, pace.memory)
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
        // What the commit freed (the segment's buffers, the documents
        // indexed), at once rather than at the next periodic release:
        // during a load the hub's memory grew with every commit without it.
        crate::allocator::release_freed();
        Ok(writer)
    })
    .await
    .map_err(index_error)??;
    Ok(writer)
}

/// Rebuilds the index in `dir` from the whole feed (`copex reindex`):
/// returns how many records it indexed.
pub async fn reindex(
    dir: &std::path::Path,
    store: DynStore,
    progress: Option<&Progress<'_>>,
) -> Result<u64> {
    if dir.exists() {
        refuse_if_in_use(dir)?;
        std::fs::remove_dir_all(dir).map_err(index_error)?;
    }
    let index = Arc::new(SearchIndex::open(dir)?);
    let (_stop_tx, stop) = watch::channel(false);
    run(index, store, None, stop, Pace::REBUILD, progress).await
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
