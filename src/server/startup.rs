//! Everything before serving: data directory, development PKI, database,
//! bootstrap partner, bound sockets.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use super::{BOOTSTRAP_PARTNER, Server, StartReport};
use crate::api::ServiceContext;
use crate::api::partners::create_partner;
use crate::auth::tls;
use crate::config::{Limits, ServeConfig};
use crate::domain::partner::PartnerFields;
use crate::feed::FeedSettings;
use crate::pb::{PartnerKind, PartnerState, Role};
use crate::pki;
use crate::store::{self, DynStore};

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
        let hub =
            ServiceContext::new(store, trust_domain, feed, limits, tls.clone(), search).await?;
        hub.trust_partner_cas().await?;
        Ok(Self {
            listener,
            metrics_listener: None,
            tls_reload_interval: crate::config::DEFAULT_TLS_RELOAD_INTERVAL,
            tls,
            hub,
        })
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
