//! The services and layers of a running hub, from the accepted connection
//! to the drain at shutdown.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::Server;
use super::acceptor::accept_loop;
use super::layers::{
    AuditLayer, CallMetricsLayer, CallSpanLayer, DeadlineLayer, RequestIdLayer, StatusLayer,
};
use super::tasks::{
    INDEXER_STOP, follow_feed, probe_database, probe_once, purge_tombstones, reload_tls,
};
use super::transport::BatchedWrites;
use crate::api::audit::AuditApi;
use crate::api::partners::PartnerApi;
use crate::api::records::{PracticeApi, Records, ToolApi, WorkshopApi};
use crate::api::search::SearchApi;
use crate::api::sync::{SyncApi, SyncRoutes};
use crate::auth::tls;
use crate::pb;

impl Server {
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
        let release_memory = tokio::spawn(crate::allocator::release_freed_periodically());
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
            // The call pipeline, outermost first; server/layers says why
            // in this order.
            .layer(RequestIdLayer)
            .layer(CallSpanLayer)
            .layer(CallMetricsLayer::new(hub.metrics.clone()))
            .layer(AuditLayer::new(hub.refused_audit.clone()))
            .layer(StatusLayer)
            .layer(DeadlineLayer)
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
        release_memory.abort();
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
