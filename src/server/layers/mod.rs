//! The call pipeline: one small tower layer per job, wrapped around every
//! call in this order (outermost first), as `serve` stacks them:
//!
//! 1. [`RequestIdLayer`]: the client's `x-request-id` or a new one, echoed
//!    on the answer.
//! 2. [`CallSpanLayer`]: the call's span (method, partner, code, latency)
//!    and its log line.
//! 3. [`CallMetricsLayer`]: counts and times the call by method and code.
//! 4. [`AuditLayer`]: queues an audit row for a call refused with
//!    PERMISSION_DENIED or UNAUTHENTICATED.
//! 5. [`StatusLayer`]: rewrites tonic's own transport statuses into the
//!    hub's (`api::status::from_transport`).
//! 6. [`DeadlineLayer`]: the client's `grpc-timeout` as DEADLINE_EXCEEDED.
//!
//! Each layer that reads the answer's code sits outside the status
//! rewriting and the deadline, so logs, metrics and the audit see the code
//! the client gets. The deadline is innermost of these but still outside
//! tonic's gRPC-Web layer and routes, so its clock starts before tonic's own
//! `grpc-timeout` (which would answer CANCELLED) and always ends first.

mod audit;
mod deadline;
mod logging;
mod metrics;
mod request_id;
mod status;

use std::future::Future;
use std::pin::Pin;

pub use audit::{AuditLayer, AuditQueue, CallAudit};
pub use deadline::{DeadlineLayer, call_deadline};
pub use logging::CallSpanLayer;
pub use metrics::CallMetricsLayer;
pub use request_id::{RequestId, RequestIdLayer};
pub use status::StatusLayer;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A layer's answer: the call's response, or the transport's error.
pub type Answer<R, E> = BoxFuture<Result<http::Response<R>, E>>;

/// What the layers inside a layer answer with, as a future.
pub trait Inner<R, E>: Future<Output = Result<http::Response<R>, E>> + Send + 'static {}

impl<T, R, E> Inner<R, E> for T where
    T: Future<Output = Result<http::Response<R>, E>> + Send + 'static
{
}

/// What one layer does around a call: it may read or change the request,
/// passes it on to the layers inside (`next`), and may watch or change
/// their answer. [`AroundService`] is the tower plumbing, written once.
pub trait Around<B, R, E> {
    fn around<F: Inner<R, E>>(
        &self,
        request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E>;
}

/// A service of the pipeline: `layer` around `inner`.
#[derive(Debug, Clone)]
pub struct AroundService<S, L> {
    inner: S,
    layer: L,
}

impl<S, L, B, R> tower::Service<http::Request<B>> for AroundService<S, L>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    L: Around<B, R, S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = &mut self.inner;
        self.layer.around(request, |request| inner.call(request))
    }
}

/// Makes each layer a tower layer that wraps a service in [`AroundService`].
macro_rules! tower_layers {
    ($($layer:ty),* $(,)?) => {$(
        impl<S> tower::Layer<S> for $layer {
            type Service = AroundService<S, $layer>;

            fn layer(&self, inner: S) -> Self::Service {
                AroundService {
                    inner,
                    layer: self.clone(),
                }
            }
        }
    )*};
}

tower_layers!(
    RequestIdLayer,
    CallSpanLayer,
    CallMetricsLayer,
    AuditLayer,
    StatusLayer,
    DeadlineLayer,
);

/// The gRPC code of an answer. Errors of unary calls come as trailers-only
/// responses, so the code is in the headers; a missing code means the call
/// went on to send a message.
fn response_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

/// An answer carrying only `code`, as tonic sends a refused unary call.
#[cfg(test)]
fn answer(code: tonic::Code) -> http::Response<()> {
    tonic::Status::new(code, "test").into_http()
}
