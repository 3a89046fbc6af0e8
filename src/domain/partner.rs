//! Partners: the organisations that use the hub, their roles and identities.

use super::error::{Error, FieldViolation, Result};
use super::names::{self, truncate};
use crate::pb::{self, PartnerKind, PartnerState, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    pub id: String,
    pub uid: String,
    pub display_name: String,
    pub kind: i32,
    /// Sorted and without duplicates.
    pub roles: Vec<i32>,
    /// SPIFFE IDs and `sha256:` fingerprints that map to this partner.
    pub identities: Vec<String>,
    /// The partner's own CAs, in canonical PEM, sorted.
    pub ca_certificates: Vec<String>,
    pub state: i32,
    pub etag: String,
    pub create_time: i64,
    pub update_time: i64,
}

impl Partner {
    pub fn name(&self) -> String {
        names::partner_name(&self.id)
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&(role as i32))
    }

    pub fn is_active(&self) -> bool {
        self.state == PartnerState::Active as i32
    }

    pub fn to_proto(&self) -> pb::Partner {
        pb::Partner {
            name: self.name(),
            uid: self.uid.clone(),
            display_name: self.display_name.clone(),
            kind: self.kind,
            roles: self.roles.clone(),
            identities: self.identities.clone(),
            ca_certificates: self.ca_certificates.clone(),
            state: self.state,
            create_time: Some(super::record::timestamp_from_micros(self.create_time)),
            update_time: Some(super::record::timestamp_from_micros(self.update_time)),
            etag: self.etag.clone(),
        }
    }

    /// Recomputes the etag from the mutable fields.
    pub fn refresh_etag(&mut self) {
        let mut text = format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{}",
            self.display_name, self.kind, self.roles, self.identities, self.state
        );
        // Appended only when present, so partners without a CA keep the
        // etags they had before partners could register one.
        if !self.ca_certificates.is_empty() {
            text.push_str(&format!("\u{0}{:?}", self.ca_certificates));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        self.etag = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    }
}

/// The mutable fields of a partner, checked, from a client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerFields {
    pub display_name: String,
    pub kind: i32,
    pub roles: Vec<i32>,
    pub identities: Vec<String>,
    pub ca_certificates: Vec<String>,
    pub state: i32,
}

/// CA certificates one partner may register; a partner rotating its CA
/// needs two at a time, rarely more.
const MAX_CA_CERTIFICATES: usize = 10;

/// Checks a client's partner message. `for_create` makes an unset state
/// mean ACTIVE; on update an unset state is invalid when the mask names it.
pub fn validate_fields(msg: &pb::Partner, for_create: bool) -> Result<PartnerFields> {
    let mut violations = Vec::new();
    let display_name = msg.display_name.trim().to_owned();
    if display_name.is_empty() {
        violations.push(FieldViolation::new("partner.display_name", "is required"));
    } else if display_name.contains('\0') {
        violations.push(FieldViolation::new(
            "partner.display_name",
            super::record::NUL_DESCRIPTION,
        ));
    } else if display_name.chars().count() > super::record::MAX_TITLE_CHARS {
        violations.push(FieldViolation::new(
            "partner.display_name",
            format!(
                "is longer than {} characters",
                super::record::MAX_TITLE_CHARS
            ),
        ));
    }
    if PartnerKind::try_from(msg.kind).is_err() {
        violations.push(FieldViolation::new(
            "partner.kind",
            format!("{} is not a PartnerKind value", msg.kind),
        ));
    }
    let mut roles = Vec::new();
    for (i, role) in msg.roles.iter().enumerate() {
        match Role::try_from(*role) {
            Ok(Role::Unspecified) | Err(_) => violations.push(FieldViolation::new(
                format!("partner.roles[{i}]"),
                format!("{role} is not a role: use ROLE_READER, ROLE_CONTRIBUTOR or ROLE_ADMIN"),
            )),
            Ok(r) => roles.push(r as i32),
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let mut identities = Vec::new();
    if msg.identities.len() > super::record::MAX_ITEMS {
        violations.push(FieldViolation::new(
            "partner.identities",
            format!("has more than {} items", super::record::MAX_ITEMS),
        ));
    }
    for (i, identity) in msg.identities.iter().enumerate() {
        match normalize_identity(identity) {
            Some(id) => identities.push(id),
            None => violations.push(FieldViolation::new(
                format!("partner.identities[{i}]"),
                format!(
                    "{:?} is neither a SPIFFE ID (spiffe://...) nor a certificate fingerprint (sha256: and 64 hex digits)",
                    truncate(identity, 80)
                ),
            )),
        }
    }
    identities.sort();
    identities.dedup();
    let mut ca_certificates = Vec::new();
    if msg.ca_certificates.len() > MAX_CA_CERTIFICATES {
        violations.push(FieldViolation::new(
            "partner.ca_certificates",
            format!("has more than {MAX_CA_CERTIFICATES} items"),
        ));
    }
    for (i, pem) in msg.ca_certificates.iter().enumerate() {
        match crate::auth::cert::ca_certificate(pem) {
            Ok(ca) => ca_certificates.push(ca.pem),
            Err(why) => violations.push(FieldViolation::new(
                format!("partner.ca_certificates[{i}]"),
                why,
            )),
        }
    }
    ca_certificates.sort();
    ca_certificates.dedup();
    let state = match PartnerState::try_from(msg.state) {
        Ok(PartnerState::Unspecified) if for_create => PartnerState::Active as i32,
        Ok(PartnerState::Unspecified) | Err(_) => {
            violations.push(FieldViolation::new(
                "partner.state",
                "use PARTNER_STATE_ACTIVE or PARTNER_STATE_SUSPENDED",
            ));
            0
        }
        Ok(s) => s as i32,
    };
    if violations.is_empty() {
        Ok(PartnerFields {
            display_name,
            kind: msg.kind,
            roles,
            identities,
            ca_certificates,
            state,
        })
    } else {
        Err(Error::Invalid(violations))
    }
}

fn normalize_identity(text: &str) -> Option<String> {
    if let Some(rest) = text.strip_prefix("spiffe://") {
        let ok =
            !rest.is_empty() && text.len() <= 2048 && rest.chars().all(|c| c.is_ascii_graphic());
        return ok.then(|| text.to_owned());
    }
    crate::auth::cert::normalize_fingerprint(text)
}
