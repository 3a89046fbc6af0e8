//! Partner certificates issued by the hub's operator, and their profiles.

use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use super::ca::{CertificateAuthority, LeafOptions};
use super::files::write_file;
use super::{BACKDATE, MAX_PARTNER_DAYS, PkiError, RESERVED_PARTNER_IDS};
use crate::auth::cert;

pub(super) fn check_partner(partner_id: &str, days: u32) -> Result<(), PkiError> {
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
pub(super) fn partner_profile(hub: &str, partner_id: &str) -> String {
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
