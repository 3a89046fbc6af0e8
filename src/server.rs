//! Wiring: build (store, PKI, bootstrap partner, bound socket) -> address ->
//! run until stopped. Tests start the very same code on an ephemeral port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::Hub;
use crate::api::audit::AuditApi;
use crate::api::partners::{PartnerApi, create_partner};
use crate::api::records::{PracticeApi, Records, ToolApi, WorkshopApi};
use crate::api::search::SearchApi;
use crate::api::sync::{SyncApi, SyncRoutes};
use crate::auth::{pki, tls};
use crate::batched_writes::BatchedWrites;
use crate::config::{Limits, ServeConfig};
use crate::domain::partner::PartnerFields;
use crate::feed::FeedSettings;
use crate::pb::{self, PartnerKind, PartnerState, Role};
use crate::store::{self, DynStore};
use crate::telemetry::CallTraceLayer;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The bootstrap partner created in an empty database.
pub const BOOTSTRAP_PARTNER: &str = "admin";

/// What a start created, for the operator.
#[derive(Debug, Default)]
pub struct StartReport {
    pub created: Vec<String>,
    pub admin_cert: Option<(PathBuf, PathBuf)>,
    pub ca_cert: Option<PathBuf>,
}

pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls_reload_interval: Duration,
    tls: Arc<tls::ServerTls>,
    hub: Arc<Hub>,
}

impl Server {
    /// Everything `copex serve` does before it serves: data directory,
    /// development PKI when no certificates are configured, database and
    /// migrations, the bootstrap partner, the bound socket.
    pub async fn build(config: &ServeConfig) -> anyhow::Result<(Self, StartReport)> {
        let mut report = StartReport::default();
        crate::data_dir::make_private(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {} private to this user (0700)",
                config.data_dir.display()
            )
        })?;

        let (tls_files, trust_domain) = match &config.tls {
            Some(paths) => (
                tls::ServerTlsFiles {
                    cert: paths.cert.clone(),
                    key: paths.key.clone(),
                    client_ca: paths.client_ca.clone(),
                    hub_ca: paths.hub_ca.clone(),
                    crls: paths.crls.clone(),
                },
                config.trust_domain.clone(),
            ),
            None => {
                let dir = config.dev_pki_dir();
                let files = pki::PkiFiles::in_dir(&dir);
                if !files.exist() {
                    pki::init(&dir, &config.trust_domain, &[]).with_context(|| {
                        format!("cannot create the development PKI in {}", dir.display())
                    })?;
                    report
                        .created
                        .push(format!("development PKI in {}", dir.display()));
                }
                let admin_cert = dir.join(format!("{BOOTSTRAP_PARTNER}.pem"));
                let admin_key = dir.join(format!("{BOOTSTRAP_PARTNER}.key"));
                if !admin_cert.exists() || !admin_key.exists() {
                    pki::issue(&dir, BOOTSTRAP_PARTNER, pki::DEFAULT_PARTNER_DAYS)
                        .context("cannot issue the bootstrap partner's certificate")?;
                    report.created.push(format!(
                        "certificate of partners/{BOOTSTRAP_PARTNER}: {}",
                        admin_cert.display()
                    ));
                }
                report.admin_cert = Some((admin_cert, admin_key));
                report.ca_cert = Some(files.ca_cert.clone());
                let trust_domain = pki::trust_domain(&dir).with_context(|| {
                    format!("cannot read the trust domain of {}", dir.display())
                })?;
                (
                    tls::ServerTlsFiles {
                        cert: files.server_cert,
                        key: files.server_key,
                        client_ca: files.ca_cert,
                        hub_ca: None,
                        crls: vec![files.crl],
                    },
                    trust_domain,
                )
            }
        };
        let tls = tls::ServerTls::load(tls_files).context("cannot set up TLS")?;

        let store = store::open_with(
            config.database_url.as_deref(),
            &config.data_dir,
            config.migrate,
            config.db_pool_size,
        )
        .await
        .context("cannot open the database")?;
        if bootstrap_partner(&store).await? {
            report.created.push(format!(
                "partner partners/{BOOTSTRAP_PARTNER} (ADMIN, CONTRIBUTOR)"
            ));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let search_dir = crate::search::dir_in(&config.data_dir);
        let search = crate::search::SearchIndex::open(&search_dir)
            .with_context(|| format!("cannot open the search index in {}", search_dir.display()))?;
        let mut server = Self::with_listener(
            listener,
            tls,
            store,
            Arc::new(search),
            &trust_domain,
            config.feed.clone(),
            config.limits.clone(),
        )
        .await?;
        server.tls_reload_interval = config.tls_reload_interval;
        if let Some(addr) = config.metrics_listen {
            server.metrics_listener = Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr}"))?,
            );
        }
        Ok((server, report))
    }

    /// A server on an already bound listener (tests bind `127.0.0.1:0`).
    pub async fn with_listener(
        listener: TcpListener,
        tls: Arc<tls::ServerTls>,
        store: DynStore,
        search: Arc<crate::search::SearchIndex>,
        trust_domain: &str,
        feed: FeedSettings,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let hub = Hub::new(store, trust_domain, feed, limits, tls.clone(), search).await?;
        hub.trust_partner_cas().await?;
        Ok(Self {
            listener,
            metrics_listener: None,
            tls_reload_interval: crate::config::DEFAULT_TLS_RELOAD_INTERVAL,
            tls,
            hub,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// This hub's cursors, for tools and tests that must look inside them.
    pub fn cursors(&self) -> crate::feed::Cursors {
        self.hub.cursors.clone()
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes; then stops accepting, ends watch
    /// streams with UNAVAILABLE and gives in-flight calls up to the drain
    /// timeout to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        // The first probe runs before serving, so health is right from the
        // first call.
        let status = probe_once(&self.hub.store, &reporter, None).await;
        let probe = tokio::spawn(probe_database(self.hub.store.clone(), reporter, status));
        let metrics = self.metrics_listener.map(|listener| {
            tokio::spawn(crate::metrics::serve(
                listener,
                self.hub.metrics.clone(),
                self.hub.store.clone(),
            ))
        });
        let reload = tokio::spawn(reload_tls(self.hub.clone(), self.tls_reload_interval));
        let purge = tokio::spawn(purge_tombstones(
            self.hub.store.clone(),
            self.hub.feed_settings.tombstone_retention,
        ));
        let (stop_indexer, indexer_stop) = watch::channel(false);
        let indexer = tokio::spawn(follow_feed(self.hub.clone(), indexer_stop));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build reflection v1")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build reflection v1alpha")?;

        let hub = self.hub.clone();
        let max_request_bytes = hub.limits.max_request_bytes;
        let (incoming_tx, incoming_rx) = mpsc::channel::<TlsStream<TcpStream>>(64);
        let acceptor = accept_loop(
            self.listener,
            self.tls.clone(),
            incoming_tx,
            hub.limits.max_handshakes,
        );
        let stop_accepting = acceptor.abort_handle();
        let drain_timeout = hub.limits.drain_timeout;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = ReceiverStream::new(incoming_rx).map(|stream| {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2);
            Ok::<_, std::io::Error>(BatchedWrites::new(stream, h2))
        });

        let serve = tonic::transport::Server::builder()
            // tonic leaves both unlimited; a partner's connection may not
            // open streams without bound or reset them in a loop.
            .max_concurrent_streams(Some(hub.limits.max_concurrent_streams))
            .http2_max_pending_accept_reset_streams(Some(64))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // gRPC-Web on the same port, for browser tools.
            .accept_http1(true)
            .layer(CallTraceLayer::new(
                hub.refused_audit.clone(),
                hub.metrics.clone(),
            ))
            .layer(tonic_web::GrpcWebLayer::new())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::partner_service_server::PartnerServiceServer::new(PartnerApi::new(hub.clone()))
                    .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::workshop_service_server::WorkshopServiceServer::new(WorkshopApi(Records::new(
                    hub.clone(),
                )))
                .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::practice_service_server::PracticeServiceServer::new(PracticeApi(Records::new(
                    hub.clone(),
                )))
                .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::tool_service_server::ToolServiceServer::new(ToolApi(Records::new(hub.clone())))
                    .max_decoding_message_size(max_request_bytes),
            )
            .add_service(SyncRoutes::new(
                SyncApi::new(hub.clone()),
                max_request_bytes,
            ))
            .add_service(
                pb::audit_service_server::AuditServiceServer::new(AuditApi::new(hub.clone()))
                    .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::search_service_server::SearchServiceServer::new(SearchApi::new(hub.clone()))
                    .max_decoding_message_size(max_request_bytes),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                tracing::info!("stopping: finishing in-flight calls");
                stop_accepting.abort();
                // Watch streams never end by themselves: tell them to.
                hub.begin_shutdown();
                let _ = stopping_tx.send(());
            });
        let drained = async move {
            match stopping_rx.await {
                Ok(()) => tokio::time::sleep(drain_timeout).await,
                // The server ended without being told to stop.
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = serve => result,
            () = drained => {
                tracing::warn!(?drain_timeout, "calls still running at the drain timeout were cut off");
                Ok(())
            }
        };
        acceptor.abort();
        reload.abort();
        probe.abort();
        purge.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        // The indexer commits what it holds and lets go of the index, so
        // a hub started again on this data directory can write it.
        stop_indexer.send_replace(true);
        if tokio::time::timeout(INDEXER_STOP, indexer).await.is_err() {
            tracing::warn!("the search indexer did not stop in time");
        }
        result.context("the gRPC server failed")
    }
}

/// How long a stopping hub waits for the search indexer's last commit.
const INDEXER_STOP: Duration = Duration::from_secs(10);

/// Keeps the search index following the feed until `stop`; started again
/// after an error (a failed commit), so search does not stay stale.
async fn follow_feed(hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() && stop.has_changed().is_ok() {
        match crate::search::indexer::run(
            hub.search.clone(),
            hub.store.clone(),
            Some(hub.metrics.clone()),
            stop.clone(),
            false,
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

/// Creates `partners/admin` in a database that has no partner yet.
async fn bootstrap_partner(store: &DynStore) -> anyhow::Result<bool> {
    if !store.list_partners(None, 1).await?.is_empty() {
        return Ok(false);
    }
    let fields = PartnerFields {
        display_name: "Hub administrator".into(),
        kind: PartnerKind::Other as i32,
        roles: vec![Role::Contributor as i32, Role::Admin as i32],
        identities: Vec::new(),
        ca_certificates: Vec::new(),
        state: PartnerState::Active as i32,
    };
    create_partner(store.as_ref(), BOOTSTRAP_PARTNER, fields, None).await?;
    Ok(true)
}

/// Accepts TCP connections and completes TLS handshakes concurrently, so a
/// slow or hostile client cannot hold up the others.
///
/// At most `max_handshakes` handshakes run at once, each for at most
/// `HANDSHAKE_TIMEOUT`: connections that never finish theirs would
/// otherwise hold a task and a socket each, without bound. Past the cap the
/// loop stops accepting until a handshake ends, and new connections wait in
/// the kernel's listen queue rather than being closed: a client then gets
/// in as soon as a slot frees (within the timeout at worst) instead of
/// being refused and retrying, and the queue is bounded by the kernel.
fn accept_loop(
    listener: TcpListener,
    tls: Arc<tls::ServerTls>,
    incoming: mpsc::Sender<TlsStream<TcpStream>>,
    max_handshakes: usize,
) -> tokio::task::JoinHandle<()> {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                // The semaphore is never closed.
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // Each handshake uses the configuration of now, so reloaded
            // certificates and CRLs apply to every new connection.
            let acceptor = TlsAcceptor::from(tls.config());
            let incoming = incoming.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                // The slot frees when the handshake ends, before the
                // connection waits to be served.
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = incoming.send(stream).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, error = %err, "tls handshake refused"),
                    Err(_) => tracing::info!(%peer, "tls handshake timed out"),
                }
            });
        }
    })
}

/// Reloads certificates, trust bundle and CRLs on SIGHUP and, unless
/// `every` is zero, when a file changes; and at that pace trusts the CAs
/// registered on partners, which another instance may have changed. A
/// reload that fails keeps what is running and says why.
async fn reload_tls(hub: Arc<Hub>, every: Duration) {
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
async fn purge_tombstones(store: DynStore, retention: Duration) {
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
async fn probe_once(
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
async fn probe_database(store: DynStore, reporter: HealthReporter, mut last: ServingStatus) {
    loop {
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
        last = probe_once(&store, &reporter, Some(last)).await;
    }
}
