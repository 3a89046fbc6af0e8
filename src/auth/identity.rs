//! From a verified client certificate to the calling partner.

use tonic::Request;

use super::cert;
use crate::domain::partner::Partner;
use crate::domain::{Error, Result};
use crate::pb::Role;
use crate::store::DynStore;

/// The authenticated partner behind a call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub partner: Partner,
    /// `sha256:...` of the leaf certificate.
    pub fingerprint: String,
}

impl Caller {
    pub fn id(&self) -> &str {
        &self.partner.id
    }

    pub fn require(&self, role: Role) -> Result<()> {
        // Contributors may do what readers may; admins manage partners only.
        let allowed = match role {
            Role::Reader => true,
            Role::Contributor => self.partner.has_role(Role::Contributor),
            Role::Admin => self.partner.has_role(Role::Admin),
            Role::Unspecified => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::permission_denied(
                "ROLE_REQUIRED",
                format!(
                    "{} lacks {}, which this call needs",
                    self.partner.name(),
                    role.as_str_name()
                ),
            ))
        }
    }
}

#[derive(Clone)]
pub struct Authenticator {
    store: DynStore,
    trust_domain: String,
}

impl Authenticator {
    pub fn new(store: DynStore, trust_domain: impl Into<String>) -> Self {
        Self {
            store,
            trust_domain: trust_domain.into(),
        }
    }

    /// Maps the peer's leaf certificate to an active partner: a registered
    /// identity (SPIFFE ID or fingerprint) first, then the SPIFFE ID
    /// `spiffe://{trust_domain}/partner/{id}`.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller> {
        let certs = request.peer_certs().ok_or_else(|| {
            Error::unauthenticated(
                "NO_CLIENT_CERTIFICATE",
                "no client certificate was presented",
            )
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Error::unauthenticated(
                "NO_CLIENT_CERTIFICATE",
                "no client certificate was presented",
            )
        })?;
        let identity = cert::inspect(leaf.as_ref()).map_err(|err| {
            Error::unauthenticated(
                "BAD_CERTIFICATE",
                format!("the client certificate cannot be read: {err}"),
            )
        })?;
        // SPIFFE X.509-SVID: a leaf carries exactly one URI SAN.
        if identity.uri_sans.len() > 1 {
            return Err(Error::unauthenticated(
                "MULTIPLE_URI_SANS",
                format!(
                    "the client certificate has {} URI SANs; a SPIFFE X.509-SVID has exactly one",
                    identity.uri_sans.len()
                ),
            ));
        }
        let partner = self.find_partner(&identity).await?.ok_or_else(|| {
            Error::unauthenticated(
                "UNKNOWN_PARTNER",
                format!(
                    "the client certificate ({}{}) maps to no registered partner",
                    identity
                        .uri_sans
                        .first()
                        .map(|u| format!("{u}, "))
                        .unwrap_or_default(),
                    identity.fingerprint
                ),
            )
        })?;
        if !partner.is_active() {
            return Err(Error::permission_denied(
                "PARTNER_SUSPENDED",
                format!("{} is suspended", partner.name()),
            ));
        }
        tracing::Span::current().record("partner", partner.id.as_str());
        Ok(Caller {
            partner,
            fingerprint: identity.fingerprint,
        })
    }

    async fn find_partner(&self, identity: &cert::CertIdentity) -> Result<Option<Partner>> {
        if let Some(uri) = identity.uri_sans.first() {
            if let Some(partner) = self.store.partner_by_identity(uri).await? {
                return Ok(Some(partner));
            }
            if let Some(id) = cert::partner_from_spiffe_id(uri, &self.trust_domain)
                && let Some(partner) = self.store.get_partner(id).await?
            {
                return Ok(Some(partner));
            }
        }
        self.store.partner_by_identity(&identity.fingerprint).await
    }
}
