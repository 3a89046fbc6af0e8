//! The operator's side of onboarding: a signed CSR and the bundle handed back.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use super::ca::{CertificateAuthority, distinguished_name, random_serial};
use super::files::{io_error, read_text, write_file};
use super::issue::{check_partner, partner_profile};
use super::{BACKDATE, PkiError, PkiFiles};
use crate::auth::cert;

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
