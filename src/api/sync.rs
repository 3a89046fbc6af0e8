//! SyncService: the change feed (ListChanges, WatchChanges) and batch
//! upserts of a partner's own records.

use std::sync::Arc;

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::Hub;
use super::records::Records;
use crate::auth::Caller;
use crate::domain::paging;
use crate::domain::{Error, FieldViolation, Kind, Result};
use crate::feed::memory::Outbox;
use crate::feed::wire::{self, Encoded};
use crate::feed::{self, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::pb::{self, record::Kind as R};
use crate::store::{AuditEvent, BatchWritten, Decide, FeedQuery, Idempotency, Written};

use crate::domain::record::MAX_BATCH;
const MAX_REQUEST_ID_CHARS: usize = 128;
/// Changes per message of a watch stream.
const WATCH_PAGE: usize = 500;
/// Messages a watcher may have queued; one slot is kept for the error that
/// cuts a stalled watcher off, so memory per watcher stays bounded.
const WATCH_BUFFER: usize = 4;

#[derive(Clone)]
pub struct SyncApi {
    hub: Arc<Hub>,
}

impl SyncApi {
    pub fn new(hub: Arc<Hub>) -> Self {
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
        let max = self.hub.limits.max_watchers_per_partner;
        let slot = self
            .hub
            .watchers
            .open(&caller.partner.id, max)
            .ok_or_else(|| Error::ResourceExhausted {
                reason: "TOO_MANY_WATCHERS",
                message: format!(
                    "{} has {max} watch streams open already; close one first",
                    caller.partner.name()
                ),
                retry_after: None,
            })?;
        // Subscribed before the first read, so a commit between the two
        // still wakes the watcher.
        let head = self.hub.store.feed_head();
        // The first page is read here, so a bad or expired cursor is the
        // call's status rather than a stream that ends at once.
        let first = self
            .hub
            .feed_page(&FeedQuery {
                viewer: &caller.partner,
                after,
                kinds: &kinds,
                limit: WATCH_PAGE,
            })
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (output, outbox) = self.hub.watch_memory.register(rx);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            watch(hub, caller, kinds, first, head, tx, &outbox).await;
            drop(slot);
        });
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

/// Sends the backlog, then live changes as they commit, and bookmarks while
/// idle, until the client goes, falls too far behind, or the hub stops.
async fn watch(
    hub: Arc<Hub>,
    caller: Caller,
    kinds: Vec<Kind>,
    first: feed::Page,
    mut head: tokio::sync::watch::Receiver<i64>,
    tx: mpsc::Sender<Result<Encoded, Status>>,
    outbox: &Outbox,
) {
    let settings = hub.feed_settings.clone();
    let mut shutdown = hub.shutdown_signal();
    let mut cursor = first.next;
    let mut caught_up = first.caught_up;
    let gauge = hub.metrics.watcher(&caller.partner.id, cursor);
    // The first message goes out even when empty: it tells the client the
    // stream is live and where it stands.
    if still_allowed(&hub, &caller, &tx).await.is_err()
        || send(&tx, first.changes, cursor, &hub, &settings, outbox)
            .await
            .is_err()
    {
        return;
    }
    let mut last_sent = tokio::time::Instant::now();
    let mut checked = tokio::time::Instant::now();
    loop {
        if caught_up {
            let bookmark_at = last_sent + settings.bookmark_interval;
            // An idle stream too ends soon after its caller loses access.
            let check_at = checked + crate::auth::identity::CACHE_TTL;
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(bookmark_at) => {
                    if still_allowed(&hub, &caller, &tx).await.is_err()
                        || send(&tx, Vec::new(), cursor, &hub, &settings, outbox).await.is_err()
                    {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                    continue;
                }
                () = tokio::time::sleep_until(check_at) => {
                    if still_allowed(&hub, &caller, &tx).await.is_err() {
                        return;
                    }
                    checked = tokio::time::Instant::now();
                    continue;
                }
                _ = shutdown.changed() => {
                    let _ = tx.try_send(Err(Status::unavailable(
                        "the hub is shutting down: resume from your last cursor",
                    )));
                    return;
                }
                () = tx.closed() => return,
                // The client is told by the stream itself.
                () = outbox.cut_off() => return,
            }
        }
        let query = FeedQuery {
            viewer: &caller.partner,
            after: cursor,
            kinds: &kinds,
            limit: WATCH_PAGE,
        };
        let read = if caught_up {
            // Woken by a commit, like every other watcher of this partner
            // at this position: one read serves them all.
            let seen_head = *head.borrow_and_update();
            hub.shared_pages.page(&query, seen_head).await
        } else {
            hub.feed_page(&query).await
        };
        let page = match read {
            Ok(page) => page,
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        };
        caught_up = page.caught_up;
        cursor = page.next;
        gauge.advance(cursor);
        if page.count > 0 {
            // Checked after the read, so nothing committed after the caller
            // lost access is sent.
            if still_allowed(&hub, &caller, &tx).await.is_err()
                || send(&tx, page.changes, cursor, &hub, &settings, outbox)
                    .await
                    .is_err()
            {
                return;
            }
            last_sent = tokio::time::Instant::now();
            checked = last_sent;
        }
    }
}

/// Checks the caller again (partner state, certificate revocation and
/// expiry) before a watch stream sends anything; when access is lost the
/// stream ends with the status a new call would get.
async fn still_allowed(
    hub: &Hub,
    caller: &Caller,
    tx: &mpsc::Sender<Result<Encoded, Status>>,
) -> std::result::Result<(), ()> {
    match hub.auth.recheck(caller).await {
        Ok(()) => Ok(()),
        Err(err) => {
            tracing::info!(partner = %caller.partner.id, error = %err, "watch stream ended: access lost");
            let _ = tx.try_send(Err(err.into()));
            Err(())
        }
    }
}

/// Queues one message, keeping a slot free for the error that cuts off a
/// watcher whose buffer stays full longer than the stall limit, and within
/// the hub's memory budget for watchers (`feed::memory`).
async fn send(
    tx: &mpsc::Sender<Result<Encoded, Status>>,
    changes: Vec<u8>,
    cursor: i64,
    hub: &Hub,
    settings: &feed::FeedSettings,
    outbox: &Outbox,
) -> std::result::Result<(), ()> {
    let mut message = changes;
    wire::put_str(2, &hub.cursors.encode(cursor), &mut message);
    let message = Encoded(message);
    let reserved = tokio::select! {
        reserved = tokio::time::timeout(settings.watcher_stall, tx.reserve_many(2)) => reserved,
        () = outbox.cut_off() => return Err(()),
    };
    match reserved {
        Ok(Ok(mut permits)) => {
            if let Some(permit) = permits.next() {
                if !hub.watch_memory.admit(outbox, message.0.len()) {
                    return Err(());
                }
                permit.send(Ok(message));
            }
            Ok(())
        }
        Ok(Err(_)) => Err(()),
        Err(_) => {
            tracing::info!("watcher cut off: it fell too far behind");
            let status: Status = Error::ResourceExhausted {
                reason: "WATCHER_TOO_SLOW",
                message: "the watcher fell too far behind: resume from your last cursor".into(),
                retry_after: None,
            }
            .into();
            let _ = tx.try_send(Err(status));
            Err(())
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
                outcome: match (w.existed, w.changed) {
                    (false, _) => pb::UpsertOutcome::Created,
                    (true, true) => pb::UpsertOutcome::Updated,
                    (true, false) => pb::UpsertOutcome::Unchanged,
                } as i32,
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

async fn prepare(hub: &Arc<Hub>, caller: &Caller, record: &pb::Record) -> Result<(String, Decide)> {
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
    hub: &Arc<Hub>,
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
                        err.code(),
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
