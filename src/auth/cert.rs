//! Identity of a TLS peer, read from its leaf certificate after rustls has
//! verified the chain. Nothing here checks signatures or validity dates.

use crate::domain::names::{is_valid_id, is_valid_trust_domain};
use x509_parser::extensions::GeneralName;

/// Prefix of every fingerprint this crate produces or accepts.
const FINGERPRINT_PREFIX: &str = "sha256:";
const SPIFFE_SCHEME: &str = "spiffe://";
/// Path segment that marks a partner workload in our SPIFFE IDs.
const PARTNER_PATH: &str = "/partner/";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    #[error("certificate is followed by {0} bytes of unexpected data")]
    TrailingData(usize),
    #[error("cannot read subject alternative names: {0}")]
    SubjectAltName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// "sha256:" + 64 lower-case hex digits of SHA-256 over the DER certificate
    pub fingerprint: String,
    /// Every URI SAN in the certificate, in order.
    pub uri_sans: Vec<String>,
    /// What revocation and expiry are checked against on every call.
    pub validity: CertValidity,
}

/// The parts of a certificate that decide whether it is still good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertValidity {
    /// Raw DER of the issuer's name, as CRLs name it.
    pub issuer: Vec<u8>,
    /// Big-endian, without leading zeros.
    pub serial: Vec<u8>,
    /// Unix seconds.
    pub not_after: i64,
}

/// DER integers may carry leading zero bytes; serials compare without them.
pub fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Reads the fingerprint and URI SANs of a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertIdentity, CertError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    // The fingerprint covers the whole input, so extra bytes would make two
    // different inputs name the same certificate.
    if !rest.is_empty() {
        return Err(CertError::TrailingData(rest.len()));
    }
    let uri_sans = match cert
        .subject_alternative_name()
        .map_err(|e| CertError::SubjectAltName(e.to_string()))?
    {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(CertIdentity {
        fingerprint: fingerprint(der),
        uri_sans,
        validity: CertValidity {
            issuer: cert.issuer().as_raw().to_vec(),
            serial: strip_leading_zeros(cert.raw_serial()).to_vec(),
            not_after: cert.validity().not_after.timestamp(),
        },
    })
}

/// A CA certificate a partner registers, as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    pub der: Vec<u8>,
    /// Canonical PEM of `der`, so one CA is always written the same way.
    pub pem: String,
    pub fingerprint: String,
}

/// Reads one PEM CA certificate; the error says what is wrong with it, for
/// a field violation.
pub fn ca_certificate(pem: &str) -> Result<CaCertificate, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("is not PEM: {err}"))?;
    let der = match ders.as_slice() {
        [one] => one.to_vec(),
        [] => return Err("holds no PEM certificate".to_owned()),
        more => {
            return Err(format!(
                "holds {} certificates: register each CA as its own item",
                more.len()
            ));
        }
    };
    let (rest, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|err| format!("cannot be parsed: {err}"))?;
    if !rest.is_empty() {
        return Err("has trailing data after the certificate".to_owned());
    }
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|constraints| constraints.value.ca);
    if !is_ca {
        return Err("is not a CA certificate (basicConstraints CA:TRUE)".to_owned());
    }
    Ok(CaCertificate {
        pem: pem_of(&der),
        fingerprint: fingerprint(&der),
        der,
    })
}

/// PEM of a DER certificate, in 64-character lines.
fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// "sha256:" + lower-case hex SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(FINGERPRINT_PREFIX.len() + 64);
    out.push_str(FINGERPRINT_PREFIX);
    for byte in digest.as_ref() {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

/// A SPIFFE ID `spiffe://{trust_domain}/partner/{partner_id}` -> Some(partner_id)
/// when the trust domain matches and the id is well-formed; otherwise None.
pub fn partner_from_spiffe_id<'a>(uri: &'a str, trust_domain: &str) -> Option<&'a str> {
    // An empty trust domain would accept `spiffe:///partner/x`.
    if !is_valid_trust_domain(trust_domain) {
        return None;
    }
    let id = uri
        .strip_prefix(SPIFFE_SCHEME)?
        .strip_prefix(trust_domain)?
        .strip_prefix(PARTNER_PATH)?;
    is_valid_id(id).then_some(id)
}

/// The SPIFFE ID we put into a partner's client certificate.
pub fn partner_spiffe_id(trust_domain: &str, partner_id: &str) -> String {
    format!("{SPIFFE_SCHEME}{trust_domain}{PARTNER_PATH}{partner_id}")
}

/// The SPIFFE ID naming a whole trust domain (used as the CA's URI SAN).
pub fn trust_domain_spiffe_id(trust_domain: &str) -> String {
    format!("{SPIFFE_SCHEME}{trust_domain}")
}

/// The trust domain of any SPIFFE ID: `spiffe://{domain}/...` -> Some(domain).
pub fn spiffe_trust_domain(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix(SPIFFE_SCHEME)?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// `spiffe://{trust_domain}` (no path) -> Some(trust_domain).
pub fn trust_domain_from_spiffe_id(uri: &str) -> Option<&str> {
    let domain = uri.strip_prefix(SPIFFE_SCHEME)?;
    is_valid_trust_domain(domain).then_some(domain)
}

/// Normalises a fingerprint written by a human: accepts "sha256:AB:CD:..." /
/// "AB CD ..." / upper or lower hex, returns `sha256:` and 64 lower-case hex digits or None when
/// not 32 bytes of hex.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let text = text.trim();
    let hex = match text.get(..FINGERPRINT_PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(FINGERPRINT_PREFIX) => {
            &text[FINGERPRINT_PREFIX.len()..]
        }
        _ => text,
    };
    let mut out = String::with_capacity(FINGERPRINT_PREFIX.len() + 64);
    out.push_str(FINGERPRINT_PREFIX);
    let mut digits = 0;
    for c in hex.chars() {
        // Tools print fingerprints with ':' or ' ' between bytes.
        if c == ':' || c.is_whitespace() {
            continue;
        }
        if !c.is_ascii_hexdigit() {
            return None;
        }
        out.push(c.to_ascii_lowercase());
        digits += 1;
    }
    (digits == 64).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafOptions};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn leaf(ca: &CertificateAuthority, uri_sans: &[&str]) -> Vec<u8> {
        let (cert, _key) = ca
            .sign_leaf(&LeafOptions {
                common_name: "test".into(),
                uri_sans: uri_sans.iter().map(|s| (*s).to_owned()).collect(),
                client_auth: true,
                ..Default::default()
            })
            .unwrap();
        der_of(&cert)
    }

    #[test]
    fn fingerprint_is_prefixed_lower_hex_sha256() {
        assert_eq!(fingerprint(b""), EMPTY_SHA256);
    }

    #[test]
    fn inspect_reads_uri_sans_in_order() {
        let ca = CertificateAuthority::generate("test CA", "copex.local").unwrap();

        let one = leaf(&ca, &["spiffe://copex.local/partner/a"]);
        let id = inspect(&one).unwrap();
        assert_eq!(id.uri_sans, ["spiffe://copex.local/partner/a"]);
        assert_eq!(id.fingerprint, fingerprint(&one));
        assert_eq!(
            partner_from_spiffe_id(&id.uri_sans[0], "copex.local"),
            Some("a")
        );

        let two = leaf(
            &ca,
            &[
                "spiffe://copex.local/partner/b",
                "spiffe://copex.local/partner/a",
            ],
        );
        assert_eq!(
            inspect(&two).unwrap().uri_sans,
            [
                "spiffe://copex.local/partner/b",
                "spiffe://copex.local/partner/a"
            ]
        );

        let foreign = leaf(&ca, &["spiffe://elsewhere.org/partner/a"]);
        let id = inspect(&foreign).unwrap();
        assert_eq!(id.uri_sans, ["spiffe://elsewhere.org/partner/a"]);
        assert_eq!(partner_from_spiffe_id(&id.uri_sans[0], "copex.local"), None);

        let none = leaf(&ca, &[]);
        assert!(inspect(&none).unwrap().uri_sans.is_empty());
    }

    #[test]
    fn inspect_ignores_dns_and_ip_sans() {
        let ca = CertificateAuthority::generate("test CA", "copex.local").unwrap();
        let (cert, _) = ca
            .sign_leaf(&LeafOptions {
                common_name: "server".into(),
                dns_sans: vec!["localhost".into()],
                ip_sans: vec!["127.0.0.1".parse().unwrap()],
                server_auth: true,
                ..Default::default()
            })
            .unwrap();
        assert!(inspect(&der_of(&cert)).unwrap().uri_sans.is_empty());
    }

    #[test]
    fn inspect_rejects_garbage_and_trailing_data() {
        assert!(matches!(inspect(b"not a cert"), Err(CertError::Parse(_))));
        let ca = CertificateAuthority::generate("test CA", "copex.local").unwrap();
        let mut der = leaf(&ca, &["spiffe://copex.local/partner/a"]);
        der.push(0);
        assert!(matches!(inspect(&der), Err(CertError::TrailingData(1))));
    }

    #[test]
    fn partner_ids_from_spiffe_ids() {
        let td = "copex.local";
        assert_eq!(
            partner_from_spiffe_id("spiffe://copex.local/partner/org-1", td),
            Some("org-1")
        );
        for bad in [
            "spiffe://copex.local/partner/",
            "spiffe://copex.local/partner/-a",
            "spiffe://copex.local/partner/a-",
            "spiffe://copex.local/partner/A",
            "spiffe://copex.local/partner/a/b",
            "spiffe://copex.local/partner/a_b",
            "spiffe://copex.local/partners/a",
            "spiffe://copex.local.evil/partner/a",
            "spiffe://evil.copex.local/partner/a",
            "SPIFFE://copex.local/partner/a",
            "https://copex.local/partner/a",
            "spiffe://copex.local",
        ] {
            assert_eq!(partner_from_spiffe_id(bad, td), None, "{bad}");
        }
        assert_eq!(partner_from_spiffe_id("spiffe:///partner/a", ""), None);
        let long = "a".repeat(63);
        assert_eq!(
            partner_from_spiffe_id(&partner_spiffe_id(td, &long), td),
            Some(long.as_str())
        );
        assert_eq!(
            partner_from_spiffe_id(&partner_spiffe_id(td, &"a".repeat(64)), td),
            None
        );
    }

    #[test]
    fn trust_domain_ids() {
        assert_eq!(
            trust_domain_from_spiffe_id(&trust_domain_spiffe_id("copex.local")),
            Some("copex.local")
        );
        assert_eq!(
            trust_domain_from_spiffe_id("spiffe://copex.local/partner/a"),
            None
        );
        assert_eq!(trust_domain_from_spiffe_id("spiffe://"), None);
        assert!(!is_valid_trust_domain("Copex.local"));
    }

    #[test]
    fn fingerprints_written_by_humans() {
        let lower = &EMPTY_SHA256[7..];
        let upper = lower.to_ascii_uppercase();
        let colons = upper
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let spaced = colons.replace(':', " ");
        for text in [
            EMPTY_SHA256.to_owned(),
            lower.to_owned(),
            upper.clone(),
            format!("SHA256:{colons}"),
            format!("sha256:{colons}"),
            colons.clone(),
            format!("  {spaced}\n"),
        ] {
            assert_eq!(
                normalize_fingerprint(&text).as_deref(),
                Some(EMPTY_SHA256),
                "{text}"
            );
        }
        for bad in [
            String::new(),
            "sha256:".to_owned(),
            lower[..62].to_owned(),
            format!("{lower}00"),
            format!("{}zz", &lower[..62]),
            format!("sha1:{lower}"),
        ] {
            assert_eq!(normalize_fingerprint(&bad), None, "{bad}");
        }
    }
}
