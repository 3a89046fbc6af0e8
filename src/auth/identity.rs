//! From a verified client certificate to the calling partner.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tonic::Request;

use rustls::pki_types::CertificateDer;

use super::cert::{self, CertValidity};
use super::rate::RateLimit;
use super::tls::{Anchor, ServerTls};
use crate::domain::partner::Partner;
use crate::domain::{Error, Result};
use crate::pb::Role;
use crate::server::layers::CallAudit;
use crate::store::{AuditContext, DynStore};

/// The authenticated partner behind a call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub partner: Partner,
    /// `sha256:...` of the leaf certificate.
    pub fingerprint: String,
    /// The call's audit details, when it came through the network.
    pub audit: Option<CallAudit>,
    /// The certificate chain the caller presented (leaf first), so a long
    /// call can check it again.
    chain: Arc<Vec<CertificateDer<'static>>>,
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
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_CAPACITY: usize = 10_000;

/// What a certificate was found to be: its partner and what decides whether
/// the certificate is still good, or why it maps to nobody.
type Identified = std::result::Result<(Partner, CertValidity), Error>;

/// The CAs registered on partners, as verifiers, read from the store.
type PartnerAnchors = Vec<(String, Anchor)>;

/// The partners' anchors and when they were read.
type RememberedAnchors = Option<(Arc<PartnerAnchors>, Instant)>;

#[derive(Clone)]
pub struct Authenticator {
    store: DynStore,
    trust_domain: String,
    /// Certificate fingerprint -> what it maps to, so a call costs one hash
    /// rather than a certificate parse and database reads; refusals are
    /// remembered too, so an unknown certificate cannot make each call a
    /// database read.
    cache: Arc<RwLock<HashMap<String, (Identified, Instant)>>>,
    /// The partners' CAs, remembered as long as identities are.
    partner_anchors: Arc<RwLock<RememberedAnchors>>,
    /// The hub's CA and the CRLs as last loaded: a certificate revoked
    /// after its connection opened is refused from the next call on.
    tls: Arc<ServerTls>,
    rate: Arc<RateLimit>,
}

impl Authenticator {
    pub fn new(
        store: DynStore,
        trust_domain: impl Into<String>,
        tls: Arc<ServerTls>,
        rate: RateLimit,
    ) -> Self {
        Self {
            store,
            trust_domain: trust_domain.into(),
            cache: Arc::default(),
            partner_anchors: Arc::default(),
            tls,
            rate: Arc::new(rate),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Drops every remembered identity; call after any partner changes.
    pub fn forget(&self) {
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
        if let Ok(mut anchors) = self.partner_anchors.write() {
            *anchors = None;
        }
    }

    fn cached(&self, fingerprint: &str) -> Option<Identified> {
        let cache = self.cache.read().ok()?;
        let (identified, at) = cache.get(fingerprint)?;
        (at.elapsed() < CACHE_TTL).then(|| identified.clone())
    }

    fn remember(&self, fingerprint: &str, identified: &Identified) {
        // A database that failed says nothing about the certificate.
        if matches!(identified, Err(err) if !matches!(err, Error::Unauthenticated { .. })) {
            return;
        }
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(fingerprint.to_owned(), (identified.clone(), Instant::now()));
        }
    }

    /// The handshake checked the certificate when the connection opened;
    /// this checks it again for each call on a long-lived connection.
    fn check_still_valid(&self, validity: &CertValidity) -> Result<()> {
        if self
            .tls
            .revocations()
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

    /// Maps the peer's certificate to an active partner. The rate limit
    /// comes first, keyed by the partner when the certificate is known to
    /// map to an active one and by the certificate otherwise, so refused
    /// calls cost a hash and a bucket, not database reads.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller> {
        let no_certificate = || {
            Error::unauthenticated(
                "NO_CLIENT_CERTIFICATE",
                "no client certificate was presented",
            )
        };
        let chain = request.peer_certs().ok_or_else(no_certificate)?;
        let leaf = chain.first().ok_or_else(no_certificate)?;
        let fingerprint = cert::fingerprint(leaf.as_ref());
        let audit = request.extensions().get::<CallAudit>().cloned();
        if let Some(audit) = &audit {
            audit.update(|context, _| context.fingerprint = fingerprint.clone());
        }
        let cached = self.cached(&fingerprint);
        match &cached {
            Some(Ok((partner, _))) if partner.is_active() => {
                self.rate.check(&partner.id, &partner.name())?;
            }
            _ => self
                .rate
                .check(&fingerprint, &format!("the certificate {fingerprint}"))?,
        }
        let identified = match cached {
            Some(identified) => identified,
            None => {
                let identified = self.identify(&chain).await;
                self.remember(&fingerprint, &identified);
                identified
            }
        };
        let (partner, validity) = identified?;
        self.check_still_valid(&validity)?;
        if let Some(audit) = &audit {
            audit.update(|context, _| context.partner = partner.id.clone());
        }
        if !partner.is_active() {
            return Err(suspended(&partner));
        }
        tracing::Span::current().record("partner", partner.id.as_str());
        Ok(Caller {
            partner,
            fingerprint,
            audit,
            chain,
        })
    }

    /// Checks a caller again, for a call that lasts (a watch stream): its
    /// certificate must still be good and map to the same partner, and that
    /// partner must still be active. Partner changes made elsewhere show
    /// within `CACHE_TTL`.
    pub async fn recheck(&self, caller: &Caller) -> Result<()> {
        let identified = match self.cached(&caller.fingerprint) {
            Some(identified) => identified,
            None => {
                let identified = self.identify(&caller.chain).await;
                self.remember(&caller.fingerprint, &identified);
                identified
            }
        };
        let (partner, validity) = identified?;
        self.check_still_valid(&validity)?;
        if partner.id != caller.partner.id {
            return Err(Error::unauthenticated(
                "IDENTITY_CHANGED",
                format!(
                    "the client certificate no longer maps to {}",
                    caller.partner.name()
                ),
            ));
        }
        if !partner.is_active() {
            return Err(suspended(&partner));
        }
        Ok(())
    }

    /// The partner a certificate chain maps to, from the database. Which CA
    /// vouched for the chain decides what it may map to: the hub's own CA
    /// vouches for the hub's trust domain (and registered identities); a CA
    /// registered on a partner only for that partner, through the
    /// identities registered on it; any other CA in the bundle for nobody.
    async fn identify(&self, chain: &[CertificateDer<'static>]) -> Identified {
        let leaf = chain.first().map(|der| der.as_ref()).unwrap_or_default();
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
        let uri = identity.uri_sans.first().map(String::as_str);
        let partner = if self.tls.hub_ca_vouches_for(chain) {
            self.partner_of_hub_certificate(uri, &identity.fingerprint)
                .await?
        } else {
            self.partner_of_partner_certificate(chain, uri, &identity.fingerprint)
                .await?
        };
        let partner = partner.ok_or_else(|| {
            Error::unauthenticated(
                "UNKNOWN_PARTNER",
                format!(
                    "the client certificate ({}{}) maps to no registered partner",
                    uri.map(|u| format!("{u}, ")).unwrap_or_default(),
                    identity.fingerprint
                ),
            )
        })?;
        Ok((partner, identity.validity))
    }

    /// A certificate of the hub's own CA: `spiffe://{trust_domain}/partner/{id}`
    /// names partner `id` and nobody else; other IDs and fingerprints map
    /// through the identities registered on partners.
    async fn partner_of_hub_certificate(
        &self,
        uri: Option<&str>,
        fingerprint: &str,
    ) -> Result<Option<Partner>> {
        if let Some(uri) = uri {
            if let Some(id) = cert::partner_from_spiffe_id(uri, &self.trust_domain) {
                return self.store.get_partner(id).await;
            }
            if let Some(partner) = self.store.partner_by_identity(uri).await? {
                return Ok(Some(partner));
            }
        }
        self.store.partner_by_identity(fingerprint).await
    }

    /// A certificate of a CA that is not the hub's: it maps only to the
    /// partner that registered that CA, only through that partner's own
    /// identities, and never to an ID of the hub's trust domain.
    async fn partner_of_partner_certificate(
        &self,
        chain: &[CertificateDer<'static>],
        uri: Option<&str>,
        fingerprint: &str,
    ) -> Result<Option<Partner>> {
        let anchors = self.partner_anchors().await?;
        let Some((owner, _)) = anchors.iter().find(|(_, anchor)| anchor.vouches_for(chain)) else {
            return Err(Error::unauthenticated(
                "UNREGISTERED_CA",
                "the client certificate was issued by a CA that is registered on no partner: \
                 the hub's operator registers a partner's CA on that partner (ca_certificates)",
            ));
        };
        let Some(partner) = self.store.get_partner(owner).await? else {
            return Ok(None);
        };
        let in_hub_domain = uri.is_some_and(|uri| {
            cert::spiffe_trust_domain(uri).is_some_and(|domain| domain == self.trust_domain)
        });
        let registered = |identity: &str| partner.identities.iter().any(|i| i == identity);
        let by_uri = uri.is_some_and(|uri| !in_hub_domain && registered(uri));
        if by_uri || registered(fingerprint) {
            return Ok(Some(partner));
        }
        Err(Error::unauthenticated(
            "IDENTITY_NOT_REGISTERED",
            format!(
                "the client certificate ({}{fingerprint}) was issued by the CA of {}, which vouches \
                 only for the identities registered on it (its own SPIFFE IDs, outside the trust \
                 domain {}, or certificate fingerprints)",
                uri.map(|u| format!("{u}, ")).unwrap_or_default(),
                partner.name(),
                self.trust_domain
            ),
        ))
    }

    async fn partner_anchors(&self) -> Result<Arc<PartnerAnchors>> {
        if let Ok(slot) = self.partner_anchors.read()
            && let Some((anchors, at)) = slot.as_ref()
            && at.elapsed() < CACHE_TTL
        {
            return Ok(anchors.clone());
        }
        let mut by_partner: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (partner, pem) in self.store.partner_cas().await? {
            let der = cert::ca_certificate(&pem)
                .map_err(|why| Error::internal(format!("a stored CA certificate {why}")))?
                .der;
            match by_partner.last_mut() {
                Some((last, ders)) if *last == partner => ders.push(der),
                _ => by_partner.push((partner, vec![der])),
            }
        }
        let mut anchors = Vec::with_capacity(by_partner.len());
        for (partner, ders) in by_partner {
            let anchor = Anchor::of(&ders).map_err(Error::internal)?;
            anchors.push((partner, anchor));
        }
        let anchors = Arc::new(anchors);
        if let Ok(mut slot) = self.partner_anchors.write() {
            *slot = Some((anchors.clone(), Instant::now()));
        }
        Ok(anchors)
    }
}

fn suspended(partner: &Partner) -> Error {
    Error::permission_denied(
        "PARTNER_SUSPENDED",
        format!("{} is suspended", partner.name()),
    )
}
