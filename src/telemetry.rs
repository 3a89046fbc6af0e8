//! Logging: `COPEX_LOG` filters (like RUST_LOG), `COPEX_LOG_FORMAT=json`
//! switches to JSON lines; and one span per gRPC call with the partner,
//! method, status code and latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::{Instrument, field};
use tracing_subscriber::EnvFilter;

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

/// A tower layer that wraps every call in a span and logs its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTraceLayer;

impl<S> tower::Layer<S> for CallTraceLayer {
    type Service = CallTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallTrace<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CallTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = tracing::info_span!(
            "call",
            method = %request.uri().path(),
            partner = field::Empty,
            code = field::Empty,
            latency_ms = field::Empty,
        );
        let start = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                let span = tracing::Span::current();
                let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
                span.record(
                    "latency_ms",
                    field::display(format_args!("{latency_ms:.3}")),
                );
                match &result {
                    Ok(response) => {
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
                        if matches!(
                            code,
                            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
                        ) {
                            tracing::error!("call failed");
                        } else {
                            tracing::info!("call finished");
                        }
                    }
                    Err(_) => tracing::error!("call failed in transport"),
                }
                result
            }
            .instrument(span),
        )
    }
}
