//! rustls configurations: the hub requires and verifies client certificates
//! (mutual TLS); clients present one and trust a given CA.
//!
//! Both sides use the ring provider explicitly, so nothing depends on a
//! process-wide default provider being installed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// gRPC runs over HTTP/2, which TLS peers negotiate through ALPN.
pub const ALPN_H2: &[u8] = b"h2";
/// For gRPC-Web from browsers that speak HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {}: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse TLS {what} {}: {reason}", .path.display())]
    Parse {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot use TLS certificate {} with key {}: {source}", .cert.display(), .key.display())]
    CertifiedKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("invalid TLS {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The files behind the hub's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Server certificate, optionally followed by intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Bundle: may hold several CA certs.
    pub client_ca: PathBuf,
    /// The hub's own CA(s), which alone vouch for the hub's trust domain;
    /// `None`: the first certificate of `client_ca`.
    pub hub_ca: Option<PathBuf>,
    /// Each file may hold several PEM CRLs.
    pub crls: Vec<PathBuf>,
}

/// The hub's TLS as it is now. `reload` swaps in a new configuration built
/// from the files, so new handshakes use the new certificate, trust bundle
/// and CRLs while open connections carry on; `revocations` lets every call
/// on an open connection be checked against the CRLs of now.
pub struct ServerTls {
    files: ServerTlsFiles,
    config: RwLock<Arc<ServerConfig>>,
    revocations: Arc<Revocations>,
    /// The hub's own CA, as last loaded.
    hub_ca: RwLock<Anchor>,
    /// CAs registered on partners (DER), trusted at the handshake beside
    /// the bundle's.
    partner_cas: RwLock<Vec<Vec<u8>>>,
    /// The files' modification times and sizes when last loaded.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    pub fn load(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamps = files.stamps();
        let built = build(&files, &[])?;
        let revocations = Arc::new(Revocations::default());
        revocations.replace(built.revoked);
        Ok(Arc::new(Self {
            files,
            config: RwLock::new(built.config),
            revocations,
            hub_ca: RwLock::new(built.hub_ca),
            partner_cas: RwLock::default(),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Whether the hub's own CA vouches for a presented chain (leaf first).
    pub fn hub_ca_vouches_for(&self, chain: &[CertificateDer<'_>]) -> bool {
        read_lock(&self.hub_ca).vouches_for(chain)
    }

    /// Whether `fingerprint` is one of the hub's own CA certificates.
    pub fn is_hub_ca(&self, fingerprint: &str) -> bool {
        read_lock(&self.hub_ca)
            .fingerprints
            .iter()
            .any(|f| f == fingerprint)
    }

    /// Trusts the CAs registered on partners at the handshake; rebuilds the
    /// configuration only when they changed.
    pub fn set_partner_cas(&self, mut cas: Vec<Vec<u8>>) -> Result<bool, TlsError> {
        cas.sort();
        cas.dedup();
        if *read_lock(&self.partner_cas) == cas {
            return Ok(false);
        }
        let built = build(&self.files, &cas)?;
        self.install(built);
        match self.partner_cas.write() {
            Ok(mut slot) => *slot = cas,
            Err(poisoned) => *poisoned.into_inner() = cas,
        }
        Ok(true)
    }

    fn install(&self, built: Built) {
        match self.config.write() {
            Ok(mut slot) => *slot = built.config,
            Err(poisoned) => *poisoned.into_inner() = built.config,
        }
        match self.hub_ca.write() {
            Ok(mut slot) => *slot = built.hub_ca,
            Err(poisoned) => *poisoned.into_inner() = built.hub_ca,
        }
        self.revocations.replace(built.revoked);
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// Rebuilds from the files. On error the running configuration stays:
    /// a half-written file must not lock every partner out.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = self.files.stamps();
        let partner_cas = read_lock(&self.partner_cas).clone();
        self.install(build(&self.files, &partner_cas)?);
        if let Ok(mut slot) = self.stamps.lock() {
            *slot = stamps;
        }
        Ok(())
    }

    /// Takes the files as they are now as seen, loaded or not.
    pub fn mark_loaded(&self) {
        if let Ok(mut slot) = self.stamps.lock() {
            *slot = self.files.stamps();
        }
    }

    /// Whether any file changed since it was last loaded.
    pub fn files_changed(&self) -> bool {
        let now = self.files.stamps();
        self.stamps.lock().map(|then| *then != now).unwrap_or(true)
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A set of CAs, and whether they vouch for a chain. The handshake checked
/// the chain against the whole trust bundle; this tells which CA it leads to,
/// by signature rather than by name (two CAs may share a subject).
#[derive(Clone)]
pub struct Anchor {
    verifier: Arc<dyn ClientCertVerifier>,
    fingerprints: Vec<String>,
}

impl Anchor {
    pub fn of(cas: &[Vec<u8>]) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for der in cas {
            roots.add(CertificateDer::from(der.clone()))?;
        }
        // Revocation and expiry are checked on every call by the caller.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        Ok(Self {
            verifier,
            fingerprints: cas
                .iter()
                .map(|der| super::cert::fingerprint(der))
                .collect(),
        })
    }

    /// `chain`: the leaf, then the intermediates the peer sent.
    pub fn vouches_for(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}

/// Issuer's raw DER name -> serials (without leading zeros) it revoked.
type RevokedSerials = HashMap<Vec<u8>, HashSet<Vec<u8>>>;

/// Serial numbers revoked by the loaded CRLs, per issuer.
#[derive(Debug, Default)]
pub struct Revocations(RwLock<RevokedSerials>);

impl Revocations {
    fn replace(&self, revoked: RevokedSerials) {
        match self.0.write() {
            Ok(mut set) => *set = revoked,
            Err(poisoned) => *poisoned.into_inner() = revoked,
        }
    }

    /// `issuer`: the raw DER name; `serial`: big-endian, leading zeros
    /// stripped.
    pub fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        // Checked on every call: look up by slice, without allocating.
        let revoked = |map: &RevokedSerials| map.get(issuer).is_some_and(|s| s.contains(serial));
        match self.0.read() {
            Ok(map) => revoked(&map),
            Err(poisoned) => revoked(&poisoned.into_inner()),
        }
    }
}

impl ServerTlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key, &self.client_ca]
            .into_iter()
            .chain(&self.hub_ca)
            .chain(&self.crls)
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

/// What one reading of the files makes.
struct Built {
    config: Arc<ServerConfig>,
    revoked: RevokedSerials,
    hub_ca: Anchor,
}

/// The configuration, the revoked serials of the CRLs it uses (each CRL
/// file read and parsed once) and the hub's own CA; `partner_cas` are
/// trusted at the handshake beside the bundle.
fn build(files: &ServerTlsFiles, partner_cas: &[Vec<u8>]) -> Result<Built, TlsError> {
    let mut crls = Vec::new();
    let mut revoked = RevokedSerials::new();
    for path in &files.crls {
        for crl in read_crls(path)? {
            // rustls parses CRLs only when building the verifier and its
            // error does not say which file was bad; parsing here names it.
            let (_, parsed) = x509_parser::parse_x509_crl(&crl)
                .map_err(|e| parse_error(path, "CRL")(e.to_string()))?;
            let serials = revoked
                .entry(parsed.issuer().as_raw().to_vec())
                .or_default();
            for entry in parsed.iter_revoked_certificates() {
                serials.insert(super::cert::strip_leading_zeros(entry.raw_serial()).to_vec());
            }
            crls.push(crl);
        }
    }
    let bundle = read_certs(&files.client_ca, "client CA bundle")?;
    let hub_cas: Vec<Vec<u8>> = match &files.hub_ca {
        Some(path) => read_certs(path, "hub CA")?
            .into_iter()
            .map(|der| der.to_vec())
            .collect(),
        // parse_certs never returns an empty list.
        None => bundle.iter().take(1).map(|der| der.to_vec()).collect(),
    };
    let hub_ca = Anchor::of(&hub_cas).map_err(|err| TlsError::Parse {
        what: "hub CA",
        path: files
            .hub_ca
            .clone()
            .unwrap_or_else(|| files.client_ca.clone()),
        reason: err.to_string(),
    })?;
    let mut roots = bundle;
    roots.extend(hub_cas.into_iter().map(CertificateDer::from));
    roots.extend(partner_cas.iter().cloned().map(CertificateDer::from));
    Ok(Built {
        config: config_with_crls(files, roots, crls)?,
        revoked,
        hub_ca,
    })
}

/// Server config: TLS 1.3 and 1.2, ALPN "h2", client certificate required and
/// verified against `client_ca` and the CRLs.
///
/// Only end-entity certificates are checked for revocation, so one CRL from
/// the issuing CA is enough. A client whose CA has no CRL among `crls` is
/// rejected (unknown revocation status) as soon as any CRL is given. An
/// expired CRL is still used rather than locking every client out.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(build(files, &[])?.config)
}

fn config_with_crls(
    files: &ServerTlsFiles,
    trusted: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = read_certs(&files.cert, "certificate")?;
    let key = read_key(&files.key)?;

    let mut roots = RootCertStore::empty();
    for der in trusted {
        roots.add(der).map_err(|e| TlsError::Parse {
            what: "client CA bundle",
            path: files.client_ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::CertifiedKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Client config for the CLI and tests: trusts `ca_pem` (may hold several
/// CA certificates), presents `cert_pem` + `key_pem`, ALPN "h2".
pub fn client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let pem_error = |what: &'static str| move |reason: String| TlsError::Pem { what, reason };
    let mut roots = RootCertStore::empty();
    for der in parse_certs(ca_pem).map_err(pem_error("CA certificate"))? {
        roots.add(der)?;
    }
    let chain = parse_certs(cert_pem).map_err(pem_error("client certificate"))?;
    let key = parse_key(key_pem).map_err(pem_error("client key"))?;

    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn parse_error(path: &Path, what: &'static str) -> impl FnOnce(String) -> TlsError {
    let path = path.to_owned();
    move |reason| TlsError::Parse { what, path, reason }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&read(path, what)?).map_err(parse_error(path, what))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&read(path, "key")?).map_err(parse_error(path, "key"))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path, "CRL")?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(path, "CRL")(e.to_string()))?;
    if crls.is_empty() {
        return Err(parse_error(path, "CRL")("no PEM X509 CRL found".to_owned()));
    }
    Ok(crls)
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".to_owned());
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key found".to_owned(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests;
