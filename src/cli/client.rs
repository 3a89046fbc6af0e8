//! Connecting to a hub as a partner: `--hub`, `--ca`, `--cert`, `--key`
//! (or COPEX_HUB, COPEX_CA, COPEX_CERT, COPEX_KEY), defaulting to the local
//! development hub and its bootstrap admin certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::DEFAULT_DATA_DIR;

pub const DEFAULT_HUB: &str = "https://localhost:50051";

#[derive(Debug, Clone, Default, clap::Args)]
pub struct HubArgs {
    /// Hub URL.
    #[arg(long, env = "COPEX_HUB", global = true)]
    pub hub: Option<String>,
    /// CA certificate(s) that sign the hub's certificate (PEM).
    #[arg(long, env = "COPEX_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// This partner's client certificate (PEM).
    #[arg(long, env = "COPEX_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// This partner's private key (PEM).
    #[arg(long, env = "COPEX_KEY", global = true)]
    pub key: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read the {what} {} (set --{} or start a local hub with `copex serve` to create the development PKI)",
            path.display(),
            what.split(' ').next_back().unwrap_or(what)
        )
    })
}

impl HubArgs {
    fn dev_pki(file: &str) -> PathBuf {
        Path::new(DEFAULT_DATA_DIR).join("pki").join(file)
    }

    /// A channel to the hub over mutual TLS.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let hub = self.hub.clone().unwrap_or_else(|| DEFAULT_HUB.to_owned());
        let ca = self.ca.clone().unwrap_or_else(|| Self::dev_pki("ca.pem"));
        let cert = self
            .cert
            .clone()
            .unwrap_or_else(|| Self::dev_pki("admin.pem"));
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| Self::dev_pki("admin.key"));
        let uri: http::Uri = hub
            .parse()
            .with_context(|| format!("{hub:?} is not a URL such as {DEFAULT_HUB}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("the hub URL must start with https:// (copex speaks only mutual TLS): {hub}");
        }
        let host = uri.host().unwrap_or("localhost").to_owned();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&ca, "hub CA certificate ca")?))
            .identity(Identity::from_pem(
                read(&cert, "client certificate cert")?,
                read(&key, "client key key")?,
            ))
            .domain_name(host);
        Endpoint::from_shared(hub.clone())
            .with_context(|| format!("{hub:?} is not a hub URL"))?
            .tls_config(tls)
            .context("bad TLS settings")?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {hub}"))
    }
}
