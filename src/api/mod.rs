//! The gRPC services: one module per service, one generic path for the three
//! record kinds, and one error mapping.

pub mod audit;
pub mod partners;
pub mod records;
pub mod search;
pub mod status;
pub mod sync;

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::auth::rate::RateLimit;
use crate::auth::tls::Revocations;
use crate::config::Limits;
use crate::domain::Result;
use crate::domain::paging::PageTokens;
use crate::feed::{Cursors, FeedSettings};
use crate::store::reads::RecordReads;
use crate::store::{DynStore, FeedQuery};

/// What every service shares.
pub struct Hub {
    pub store: DynStore,
    /// Get calls' reads, coalesced under load.
    pub reads: RecordReads,
    pub auth: Authenticator,
    pub tokens: PageTokens,
    pub cursors: Cursors,
    /// Names audit events without their hub-wide sequence number, which
    /// would count other partners' events between two of the caller's.
    pub audit_ids: crate::domain::seal::Numbers,
    pub feed_settings: FeedSettings,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub limits: Limits,
    /// Open watch streams per partner, for `max_watchers_per_partner`.
    pub watchers: WatcherCount,
    /// The memory budget watch streams' queues share.
    pub watch_memory: Arc<crate::feed::memory::WatchMemory>,
    /// Pages that woken watchers share.
    pub shared_pages: crate::feed::SharedPages,
    /// ListChanges pages read ahead of the calls that take them.
    pub read_ahead: crate::feed::ReadAhead,
    /// Partners found to exist, for recipient checks.
    pub known_partners: KnownPartners,
    shutdown: watch::Sender<bool>,
}

impl Hub {
    pub async fn new(
        store: DynStore,
        trust_domain: &str,
        feed_settings: FeedSettings,
        limits: Limits,
        revocations: Arc<Revocations>,
    ) -> Result<Arc<Self>> {
        let info = store.hub_info().await?;
        let cursors = Cursors::new(info.hub_id, &info.token_key);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        Ok(Arc::new(Self {
            watch_memory: Arc::new(crate::feed::memory::WatchMemory::new(
                limits.watch_memory,
                metrics.watch_buffer(),
            )),
            auth: Authenticator::new(
                store.clone(),
                trust_domain,
                revocations,
                RateLimit::new(limits.rate_limit),
            ),
            watchers: WatcherCount::default(),
            shared_pages: crate::feed::SharedPages::new(store.clone(), cursors.clone()),
            read_ahead: crate::feed::ReadAhead::new(store.clone(), cursors.clone()),
            limits,
            tokens: PageTokens::new(&info.token_key),
            cursors,
            audit_ids: crate::domain::seal::Numbers::new(&info.token_key, "audit event"),
            feed_settings,
            metrics,
            reads: RecordReads::new(store.clone()),
            known_partners: KnownPartners::new(store.clone()),
            store,
            shutdown: watch::Sender::new(false),
        }))
    }

    /// Tells long-running calls (watch streams) to end.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Where a feed call starts: its cursor's position and the kinds asked.
    pub fn feed_start(
        &self,
        cursor: &str,
        kinds: &[i32],
    ) -> Result<(i64, Vec<crate::domain::Kind>)> {
        Ok((
            self.cursors.decode(cursor)?,
            crate::domain::kind::kinds_from_proto("kinds", kinds)?,
        ))
    }

    /// A page of the feed as `query.viewer` may see it.
    pub async fn feed_page(&self, query: &FeedQuery<'_>) -> Result<crate::feed::Page> {
        crate::feed::page(&self.store, &self.cursors, query).await
    }
}

/// Partner ids found to exist, in front of the store's lookup. Partners are
/// never deleted, so one found stays valid, on every instance; only those
/// are kept. Without it every record written looked each of its recipients
/// up: a batch of 1000 shared records made a query per recipient.
pub struct KnownPartners {
    store: DynStore,
    known: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// Ids kept at most; past it the set starts over (hubs have far fewer).
const MAX_KNOWN_PARTNERS: usize = 10_000;

impl KnownPartners {
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            known: Default::default(),
        }
    }

    /// The ids among `ids` that name no partner, asking the store only
    /// about those not found before.
    pub async fn missing(&self, ids: &[String]) -> Result<Vec<String>> {
        let unknown: Vec<String> = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            ids.iter()
                .filter(|id| !known.contains(*id))
                .cloned()
                .collect()
        };
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let missing = self.store.missing_partners(&unknown).await?;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if known.len() + unknown.len() > MAX_KNOWN_PARTNERS {
            known.clear();
        }
        known.extend(unknown.into_iter().filter(|id| !missing.contains(id)));
        Ok(missing)
    }
}

/// Open watch streams per partner.
#[derive(Default)]
pub struct WatcherCount(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl WatcherCount {
    /// A slot for one more watch stream of `partner`, freed when the guard
    /// drops; `None` when the partner holds `max` already.
    pub fn open(&self, partner: &str, max: u32) -> Option<WatcherSlot> {
        let mut open = self.0.lock().ok()?;
        let count = open.entry(partner.to_owned()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(WatcherSlot {
            counts: self.0.clone(),
            partner: partner.to_owned(),
        })
    }
}

pub struct WatcherSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    partner: String,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.counts.lock()
            && let Some(count) = open.get_mut(&self.partner)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.partner);
            }
        }
    }
}
