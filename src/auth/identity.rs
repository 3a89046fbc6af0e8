//! From a verified client certificate to the calling partner.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tonic::Request;

use super::cert::{self, CertValidity};
use super::rate::RateLimit;
use super::tls::Revocations;
use crate::domain::partner::Partner;
use crate::domain::{Error, Result};
use crate::pb::Role;
use crate::store::{AuditContext, DynStore};
use crate::telemetry::CallAudit;

/// The authenticated partner behind a call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub partner: Partner,
    /// `sha256:...` of the leaf certificate.
    pub fingerprint: String,
    /// The call's audit details, when it came through the network.
    pub audit: Option<CallAudit>,
}

impl Caller {
    /// Who makes a write, for the audit rows of its transaction.
    pub fn audit_context(&self) -> AuditContext {
        let mut context = self
            .audit
            .as_ref()
            .map(CallAudit::context)
            .unwrap_or_default();
        context.partner = self.partner.id.clone();
        context.fingerprint = self.fingerprint.clone();
        context
    }

    /// Names the resource a denied call was about, for the audit log.
    pub fn note_resource(&self, name: &str) {
        if let Some(audit) = &self.audit {
            audit.update(|_, resource| *resource = name.to_owned());
        }
    }

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

/// How long a certificate's partner is remembered. Changes made through this
/// hub take effect at once (`forget`); changes made elsewhere (another
/// instance on the same database) within this time.
const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_CAPACITY: usize = 10_000;

/// A certificate's partner and what decides whether the certificate is
/// still good, as remembered.
type Remembered = (Partner, CertValidity, Instant);

#[derive(Clone)]
pub struct Authenticator {
    store: DynStore,
    trust_domain: String,
    /// Certificate fingerprint -> partner, so a call costs one hash rather
    /// than a certificate parse and database reads.
    cache: Arc<RwLock<HashMap<String, Remembered>>>,
    /// The CRLs as last loaded: a certificate revoked after its connection
    /// opened is refused from the next call on.
    revocations: Arc<Revocations>,
    rate: Arc<RateLimit>,
}

impl Authenticator {
    pub fn new(
        store: DynStore,
        trust_domain: impl Into<String>,
        revocations: Arc<Revocations>,
        rate: RateLimit,
    ) -> Self {
        Self {
            store,
            trust_domain: trust_domain.into(),
            cache: Arc::default(),
            revocations,
            rate: Arc::new(rate),
        }
    }

    /// Drops every remembered partner; call after any partner changes.
    pub fn forget(&self) {
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    fn cached(&self, fingerprint: &str) -> Option<(Partner, CertValidity)> {
        let cache = self.cache.read().ok()?;
        let (partner, validity, at) = cache.get(fingerprint)?;
        (at.elapsed() < CACHE_TTL).then(|| (partner.clone(), validity.clone()))
    }

    fn remember(&self, fingerprint: &str, partner: &Partner, validity: &CertValidity) {
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (_, _, at)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(
                fingerprint.to_owned(),
                (partner.clone(), validity.clone(), Instant::now()),
            );
        }
    }

    /// The handshake checked the certificate when the connection opened;
    /// this checks it again for each call on a long-lived connection.
    fn check_still_valid(&self, validity: &CertValidity) -> Result<()> {
        if self
            .revocations
            .contains(&validity.issuer, &validity.serial)
        {
            return Err(Error::unauthenticated(
                "CERTIFICATE_REVOKED",
                "the client certificate has been revoked",
            ));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if validity.not_after < now {
            return Err(Error::unauthenticated(
                "CERTIFICATE_EXPIRED",
                "the client certificate has expired",
            ));
        }
        Ok(())
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
        let fingerprint = cert::fingerprint(leaf.as_ref());
        let audit = request.extensions().get::<CallAudit>().cloned();
        if let Some(audit) = &audit {
            audit.update(|context, _| context.fingerprint = fingerprint.clone());
        }
        let partner = match self.cached(&fingerprint) {
            Some((partner, validity)) => {
                self.check_still_valid(&validity)?;
                partner
            }
            None => {
                let (partner, validity) = self.identify(leaf.as_ref()).await?;
                self.remember(&fingerprint, &partner, &validity);
                partner
            }
        };
        if let Some(audit) = &audit {
            audit.update(|context, _| context.partner = partner.id.clone());
        }
        if !partner.is_active() {
            return Err(Error::permission_denied(
                "PARTNER_SUSPENDED",
                format!("{} is suspended", partner.name()),
            ));
        }
        tracing::Span::current().record("partner", partner.id.as_str());
        self.rate.check(&partner.id)?;
        Ok(Caller {
            partner,
            fingerprint,
            audit,
        })
    }

    /// The partner a certificate maps to, from the database.
    async fn identify(&self, leaf: &[u8]) -> Result<(Partner, CertValidity)> {
        let identity = cert::inspect(leaf).map_err(|err| {
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
        self.check_still_valid(&identity.validity)?;
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
        Ok((partner, identity.validity))
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
