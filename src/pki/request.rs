//! The partner's side of onboarding by certificate signing request.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};

use super::PkiError;
use super::ca::distinguished_name;
use super::files::{io_error, write_file};
use super::issue::check_partner;
use crate::auth::cert;

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
