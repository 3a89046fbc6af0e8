//! Metrics for operators, in the Prometheus text format on `/metrics` of
//! `COPEX_METRICS_LISTEN` (off by default): calls and their latency per
//! method and code, open watch streams, the feed position, how far each
//! partner's slowest watcher is behind it, the database pools, and audit
//! rows of refused calls that were dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::store::DynStore;

/// Call latency buckets, in seconds: from a cached unary read to a slow sync page.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabels {
    partner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolNameLabels {
    pool: String,
}

/// How full one database connection pool is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: &'static str,
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

impl PoolUsage {
    pub fn of<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> Self {
        Self {
            name,
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        }
    }
}

type Watchers = HashMap<u64, (String, Arc<AtomicI64>)>;

pub struct Metrics {
    /// Scrapes set the gauges read at scrape time, so they take turns.
    registry: Mutex<Registry>,
    calls: Family<CallLabels, Counter>,
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
    watchers_open: Gauge,
    feed_position: Gauge,
    watcher_lag: Family<PartnerLabels, Gauge>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Family<PoolNameLabels, Gauge>,
    audit_dropped: Counter,
    watchers: Mutex<Watchers>,
    next_watcher: AtomicU64,
    watch_buffered: Gauge,
    /// Bytes queued in watch streams, kept by `feed::memory::WatchMemory`.
    watch_buffer: Arc<AtomicUsize>,
    search_lag: Gauge<f64, AtomicU64>,
    search_behind: Gauge,
    search_write_wait: Counter<f64, AtomicU64>,
    /// Feed position the search index covers, kept by the indexer.
    search_indexed: Arc<AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let latency =
            Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS)
            });
        let watchers_open = Gauge::default();
        let feed_position = Gauge::default();
        let watcher_lag = Family::<PartnerLabels, Gauge>::default();
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let pool_max = Family::<PoolNameLabels, Gauge>::default();
        let audit_dropped = Counter::default();
        let watch_buffered = Gauge::default();
        let search_lag = Gauge::<f64, AtomicU64>::default();
        let search_behind = Gauge::default();
        let search_write_wait = Counter::<f64, AtomicU64>::default();
        let mut registry = Registry::default();
        registry.register(
            "grpc_server_handled",
            "Finished calls by method and status code (streams count when they start answering)",
            calls.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from request to response headers, by method and status code",
            latency.clone(),
        );
        registry.register(
            "copex_watchers_open",
            "Open WatchChanges streams",
            watchers_open.clone(),
        );
        registry.register(
            "copex_feed_position",
            "Position of the newest committed change in the feed",
            feed_position.clone(),
        );
        registry.register(
            "copex_watcher_lag",
            "Feed positions between the newest change and the slowest open watcher of a partner",
            watcher_lag.clone(),
        );
        registry.register(
            "copex_db_pool_connections",
            "Database connections open, by pool and state (in_use, idle)",
            pool_connections.clone(),
        );
        registry.register(
            "copex_db_pool_max_connections",
            "Largest number of connections a database pool opens",
            pool_max.clone(),
        );
        registry.register(
            "copex_audit_events_dropped",
            "Audit rows of refused calls not written: their queue was full, or the write failed",
            audit_dropped.clone(),
        );
        registry.register(
            "copex_watch_buffer_bytes",
            "Bytes of messages queued in all watch streams, against --watch-memory",
            watch_buffered.clone(),
        );
        registry.register(
            "copex_search_index_lag_seconds",
            "Time from commit to searchable of the oldest change in the search index's last commit",
            search_lag.clone(),
        );
        registry.register(
            "copex_search_index_behind",
            "Feed positions between the newest change and the one the search index covers",
            search_behind.clone(),
        );
        registry.register(
            "copex_search_write_wait_seconds",
            "Time BatchUpsertRecords calls waited for the search index to come within 2,000 changes of the feed",
            search_write_wait.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            search_lag,
            search_behind,
            search_write_wait,
            search_indexed: Arc::default(),
            calls,
            latency,
            watchers_open,
            feed_position,
            watcher_lag,
            pool_connections,
            pool_max,
            audit_dropped,
            watchers: Mutex::new(HashMap::new()),
            next_watcher: AtomicU64::new(0),
            watch_buffered,
            watch_buffer: Arc::default(),
        }
    }

    /// A commit of the search index: the position it covers and how long
    /// its oldest change waited.
    pub fn search_indexed(&self, position: i64, lag_seconds: f64) {
        self.search_indexed.store(position, Ordering::Relaxed);
        self.search_lag.set(lag_seconds);
    }

    /// A batch write that waited for the search index (`SearchIndex::admit_write`).
    pub fn write_waited_for_index(&self, waited: Duration) {
        self.search_write_wait.inc_by(waited.as_secs_f64());
    }

    /// The count of bytes queued in watch streams, for the budget to keep.
    pub fn watch_buffer(&self) -> Arc<AtomicUsize> {
        self.watch_buffer.clone()
    }

    /// Counts a finished call. `path` is the HTTP/2 path
    /// (`/copex.v1.ToolService/GetTool`); a path the hub does not serve is
    /// counted as `unknown`, so clients cannot grow the label set.
    pub fn observe_call(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let (service, method) = match path.trim_start_matches('/').split_once('/') {
            Some((service, method)) if code != tonic::Code::Unimplemented => (service, method),
            _ => ("unknown", "unknown"),
        };
        let labels = CallLabels {
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
            grpc_code: crate::api::status::code_name(code).to_owned(),
        };
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.calls.get_or_create(&labels).inc();
    }

    /// Counts audit rows of refused calls that were not written.
    pub fn audit_events_dropped(&self, count: u64) {
        self.audit_dropped.inc_by(count);
    }

    /// Registers an open watch stream of `partner`; the stream moves the
    /// returned position as it sends, and dropping it closes the entry.
    pub fn watcher(self: &Arc<Self>, partner: &str, position: i64) -> WatcherGauge {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(AtomicI64::new(position));
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.insert(id, (partner.to_owned(), slot.clone()));
        }
        self.watchers_open.inc();
        WatcherGauge {
            metrics: self.clone(),
            id,
            position: slot,
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, feed_position: i64, pools: &[PoolUsage]) -> String {
        let Ok(registry) = self.registry.lock() else {
            return String::new();
        };
        self.feed_position.set(feed_position);
        self.search_behind
            .set((feed_position - self.search_indexed.load(Ordering::Relaxed)).max(0));
        self.watch_buffered
            .set(i64::try_from(self.watch_buffer.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        self.watcher_lag.clear();
        if let Ok(watchers) = self.watchers.lock() {
            for (partner, position) in watchers.values() {
                let lag = (feed_position - position.load(Ordering::Relaxed)).max(0);
                let gauge = self.watcher_lag.get_or_create(&PartnerLabels {
                    partner: format!("partners/{partner}"),
                });
                if lag > gauge.get() {
                    gauge.set(lag);
                }
            }
        }
        for pool in pools {
            let labels = |state: &str| PoolLabels {
                pool: pool.name.to_owned(),
                state: state.to_owned(),
            };
            self.pool_connections
                .get_or_create(&labels("in_use"))
                .set(i64::from(pool.open.saturating_sub(pool.idle)));
            self.pool_connections
                .get_or_create(&labels("idle"))
                .set(i64::from(pool.idle));
            self.pool_max
                .get_or_create(&PoolNameLabels {
                    pool: pool.name.to_owned(),
                })
                .set(i64::from(pool.max));
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(error = %err, "metrics could not be encoded");
        }
        text
    }
}

/// An open watch stream as the metrics see it.
pub struct WatcherGauge {
    metrics: Arc<Metrics>,
    id: u64,
    position: Arc<AtomicI64>,
}

impl WatcherGauge {
    pub fn advance(&self, position: i64) {
        self.position.store(position, Ordering::Relaxed);
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        if let Ok(mut watchers) = self.metrics.watchers.lock() {
            watchers.remove(&self.id);
        }
        self.metrics.watchers_open.dec();
    }
}

/// The content type of the exposition `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` (plain HTTP: scrape it from inside
/// the operator's network) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: DynStore) {
    let handler = move || {
        let metrics = metrics.clone();
        let store = store.clone();
        async move {
            let head = *store.feed_head().borrow();
            let text = metrics.render(head, &store.pool_usage());
            ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text)
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(handler));
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(error = %err, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_watchers_show_in_the_text() {
        let metrics = Arc::new(Metrics::new());
        metrics.observe_call(
            "/copex.v1.ToolService/GetTool",
            tonic::Code::NotFound,
            Duration::from_millis(3),
        );
        metrics.observe_call("/no.Such/Thing", tonic::Code::Unimplemented, Duration::ZERO);
        let slow = metrics.watcher("ecpat", 10);
        let fast = metrics.watcher("ecpat", 95);
        let text = metrics.render(
            100,
            &[PoolUsage {
                name: "readers",
                open: 3,
                idle: 1,
                max: 8,
            }],
        );
        assert!(text.contains(
            "grpc_server_handled_total{grpc_service=\"copex.v1.ToolService\",grpc_method=\"GetTool\",grpc_code=\"NOT_FOUND\"} 1"
        ), "{text}");
        assert!(text.contains(
            "grpc_server_handled_total{grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"UNIMPLEMENTED\"} 1"
        ), "{text}");
        assert!(text.contains("copex_watchers_open 2"), "{text}");
        assert!(
            text.contains("copex_audit_events_dropped_total 0"),
            "{text}"
        );
        assert!(text.contains("copex_feed_position 100"), "{text}");
        assert!(
            text.contains("copex_watcher_lag{partner=\"partners/ecpat\"} 90"),
            "{text}"
        );
        assert!(
            text.contains("copex_db_pool_connections{pool=\"readers\",state=\"in_use\"} 2"),
            "{text}"
        );
        drop(slow);
        fast.advance(100);
        let text = metrics.render(100, &[]);
        assert!(text.contains("copex_watchers_open 1"), "{text}");
        assert!(
            text.contains("copex_watcher_lag{partner=\"partners/ecpat\"} 0"),
            "{text}"
        );
        drop(fast);
        let text = metrics.render(100, &[]);
        assert!(!text.contains("copex_watcher_lag{"), "{text}");
    }
}
