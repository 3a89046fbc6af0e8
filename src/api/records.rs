//! The one generic path behind WorkshopService, PracticeService and
//! ToolService: each service method is a line that calls `Records<M>`.

use std::marker::PhantomData;
use std::sync::Arc;

use tonic::{Request, Response};
use uuid::Uuid;

use super::ServiceContext;
use crate::auth::Caller;
use crate::domain::names::{self, RecordName};
use crate::domain::paging::{self, PageTokens};
use crate::domain::record;
use crate::domain::write::{self, NewContent};
use crate::domain::{Error, FieldViolation, KindMessage, Result, sharing};
use crate::pb;
use crate::store::{StoredRecord, WriteDecision};

pub struct Records<M> {
    hub: Arc<ServiceContext>,
    _kind: PhantomData<fn() -> M>,
}

impl<M> Clone for Records<M> {
    fn clone(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            _kind: PhantomData,
        }
    }
}

/// Arguments of a List call.
pub struct ListArgs {
    pub parent: String,
    pub page_size: i32,
    pub page_token: String,
    pub filter: String,
    pub order_by: String,
}

fn decode<M: KindMessage>(stored: &StoredRecord) -> Result<M> {
    M::decode(stored.body.as_slice()).map_err(Error::internal)
}

fn not_owner(caller: &Caller, owner: &str) -> Error {
    Error::permission_denied(
        "NOT_OWNER",
        format!(
            "{} writes only under its own name, not under {}",
            caller.partner.name(),
            names::partner_name(owner)
        ),
    )
}

impl<M: KindMessage> Records<M> {
    pub fn new(hub: Arc<ServiceContext>) -> Self {
        Self {
            hub,
            _kind: PhantomData,
        }
    }

    /// The caller of a request, authenticated, and the request's message.
    async fn open<T>(
        &self,
        request: Request<T>,
    ) -> std::result::Result<(Caller, T), tonic::Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        Ok((caller, request.into_inner()))
    }

    fn field(suffix: &str) -> String {
        format!("{}{suffix}", M::KIND.singular())
    }

    pub async fn get(&self, caller: &Caller, name: &str) -> Result<M> {
        let parsed = RecordName::parse("name", M::KIND, name)?;
        caller.note_resource(name);
        match self.hub.reads.get(parsed.to_string()).await? {
            Some(stored)
                if sharing::can_see(caller.id(), &stored.owner, stored.tlp, &stored.recipients) =>
            {
                decode(&stored)
            }
            _ => Err(Error::NotFound(parsed.to_string())),
        }
    }

    pub async fn list(&self, caller: &Caller, args: ListArgs) -> Result<(Vec<M>, String)> {
        let kind = M::KIND;
        let owner = names::parse_list_parent("parent", &args.parent)?;
        let limit = paging::page_size(
            args.page_size,
            paging::DEFAULT_PAGE_SIZE,
            paging::MAX_PAGE_SIZE,
        )?;
        let expr = self.hub.parse_filter(&args.filter)?;
        let order = paging::parse_order_by(kind, &args.order_by)?;
        let query_digest = PageTokens::query_digest(&[
            kind.singular(),
            caller.id(),
            &args.parent,
            &args.filter,
            &args.order_by,
        ]);
        let after = self.hub.tokens.open(&query_digest, &args.page_token)?;
        // A filter makes a list expensive: a test per record, not a walk
        // along an index that stops at the page's end.
        let _slot = if expr.is_some() {
            Some(self.hub.expensive.enter(caller.id()).await?)
        } else {
            None
        };
        let mut rows = self
            .hub
            .store
            .list_records(&crate::store::ListQuery {
                kind,
                viewer: caller.id(),
                owner: owner.as_deref(),
                filter: expr.as_ref(),
                order: &order,
                after: after.as_deref(),
                limit: limit + 1,
            })
            .await?;
        let next_page_token =
            self.hub
                .tokens
                .next_page(&query_digest, &mut rows, limit, |last| {
                    order.iter().map(|k| last.sort_value(k.field)).collect()
                })?;
        let records = rows.iter().map(decode).collect::<Result<Vec<M>>>()?;
        Ok((records, next_page_token))
    }

    /// Checks content and that every recipient names an existing partner.
    async fn check_content(&self, content: &prost_reflect::DynamicMessage) -> Result<()> {
        record::check(M::KIND, content)?;
        self.check_recipients(content).await
    }

    /// INVALID_ARGUMENT naming each recipient that is not a partner.
    async fn check_recipients(&self, content: &prost_reflect::DynamicMessage) -> Result<()> {
        let recipients = record::recipient_ids(content);
        let missing = self.hub.known_partners.missing(&recipients).await?;
        let unknown: Vec<FieldViolation> = recipients
            .iter()
            .enumerate()
            .filter(|(_, id)| missing.contains(id))
            .map(|(i, id)| {
                FieldViolation::new(
                    format!("{}.sharing.recipients[{i}]", M::KIND.singular()),
                    format!("{} is not a partner of this hub", names::partner_name(id)),
                )
            })
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(unknown))
        }
    }

    pub async fn create(
        &self,
        caller: &Caller,
        parent: &str,
        record: Option<M>,
        id: &str,
    ) -> Result<M> {
        caller.note_resource(parent);
        caller.require(pb::Role::Contributor)?;
        let owner = names::parse_partner_name("parent", parent)?;
        if owner != caller.id() {
            return Err(not_owner(caller, &owner));
        }
        let id = if id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            names::check_id(&Self::field("_id"), id)?;
            id.to_owned()
        };
        let record = record.ok_or_else(|| Error::invalid(M::KIND.singular(), "is required"))?;
        let content = record::to_dynamic(&record)?;
        self.check_content(&content).await?;
        let name = RecordName::new(&owner, M::KIND, &id);
        let content = NewContent::prepare::<M>(&name, &content)?;
        let stored = self
            .hub
            .store
            .write_record(
                &name.to_string(),
                Box::new(move |current| write::create(content, current)),
                Some(&caller.audit_context()),
            )
            .await?
            .current
            .ok_or_else(|| Error::internal("create wrote nothing"))?;
        decode(&stored)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        record: Option<M>,
        update_mask: Option<pbjson_types::FieldMask>,
        allow_missing: bool,
    ) -> Result<M> {
        let record = record.ok_or_else(|| Error::invalid(M::KIND.singular(), "is required"))?;
        let paths = update_mask.map(|m| m.paths).unwrap_or_default();
        let (name, decide) = self
            .prepare_update(caller, &record, paths, allow_missing)
            .await?;
        let written = self
            .hub
            .store
            .write_record(&name, decide, Some(&caller.audit_context()))
            .await?;
        let stored = written
            .current
            .ok_or_else(|| Error::internal("update wrote nothing"))?;
        decode(&stored)
    }

    /// Checks what can be checked before the transaction and returns the
    /// record name with the decision to take on its current version. Used by
    /// Update and by each item of BatchUpsertRecords.
    pub async fn prepare_update(
        &self,
        caller: &Caller,
        record: &M,
        paths: Vec<String>,
        allow_missing: bool,
    ) -> Result<(String, WriteDecision)> {
        let patch = record::to_dynamic(record)?;
        let name_text = record::string_field(&patch, "name");
        // Named before the role check, so a refused update is audited with
        // the record it was about, as create and delete are.
        caller.note_resource(&name_text);
        caller.require(pb::Role::Contributor)?;
        let name = RecordName::parse(&Self::field(".name"), M::KIND, &name_text)?;
        if name.owner != caller.id() {
            return Err(not_owner(caller, &name.owner));
        }
        let expected = write::Expected {
            etag: record::string_field(&patch, "etag"),
            name,
            allow_missing,
        };
        if write::touches_sharing(&paths) {
            self.check_recipients(&patch).await?;
        }
        let full_name = expected.name.to_string();
        let decide: WriteDecision = if write::replaces_all(&paths) {
            // The new content does not depend on the stored version: all
            // the work happens here, outside the write transaction.
            record::check(M::KIND, &patch)?;
            let content = NewContent::prepare::<M>(&expected.name, &patch)?;
            Box::new(move |current| write::replace(&expected, content, current))
        } else {
            Box::new(move |current| write::patch::<M>(&expected, &patch, &paths, current))
        };
        Ok((full_name, decide))
    }

    pub async fn delete(&self, caller: &Caller, name: &str, etag: &str) -> Result<()> {
        caller.note_resource(name);
        caller.require(pb::Role::Contributor)?;
        let name = RecordName::parse("name", M::KIND, name)?;
        if name.owner != caller.id() {
            return Err(not_owner(caller, &name.owner));
        }
        let full_name = name.to_string();
        let etag = etag.to_owned();
        self.hub
            .store
            .write_record(
                &full_name.clone(),
                Box::new(move |current| write::delete(&full_name, &etag, current)),
                Some(&caller.audit_context()),
            )
            .await?;
        Ok(())
    }
}

/// Implements a record service's tonic trait by delegating every method to
/// `Records<M>`: the service-specific part is only field names.
macro_rules! record_service {
    (
        $service:ident, $trait:path, $msg:ty,
        $get:ident($get_req:ty),
        $list:ident($list_req:ty) -> $list_resp:ident.$items:ident,
        $create:ident($create_req:ty) { $field:ident, $id_field:ident },
        $update:ident($update_req:ty),
        $delete:ident($delete_req:ty)
    ) => {
        #[derive(Clone)]
        pub struct $service(pub Records<$msg>);

        #[tonic::async_trait]
        impl $trait for $service {
            async fn $get(&self, request: Request<$get_req>) -> Answer<$msg> {
                let (caller, req) = self.0.open(request).await?;
                Ok(Response::new(self.0.get(&caller, &req.name).await?))
            }

            async fn $list(&self, request: Request<$list_req>) -> Answer<pb::$list_resp> {
                let (caller, req) = self.0.open(request).await?;
                let args = ListArgs {
                    parent: req.parent,
                    page_size: req.page_size,
                    page_token: req.page_token,
                    filter: req.filter,
                    order_by: req.order_by,
                };
                let ($items, next_page_token) = self.0.list(&caller, args).await?;
                Ok(Response::new(pb::$list_resp {
                    $items,
                    next_page_token,
                }))
            }

            async fn $create(&self, request: Request<$create_req>) -> Answer<$msg> {
                let (caller, req) = self.0.open(request).await?;
                let created = self
                    .0
                    .create(&caller, &req.parent, req.$field, &req.$id_field);
                Ok(Response::new(created.await?))
            }

            async fn $update(&self, request: Request<$update_req>) -> Answer<$msg> {
                let (caller, req) = self.0.open(request).await?;
                let updated =
                    self.0
                        .update(&caller, req.$field, req.update_mask, req.allow_missing);
                Ok(Response::new(updated.await?))
            }

            async fn $delete(&self, request: Request<$delete_req>) -> Answer<()> {
                let (caller, req) = self.0.open(request).await?;
                self.0.delete(&caller, &req.name, &req.etag).await?;
                Ok(Response::new(()))
            }
        }
    };
}

type Answer<T> = std::result::Result<Response<T>, tonic::Status>;

record_service!(
    WorkshopApi, pb::workshop_service_server::WorkshopService, pb::Workshop,
    get_workshop(pb::GetWorkshopRequest),
    list_workshops(pb::ListWorkshopsRequest) -> ListWorkshopsResponse.workshops,
    create_workshop(pb::CreateWorkshopRequest) { workshop, workshop_id },
    update_workshop(pb::UpdateWorkshopRequest),
    delete_workshop(pb::DeleteWorkshopRequest)
);

record_service!(
    PracticeApi, pb::practice_service_server::PracticeService, pb::Practice,
    get_practice(pb::GetPracticeRequest),
    list_practices(pb::ListPracticesRequest) -> ListPracticesResponse.practices,
    create_practice(pb::CreatePracticeRequest) { practice, practice_id },
    update_practice(pb::UpdatePracticeRequest),
    delete_practice(pb::DeletePracticeRequest)
);

record_service!(
    ToolApi, pb::tool_service_server::ToolService, pb::Tool,
    get_tool(pb::GetToolRequest),
    list_tools(pb::ListToolsRequest) -> ListToolsResponse.tools,
    create_tool(pb::CreateToolRequest) { tool, tool_id },
    update_tool(pb::UpdateToolRequest),
    delete_tool(pb::DeleteToolRequest)
);
