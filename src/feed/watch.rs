//! WatchChanges streams: the registry of open watchers and its per-partner
//! limit, and the loop each stream runs (backlog, then live changes as the
//! feed head moves, bookmarks while idle, cut off when it stalls or its
//! caller loses access).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::memory::{Outbox, WatchMemory, WatchOutput};
use super::wire::{self, Encoded};
use super::{Cursors, FeedSettings, Page, SharedPages};
use crate::auth::Caller;
use crate::domain::{Error, Kind, Result};
use crate::metrics::Metrics;
use crate::store::{DynStore, FeedQuery};

/// Changes per message of a watch stream.
const WATCH_PAGE: usize = 500;
/// Messages a watcher may have queued; one slot is kept for the error that
/// cuts a stalled watcher off, so memory per watcher stays bounded.
const WATCH_BUFFER: usize = 4;

/// Whether a watcher's caller may still read the feed: asked before a
/// stream sends anything (the partner may have been suspended, or its
/// certificate revoked or expired, since the stream opened).
#[tonic::async_trait]
pub trait Access: Send + Sync + 'static {
    async fn recheck(&self, caller: &Caller) -> Result<()>;
}

/// Every open watch stream of this instance.
pub struct Watchers {
    store: DynStore,
    cursors: Cursors,
    settings: FeedSettings,
    max_per_partner: u32,
    open: Arc<Mutex<HashMap<String, u32>>>,
    memory: Arc<WatchMemory>,
    /// Pages that watchers woken by the same commit share.
    pages: SharedPages,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// What `Watchers::new` needs beyond the store and cursors.
pub struct WatchLimits {
    pub settings: FeedSettings,
    pub max_per_partner: u32,
    /// Bytes all streams' queues may hold together.
    pub memory: usize,
}

impl Watchers {
    pub fn new(
        store: DynStore,
        cursors: Cursors,
        limits: WatchLimits,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            pages: SharedPages::new(store.clone(), cursors.clone()),
            memory: Arc::new(WatchMemory::new(limits.memory, metrics.watch_buffer())),
            store,
            cursors,
            settings: limits.settings,
            max_per_partner: limits.max_per_partner,
            open: Arc::default(),
            metrics,
            shutdown,
        }
    }

    /// Opens a stream of the changes `caller` may see after `after`. The
    /// first page is read here, so a bad or expired cursor is the call's
    /// status rather than a stream that ends at once.
    pub async fn open(
        self: &Arc<Self>,
        access: Arc<dyn Access>,
        caller: Caller,
        after: i64,
        kinds: Vec<Kind>,
    ) -> Result<WatchOutput> {
        let slot = self.slot(&caller)?;
        // Subscribed before the first read, so a commit between the two
        // still wakes the watcher.
        let head = self.store.feed_head();
        let first = super::page(
            &self.store,
            &self.cursors,
            &FeedQuery {
                viewer: &caller.partner,
                after,
                kinds: &kinds,
                limit: WATCH_PAGE,
            },
        )
        .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (output, outbox) = self.memory.register(rx);
        let stream = Stream {
            watchers: self.clone(),
            access,
            caller,
            kinds,
            tx,
            outbox,
        };
        tokio::spawn(async move {
            stream.run(first, head).await;
            drop(slot);
        });
        Ok(output)
    }

    /// A slot for one more stream of the caller, freed when dropped.
    fn slot(&self, caller: &Caller) -> Result<WatcherSlot> {
        let max = self.max_per_partner;
        let too_many = || Error::ResourceExhausted {
            reason: "TOO_MANY_WATCHERS",
            message: format!(
                "{} has {max} watch streams open already; close one first",
                caller.partner.name()
            ),
            retry_after: None,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(caller.partner.id.clone()).or_insert(0);
        if *count >= max {
            return Err(too_many());
        }
        *count += 1;
        Ok(WatcherSlot {
            open: self.open.clone(),
            partner: caller.partner.id.clone(),
        })
    }
}

struct WatcherSlot {
    open: Arc<Mutex<HashMap<String, u32>>>,
    partner: String,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.partner) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.partner);
            }
        }
    }
}

/// One watch stream's task.
struct Stream {
    watchers: Arc<Watchers>,
    access: Arc<dyn Access>,
    caller: Caller,
    kinds: Vec<Kind>,
    tx: mpsc::Sender<std::result::Result<Encoded, Status>>,
    outbox: Arc<Outbox>,
}

impl Stream {
    /// Sends the backlog, then live changes as they commit, and bookmarks
    /// while idle, until the client goes, falls too far behind, loses
    /// access, or the hub stops.
    async fn run(self, first: Page, mut head: watch::Receiver<i64>) {
        let w = &self.watchers;
        let settings = &w.settings;
        let mut shutdown = w.shutdown.clone();
        let mut cursor = first.next;
        let mut caught_up = first.caught_up;
        let gauge = w.metrics.watcher(&self.caller.partner.id, cursor);
        // The first message goes out even when empty: it tells the client
        // the stream is live and where it stands.
        if self.send_if_allowed(first.changes, cursor).await.is_err() {
            return;
        }
        let mut last_sent = tokio::time::Instant::now();
        let mut checked = tokio::time::Instant::now();
        loop {
            if caught_up {
                let bookmark_at = last_sent + settings.bookmark_interval;
                // An idle stream too ends soon after its caller loses access.
                let check_at = checked + crate::auth::identity::CACHE_TTL;
                tokio::select! {
                    changed = head.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tokio::time::sleep_until(bookmark_at) => {
                        if self.send_if_allowed(Vec::new(), cursor).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                        continue;
                    }
                    () = tokio::time::sleep_until(check_at) => {
                        if self.still_allowed().await.is_err() {
                            return;
                        }
                        checked = tokio::time::Instant::now();
                        continue;
                    }
                    _ = shutdown.changed() => {
                        let _ = self.tx.try_send(Err(Status::unavailable(
                            "the hub is shutting down: resume from your last cursor",
                        )));
                        return;
                    }
                    () = self.tx.closed() => return,
                    // The client is told by the stream itself.
                    () = self.outbox.cut_off() => return,
                }
            }
            let query = FeedQuery {
                viewer: &self.caller.partner,
                after: cursor,
                kinds: &self.kinds,
                limit: WATCH_PAGE,
            };
            let read = if caught_up {
                // Woken by a commit, like every other watcher of this
                // partner at this position: one read serves them all.
                let seen_head = *head.borrow_and_update();
                w.pages.page(&query, seen_head).await
            } else {
                super::page(&w.store, &w.cursors, &query).await
            };
            let page = match read {
                Ok(page) => page,
                Err(err) => {
                    let _ = self.tx.send(Err(err.into())).await;
                    return;
                }
            };
            caught_up = page.caught_up;
            cursor = page.next;
            gauge.advance(cursor);
            if page.count > 0 {
                // Checked after the read, so nothing committed after the
                // caller lost access is sent.
                if self.send_if_allowed(page.changes, cursor).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
                checked = last_sent;
            }
        }
    }

    async fn send_if_allowed(&self, changes: Vec<u8>, cursor: i64) -> std::result::Result<(), ()> {
        self.still_allowed().await?;
        self.send(changes, cursor).await
    }

    /// When access is lost the stream ends with the status a new call
    /// would get.
    async fn still_allowed(&self) -> std::result::Result<(), ()> {
        match self.access.recheck(&self.caller).await {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::info!(partner = %self.caller.partner.id, error = %err, "watch stream ended: access lost");
                let _ = self.tx.try_send(Err(err.into()));
                Err(())
            }
        }
    }

    /// Queues one message, keeping a slot free for the error that cuts off
    /// a watcher whose buffer stays full longer than the stall limit, and
    /// within the memory budget all watchers share (`feed::memory`).
    async fn send(&self, changes: Vec<u8>, cursor: i64) -> std::result::Result<(), ()> {
        let mut message = changes;
        wire::put_str(2, &self.watchers.cursors.encode(cursor), &mut message);
        let message = Encoded(message);
        let stall = self.watchers.settings.watcher_stall;
        let reserved = tokio::select! {
            reserved = tokio::time::timeout(stall, self.tx.reserve_many(2)) => reserved,
            () = self.outbox.cut_off() => return Err(()),
        };
        match reserved {
            Ok(Ok(mut permits)) => {
                if let Some(permit) = permits.next() {
                    if !self.watchers.memory.admit(&self.outbox, message.0.len()) {
                        return Err(());
                    }
                    permit.send(Ok(message));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(()),
            Err(_) => {
                tracing::info!("watcher cut off: it fell too far behind");
                let status: Status = Error::ResourceExhausted {
                    reason: "WATCHER_TOO_SLOW",
                    message: "the watcher fell too far behind: resume from your last cursor".into(),
                    retry_after: None,
                }
                .into();
                let _ = self.tx.try_send(Err(status));
                Err(())
            }
        }
    }
}
