//! The development PKI end to end, on files in temporary directories.

use std::fs;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::files::{parse_cert, read_first_cert};
use super::revoke::read_crl;
use super::*;
use crate::auth::cert::inspect;
use crate::auth::cert::strip_leading_zeros;

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
    let days = (server.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
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
    let days = (parsed.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
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
