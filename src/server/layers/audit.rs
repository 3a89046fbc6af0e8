//! The audit rows of refused calls. The hub writes audit rows in three
//! places, each for a reason:
//! - this layer, for calls refused with PERMISSION_DENIED or
//!   UNAUTHENTICATED, through the bounded [`AuditQueue`]: a refused call
//!   must cost almost nothing, also in a flood;
//! - the store, in the transaction of each write it audits, so a write and
//!   its row commit or fail together;
//! - BatchUpsertRecords, for items refused before the write, at once and
//!   not through the queue (see `api::sync`): the partner is authenticated
//!   and within its rate, and its answer says those items were refused.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::request_id::RequestId;
use super::{Answer, Around, Inner, response_code};
use crate::metrics::Metrics;
use crate::store::{AuditContext, AuditEvent, DynStore};

/// Audit rows of refused calls written in one transaction, at most.
const AUDIT_WRITE_BATCH: usize = 500;

/// What the audit log records of a call, filled in as the call learns it
/// (the partner once authenticated, the resource once named). The layer puts
/// it in the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct CallAudit(pub Arc<Mutex<(AuditContext, String)>>);

impl CallAudit {
    pub fn context(&self) -> AuditContext {
        self.0.lock().map(|slot| slot.0.clone()).unwrap_or_default()
    }

    pub fn update(&self, edit: impl FnOnce(&mut AuditContext, &mut String)) {
        if let Ok(mut slot) = self.0.lock() {
            let (context, resource) = &mut *slot;
            edit(context, resource);
        }
    }
}

/// The audit rows of refused calls, on their way to the store. A refused
/// call must cost almost nothing, also when a partner makes thousands a
/// second: its row takes a slot of a bounded queue that one task writes in
/// batches, and when the queue is full the row is dropped and counted
/// (`copex_audit_events_dropped_total`) rather than held or waited for.
#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    metrics: Arc<Metrics>,
}

impl AuditQueue {
    /// A queue of `capacity` rows (at least one) and the task that writes
    /// them to `store`; the task ends once every queue handle is dropped
    /// and the rows are written.
    pub fn start(store: DynStore, capacity: usize, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = Self::new(capacity, metrics.clone());
        tokio::spawn(write_audit(store, rx, metrics));
        queue
    }

    /// The queue alone, and its receiving end.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, metrics }, rx)
    }

    /// Queues `event` (its resource cut to what the log keeps), or drops and
    /// counts it when the queue is full.
    pub fn offer(&self, mut event: AuditEvent) {
        if let std::borrow::Cow::Owned(cut) = crate::store::audit_resource(&event.resource) {
            event.resource = cut;
        }
        if self.tx.try_send(event).is_err() {
            // No log line per drop: that would be the flood again.
            self.metrics.audit_events_dropped(1);
        }
    }
}

/// Writes queued audit rows, as many as are waiting (up to a batch) per
/// transaction, until the queue closes.
async fn write_audit(store: DynStore, mut rx: mpsc::Receiver<AuditEvent>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(AUDIT_WRITE_BATCH);
    while rx.recv_many(&mut batch, AUDIT_WRITE_BATCH).await > 0 {
        if let Err(err) = store.append_audit(&batch).await {
            metrics.audit_events_dropped(batch.len() as u64);
            tracing::warn!(error = %err, rows = batch.len(), "refused calls were not audited");
        }
        batch.clear();
    }
}

/// Whether a call answered with `code` is audited here.
fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    )
}

/// Gives each call its [`CallAudit`] and queues a row for a refused one.
#[derive(Clone)]
pub struct AuditLayer {
    queue: AuditQueue,
}

impl AuditLayer {
    pub fn new(queue: AuditQueue) -> Self {
        Self { queue }
    }
}

impl<B, R, E> Around<B, R, E> for AuditLayer
where
    R: 'static,
    E: 'static,
{
    fn around<F: Inner<R, E>>(
        &self,
        mut request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E> {
        let call_audit = CallAudit::default();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        call_audit.update(|context, _| {
            context.method = request.uri().path().to_owned();
            context.request_id = request_id;
        });
        request.extensions_mut().insert(call_audit.clone());
        let queue = self.queue.clone();
        let future = next(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                let code = response_code(response.headers());
                if is_refusal(code) {
                    let (context, resource) = call_audit
                        .0
                        .lock()
                        .map(|slot| slot.clone())
                        .unwrap_or_default();
                    // The answer need not wait for the log.
                    queue.offer(AuditEvent {
                        event_time: crate::domain::record::now_micros(),
                        context,
                        resource,
                        code: code as i32,
                    });
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::super::answer;
    use super::*;

    #[test]
    fn a_full_audit_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let (queue, mut rx) = AuditQueue::new(2, metrics.clone());
        let event = |resource: String| AuditEvent {
            resource,
            code: tonic::Code::PermissionDenied as i32,
            ..Default::default()
        };
        queue.offer(event("partners/a".into()));
        queue.offer(event(format!("partners/{}", "é".repeat(3000))));
        queue.offer(event("partners/dropped".into()));
        queue.offer(event("partners/dropped".into()));
        let text = metrics.render(0, &[]);
        assert!(
            text.contains("copex_audit_events_dropped_total 2"),
            "{text}"
        );
        assert_eq!(rx.try_recv().unwrap().resource, "partners/a");
        let cut = rx.try_recv().unwrap().resource;
        assert!(
            cut.len() <= crate::store::MAX_AUDIT_RESOURCE_BYTES,
            "{}",
            cut.len()
        );
        assert!(cut.starts_with("partners/éé") && cut.ends_with('…'));
        assert!(rx.try_recv().is_err(), "the dropped rows are gone");
        // Room again once the writer took some.
        queue.offer(event("partners/later".into()));
        assert_eq!(rx.try_recv().unwrap().resource, "partners/later");
    }

    #[tokio::test]
    async fn refused_calls_are_queued_with_what_the_call_learnt() {
        let (queue, mut rx) = AuditQueue::new(8, Arc::new(Metrics::new()));
        let codes = [
            tonic::Code::PermissionDenied,
            tonic::Code::NotFound,
            tonic::Code::Unauthenticated,
            tonic::Code::Ok,
        ];
        for code in codes {
            let service = AuditLayer::new(queue.clone()).layer(tower::service_fn(
                move |request: http::Request<()>| async move {
                    // What a handler does once it knows who calls about what.
                    if let Some(audit) = request.extensions().get::<CallAudit>() {
                        audit.update(|context, resource| {
                            context.partner = "a".into();
                            *resource = "partners/b".into();
                        });
                    }
                    Ok::<_, Infallible>(if code == tonic::Code::Ok {
                        http::Response::new(())
                    } else {
                        answer(code)
                    })
                },
            ));
            let mut request = http::Request::builder()
                .uri("/copex.v1.PartnerService/UpdatePartner")
                .body(())
                .unwrap();
            request.extensions_mut().insert(RequestId("req-1".into()));
            service.oneshot(request).await.unwrap();
        }
        let mut queued = Vec::new();
        while let Ok(event) = rx.try_recv() {
            queued.push(event);
        }
        let codes: Vec<i32> = queued.iter().map(|event| event.code).collect();
        assert_eq!(
            codes,
            [
                tonic::Code::PermissionDenied as i32,
                tonic::Code::Unauthenticated as i32
            ]
        );
        for event in &queued {
            assert_eq!(event.resource, "partners/b");
            assert_eq!(event.context.partner, "a");
            assert_eq!(
                event.context.method,
                "/copex.v1.PartnerService/UpdatePartner"
            );
            assert_eq!(event.context.request_id, "req-1");
            assert!(event.event_time > 0);
        }
    }
}
