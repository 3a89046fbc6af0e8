//! The development PKI behind `copex pki`: a CA kept as files in one
//! directory, a server certificate, partner client certificates and a CRL.
//!
//! The trust domain lives only in the CA certificate (as the URI SAN
//! `spiffe://{trust_domain}`), so a directory cannot disagree with itself.
//!
//! `ca` makes and loads the CA, `issue` writes partner certificates and
//! profiles, `request` and `sign` are the two sides of onboarding by CSR,
//! `revoke` keeps the CRL. Runtime verification of certificates is in
//! [`crate::auth`].

mod ca;
mod files;
mod issue;
mod request;
mod revoke;
mod sign;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use time::Duration;

use ca::trust_domain_of;
use files::{parse_cert, read_first_cert};

pub use ca::{CertificateAuthority, LeafOptions, init};
pub use issue::{issue, write_profile};
pub use request::request;
pub use revoke::revoke;
pub use sign::{Bundle, sign_request, write_bundle};

pub const DEFAULT_TRUST_DOMAIN: &str = "copex.local";
pub const DEFAULT_PARTNER_DAYS: u32 = 365;
/// Upper bound for `issue --days`; keeps dates inside what X.509 can encode.
pub const MAX_PARTNER_DAYS: u32 = 36_500;

const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 730;
const DEFAULT_LEAF_DAYS: i64 = 365;
/// A CRL outlives the usual gap between revocations, so an unattended hub
/// never holds an expired one.
const CRL_DAYS: i64 = 365;
/// Certificates start slightly in the past so peers with a clock a little
/// behind ours still accept them.
const BACKDATE: Duration = Duration::minutes(5);
/// Partner IDs whose files would overwrite the CA, server or CRL files.
const RESERVED_PARTNER_IDS: [&str; 3] = ["ca", "server", "crl"];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot access {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot create certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(
        "invalid partner id {0:?}: use 1-63 characters a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    InvalidPartnerId(String),
    #[error("partner id {0:?} is reserved: its files would overwrite the PKI's own")]
    ReservedPartnerId(String),
    #[error("invalid trust domain {0:?}: use 1-255 characters a-z, 0-9, '.', '-' and '_'")]
    InvalidTrustDomain(String),
    #[error("invalid validity of {0} days: use 1 to {MAX_PARTNER_DAYS}")]
    InvalidDays(u32),
    #[error("cannot parse {}: {reason}", .path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    AlreadyExists(PathBuf),
    #[error("{} was not issued by the CA in {}", .cert.display(), .dir.display())]
    ForeignCertificate { cert: PathBuf, dir: PathBuf },
    #[error("the system random number generator failed")]
    Random,
    #[error("{} is not a valid certificate signing request: {reason}", .path.display())]
    InvalidRequest { path: PathBuf, reason: String },
    #[error(
        "refusing to sign {}: it asks for {found}, but partner {partner:?} may only have the single identity {expected}",
        .path.display()
    )]
    WrongIdentity {
        path: PathBuf,
        partner: String,
        expected: String,
        found: String,
    },
    #[error("cannot write the profile: {0}")]
    Profile(#[from] crate::profile::ProfileError),
}

/// The files `init` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub crl: PathBuf,
}

impl PkiFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            crl: dir.join("crl.pem"),
        }
    }

    /// All five files are present.
    pub fn exist(&self) -> bool {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.crl,
        ]
        .iter()
        .all(|path| path.is_file())
    }
}

/// The trust domain of the PKI in `dir`, read from its CA certificate.
pub fn trust_domain(dir: &Path) -> Result<String, PkiError> {
    let path = PkiFiles::in_dir(dir).ca_cert;
    let der = read_first_cert(&path)?;
    let ca = parse_cert(&path, &der)?;
    trust_domain_of(&path, &ca)
}
