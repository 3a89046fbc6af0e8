//! The development PKI behind `copex pki`: a CA kept as files in one
//! directory, a server certificate, partner client certificates and a CRL.
//!
//! The trust domain lives only in the CA certificate (as the URI SAN
//! `spiffe://{trust_domain}`), so a directory cannot disagree with itself.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::cert::{self, strip_leading_zeros};

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

/// Creates a CA, a server certificate for `localhost`, `127.0.0.1` and
/// `server_names` (IP addresses become IP SANs), and an empty CRL in `dir`.
pub fn init(dir: &Path, trust_domain: &str, server_names: &[String]) -> Result<PkiFiles, PkiError> {
    let files = PkiFiles::in_dir(dir);
    if files.ca_key.exists() {
        return Err(PkiError::AlreadyExists(files.ca_key));
    }
    crate::data_dir::create_private_dir(dir).map_err(io_error(dir))?;
    // A random suffix makes each development CA's subject unique, so a
    // client trusting one hub's CA can tell it apart from another's.
    let mut suffix = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| PkiError::Random)?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let ca = CertificateAuthority::generate(
        &format!("copex development CA ({trust_domain}) {suffix}"),
        trust_domain,
    )?;

    let mut dns_sans = vec!["localhost".to_owned()];
    let mut ip_sans = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    for name in server_names {
        match name.parse::<IpAddr>() {
            Ok(ip) if !ip_sans.contains(&ip) => ip_sans.push(ip),
            Ok(_) => {}
            Err(_) if !dns_sans.contains(name) => dns_sans.push(name.clone()),
            Err(_) => {}
        }
    }
    let now = OffsetDateTime::now_utc();
    let (server_cert, server_key) = ca.sign_leaf(&LeafOptions {
        common_name: server_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".to_owned()),
        dns_sans,
        ip_sans,
        server_auth: true,
        not_before: Some(now - BACKDATE),
        not_after: Some(now + Duration::days(SERVER_DAYS)),
        ..LeafOptions::default()
    })?;
    let crl = ca.crl_pem(&[], 1)?;

    write_file(&files.server_key, server_key.as_bytes(), true)?;
    write_file(&files.server_cert, server_cert.as_bytes(), false)?;
    write_file(&files.crl, crl.as_bytes(), false)?;
    write_file(&files.ca_cert, ca.cert_pem().as_bytes(), false)?;
    // ca.key last: it is what marks the directory as initialised, so a failed
    // run can simply be repeated.
    write_file(&files.ca_key, ca.key_pem().as_bytes(), true)?;
    tracing::info!(dir = %dir.display(), trust_domain, "created development PKI");
    Ok(files)
}

fn check_partner(partner_id: &str, days: u32) -> Result<(), PkiError> {
    if !crate::domain::names::is_valid_id(partner_id) {
        return Err(PkiError::InvalidPartnerId(partner_id.to_owned()));
    }
    if RESERVED_PARTNER_IDS.contains(&partner_id) {
        return Err(PkiError::ReservedPartnerId(partner_id.to_owned()));
    }
    if days == 0 || days > MAX_PARTNER_DAYS {
        return Err(PkiError::InvalidDays(days));
    }
    Ok(())
}

/// Issues a client certificate for `partner_id`, valid `days` days, into
/// `DIR/{partner_id}.pem` and `DIR/{partner_id}.key` (replacing any earlier
/// ones). `write_profile` adds the profile for them.
pub fn issue(dir: &Path, partner_id: &str, days: u32) -> Result<(PathBuf, PathBuf), PkiError> {
    check_partner(partner_id, days)?;
    let ca = CertificateAuthority::load(dir)?;
    let now = OffsetDateTime::now_utc();
    let (cert_pem, key_pem) = ca.sign_leaf(&LeafOptions {
        common_name: partner_id.to_owned(),
        uri_sans: vec![cert::partner_spiffe_id(ca.trust_domain(), partner_id)],
        client_auth: true,
        not_before: Some(now - BACKDATE),
        not_after: Some(now + Duration::days(i64::from(days))),
        ..LeafOptions::default()
    })?;
    let cert_path = dir.join(format!("{partner_id}.pem"));
    let key_path = dir.join(format!("{partner_id}.key"));
    write_file(&key_path, key_pem.as_bytes(), true)?;
    write_file(&cert_path, cert_pem.as_bytes(), false)?;
    tracing::info!(partner = partner_id, days, cert = %cert_path.display(), "issued client certificate");
    Ok((cert_path, key_path))
}

/// The profile of a partner whose files sit beside it: `ca.pem`,
/// `{partner_id}.pem` and `{partner_id}.key`.
fn partner_profile(hub: &str, partner_id: &str) -> String {
    crate::profile::NewProfile {
        hub,
        partner: partner_id,
        ca: "ca.pem",
        cert: &format!("{partner_id}.pem"),
        key: &format!("{partner_id}.key"),
    }
    .to_toml()
}

/// Writes `DIR/{partner_id}.toml`, the profile of a certificate issued
/// into the PKI directory itself.
pub fn write_profile(dir: &Path, partner_id: &str, hub: &str) -> Result<PathBuf, PkiError> {
    let path = dir.join(format!("{partner_id}.toml"));
    let text = partner_profile(hub, partner_id);
    // Private like every file of the data directory but certificates.
    write_file(&path, text.as_bytes(), true)?;
    Ok(path)
}

/// The partner's side of onboarding: a new private key `DIR/{partner_id}.key`
/// (0600) and a certificate signing request `DIR/{partner_id}.csr` for the
/// identity `spiffe://{trust_domain}/partner/{partner_id}`. The key never
/// leaves the partner; only the CSR goes to the hub's operator.
pub fn request(
    dir: &Path,
    partner_id: &str,
    trust_domain: &str,
) -> Result<(PathBuf, PathBuf), PkiError> {
    check_partner(partner_id, 1)?;
    if !crate::domain::names::is_valid_trust_domain(trust_domain) {
        return Err(PkiError::InvalidTrustDomain(trust_domain.to_owned()));
    }
    let key_path = dir.join(format!("{partner_id}.key"));
    let csr_path = dir.join(format!("{partner_id}.csr"));
    // Overwriting a key would orphan a certificate already signed for it.
    if key_path.exists() {
        return Err(PkiError::AlreadyExists(key_path));
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(partner_id);
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(cert::partner_spiffe_id(
        trust_domain,
        partner_id,
    ))?)];
    let csr = params.serialize_request(&key)?.pem()?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&csr_path, csr.as_bytes(), false)?;
    Ok((key_path, csr_path))
}

/// The operator's side: signs the CSR in `csr_path` as partner `partner_id`'s
/// client certificate, valid `days` days, and returns it as PEM. Refuses a
/// request with a bad signature or for any identity other than exactly
/// `spiffe://{trust_domain}/partner/{partner_id}`: a CSR naming another
/// partner (or the admin) must never become a certificate acting as it.
pub fn sign_request(
    dir: &Path,
    csr_path: &Path,
    partner_id: &str,
    days: u32,
) -> Result<String, PkiError> {
    check_partner(partner_id, days)?;
    let ca = CertificateAuthority::load(dir)?;
    let pem = read_text(csr_path)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| {
        PkiError::InvalidRequest {
            path: csr_path.to_owned(),
            reason: match e {
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "its signature does not verify (was it altered?)".to_owned()
                }
                other => other.to_string(),
            },
        }
    })?;
    let expected = cert::partner_spiffe_id(ca.trust_domain(), partner_id);
    let found: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::URI(uri) => uri.as_str().to_owned(),
            SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
            SanType::Rfc822Name(name) => format!("email:{}", name.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            other => format!("{other:?}"),
        })
        .collect();
    if found != [expected.as_str()] {
        return Err(PkiError::WrongIdentity {
            path: csr_path.to_owned(),
            partner: partner_id.to_owned(),
            expected,
            found: if found.is_empty() {
                "no identity".to_owned()
            } else {
                found.join(", ")
            },
        });
    }
    // Only the public key comes from the request; everything else is the
    // CA's choice, so a request cannot ask for CA rights or server use.
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(partner_id);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(expected)?)];
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    csr.params = params;
    let certificate = csr.signed_by(&ca.issuer)?;
    tracing::info!(partner = partner_id, days, csr = %csr_path.display(), "signed certificate request");
    Ok(certificate.pem())
}

/// The files of an onboarding bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub profile: PathBuf,
    pub readme: PathBuf,
}

/// Writes the bundle handed back to a partner: the CA of the PKI in
/// `pki_dir` (which signs the hub's certificate), the partner's certificate,
/// a `copex.toml` naming `hub`, and a README saying where the key goes.
pub fn write_bundle(
    pki_dir: &Path,
    out: &Path,
    partner_id: &str,
    cert_pem: &str,
    hub: &str,
) -> Result<Bundle, PkiError> {
    let ca_pem = read_text(&PkiFiles::in_dir(pki_dir).ca_cert)?;
    fs::create_dir_all(out).map_err(io_error(out))?;
    let bundle = Bundle {
        dir: out.to_owned(),
        ca: out.join("ca.pem"),
        cert: out.join(format!("{partner_id}.pem")),
        profile: out.join("copex.toml"),
        readme: out.join("README.txt"),
    };
    write_file(&bundle.ca, ca_pem.as_bytes(), false)?;
    write_file(&bundle.cert, cert_pem.as_bytes(), false)?;
    let profile = partner_profile(hub, partner_id);
    write_file(&bundle.profile, profile.as_bytes(), false)?;
    let readme = format!(
        "copex onboarding bundle for partner {partner_id}, hub {hub}.\n\
         Put your private key {partner_id}.key (made by `copex pki request`) beside this file.\n\
         Then check the connection: copex --profile copex.toml whoami\n"
    );
    write_file(&bundle.readme, readme.as_bytes(), false)?;
    Ok(bundle)
}

/// Adds the serial of the certificate in `cert_file` to `DIR/crl.pem`.
/// Revoking a certificate that is already listed changes nothing.
pub fn revoke(dir: &Path, cert_file: &Path) -> Result<(), PkiError> {
    let ca = CertificateAuthority::load(dir)?;
    let ca_subject = &ca.subject_der;

    let der = read_first_cert(cert_file)?;
    let leaf = parse_cert(cert_file, &der)?;
    if leaf.issuer().as_raw() != ca_subject.as_slice() {
        return Err(PkiError::ForeignCertificate {
            cert: cert_file.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let serial = strip_leading_zeros(leaf.raw_serial()).to_vec();

    let crl_path = PkiFiles::in_dir(dir).crl;
    let (mut revoked, number) = read_crl(&crl_path, ca_subject)?;
    if revoked.iter().any(|(listed, _)| *listed == serial) {
        tracing::info!(cert = %cert_file.display(), "certificate already revoked");
        return Ok(());
    }
    revoked.push((serial, OffsetDateTime::now_utc()));
    let next_number = number.checked_add(1).ok_or_else(|| PkiError::Parse {
        path: crl_path.clone(),
        reason: "CRL number cannot be increased".to_owned(),
    })?;
    let pem = ca.sign_crl(&revoked, next_number)?;
    write_file(&crl_path, pem.as_bytes(), false)?;
    tracing::info!(cert = %cert_file.display(), crl_number = next_number, "revoked certificate");
    Ok(())
}

/// The trust domain of the PKI in `dir`, read from its CA certificate.
pub fn trust_domain(dir: &Path) -> Result<String, PkiError> {
    let path = PkiFiles::in_dir(dir).ca_cert;
    let der = read_first_cert(&path)?;
    let ca = parse_cert(&path, &der)?;
    trust_domain_of(&path, &ca)
}

/// A revoked serial (big-endian, no leading zeros) and when it was revoked.
type Revoked = (Vec<u8>, OffsetDateTime);

/// For tests and tools: an in-memory CA that can sign arbitrary leaf certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    /// DER of the CA's subject name, to match against issuer names.
    subject_der: Vec<u8>,
    trust_domain: String,
}

impl std::fmt::Debug for CertificateAuthority {
    // Hand-written so the private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA, valid ten years, naming `spiffe://{trust_domain}`.
    pub fn generate(common_name: &str, trust_domain: &str) -> Result<Self, PkiError> {
        if !crate::domain::names::is_valid_trust_domain(trust_domain) {
            return Err(PkiError::InvalidTrustDomain(trust_domain.to_owned()));
        }
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        // Path length 0: this CA signs leaves only, never other CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(
            cert::trust_domain_spiffe_id(trust_domain),
        )?)];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_DAYS);
        params.serial_number = Some(random_serial()?);
        let certificate = params.self_signed(&key)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.der())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let subject_der = parsed.subject().as_raw().to_vec();
        Ok(Self {
            cert_pem: certificate.pem(),
            cert_der: certificate.der().to_vec(),
            subject_der,
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Loads the CA of a PKI directory from `ca.pem` and `ca.key`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let files = PkiFiles::in_dir(dir);
        let cert_pem = read_text(&files.ca_cert)?;
        let cert_der = first_cert(&files.ca_cert, cert_pem.as_bytes())?;
        let key_pem = read_text(&files.ca_key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Parse {
            path: files.ca_key.clone(),
            reason: e.to_string(),
        })?;

        let parsed = parse_cert(&files.ca_cert, &cert_der)?;
        // A mismatched pair would sign certificates nobody can verify.
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::Parse {
                path: files.ca_key,
                reason: format!(
                    "key does not belong to the certificate in {}",
                    files.ca_cert.display()
                ),
            });
        }
        let trust_domain = trust_domain_of(&files.ca_cert, &parsed)?;
        let subject_der = parsed.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(|e| PkiError::Parse {
                path: files.ca_cert.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            issuer,
            cert_pem,
            cert_der,
            subject_der,
            trust_domain,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs a leaf with the given options; returns (cert PEM, key PEM).
    pub fn sign_leaf(&self, leaf: &LeafOptions) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&leaf.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for uri in &leaf.uri_sans {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(uri.as_str())?));
        }
        for name in &leaf.dns_sans {
            params
                .subject_alt_names
                .push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }
        params
            .subject_alt_names
            .extend(leaf.ip_sans.iter().copied().map(SanType::IpAddress));
        params.not_before = leaf.not_before.unwrap_or(now - BACKDATE);
        params.not_after = leaf
            .not_after
            .unwrap_or(now + Duration::days(DEFAULT_LEAF_DAYS));
        params.serial_number = Some(match &leaf.serial {
            Some(serial) => SerialNumber::from_slice(serial),
            None => random_serial()?,
        });
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }

    /// Signs a CRL revoking the given serials (big-endian bytes), all dated now.
    pub fn crl_pem(
        &self,
        revoked_serials: &[Vec<u8>],
        crl_number: u64,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked: Vec<_> = revoked_serials
            .iter()
            .map(|serial| (serial.clone(), now))
            .collect();
        self.sign_crl(&revoked, crl_number)
    }

    fn sign_crl(&self, revoked: &[Revoked], crl_number: u64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(CRL_DAYS),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, when)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *when,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// What `CertificateAuthority::sign_leaf` puts into a certificate. The
/// defaults give a leaf with no SAN and no extended key usage, valid from
/// a few minutes ago for a year, with a random serial.
#[derive(Debug, Clone, Default)]
pub struct LeafOptions {
    /// Left out of the subject when empty.
    pub common_name: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub client_auth: bool,
    pub server_auth: bool,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    /// Big-endian serial number; random when `None`.
    pub serial: Option<Vec<u8>>,
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if !common_name.is_empty() {
        name.push(DnType::CommonName, common_name);
    }
    name
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Top bit clear keeps the INTEGER positive without a padding byte; a low
    // bit set keeps it from shrinking, so every serial is 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn trust_domain_of(path: &Path, ca: &X509Certificate<'_>) -> Result<String, PkiError> {
    let sans = ca.subject_alternative_name().map_err(|e| PkiError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    sans.into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|name| match name {
            GeneralName::URI(uri) => cert::trust_domain_from_spiffe_id(uri),
            _ => None,
        })
        .map(str::to_owned)
        .ok_or_else(|| PkiError::Parse {
            path: path.to_owned(),
            reason: "CA certificate has no spiffe://<trust domain> URI SAN".to_owned(),
        })
}

/// Serials and revocation times listed in the CRL at `path`, and its CRL
/// number. A missing file counts as an empty CRL numbered 0.
fn read_crl(path: &Path, ca_subject: &[u8]) -> Result<(Vec<Revoked>, u64), PkiError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_error(path)(e)),
    };
    let parse_error = |reason: String| PkiError::Parse {
        path: path.to_owned(),
        reason,
    };
    let der = CertificateRevocationListDer::from_pem_slice(&bytes)
        .map_err(|e| parse_error(format!("no PEM CRL: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| parse_error(e.to_string()))?;
    if crl.issuer().as_raw() != ca_subject {
        return Err(parse_error("CRL was not issued by this CA".to_owned()));
    }
    let number = match crl.crl_number() {
        Some(number) => {
            let bytes = number.to_bytes_be();
            if bytes.len() > 8 {
                return Err(parse_error("CRL number is too large".to_owned()));
            }
            bytes
                .iter()
                .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
        }
        None => 0,
    };
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| {
            (
                strip_leading_zeros(entry.raw_serial()).to_vec(),
                entry.revocation_date.to_datetime(),
            )
        })
        .collect();
    Ok((revoked, number))
}

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn read_first_cert(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    first_cert(path, &bytes)
}

fn first_cert(path: &Path, pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    CertificateDer::from_pem_slice(pem)
        .map(|der| der.to_vec())
        .map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            reason: format!("no PEM certificate: {e}"),
        })
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_error(path))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// crash never leaves half a key or half a CRL behind. `private` files get
/// mode 0600 from the moment they exist, the others (certificates, CRLs)
/// 0644, whatever the umask.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from an interrupted run would make create_new fail.
    let _ = fs::remove_file(&tmp);

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private {
            crate::data_dir::FILE_MODE
        } else {
            crate::data_dir::PUBLIC_MODE
        });
    }
    #[cfg(not(unix))]
    let _ = private;

    let result = options
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::Io {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cert::inspect;

    fn cert_der_file(path: &Path) -> Vec<u8> {
        read_first_cert(path).unwrap()
    }

    fn crl_serials(dir: &Path) -> (Vec<Vec<u8>>, u64) {
        let ca = CertificateAuthority::load(dir).unwrap();
        let (revoked, number) = read_crl(&PkiFiles::in_dir(dir).crl, &ca.subject_der).unwrap();
        (revoked.into_iter().map(|(s, _)| s).collect(), number)
    }

    fn serial_of(path: &Path) -> Vec<u8> {
        let der = cert_der_file(path);
        strip_leading_zeros(parse_cert(path, &der).unwrap().raw_serial()).to_vec()
    }

    #[test]
    fn init_creates_files_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let files = init(&dir, DEFAULT_TRUST_DOMAIN, &["hub.example.org".into()]).unwrap();
        assert_eq!(files, PkiFiles::in_dir(&dir));
        assert!(files.exist());
        assert_eq!(trust_domain(&dir).unwrap(), "copex.local");
        assert_eq!(
            CertificateAuthority::load(&dir).unwrap().trust_domain(),
            "copex.local"
        );

        assert!(matches!(
            init(&dir, DEFAULT_TRUST_DOMAIN, &[]),
            Err(PkiError::AlreadyExists(path)) if path == files.ca_key
        ));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&files.ca_key, &files.server_key] {
                let mode = fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", key.display());
            }
        }
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");

        // The fresh CRL parses, lists nothing and is numbered 1.
        assert_eq!(crl_serials(&dir), (Vec::new(), 1));
    }

    #[test]
    fn init_with_other_trust_domain_and_server_names() {
        let tmp = tempfile::tempdir().unwrap();
        let files = init(
            tmp.path(),
            "example.org",
            &[
                "hub.example.org".into(),
                "10.0.0.1".into(),
                "localhost".into(),
            ],
        )
        .unwrap();
        assert_eq!(trust_domain(tmp.path()).unwrap(), "example.org");

        let der = cert_der_file(&files.server_cert);
        let server = parse_cert(&files.server_cert, &der).unwrap();
        let names: Vec<String> = server
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "DNSName(localhost)",
                "DNSName(hub.example.org)",
                "IPAddress(7f:00:00:01)",
                "IPAddress(0a:00:00:01)",
            ]
        );
        let eku = server.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let days =
            (server.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
        assert!((729..=730).contains(&days), "{days}");

        let ca_der = cert_der_file(&files.ca_cert);
        let ca = parse_cert(&files.ca_cert, &ca_der).unwrap();
        assert!(ca.is_ca());
        let days = (ca.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
        assert!((3649..=3650).contains(&days), "{days}");
    }

    #[test]
    fn init_rejects_bad_trust_domain() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(tmp.path(), "Not Valid", &[]),
            Err(PkiError::InvalidTrustDomain(_))
        ));
        assert!(!PkiFiles::in_dir(tmp.path()).ca_key.exists());
    }

    #[test]
    fn issue_makes_partner_client_cert() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), DEFAULT_TRUST_DOMAIN, &[]).unwrap();
        let (cert_path, key_path) = issue(tmp.path(), "a", 30).unwrap();
        assert_eq!(cert_path, tmp.path().join("a.pem"));
        assert_eq!(key_path, tmp.path().join("a.key"));

        let der = cert_der_file(&cert_path);
        let identity = inspect(&der).unwrap();
        assert_eq!(identity.uri_sans, ["spiffe://copex.local/partner/a"]);

        let parsed = parse_cert(&cert_path, &der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let days =
            (parsed.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
        assert!((29..=30).contains(&days), "{days}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Re-issuing replaces the files with a new certificate and serial.
        let first_serial = serial_of(&cert_path);
        issue(tmp.path(), "a", DEFAULT_PARTNER_DAYS).unwrap();
        let second_serial = serial_of(&cert_path);
        assert_ne!(first_serial, second_serial);
        assert_eq!(second_serial.len(), 16);
    }

    #[test]
    fn issue_validates_input() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a/b", &"a".repeat(64)] {
            assert!(
                matches!(
                    issue(tmp.path(), bad, 1),
                    Err(PkiError::InvalidPartnerId(_))
                ),
                "{bad}"
            );
        }
        for reserved in ["ca", "server", "crl"] {
            assert!(matches!(
                issue(tmp.path(), reserved, 1),
                Err(PkiError::ReservedPartnerId(_))
            ));
        }
        for days in [0, MAX_PARTNER_DAYS + 1] {
            assert!(matches!(
                issue(tmp.path(), "a", days),
                Err(PkiError::InvalidDays(_))
            ));
        }
        // Without a CA the error names the missing file.
        let err = issue(tmp.path(), "a", 1).unwrap_err();
        assert!(
            matches!(&err, PkiError::Io { path, .. } if path.ends_with("ca.pem")),
            "{err}"
        );
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn revoke_lists_serial_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, DEFAULT_TRUST_DOMAIN, &[]).unwrap();
        let (a, _) = issue(dir, "a", 30).unwrap();
        let (b, _) = issue(dir, "b", 30).unwrap();

        revoke(dir, &a).unwrap();
        assert_eq!(crl_serials(dir), (vec![serial_of(&a)], 2));

        revoke(dir, &a).unwrap();
        assert_eq!(crl_serials(dir), (vec![serial_of(&a)], 2));

        revoke(dir, &b).unwrap();
        assert_eq!(crl_serials(dir), (vec![serial_of(&a), serial_of(&b)], 3));
    }

    #[test]
    fn revoke_handles_serials_with_high_bit_and_keeps_dates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, DEFAULT_TRUST_DOMAIN, &[]).unwrap();
        let ca = CertificateAuthority::load(dir).unwrap();
        let (pem, _) = ca
            .sign_leaf(&LeafOptions {
                common_name: "odd".into(),
                client_auth: true,
                serial: Some(vec![0xff, 0x01]),
                ..Default::default()
            })
            .unwrap();
        let odd = dir.join("odd.pem");
        fs::write(&odd, pem).unwrap();
        revoke(dir, &odd).unwrap();
        let first = read_crl(&PkiFiles::in_dir(dir).crl, &ca.subject_der).unwrap();
        assert_eq!(first.0.len(), 1);
        assert_eq!(first.0[0].0, [0xff, 0x01]);

        let (a, _) = issue(dir, "a", 30).unwrap();
        revoke(dir, &a).unwrap();
        revoke(dir, &odd).unwrap();
        let second = read_crl(&PkiFiles::in_dir(dir).crl, &ca.subject_der).unwrap();
        assert_eq!(second.0.len(), 2);
        // The earlier revocation keeps its original date (to the second).
        assert_eq!(second.0[0], first.0[0]);
    }

    #[test]
    fn revoke_rejects_foreign_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, DEFAULT_TRUST_DOMAIN, &[]).unwrap();
        let other = CertificateAuthority::generate("other", DEFAULT_TRUST_DOMAIN).unwrap();
        let (pem, _) = other
            .sign_leaf(&LeafOptions {
                common_name: "x".into(),
                ..Default::default()
            })
            .unwrap();
        let path = dir.join("x.pem");
        fs::write(&path, pem).unwrap();
        assert!(matches!(
            revoke(dir, &path),
            Err(PkiError::ForeignCertificate { .. })
        ));
        assert_eq!(crl_serials(dir), (Vec::new(), 1));
    }

    #[test]
    fn load_rejects_mismatched_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let files = init(dir, DEFAULT_TRUST_DOMAIN, &[]).unwrap();
        let other = CertificateAuthority::generate("other", DEFAULT_TRUST_DOMAIN).unwrap();
        fs::write(&files.ca_key, other.key_pem()).unwrap();
        assert!(matches!(
            CertificateAuthority::load(dir),
            Err(PkiError::Parse { path, .. }) if path == files.ca_key
        ));
    }

    #[test]
    fn leaf_options_cover_odd_certificates() {
        let ca = CertificateAuthority::generate("test", DEFAULT_TRUST_DOMAIN).unwrap();
        let past = OffsetDateTime::now_utc() - Duration::days(10);
        let (pem, key) = ca
            .sign_leaf(&LeafOptions {
                common_name: String::new(),
                uri_sans: vec!["spiffe://copex.local/partner/a".into()],
                client_auth: true,
                not_before: Some(past),
                not_after: Some(past + Duration::days(1)),
                serial: Some(vec![0x42]),
                ..Default::default()
            })
            .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let parsed = parse_cert(Path::new("leaf"), &der).unwrap();
        assert_eq!(parsed.raw_serial(), [0x42]);
        assert!(parsed.validity().not_after.to_datetime() < OffsetDateTime::now_utc());
        assert!(parsed.subject().iter_common_name().next().is_none());
        assert!(!parsed.is_ca());
    }
}
