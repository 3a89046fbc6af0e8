//! PartnerService: every active partner may read partners (to pick
//! recipients); only admins create or change them.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::ServiceContext;
use crate::domain::names;
use crate::domain::paging::{self, PageTokens, SortValue};
use crate::domain::partner::{self, Partner};
use crate::domain::record::now_micros;
use crate::domain::{Error, Result};
use crate::pb::{self, Role};

#[derive(Clone)]
pub struct PartnerApi {
    hub: Arc<ServiceContext>,
}

impl PartnerApi {
    pub fn new(hub: Arc<ServiceContext>) -> Self {
        Self { hub }
    }
}

const MUTABLE_FIELDS: [&str; 6] = [
    "display_name",
    "kind",
    "roles",
    "identities",
    "ca_certificates",
    "state",
];

/// An identity maps to exactly one partner, and a CA vouches for one
/// partner: refuses identities and CAs that would let `id` speak for
/// another partner or for the hub's trust domain. Duplicates among stored
/// identities and CAs are refused by the store.
async fn check_identities(
    hub: &ServiceContext,
    id: &str,
    identities: &[String],
    ca_certificates: &[String],
) -> Result<()> {
    let trust_domain = hub.auth.trust_domain();
    let mut violations = Vec::new();
    for (i, identity) in identities.iter().enumerate() {
        let Some(other) = crate::auth::cert::partner_from_spiffe_id(identity, trust_domain) else {
            continue;
        };
        if other == id {
            continue;
        }
        if hub.store.get_partner(other).await?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "the identity {identity} (it is {}'s own)",
                names::partner_name(other)
            )));
        }
        violations.push(crate::domain::FieldViolation::new(
            format!("partner.identities[{i}]"),
            format!("{identity} is reserved for {}", names::partner_name(other)),
        ));
    }
    for (i, pem) in ca_certificates.iter().enumerate() {
        let is_hub_ca = crate::auth::cert::ca_certificate(pem)
            .is_ok_and(|ca| hub.tls.is_hub_ca(&ca.fingerprint));
        if is_hub_ca {
            violations.push(crate::domain::FieldViolation::new(
                format!("partner.ca_certificates[{i}]"),
                "is the hub's own CA, which vouches for the trust domain, not for one partner",
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(violations))
    }
}

/// Creates a partner; used by CreatePartner and by the bootstrap at start.
pub async fn create_partner(
    store: &dyn crate::store::Store,
    id: &str,
    fields: partner::PartnerFields,
    audit: Option<&crate::store::AuditContext>,
) -> Result<Partner> {
    let now = now_micros();
    let mut created = Partner {
        id: id.to_owned(),
        uid: Uuid::new_v4().to_string(),
        display_name: fields.display_name,
        kind: fields.kind,
        roles: fields.roles,
        identities: fields.identities,
        ca_certificates: fields.ca_certificates,
        state: fields.state,
        etag: String::new(),
        create_time: now,
        update_time: now,
    };
    created.refresh_etag();
    store.create_partner(&created, audit).await?;
    Ok(created)
}

#[tonic::async_trait]
impl pb::partner_service_server::PartnerService for PartnerApi {
    async fn get_current_partner(
        &self,
        request: Request<pb::GetCurrentPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        Ok(Response::new(caller.partner.to_proto()))
    }

    async fn get_partner(
        &self,
        request: Request<pb::GetPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        self.hub.auth.authenticate(&request).await?;
        let id = names::parse_partner_name("name", &request.get_ref().name)?;
        let found = self
            .hub
            .store
            .get_partner(&id)
            .await?
            .ok_or_else(|| Error::NotFound(names::partner_name(&id)))?;
        Ok(Response::new(found.to_proto()))
    }

    async fn list_partners(
        &self,
        request: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        self.hub.auth.authenticate(&request).await?;
        let req = request.into_inner();
        let limit = paging::page_size(
            req.page_size,
            paging::DEFAULT_PAGE_SIZE,
            paging::MAX_PAGE_SIZE,
        )?;
        let digest = PageTokens::query_digest(&["partners"]);
        let after = match self.hub.tokens.open(&digest, &req.page_token)? {
            None => None,
            Some(position) => match position.as_slice() {
                [SortValue::Text(id)] => Some(id.clone()),
                _ => {
                    return Err(Error::invalid("page_token", "is not a partners page token").into());
                }
            },
        };
        let mut found = self
            .hub
            .store
            .list_partners(after.as_deref(), limit + 1)
            .await?;
        let next_page_token = self
            .hub
            .tokens
            .next_page(&digest, &mut found, limit, |last| {
                vec![SortValue::Text(last.id.clone())]
            })?;
        Ok(Response::new(pb::ListPartnersResponse {
            partners: found.iter().map(Partner::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn create_partner(
        &self,
        request: Request<pb::CreatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        caller.require(Role::Admin)?;
        let req = request.into_inner();
        names::check_id("partner_id", &req.partner_id)?;
        let msg = req
            .partner
            .ok_or_else(|| Error::invalid("partner", "is required"))?;
        let fields = partner::validate_fields(&msg, true)?;
        check_identities(
            &self.hub,
            &req.partner_id,
            &fields.identities,
            &fields.ca_certificates,
        )
        .await?;
        // The partner's implicit SPIFFE ID must not be registered elsewhere
        // (hubs of earlier versions allowed it).
        let implicit =
            crate::auth::cert::partner_spiffe_id(self.hub.auth.trust_domain(), &req.partner_id);
        if let Some(holder) = self.hub.store.partner_by_identity(&implicit).await? {
            return Err(Error::AlreadyExists(format!(
                "the identity {implicit} (registered on {})",
                holder.name()
            ))
            .into());
        }
        let created = create_partner(
            self.hub.store.as_ref(),
            &req.partner_id,
            fields,
            Some(&caller.audit_context()),
        )
        .await?;
        self.hub.auth.forget();
        if !created.ca_certificates.is_empty() {
            self.hub.trust_partner_cas().await?;
        }
        tracing::info!(partner = %created.id, by = %caller.id(), "partner created");
        Ok(Response::new(created.to_proto()))
    }

    async fn update_partner(
        &self,
        request: Request<pb::UpdatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        caller.require(Role::Admin)?;
        let req = request.into_inner();
        let patch = req
            .partner
            .ok_or_else(|| Error::invalid("partner", "is required"))?;
        let id = names::parse_partner_name("partner.name", &patch.name)?;
        let mut paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() || paths.iter().any(|p| p == "*") {
            paths = MUTABLE_FIELDS.iter().map(|f| f.to_string()).collect();
        }
        let unknown: Vec<_> = paths
            .iter()
            .filter(|p| !MUTABLE_FIELDS.contains(&p.as_str()))
            .map(|p| {
                crate::domain::FieldViolation::new(
                    "update_mask",
                    format!(
                        "{:?} cannot be updated: use display_name, kind, roles, identities, ca_certificates or state",
                        names::truncate(p, 80)
                    ),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Invalid(unknown).into());
        }
        // Checked on the partner as it is now; the store applies the same
        // merge to the partner as it is when it writes.
        let current = self
            .hub
            .store
            .get_partner(&id)
            .await?
            .ok_or_else(|| Error::NotFound(names::partner_name(&id)))?;
        let proposed = merge(&current, &patch, &paths)?;
        check_identities(
            &self.hub,
            &id,
            &proposed.identities,
            &proposed.ca_certificates,
        )
        .await?;
        let updated = self
            .hub
            .store
            .update_partner(
                &id,
                Box::new(move |current| merge(&current, &patch, &paths)),
                Some(&caller.audit_context()),
            )
            .await?;
        self.hub.auth.forget();
        self.hub.trust_partner_cas().await?;
        tracing::info!(partner = %updated.id, by = %caller.id(), "partner updated");
        Ok(Response::new(updated.to_proto()))
    }
}

/// A partner with the fields of `patch` named by `paths`, checked, its etag
/// and update time refreshed when it changed.
fn merge(current: &Partner, patch: &pb::Partner, paths: &[String]) -> Result<Partner> {
    if !patch.etag.is_empty() && patch.etag != current.etag {
        return Err(Error::EtagMismatch {
            name: current.name(),
        });
    }
    let mut merged = current.to_proto();
    for path in paths {
        match path.as_str() {
            "display_name" => merged.display_name = patch.display_name.clone(),
            "kind" => merged.kind = patch.kind,
            "roles" => merged.roles = patch.roles.clone(),
            "identities" => merged.identities = patch.identities.clone(),
            "ca_certificates" => merged.ca_certificates = patch.ca_certificates.clone(),
            _ => merged.state = patch.state,
        }
    }
    let fields = partner::validate_fields(&merged, false)?;
    let mut next = current.clone();
    next.display_name = fields.display_name;
    next.kind = fields.kind;
    next.roles = fields.roles;
    next.identities = fields.identities;
    next.ca_certificates = fields.ca_certificates;
    next.state = fields.state;
    next.refresh_etag();
    if next.etag != current.etag {
        next.update_time = now_micros();
    }
    Ok(next)
}
