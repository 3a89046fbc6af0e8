//! The CA itself: made by `init` with the server certificate and an empty
//! CRL, loaded from its files, signing leaves and CRLs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::files::{first_cert, io_error, parse_cert, read_text, write_file};
use super::{BACKDATE, CA_DAYS, CRL_DAYS, DEFAULT_LEAF_DAYS, PkiError, PkiFiles, SERVER_DAYS};
use crate::auth::cert;

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

/// A revoked serial (big-endian, no leading zeros) and when it was revoked.
pub(super) type Revoked = (Vec<u8>, OffsetDateTime);

/// For tests and tools: an in-memory CA that can sign arbitrary leaf certificates.
pub struct CertificateAuthority {
    pub(super) issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    /// DER of the CA's subject name, to match against issuer names.
    pub(super) subject_der: Vec<u8>,
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

    pub(super) fn sign_crl(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
    ) -> Result<String, PkiError> {
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

pub(super) fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if !common_name.is_empty() {
        name.push(DnType::CommonName, common_name);
    }
    name
}

pub(super) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Top bit clear keeps the INTEGER positive without a padding byte; a low
    // bit set keeps it from shrinking, so every serial is 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(super) fn trust_domain_of(path: &Path, ca: &X509Certificate<'_>) -> Result<String, PkiError> {
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
