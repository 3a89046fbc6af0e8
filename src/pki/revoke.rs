//! Revocation: the CRL the hub reads.

use std::fs;
use std::io;
use std::path::Path;

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::ca::{CertificateAuthority, Revoked};
use super::files::{io_error, parse_cert, read_first_cert, write_file};
use super::{PkiError, PkiFiles};
use crate::auth::cert::strip_leading_zeros;

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

/// Serials and revocation times listed in the CRL at `path`, and its CRL
/// number. A missing file counts as an empty CRL numbered 0.
pub(super) fn read_crl(path: &Path, ca_subject: &[u8]) -> Result<(Vec<Revoked>, u64), PkiError> {
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
