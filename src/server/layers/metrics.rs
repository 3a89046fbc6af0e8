//! Counts and times every call by method and the code its client gets
//! (`grpc_server_handled`, `grpc_server_handling_seconds`).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::{BoxFuture, response_code};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct CallMetricsLayer {
    metrics: Arc<Metrics>,
}

impl CallMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for CallMetricsService<S>
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
        let start = Instant::now();
        let path = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response_code(response.headers()),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe_call(&path, code, start.elapsed());
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

    #[tokio::test]
    async fn each_call_is_counted_under_its_method_and_code() {
        let metrics = Arc::new(Metrics::new());
        for code in [
            tonic::Code::NotFound,
            tonic::Code::NotFound,
            tonic::Code::Ok,
        ] {
            let service = CallMetricsLayer::new(metrics.clone()).layer(tower::service_fn(
                move |_| async move {
                    Ok::<_, Infallible>(if code == tonic::Code::Ok {
                        http::Response::new(())
                    } else {
                        answer(code)
                    })
                },
            ));
            let request = http::Request::builder()
                .uri("/copex.v1.ToolService/GetTool")
                .body(())
                .unwrap();
            service.oneshot(request).await.unwrap();
        }
        let text = metrics.render(0, &[]);
        let count = |code: &str| {
            text.lines()
                .find(|line| {
                    line.starts_with("grpc_server_handled_total")
                        && line.contains("grpc_method=\"GetTool\"")
                        && line.contains(&format!("grpc_code=\"{code}\""))
                })
                .and_then(|line| line.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(count("NOT_FOUND").as_deref(), Some("2"), "{text}");
        assert_eq!(count("OK").as_deref(), Some("1"), "{text}");
    }
}
