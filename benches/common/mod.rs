//! What the benchmarks share: a hub started in-process exactly as `copex
//! serve` starts, and mutual-TLS channels to it as `partners/admin`.

// Each bench compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

use copex::auth::cert::partner_spiffe_id;
use copex::auth::pki::{CertificateAuthority, LeafOptions};
use copex::config::ServeArgs;
use copex::server::Server;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub struct Hub {
    pub addr: SocketAddr,
    pub ca: CertificateAuthority,
    /// The data directory, with the development PKI in `pki/`.
    pub dir: tempfile::TempDir,
}

/// Starts a hub on 127.0.0.1:0 in a new data directory; `database_url`
/// `None` is the embedded SQLite default.
pub async fn start_hub(database_url: Option<String>) -> anyhow::Result<Hub> {
    let dir = tempfile::tempdir()?;
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".parse()?),
        data_dir: Some(dir.path().to_path_buf()),
        database_url,
        log: Some("warn".into()),
        ..Default::default()
    }
    .resolve()?;
    serve(config, dir).await
}

/// Starts a hub with `args` (listen and log are set here).
pub async fn start_hub_with(mut args: ServeArgs) -> anyhow::Result<Hub> {
    let dir = tempfile::tempdir()?;
    args.listen = Some("127.0.0.1:0".parse()?);
    args.data_dir = Some(dir.path().to_path_buf());
    args.log = Some("warn".into());
    serve(args.resolve()?, dir).await
}

async fn serve(config: copex::config::ServeConfig, dir: tempfile::TempDir) -> anyhow::Result<Hub> {
    let (server, _) = Server::build(&config).await?;
    let addr = server.local_addr()?;
    let pki = match &config.tls {
        Some(tls) => tls
            .client_ca
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
        None => dir.path().join("pki"),
    };
    let ca = CertificateAuthority::load(&pki)?;
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    Ok(Hub { addr, ca, dir })
}

/// A channel to `addr` as `partners/admin`, with a certificate from `ca`.
pub async fn connect(addr: SocketAddr, ca: &CertificateAuthority) -> anyhow::Result<Channel> {
    let (cert, key) = ca.sign_leaf(&LeafOptions {
        uri_sans: vec![partner_spiffe_id("copex.local", "admin")],
        client_auth: true,
        ..Default::default()
    })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}
