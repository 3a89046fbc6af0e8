//! What runs beside the calls: the search indexer, TLS reload, health
//! probes and the tombstone purge.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::ServiceContext;
use crate::store::DynStore;

const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a stopping hub waits for the search indexer's last commit.
pub(super) const INDEXER_STOP: Duration = Duration::from_secs(10);

/// Keeps the search index following the feed until `stop`; started again
/// after an error (a failed commit), so search does not stay stale.
pub(super) async fn follow_feed(hub: Arc<ServiceContext>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() && stop.has_changed().is_ok() {
        match crate::search::indexer::run(
            hub.search.clone(),
            hub.store.clone(),
            Some(hub.metrics.clone()),
            stop.clone(),
            crate::search::indexer::Pace::FOLLOW,
            None,
        )
        .await
        {
            Ok(_) => {}
            Err(err) => {
                tracing::error!(%err, "the search indexer failed; starting it again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Reloads certificates, trust bundle and CRLs on SIGHUP and, unless
/// `every` is zero, when a file changes; and at that pace trusts the CAs
/// registered on partners, which another instance may have changed. A
/// reload that fails keeps what is running and says why.
pub(super) async fn reload_tls(hub: Arc<ServiceContext>, every: Duration) {
    let tls = hub.tls.clone();
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let why = tokio::select! {
            () = signalled => "SIGHUP",
            () = check_files(every) => {
                if let Err(err) = hub.trust_partner_cas().await {
                    tracing::warn!(error = %err, "cannot refresh the partners' CAs; the trusted ones stay");
                }
                if !tls.files_changed() {
                    continue;
                }
                "a file changed"
            }
        };
        match tls.reload() {
            Ok(()) => tracing::info!(why, "reloaded TLS certificates and CRLs"),
            Err(err) => {
                tracing::error!(why, error = %err, "TLS reload failed; the previous configuration stays");
                // Not again until the files change once more.
                tls.mark_loaded();
            }
        }
    }
}

/// Completes when the files are due to be checked; never when `every` is zero.
async fn check_files(every: Duration) {
    if every.is_zero() {
        std::future::pending().await
    } else {
        tokio::time::sleep(every).await
    }
}

/// Services whose health follows the database.
const HEALTH_SERVICES: [&str; 8] = [
    "",
    "copex.v1.PartnerService",
    "copex.v1.WorkshopService",
    "copex.v1.PracticeService",
    "copex.v1.ToolService",
    "copex.v1.SyncService",
    "copex.v1.AuditService",
    "copex.v1.SearchService",
];

/// How long BatchUpsertRecords answers are kept for repeated request ids.
const BATCH_ANSWER_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Purges tombstones past the retention, and old batch answers, now and
/// then (often enough for short retentions in tests).
pub(super) async fn purge_tombstones(store: DynStore, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(3600));
    loop {
        let now = crate::domain::record::now_micros();
        let before = now.saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
        let batches_before = now
            .saturating_sub(i64::try_from(BATCH_ANSWER_RETENTION.as_micros()).unwrap_or(i64::MAX));
        match store.purge(before, batches_before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "tombstones purged"),
            Err(err) => tracing::warn!(error = %err, "purging tombstones failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Pings the database and reports a change of status.
pub(super) async fn probe_once(
    store: &DynStore,
    reporter: &HealthReporter,
    last: Option<ServingStatus>,
) -> ServingStatus {
    let status = match store.ping().await {
        Ok(()) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    };
    if last != Some(status) {
        for service in HEALTH_SERVICES {
            reporter.set_service_status(service, status).await;
        }
        if last.is_some() {
            tracing::warn!(?status, "health changed");
        }
    }
    status
}

/// Keeps the health status in step with the database.
pub(super) async fn probe_database(
    store: DynStore,
    reporter: HealthReporter,
    mut last: ServingStatus,
) {
    loop {
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
        last = probe_once(&store, &reporter, Some(last)).await;
    }
}
