//! AuditService: every mutation and every denied call. Admins list all
//! events; other partners list their own partner's.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use tonic::{Request, Response, Status};

use super::ServiceContext;
use crate::domain::paging::{self, PageTokens, SortValue};
use crate::domain::record::timestamp_from_micros;
use crate::domain::{Error, names};
use crate::pb::{self, Role};
use crate::store::audit_resource;

/// A page ends before its events pass this many bytes, so that a client
/// with gRPC's default 4 MiB receive limit reads every page.
const MAX_PAGE_BYTES: usize = 1 << 20;

/// How many of `events`, from the first, fit in `budget` bytes as a
/// response's repeated field; at least one, so every page moves on.
fn fitting(events: &[pb::AuditEvent], budget: usize) -> usize {
    let mut bytes = 0;
    events
        .iter()
        .position(|event| {
            let len = event.encoded_len();
            // The field's tag and length prefix.
            bytes += 1 + prost::length_delimiter_len(len) + len;
            bytes > budget
        })
        .map_or(events.len(), |overflow| overflow.max(1))
}

#[derive(Clone)]
pub struct AuditApi {
    hub: Arc<ServiceContext>,
}

impl AuditApi {
    pub fn new(hub: Arc<ServiceContext>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        let req = request.into_inner();
        let parent = names::parse_list_parent("parent", &req.parent)?;
        let admin = caller.partner.has_role(Role::Admin);
        // Others see their own partner's events only.
        let partner = match (parent, admin) {
            (None, true) => None,
            (None, false) => Some(caller.id().to_owned()),
            (Some(p), true) => Some(p),
            (Some(p), false) if p == caller.id() => Some(p),
            (Some(p), false) => {
                return Err(Error::permission_denied(
                    "ROLE_REQUIRED",
                    format!(
                        "{} may list only its own audit events, not those of {}",
                        caller.partner.name(),
                        names::partner_name(&p)
                    ),
                )
                .into());
            }
        };
        let limit = paging::page_size(
            req.page_size,
            paging::DEFAULT_PAGE_SIZE,
            paging::MAX_PAGE_SIZE,
        )?;
        let digest = PageTokens::query_digest(&["audit", caller.id(), &req.parent, &req.filter]);
        let before = match self.hub.tokens.open(&digest, &req.page_token)? {
            None => None,
            Some(position) => match position.as_slice() {
                [SortValue::Int(id)] => Some(*id),
                _ => return Err(Error::invalid("page_token", "is not an audit page token").into()),
            },
        };
        let filter = self.hub.parse_filter(&req.filter)?;
        let partner = partner.map(|p| names::partner_name(&p));
        let _slot = if filter.is_some() {
            Some(self.hub.expensive.enter(caller.id()).await?)
        } else {
            None
        };
        let mut entries = self
            .hub
            .store
            .list_audit(partner.as_deref(), filter.as_ref(), before, limit + 1)
            .await?;
        let mut audit_events: Vec<pb::AuditEvent> = entries
            .iter()
            .map(|e| pb::AuditEvent {
                name: format!(
                    "auditEvents/{}",
                    URL_SAFE_NO_PAD.encode(self.hub.audit_ids.seal(e.id.unsigned_abs(), 0))
                ),
                event_time: Some(timestamp_from_micros(e.event_time)),
                partner: e.context.partner.clone(),
                certificate_fingerprint: e.context.fingerprint.clone(),
                method: e.context.method.clone(),
                // Rows written before names were cut are cut on the way out.
                resource: audit_resource(&e.resource).into_owned(),
                code: e.code,
                request_id: e.context.request_id.clone(),
            })
            .collect();
        let limit = limit.min(fitting(&audit_events, MAX_PAGE_BYTES));
        let next_page_token = self
            .hub
            .tokens
            .next_page(&digest, &mut entries, limit, |last| {
                vec![SortValue::Int(last.id)]
            })?;
        audit_events.truncate(entries.len());
        Ok(Response::new(pb::ListAuditEventsResponse {
            audit_events,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_before_the_byte_budget() {
        let event = |resource_bytes: usize| pb::AuditEvent {
            resource: "x".repeat(resource_bytes),
            ..Default::default()
        };
        // Each takes 1 + 2 + (1 + 2 + 1000) bytes.
        let events: Vec<pb::AuditEvent> = (0..10).map(|_| event(1000)).collect();
        assert_eq!(fitting(&events, 10_060), 10);
        assert_eq!(fitting(&events, 10_059), 9);
        assert_eq!(fitting(&events, 1_006), 1);
        // One event larger than the budget still makes a page.
        assert_eq!(fitting(&events, 10), 1);
        assert_eq!(fitting(&[], 10), 0);
        let response = pb::ListAuditEventsResponse {
            audit_events: events[..9].to_vec(),
            next_page_token: String::new(),
        };
        assert_eq!(response.encoded_len(), 9 * 1006);
    }
}
