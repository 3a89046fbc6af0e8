//! SyncService: the change feed (ListChanges, WatchChanges) and batch
//! upserts of a partner's own records.

use std::sync::Arc;

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use super::ServiceContext;
use super::records::Records;
use crate::auth::Caller;
use crate::domain::paging;
use crate::domain::{Error, FieldViolation, Result};
use crate::feed::wire::{self, Encoded};
use crate::feed::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::pb::{self, record::Kind as R};
use crate::store::{AuditEvent, BatchWritten, FeedQuery, Idempotency, WriteDecision, Written};

use crate::domain::record::MAX_BATCH;
const MAX_REQUEST_ID_CHARS: usize = 128;

#[derive(Clone)]
pub struct SyncApi {
    hub: Arc<ServiceContext>,
}

impl SyncApi {
    pub fn new(hub: Arc<ServiceContext>) -> Self {
        Self { hub }
    }
}

/// Watch messages as they go on the wire.
type EncodedStream = crate::feed::memory::WatchOutput;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

impl SyncApi {
    /// ListChanges, answered with the stored record bytes as they are.
    pub async fn list_changes_encoded(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<Encoded>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        let req = request.into_inner();
        let (after, kinds) = self.hub.feed_start(&req.cursor, &req.kinds)?;
        let limit = paging::page_size(req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let _slot = self.hub.expensive.enter(&caller.partner.id).await?;
        let page = self
            .hub
            .read_ahead
            .page(&FeedQuery {
                viewer: &caller.partner,
                after,
                kinds: &kinds,
                limit,
            })
            .await?;
        let mut out = page.changes;
        wire::put_str(2, &self.hub.cursors.encode(page.next), &mut out);
        if page.caught_up {
            prost::encoding::bool::encode(3, &true, &mut out);
        }
        Ok(Response::new(Encoded(out)))
    }

    /// WatchChanges, streamed with the stored record bytes as they are.
    pub async fn watch_changes_encoded(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<EncodedStream>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        let req = request.into_inner();
        let (after, kinds) = self.hub.feed_start(&req.cursor, &req.kinds)?;
        let output = self
            .hub
            .watchers
            .open(self.hub.clone(), caller, after, kinds)
            .await?;
        Ok(Response::new(output))
    }
}

fn decoded<M: Message + Default>(encoded: Encoded) -> Result<M, Status> {
    M::decode(encoded.0.as_slice()).map_err(|err| Error::internal(err).into())
}

/// The generated service, for in-process callers; the network is served by
/// `SyncRoutes`, which sends the same bytes without decoding them.
#[tonic::async_trait]
impl pb::sync_service_server::SyncService for SyncApi {
    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let encoded = self.list_changes_encoded(request).await?.into_inner();
        Ok(Response::new(decoded(encoded)?))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let stream = self.watch_changes_encoded(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream.map(|item| {
            item.and_then(decoded::<pb::WatchChangesResponse>)
        }))))
    }

    async fn batch_upsert_records(
        &self,
        request: Request<pb::BatchUpsertRecordsRequest>,
    ) -> Result<Response<pb::BatchUpsertRecordsResponse>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        caller.require(pb::Role::Contributor)?;
        let req = request.into_inner();
        Ok(Response::new(batch_upsert(&self.hub, &caller, req).await?))
    }
}

/// SyncService on the network: ListChanges and WatchChanges send pre-encoded
/// messages; BatchUpsertRecords goes to the generated server.
#[derive(Clone)]
pub struct SyncRoutes {
    api: SyncApi,
    generated: pb::sync_service_server::SyncServiceServer<SyncApi>,
    max_request_bytes: usize,
}

impl SyncRoutes {
    pub fn new(api: SyncApi, max_request_bytes: usize) -> Self {
        Self {
            generated: pb::sync_service_server::SyncServiceServer::new(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            max_request_bytes,
        }
    }
}

impl tonic::server::NamedService for SyncRoutes {
    const NAME: &'static str = "copex.v1.SyncService";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

struct ListChangesMethod(SyncApi);

impl tonic::server::UnaryService<pb::ListChangesRequest> for ListChangesMethod {
    type Response = Encoded;
    type Future = BoxFuture<Result<Response<Encoded>, Status>>;

    fn call(&mut self, request: Request<pb::ListChangesRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.list_changes_encoded(request).await })
    }
}

struct WatchChangesMethod(SyncApi);

impl tonic::server::ServerStreamingService<pb::WatchChangesRequest> for WatchChangesMethod {
    type Response = Encoded;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<Result<Response<EncodedStream>, Status>>;

    fn call(&mut self, request: Request<pb::WatchChangesRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.watch_changes_encoded(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for SyncRoutes
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let api = self.api.clone();
        let limit = Some(self.max_request_bytes);
        match request.uri().path() {
            "/copex.v1.SyncService/ListChanges" => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<Encoded, pb::ListChangesRequest>::default();
                let mut grpc =
                    tonic::server::Grpc::new(codec).apply_max_message_size_config(limit, None);
                Ok(grpc.unary(ListChangesMethod(api), request).await)
            }),
            "/copex.v1.SyncService/WatchChanges" => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<Encoded, pb::WatchChangesRequest>::default();
                let mut grpc =
                    tonic::server::Grpc::new(codec).apply_max_message_size_config(limit, None);
                Ok(grpc
                    .server_streaming(WatchChangesMethod(api), request)
                    .await)
            }),
            _ => {
                let mut generated = self.generated.clone();
                Box::pin(async move { generated.call(request).await })
            }
        }
    }
}

/// An item's error, with field paths relative to the request.
fn failed(name: String, index: usize, err: Error) -> pb::UpsertResult {
    let err = match err {
        Error::Invalid(violations) => Error::Invalid(
            violations
                .into_iter()
                .map(|v| {
                    // A record with no kind set is wrong as a whole.
                    let field = if v.field.is_empty() {
                        format!("records[{index}]")
                    } else {
                        format!("records[{index}].{}", v.field)
                    };
                    FieldViolation::new(field, v.description)
                })
                .collect(),
        ),
        other => other,
    };
    let status: Status = err.into();
    let error = tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| {
        tonic_types::pb::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        }
    });
    pb::UpsertResult {
        name,
        outcome: pb::UpsertOutcome::Failed as i32,
        etag: String::new(),
        error: Some(error),
    }
}

/// Results in request order from the items that failed before the write and
/// the outcomes of those written.
fn assemble(
    early: &[Option<pb::UpsertResult>],
    written_items: &[(usize, String)],
    written: &[Result<Written>],
) -> pb::BatchUpsertRecordsResponse {
    let mut results: Vec<Option<pb::UpsertResult>> = early.to_vec();
    for ((index, name), outcome) in written_items.iter().zip(written) {
        results[*index] = Some(match outcome {
            Ok(w) => pb::UpsertResult {
                name: name.clone(),
                outcome: crate::domain::write::upsert_outcome(w.existed, w.changed) as i32,
                etag: w
                    .current
                    .as_ref()
                    .map(|c| c.etag.clone())
                    .unwrap_or_default(),
                error: None,
            },
            Err(err) => failed(name.clone(), *index, err.clone()),
        });
    }
    pb::BatchUpsertRecordsResponse {
        results: results.into_iter().flatten().collect(),
    }
}

async fn prepare(
    hub: &Arc<ServiceContext>,
    caller: &Caller,
    record: &pb::Record,
) -> Result<(String, WriteDecision)> {
    match &record.kind {
        Some(R::Workshop(w)) => {
            Records::<pb::Workshop>::new(hub.clone())
                .prepare_update(caller, w, Vec::new(), true)
                .await
        }
        Some(R::Practice(p)) => {
            Records::<pb::Practice>::new(hub.clone())
                .prepare_update(caller, p, Vec::new(), true)
                .await
        }
        Some(R::Tool(t)) => {
            Records::<pb::Tool>::new(hub.clone())
                .prepare_update(caller, t, Vec::new(), true)
                .await
        }
        None => Err(Error::invalid("", "set one of workshop, practice or tool")),
    }
}

async fn batch_upsert(
    hub: &Arc<ServiceContext>,
    caller: &Caller,
    req: pb::BatchUpsertRecordsRequest,
) -> Result<pb::BatchUpsertRecordsResponse> {
    let count = req.records.len();
    if count == 0 || count > MAX_BATCH {
        return Err(Error::invalid(
            "records",
            format!("has {count} records; send 1 to {MAX_BATCH}"),
        ));
    }
    if req.request_id.chars().count() > MAX_REQUEST_ID_CHARS
        || req.request_id.chars().any(char::is_control)
    {
        return Err(Error::invalid(
            "request_id",
            format!("use at most {MAX_REQUEST_ID_CHARS} printable characters"),
        ));
    }
    let mut early: Vec<Option<pb::UpsertResult>> = vec![None; count];
    let mut items = Vec::with_capacity(count);
    let mut written_items = Vec::with_capacity(count);
    let mut refused = Vec::new();
    for (index, record) in req.records.iter().enumerate() {
        match prepare(hub, caller, record).await {
            Ok((name, decide)) => {
                written_items.push((index, name.clone()));
                items.push((name, decide));
            }
            Err(err) => {
                // Refusals decided before the write are audited on their own.
                if matches!(
                    err,
                    Error::PermissionDenied { .. } | Error::Unauthenticated { .. }
                ) {
                    refused.push((
                        crate::store::audit_resource(record.name()).into_owned(),
                        err.code() as i32,
                    ));
                }
                early[index] = Some(failed(record.name().to_owned(), index, err));
            }
        }
    }
    let idempotency = (!req.request_id.is_empty()).then(|| {
        let early = early.clone();
        let written_items = written_items.clone();
        Idempotency {
            partner: caller.id().to_owned(),
            request_id: req.request_id.clone(),
            encode: Box::new(move |written: &[Result<Written>]| {
                assemble(&early, &written_items, written).encode_to_vec()
            }),
        }
    });
    // On their own and at once, not through the refused calls' queue: this
    // call is an authenticated partner's, within its rate, and about to
    // write anyway.
    let context = caller.audit_context();
    let now = crate::domain::record::now_micros();
    let refused: Vec<AuditEvent> = refused
        .into_iter()
        .map(|(resource, code)| AuditEvent {
            event_time: now,
            context: context.clone(),
            resource,
            code,
        })
        .collect();
    hub.store.append_audit(&refused).await?;
    hub.admit_write().await;
    match hub
        .store
        .write_records(items, idempotency, Some(&caller.audit_context()))
        .await?
    {
        BatchWritten::Repeated(bytes) => {
            pb::BatchUpsertRecordsResponse::decode(bytes.as_slice()).map_err(Error::internal)
        }
        BatchWritten::Done(written) => Ok(assemble(&early, &written_items, &written)),
    }
}
