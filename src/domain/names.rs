//! Resource names (AIP-122) and ids.

use super::error::{Error, Result};
use super::kind::Kind;

pub const MAX_ID_LEN: usize = 63;

/// 1-63 characters of `a-z`, `0-9` and `-`, starting and ending with a letter
/// or digit (a lower-case UUID fits).
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
}

/// SPIFFE trust domain names: lower-case letters, digits, '.', '-' and '_'.
pub fn is_valid_trust_domain(domain: &str) -> bool {
    (1..=255).contains(&domain.len())
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}

pub fn check_id(field: &str, id: &str) -> Result<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{:?} is not a valid id: use 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
                truncate(id, 80)
            ),
        ))
    }
}

pub fn partner_name(id: &str) -> String {
    format!("partners/{id}")
}

/// `partners/{partner}` -> partner id.
pub fn parse_partner_name(field: &str, name: &str) -> Result<String> {
    match name.strip_prefix("partners/") {
        Some(id) if is_valid_id(id) => Ok(id.to_owned()),
        _ => Err(Error::invalid(
            field,
            format!(
                "{:?} is not a partner name of the form partners/{{partner}}",
                truncate(name, 80)
            ),
        )),
    }
}

/// A List parent: `partners/{partner}` or `partners/-` (all partners, `None`).
pub fn parse_list_parent(field: &str, parent: &str) -> Result<Option<String>> {
    if parent == "partners/-" {
        return Ok(None);
    }
    parse_partner_name(field, parent).map(Some).map_err(|_| {
        Error::invalid(
            field,
            format!(
                "{:?} is not a parent: use partners/{{partner}} or partners/- for every partner",
                truncate(parent, 80)
            ),
        )
    })
}

/// `partners/{partner}/{collection}/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordName {
    pub owner: String,
    pub kind: Kind,
    pub id: String,
}

impl RecordName {
    pub fn new(owner: &str, kind: Kind, id: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            kind,
            id: id.to_owned(),
        }
    }

    /// Parses any record name, whatever its kind.
    pub fn parse_any(field: &str, name: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                field,
                format!(
                    "{:?} is not a record name of the form partners/{{partner}}/{{workshops|practices|tools}}/{{id}}",
                    truncate(name, 80)
                ),
            )
        };
        let mut parts = name.split('/');
        let (Some("partners"), Some(owner), Some(collection), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let kind = Kind::from_collection(collection).ok_or_else(bad)?;
        if !is_valid_id(owner) || !is_valid_id(id) {
            return Err(bad());
        }
        Ok(Self::new(owner, kind, id))
    }

    /// Parses a name that must be of `kind`.
    pub fn parse(field: &str, kind: Kind, name: &str) -> Result<Self> {
        let parsed = Self::parse_any(field, name).map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "{:?} is not a {} name of the form partners/{{partner}}/{}/{{{}}}",
                    truncate(name, 80),
                    kind.singular(),
                    kind.collection(),
                    kind.singular()
                ),
            )
        })?;
        if parsed.kind != kind {
            return Err(Error::invalid(
                field,
                format!(
                    "{:?} names a {}, not a {}",
                    truncate(name, 80),
                    parsed.kind.singular(),
                    kind.singular()
                ),
            ));
        }
        Ok(parsed)
    }
}

impl std::fmt::Display for RecordName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partners/{}/{}/{}",
            self.owner,
            self.kind.collection(),
            self.id
        )
    }
}

/// Shortens client text quoted back in an error, on a character boundary.
pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("0b3c2f8e-1d2a-4c1b-9b7e-2f3a4b5c6d7e"));
        assert!(is_valid_id(&"a".repeat(63)));
        assert!(!is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("-a"));
        assert!(!is_valid_id("a-"));
        assert!(!is_valid_id("A"));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("a'; DROP TABLE records; --"));
    }

    #[test]
    fn record_names() {
        let name = RecordName::parse("name", Kind::Tool, "partners/ecpat/tools/t-1").unwrap();
        assert_eq!(name.owner, "ecpat");
        assert_eq!(name.to_string(), "partners/ecpat/tools/t-1");
        assert!(RecordName::parse("name", Kind::Workshop, "partners/ecpat/tools/t-1").is_err());
        assert!(RecordName::parse_any("name", "partners/ecpat/tools/t-1/x").is_err());
        assert!(RecordName::parse_any("name", "partners/ecpat/things/t").is_err());
        assert_eq!(parse_list_parent("parent", "partners/-").unwrap(), None);
        assert!(parse_list_parent("parent", "partners/").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé...");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
