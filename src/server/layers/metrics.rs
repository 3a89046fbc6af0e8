//! Counts and times every call by method and the code its client gets
//! (`grpc_server_handled`, `grpc_server_handling_seconds`).

use std::sync::Arc;
use std::time::Instant;

use super::{Answer, Around, Inner, response_code};
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

impl<B, R, E> Around<B, R, E> for CallMetricsLayer
where
    R: 'static,
    E: 'static,
{
    fn around<F: Inner<R, E>>(
        &self,
        request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E> {
        let start = Instant::now();
        let path = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let future = next(request);
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
