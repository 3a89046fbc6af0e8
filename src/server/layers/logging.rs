//! One span per call, with the method, the partner (recorded once the call
//! is authenticated), the code and the latency, and one log line when it
//! ends: an error for codes that mean the hub failed, info for the rest.

use std::time::Instant;

use tracing::{Instrument, field};

use super::{Answer, Around, Inner, response_code};

#[derive(Debug, Clone, Copy, Default)]
pub struct CallSpanLayer;

/// Codes that mean the hub, not the client, went wrong.
fn is_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
    )
}

impl<B, R, E> Around<B, R, E> for CallSpanLayer
where
    R: 'static,
    E: 'static,
{
    fn around<F: Inner<R, E>>(
        &self,
        request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E> {
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
            next(request)
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
                        let code = response_code(response.headers());
                        span.record("code", field::debug(code));
                        if is_failure(code) {
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use tower::{Layer, ServiceExt};

    use super::super::answer;
    use super::*;

    #[test]
    fn only_the_hubs_own_failures_are_errors() {
        for code in [
            tonic::Code::Internal,
            tonic::Code::Unknown,
            tonic::Code::DataLoss,
        ] {
            assert!(is_failure(code), "{code:?}");
        }
        for code in [
            tonic::Code::Ok,
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(!is_failure(code), "{code:?}");
        }
    }

    /// Log output kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_call_is_logged_with_its_method_partner_and_code() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let service = CallSpanLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            // What authentication does once it knows the partner.
            tracing::Span::current().record("partner", "a");
            Ok::<_, Infallible>(answer(tonic::Code::NotFound))
        }));
        let request = http::Request::builder()
            .uri("/copex.v1.ToolService/GetTool")
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response_code(response.headers()), tonic::Code::NotFound);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .find(|line| line.contains("call finished"))
            .unwrap_or_else(|| panic!("no log line: {text}"));
        for part in [
            "method=/copex.v1.ToolService/GetTool",
            "partner=\"a\"",
            "code=NotFound",
            "latency_ms=",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
    }
}
