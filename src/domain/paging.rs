//! order_by (AIP-132) and opaque, signed page tokens that pin a query and the
//! keyset position after the last record returned.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::kind::Kind;
use super::names::truncate;
use super::seal::Sealer;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// Page size rules of AIP-158: 0 means the default, above the maximum is
/// clamped, negative is invalid.
pub fn page_size(requested: i32, default: usize, max: usize) -> Result<usize> {
    match requested {
        n if n < 0 => Err(Error::invalid(
            "page_size",
            format!("{n} is negative; use 0 for the default or a positive number"),
        )),
        0 => Ok(default),
        n => Ok((n as usize).min(max)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreateTime,
    UpdateTime,
    Name,
    Title,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    pub field: SortField,
    pub desc: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Int(i64),
    Text(String),
}

/// Parses `order_by`; the result always ends with `name`, which is unique, so
/// the keyset order is total. Default: `create_time, name`.
pub fn parse_order_by(kind: Kind, order_by: &str) -> Result<Vec<OrderKey>> {
    let mut keys: Vec<OrderKey> = Vec::new();
    let title = kind.title_field();
    for (i, part) in order_by.split(',').enumerate() {
        let words: Vec<&str> = part.split_whitespace().collect();
        if words.is_empty() {
            if order_by.trim().is_empty() {
                break;
            }
            return Err(Error::invalid(
                "order_by",
                format!("item {} is empty", i + 1),
            ));
        }
        let desc = match words.get(1).copied() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(Error::invalid(
                    "order_by",
                    format!("{:?}: expected asc or desc", truncate(other, 40)),
                ));
            }
        };
        if words.len() > 2 {
            return Err(Error::invalid(
                "order_by",
                format!(
                    "{:?}: expected a field and an optional desc",
                    truncate(part, 80)
                ),
            ));
        }
        let field = match words[0] {
            "create_time" => SortField::CreateTime,
            "update_time" => SortField::UpdateTime,
            "name" => SortField::Name,
            f if f == title => SortField::Title,
            other => {
                return Err(Error::invalid(
                    "order_by",
                    format!(
                        "cannot order by {:?}: use create_time, update_time, name or {title}",
                        truncate(other, 40)
                    ),
                ));
            }
        };
        if keys.iter().any(|k| k.field == field) {
            return Err(Error::invalid(
                "order_by",
                format!("{} is named twice", words[0]),
            ));
        }
        keys.push(OrderKey { field, desc });
    }
    if keys.is_empty() {
        keys.push(OrderKey {
            field: SortField::CreateTime,
            desc: false,
        });
    }
    if !keys.iter().any(|k| k.field == SortField::Name) {
        keys.push(OrderKey {
            field: SortField::Name,
            desc: false,
        });
    }
    Ok(keys)
}

/// Seals and opens page tokens with the hub's secret key (`domain::seal`),
/// so a token can be neither read (an audit page's position would count
/// other partners' events) nor forged or moved to another query.
#[derive(Clone)]
pub struct PageTokens {
    sealer: Sealer,
}

#[derive(Serialize, Deserialize)]
struct TokenBody {
    /// Digest of the query the token belongs to.
    q: String,
    /// Keyset position: the sort values of the last record returned.
    k: Vec<SortValue>,
}

impl PageTokens {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            sealer: Sealer::new(secret, "page token"),
        }
    }

    /// A digest of everything that must stay the same between pages.
    pub fn query_digest(parts: &[&str]) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(&ctx.finish().as_ref()[..12])
    }

    pub fn issue(&self, query: &str, position: Vec<SortValue>) -> Result<String> {
        let body = serde_json::to_vec(&TokenBody {
            q: query.to_owned(),
            k: position,
        })
        .map_err(Error::internal)?;
        Ok(URL_SAFE_NO_PAD.encode(self.sealer.seal(&body)?))
    }

    /// Given up to `limit + 1` items read, keeps `limit` and returns the
    /// token of the page after them (empty on the last page).
    pub fn next_page<T>(
        &self,
        query: &str,
        items: &mut Vec<T>,
        limit: usize,
        position: impl FnOnce(&T) -> Vec<SortValue>,
    ) -> Result<String> {
        if items.len() <= limit {
            return Ok(String::new());
        }
        items.truncate(limit);
        match items.last() {
            Some(last) => self.issue(query, position(last)),
            None => Ok(String::new()),
        }
    }

    /// `Ok(None)` for an empty token; INVALID_ARGUMENT for anything not issued
    /// by this hub for this very query.
    pub fn open(&self, query: &str, token: &str) -> Result<Option<Vec<SortValue>>> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            Error::invalid(
                "page_token",
                "is not a page token issued for this query: pass next_page_token back unchanged, with the rest of the request as it was",
            )
        };
        let sealed = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let body = self.sealer.open(&sealed).ok_or_else(invalid)?;
        let body: TokenBody = serde_json::from_slice(&body).map_err(|_| invalid())?;
        if body.q != query {
            return Err(invalid());
        }
        Ok(Some(body.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_parsing() {
        let keys = parse_order_by(Kind::Tool, "display_name desc, create_time").unwrap();
        assert_eq!(
            keys,
            vec![
                OrderKey {
                    field: SortField::Title,
                    desc: true
                },
                OrderKey {
                    field: SortField::CreateTime,
                    desc: false
                },
                OrderKey {
                    field: SortField::Name,
                    desc: false
                },
            ]
        );
        assert_eq!(parse_order_by(Kind::Tool, "").unwrap().len(), 2);
        assert!(parse_order_by(Kind::Tool, "title").is_err());
        assert!(parse_order_by(Kind::Workshop, "title sideways").is_err());
        assert!(parse_order_by(Kind::Workshop, "name, name").is_err());
        assert!(parse_order_by(Kind::Workshop, "name,").is_err());
        assert!(parse_order_by(Kind::Workshop, "name; DROP TABLE records").is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0, 50, 1000).unwrap(), 50);
        assert_eq!(page_size(5000, 50, 1000).unwrap(), 1000);
        assert!(page_size(-1, 50, 1000).is_err());
    }

    #[test]
    fn tokens_are_bound_to_key_and_query() {
        let tokens = PageTokens::new(b"secret");
        let token = tokens
            .issue("q1", vec![SortValue::Int(5), SortValue::Text("n".into())])
            .unwrap();
        assert_eq!(
            tokens.open("q1", &token).unwrap(),
            Some(vec![SortValue::Int(5), SortValue::Text("n".into())])
        );
        assert!(tokens.open("q2", &token).is_err());
        assert!(PageTokens::new(b"other").open("q1", &token).is_err());
        assert!(tokens.open("q1", "garbage").is_err());
        let mut forged = token.clone();
        forged.insert(3, 'x');
        assert!(tokens.open("q1", &forged).is_err());
        assert_eq!(tokens.open("q1", "").unwrap(), None);
    }

    #[test]
    fn tokens_say_nothing_of_their_position() {
        let tokens = PageTokens::new(b"secret");
        let token = tokens.issue("q1", vec![SortValue::Int(1078)]).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("1078"));
        assert_ne!(
            token,
            tokens.issue("q1", vec![SortValue::Int(1078)]).unwrap()
        );
    }
}
