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
use crate::auth::tls::ServerTls;
use crate::config::Limits;
use crate::domain::Result;
use crate::domain::paging::PageTokens;
use crate::feed::watch::{Access, WatchLimits, Watchers};
use crate::feed::{Cursors, FeedSettings};
use crate::store::DynStore;
use crate::store::reads::RecordReads;

/// What every service shares.
pub struct ServiceContext {
    pub store: DynStore,
    /// Get calls' reads, coalesced under load.
    pub reads: RecordReads,
    pub auth: Authenticator,
    /// The hub's TLS: partners' CAs are trusted at the handshake as they
    /// are registered.
    pub tls: Arc<ServerTls>,
    pub tokens: PageTokens,
    pub cursors: Cursors,
    /// Names audit events without their hub-wide sequence number, which
    /// would count other partners' events between two of the caller's.
    pub audit_ids: crate::domain::seal::NumberSeal,
    pub feed_settings: FeedSettings,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Audit rows of refused calls, written apart from the calls.
    pub refused_audit: crate::server::layers::AuditQueue,
    pub limits: Limits,
    /// Open WatchChanges streams.
    pub watchers: Arc<Watchers>,
    /// ListChanges pages read ahead of the calls that take them.
    pub read_ahead: crate::feed::ReadAhead,
    /// Partners found to exist, for recipient checks.
    pub known_partners: KnownPartners,
    /// Expensive calls running per partner (`max_expensive_calls_per_partner`).
    pub expensive: ExpensiveCalls,
    /// The full-text index, which an indexer task keeps following the feed.
    pub search: Arc<crate::search::SearchIndex>,
    shutdown: watch::Sender<bool>,
}

impl ServiceContext {
    /// Waits, before a batch write, while the search index is too far
    /// behind the feed (`SearchIndex::admit_write`).
    pub async fn admit_write(&self) {
        let head = *self.store.feed_head().borrow();
        let waited = self.search.admit_write(head).await;
        if !waited.is_zero() {
            self.metrics.write_waited_for_index(waited);
        }
    }

    pub async fn new(
        store: DynStore,
        trust_domain: &str,
        feed_settings: FeedSettings,
        limits: Limits,
        tls: Arc<ServerTls>,
        search: Arc<crate::search::SearchIndex>,
    ) -> Result<Arc<Self>> {
        let info = store.hub_info().await?;
        let cursors = Cursors::new(info.hub_id, &info.token_key);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let refused_audit = crate::server::layers::AuditQueue::start(
            store.clone(),
            limits.audit_queue_capacity,
            metrics.clone(),
        );
        let expensive = ExpensiveCalls::new(limits.max_expensive_calls_per_partner);
        let shutdown = watch::Sender::new(false);
        let watchers = Arc::new(Watchers::new(
            store.clone(),
            cursors.clone(),
            WatchLimits {
                settings: feed_settings.clone(),
                max_per_partner: limits.max_watchers_per_partner,
                memory: limits.watch_memory,
            },
            metrics.clone(),
            shutdown.subscribe(),
        ));
        Ok(Arc::new(Self {
            auth: Authenticator::new(
                store.clone(),
                trust_domain,
                tls.clone(),
                RateLimit::new(limits.rate_limit),
            ),
            tls,
            watchers,
            read_ahead: crate::feed::ReadAhead::new(store.clone(), cursors.clone()),
            tokens: PageTokens::new(&info.token_key),
            cursors,
            audit_ids: crate::domain::seal::NumberSeal::new(&info.token_key, "audit event"),
            feed_settings,
            limits,
            metrics,
            refused_audit,
            reads: RecordReads::new(store.clone()),
            known_partners: KnownPartners::new(store.clone()),
            expensive,
            store,
            search,
            shutdown,
        }))
    }

    /// Trusts, at the handshake, the CAs registered on partners as the
    /// store has them now.
    pub async fn trust_partner_cas(&self) -> Result<()> {
        let mut ders = Vec::new();
        for (_, pem) in self.store.partner_cas().await? {
            let ca = crate::auth::cert::ca_certificate(&pem).map_err(|why| {
                crate::domain::Error::internal(format!("a stored CA certificate {why}"))
            })?;
            ders.push(ca.der);
        }
        if self
            .tls
            .set_partner_cas(ders)
            .map_err(crate::domain::Error::internal)?
        {
            tracing::info!("trusting the partners' CAs as registered now");
        }
        Ok(())
    }

    /// Tells long-running calls (watch streams) to end.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A request's `filter`, parsed, within `max_filter_terms` comparisons.
    pub fn parse_filter(&self, text: &str) -> Result<Option<crate::domain::filter::Expr>> {
        let expr = crate::domain::filter::parse(text)
            .map_err(|e| crate::domain::Error::invalid("filter", e.to_string()))?;
        let max = self.limits.max_filter_terms;
        if let Some(n) = expr.as_ref().map(|e| e.comparisons())
            && n > max
        {
            return Err(crate::domain::Error::invalid(
                "filter",
                format!("has {n} comparisons; at most {max} are allowed"),
            ));
        }
        Ok(expr)
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
}

#[tonic::async_trait]
impl Access for ServiceContext {
    async fn recheck(&self, caller: &crate::auth::Caller) -> Result<()> {
        self.auth.recheck(caller).await
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

/// Expensive calls (List with a filter, Search, ListChanges) per partner:
/// at most `per_partner` of a partner's run at once, and the rest wait for
/// one of them to end, holding no database connection, so a partner that
/// sends many queues behind itself and not in front of the others. A call
/// waits within its deadline (the call layer ends it at the deadline); a
/// partner with `MAX_WAITING` calls already waiting is told to come back
/// later.
pub struct ExpensiveCalls {
    per_partner: usize,
    /// One entry per partner that ever made such a call: partners are few
    /// and never deleted, and only authenticated callers get here.
    partners: std::sync::Mutex<std::collections::HashMap<String, Arc<PartnerSlots>>>,
}

struct PartnerSlots {
    running: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Calls one partner may have waiting for a slot.
const MAX_WAITING: usize = 64;

/// Counts a waiting call until it starts or is dropped.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ExpensiveCalls {
    pub fn new(per_partner: usize) -> Self {
        Self {
            per_partner: per_partner.max(1),
            partners: Default::default(),
        }
    }

    /// Waits for one of `partner`'s slots; the slot is freed when the
    /// permit drops.
    pub async fn enter(&self, partner: &str) -> Result<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        let slots = {
            let mut partners = self.partners.lock().unwrap_or_else(|e| e.into_inner());
            partners
                .entry(partner.to_owned())
                .or_insert_with(|| {
                    Arc::new(PartnerSlots {
                        running: Arc::new(tokio::sync::Semaphore::new(self.per_partner)),
                        waiting: Default::default(),
                    })
                })
                .clone()
        };
        if let Ok(permit) = slots.running.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = slots.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&slots.waiting);
        if queued >= MAX_WAITING {
            return Err(crate::domain::Error::ResourceExhausted {
                reason: "TOO_MANY_EXPENSIVE_CALLS",
                message: format!(
                    "{queued} filtered lists, searches and feed pages of this partner are waiting \
                     behind the {} it may run at once; try again later",
                    self.per_partner
                ),
                retry_after: Some(std::time::Duration::from_secs(1)),
            });
        }
        slots
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(crate::domain::Error::internal)
    }
}
