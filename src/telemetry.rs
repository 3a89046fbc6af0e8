//! Logging: `COPEX_LOG` filters (like RUST_LOG), `COPEX_LOG_FORMAT=json`
//! switches to JSON lines; and one span per gRPC call with the partner,
//! method, status code and latency.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::{Instrument, field};
use tracing_subscriber::EnvFilter;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{AuditContext, AuditEvent, DynStore};

/// Audit rows of refused calls written in one transaction, at most.
const AUDIT_WRITE_BATCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber once; later calls are ignored (tests start
/// several servers in one process).
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

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

tokio::task_local! {
    /// When the call being served must have answered: its client's
    /// `grpc-timeout` from the moment it arrived. The store bounds a call's
    /// expensive statements by it, since dropping the call's future does not
    /// stop a statement the database is running.
    static CALL_DEADLINE: Instant;
}

/// The deadline of the call this task serves, when its client set one.
pub fn call_deadline() -> Option<Instant> {
    CALL_DEADLINE.try_with(|deadline| *deadline).ok()
}

/// The `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A tower layer that wraps every call in a span, logs its outcome, gives it
/// a request id (`x-request-id`, the client's or a new one), counts it in the
/// metrics and queues denied calls for the audit log.
#[derive(Clone)]
pub struct CallTraceLayer {
    audit: AuditQueue,
    metrics: Arc<Metrics>,
}

impl CallTraceLayer {
    pub fn new(audit: AuditQueue, metrics: Arc<Metrics>) -> Self {
        Self { audit, metrics }
    }
}

impl<S> tower::Layer<S> for CallTraceLayer {
    type Service = CallTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTrace {
            inner,
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallTrace<S> {
    inner: S,
    audit: AuditQueue,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CallTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: Default + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let call_audit = CallAudit::default();
        call_audit.update(|context, _| {
            context.method = request.uri().path().to_owned();
            context.request_id = request_id.clone();
        });
        request.extensions_mut().insert(call_audit.clone());
        let audit_queue = self.audit.clone();
        let metrics = self.metrics.clone();
        let path = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "call",
            method = %request.uri().path(),
            partner = field::Empty,
            code = field::Empty,
            latency_ms = field::Empty,
        );
        let start = Instant::now();
        // gRPC-Web answers are shaped by the layer inside this one; leave
        // their deadlines to tonic.
        let deadline = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            .then(|| grpc_timeout(request.headers()))
            .flatten();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                // The client's deadline ends the call, and dropping it ends
                // the database work it waits on. tonic would answer
                // CANCELLED; gRPC says DEADLINE_EXCEEDED.
                let mut result = match deadline {
                    None => future.await,
                    // Counted from `start`, taken in `call` before tonic's
                    // own grpc-timeout (outside this layer, answering
                    // CANCELLED) starts its clock, so this one always ends
                    // first.
                    Some(deadline) => match CALL_DEADLINE
                        .scope(
                            start.checked_add(deadline).unwrap_or_else(far_future),
                            tokio::time::timeout_at(
                                tokio::time::Instant::from_std(
                                    start.checked_add(deadline).unwrap_or_else(far_future),
                                ),
                                future,
                            ),
                        )
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(
                            "the client's deadline passed before the call finished",
                        )
                        .into_http()),
                    },
                };
                let span = tracing::Span::current();
                let elapsed = start.elapsed();
                let latency_ms = elapsed.as_secs_f64() * 1000.0;
                span.record(
                    "latency_ms",
                    field::display(format_args!("{latency_ms:.3}")),
                );
                match &mut result {
                    Ok(response) => {
                        if let Some(status) = tonic::Status::from_header_map(response.headers())
                            && let Some(replaced) = crate::api::status::from_transport(&status)
                        {
                            // Details from tonic's status do not apply to
                            // the replacement.
                            response.headers_mut().remove("grpc-status-details-bin");
                            let _ = replaced.add_header(response.headers_mut());
                        }
                        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                            response.headers_mut().insert("x-request-id", value);
                        }
                        // Errors of unary calls come as trailers-only
                        // responses, so the code is in the headers; a missing
                        // code means the call went on to send a message.
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok())
                            .map(tonic::Code::from_i32)
                            .unwrap_or(tonic::Code::Ok);
                        span.record("code", field::debug(code));
                        metrics.observe_call(&path, code, elapsed);
                        if matches!(
                            code,
                            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                        ) {
                            let (context, resource) = call_audit
                                .0
                                .lock()
                                .map(|slot| slot.clone())
                                .unwrap_or_default();
                            // The answer need not wait for the log.
                            audit_queue.offer(AuditEvent {
                                event_time: crate::domain::record::now_micros(),
                                context,
                                resource,
                                code: code as i32,
                            });
                        }
                        if matches!(
                            code,
                            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
                        ) {
                            tracing::error!("call failed");
                        } else {
                            tracing::info!("call finished");
                        }
                    }
                    Err(_) => {
                        metrics.observe_call(&path, tonic::Code::Unknown, elapsed);
                        tracing::error!("call failed in transport");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// A deadline too far to be represented: none in practice.
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let parse = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        use std::time::Duration;
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
