//! Wiring: build (store, PKI, bootstrap partner, bound socket) -> address ->
//! run until stopped. Tests start the very same code on an ephemeral port.
//!
//! `startup` builds a server, `serve` wires the services and layers and runs
//! them, `acceptor` completes TLS handshakes, `transport` batches socket
//! writes, `tasks` are what runs beside the calls (TLS reload, health
//! probes, tombstone purge, search indexer).

mod acceptor;
pub mod layers;
mod serve;
mod startup;
mod tasks;
mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::ServiceContext;
use crate::auth::tls;

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
    hub: Arc<ServiceContext>,
}

impl Server {
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
}
