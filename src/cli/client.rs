//! Connecting to a hub as a partner. Each setting comes from, first match
//! wins: the flags `--hub`, `--ca`, `--cert`, `--key`; the variables
//! COPEX_HUB, COPEX_CA, COPEX_CERT, COPEX_KEY; a profile (`--profile`,
//! COPEX_PROFILE, or `./copex.toml` when it exists); and last the local
//! development hub and its bootstrap admin certificate.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::{AlertDescription, CertificateError};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::DEFAULT_DATA_DIR;
use crate::profile::{self, Profile};

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
    /// A partner profile (copex.toml from an onboarding bundle) for the
    /// settings not given by flags or variables; default ./copex.toml when
    /// it exists.
    #[arg(long, env = "COPEX_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
}

/// The settings a client connects with, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub hub: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_name: Option<String>,
    /// The profile that supplied some setting, if any did.
    pub profile: Option<PathBuf>,
}

fn read(path: &Path, what: &str, flag: &str, profile: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| match profile {
        // A bundle comes without the partner's key, which never left the
        // partner: it must be put beside the profile.
        Some(profile) if flag == "key" => format!(
            "cannot read the {what} {} that {} names: copy the .key file `copex pki request` made (it never leaves you) to that path, or set --key",
            path.display(),
            profile.display()
        ),
        Some(profile) => format!(
            "cannot read the {what} {} that {} names: keep the bundle's files beside its copex.toml, or set --{flag}",
            path.display(),
            profile.display()
        ),
        None => format!(
            "cannot read the {what} {} (set --{flag}, use --profile with an onboarding bundle's copex.toml, or start a local hub with `copex serve` to create the development PKI)",
            path.display(),
        ),
    })
}

/// Why a connection that got no TLS answer failed, in a sentence with the
/// likely fix; `None` when it is not a plain network failure.
fn explain_unreachable(err: &(dyn StdError + 'static), hub: &str) -> Option<String> {
    let io = causes(err).find_map(|e| e.downcast_ref::<std::io::Error>())?;
    let why = match io.kind() {
        std::io::ErrorKind::ConnectionRefused => "nothing accepts connections there",
        std::io::ErrorKind::TimedOut => "it did not answer within 10 s",
        std::io::ErrorKind::NotFound => "its name does not resolve",
        _ => return None,
    };
    Some(format!(
        "cannot reach the hub at {hub}: {why}. Check that it runs and that --hub (or the profile's hub) names it"
    ))
}

/// `err` and the errors behind it, through their `source` chain.
fn causes<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

impl HubArgs {
    fn dev_pki(file: &str) -> PathBuf {
        Path::new(DEFAULT_DATA_DIR).join("pki").join(file)
    }

    /// Fills in what flags and variables left open from the profile, then
    /// from the development defaults.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let complete =
            self.hub.is_some() && self.ca.is_some() && self.cert.is_some() && self.key.is_some();
        let profile = match (&self.profile, complete) {
            (Some(path), _) => Some(Profile::load(path)?),
            (None, true) => None,
            (None, false) => {
                let default = Path::new(profile::DEFAULT_FILE);
                if default.is_file() {
                    Some(Profile::load(default)?)
                } else {
                    None
                }
            }
        };
        let profile_path = profile.as_ref().map(|_| {
            self.profile
                .clone()
                .unwrap_or_else(|| PathBuf::from(profile::DEFAULT_FILE))
        });
        let p = profile.as_ref();
        Ok(Resolved {
            hub: self
                .hub
                .clone()
                .or_else(|| p.map(|p| p.hub.clone()))
                .unwrap_or_else(|| DEFAULT_HUB.to_owned()),
            ca: self
                .ca
                .clone()
                .or_else(|| p.map(|p| p.ca.clone()))
                .unwrap_or_else(|| Self::dev_pki("ca.pem")),
            cert: self
                .cert
                .clone()
                .or_else(|| p.map(|p| p.cert.clone()))
                .unwrap_or_else(|| Self::dev_pki("admin.pem")),
            key: self
                .key
                .clone()
                .or_else(|| p.map(|p| p.key.clone()))
                .unwrap_or_else(|| Self::dev_pki("admin.key")),
            server_name: p.and_then(|p| p.server_name.clone()),
            profile: profile_path,
        })
    }

    /// A channel to the hub over mutual TLS.
    pub async fn connect(&self) -> anyhow::Result<(Channel, Resolved)> {
        let settings = self.resolve()?;
        let hub = settings.hub.clone();
        let uri: http::Uri = hub
            .parse()
            .with_context(|| format!("{hub:?} is not a URL such as {DEFAULT_HUB}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("the hub URL must start with https:// (copex speaks only mutual TLS): {hub}");
        }
        let host = settings
            .server_name
            .clone()
            .unwrap_or_else(|| uri.host().unwrap_or("localhost").to_owned());
        let profile = settings.profile.as_deref();
        let ca = read(&settings.ca, "hub CA certificate", "ca", profile)?;
        let cert = read(&settings.cert, "client certificate", "cert", profile)?;
        let key = read(&settings.key, "client key", "key", profile)?;
        // Checked here, where the files can be named: tonic would say only
        // "keys may not be consistent".
        crate::auth::tls::client_config(&ca, &cert, &key).map_err(|err| {
            let (cert, key) = (settings.cert.display(), settings.key.display());
            if err.to_string().contains("KeyMismatch") {
                anyhow::anyhow!(
                    "the key {key} does not belong to the client certificate {cert}. Give the key made with this certificate's request (`copex pki request` writes both)"
                )
            } else {
                anyhow::anyhow!(
                    "cannot use the TLS files (CA {}, certificate {cert}, key {key}): {err}",
                    settings.ca.display()
                )
            }
        })?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(host);
        let channel = Endpoint::from_shared(hub.clone())
            .with_context(|| format!("{hub:?} is not a hub URL"))?
            .tls_config(tls)
            .context("bad TLS settings")?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|err| {
                let plain =
                    explain_tls(&err, &settings).or_else(|| explain_unreachable(&err, &hub));
                match plain {
                    Some(plain) => anyhow::anyhow!(plain),
                    None => anyhow::Error::new(err).context(format!("cannot connect to {hub}")),
                }
            })?;
        Ok((channel, settings))
    }
}

/// Finds the rustls error behind a transport failure: through the `source`
/// chain, and into `io::Error`s (whose `source` skips the error they wrap).
/// An alert received after the handshake reaches hyper only as the text of
/// an `io::Error` ("received fatal alert: UnknownCA"), so that is read too.
fn rustls_error(err: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    causes(err).find_map(|e| {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        rustls_error(inner).or_else(|| {
            let name = inner.to_string();
            let name = name.strip_prefix("received fatal alert: ")?;
            Some(rustls::Error::AlertReceived(alert_named(name)))
        })
    })
}

fn alert_named(name: &str) -> AlertDescription {
    [
        AlertDescription::UnknownCA,
        AlertDescription::BadCertificate,
        AlertDescription::CertificateRevoked,
        AlertDescription::CertificateExpired,
        AlertDescription::CertificateRequired,
        AlertDescription::CertificateUnknown,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::AccessDenied,
        AlertDescription::HandshakeFailure,
        AlertDescription::DecryptError,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name.trim())
    .unwrap_or(AlertDescription::Unknown(0))
}

/// A plain sentence with the fix, when a transport failure is a TLS
/// handshake that failed: the hub refused this certificate, or this client
/// does not trust the hub's. `None` for anything else.
pub fn explain_tls(err: &(dyn StdError + 'static), settings: &Resolved) -> Option<String> {
    let cert = settings.cert.display();
    let ca = settings.ca.display();
    let hub = &settings.hub;
    let refused = |why: &str, fix: &str| {
        format!("the hub {hub} refused this client's certificate {cert}: {why}. {fix}")
    };
    let new_cert = "Make a new request (`copex pki request --partner ID`) and ask the hub's operator to sign it (`copex pki sign`)";
    let text = match rustls_error(err)? {
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown => refused(
                "it was not issued by a CA the hub trusts (alert: unknown CA)",
                "Use the certificate from your onboarding bundle for this hub (--cert/--key, or --profile copex.toml), or ask the operator to sign your CSR with the hub's CA",
            ),
            AlertDescription::CertificateRevoked => {
                refused("it has been revoked (alert: certificate revoked)", new_cert)
            }
            AlertDescription::CertificateExpired => {
                refused("it has expired (alert: certificate expired)", new_cert)
            }
            AlertDescription::CertificateRequired => refused(
                "the hub requires a client certificate",
                "Give one with --cert and --key, or --profile",
            ),
            other => refused(
                &format!("the TLS handshake ended with the alert {other:?}"),
                "Check --cert and --key belong together and come from this hub's operator",
            ),
        },
        rustls::Error::InvalidCertificate(problem) => {
            let why = match problem {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "it was signed by a CA other than the one in --ca".to_owned()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired; tell the hub's operator".to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "it is not valid for the name this client connects to; use the hub's DNS name in --hub, or set server_name in the profile".to_owned()
                }
                other => format!("{other:?}"),
            };
            format!(
                "the hub {hub}'s certificate is not trusted by {ca}: {why}. Use the ca.pem from your onboarding bundle for this hub (--ca, or --profile copex.toml)"
            )
        }
        other => format!("the TLS handshake with {hub} failed: {other}"),
    };
    Some(text)
}

/// After a call failed with a bare transport error: one more handshake,
/// by hand, to learn whether the hub refused this certificate. With TLS
/// 1.3 the hub's verdict on a client certificate arrives after the client
/// has finished its side, and by the time hyper reports the broken
/// connection the alert may be lost. Sending the HTTP/2 preface makes the
/// hub answer: its SETTINGS when it accepted us, an alert when not.
pub async fn probe_handshake(settings: &Resolved) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An empty SETTINGS frame after the connection preface.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let uri: http::Uri = settings.hub.parse().ok()?;
    let host = uri.host()?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let config = crate::auth::tls::client_config(
        &std::fs::read(&settings.ca).ok()?,
        &std::fs::read(&settings.cert).ok()?,
        &std::fs::read(&settings.key).ok()?,
    )
    .ok()?;
    let name = rustls::pki_types::ServerName::try_from(
        settings.server_name.clone().unwrap_or_else(|| host.clone()),
    )
    .ok()?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        tls.write_all(PREFACE).await?;
        tls.flush().await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Err(err)) => explain_tls(&err, settings),
        _ => None,
    }
}
