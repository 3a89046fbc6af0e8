//! The client's deadline (`grpc-timeout`) ends the call, and dropping the
//! call ends the database work it waits on. tonic would answer CANCELLED;
//! gRPC says DEADLINE_EXCEEDED. While the call runs, its deadline is in the
//! task-local `CALL_DEADLINE`, so the store can bound the statements it
//! runs for the call: dropping a future does not stop a statement the
//! database is running.

use std::time::{Duration, Instant};

use super::{Answer, Around, Inner};

tokio::task_local! {
    /// When the call being served must have answered: its client's
    /// `grpc-timeout` from the moment it arrived.
    static CALL_DEADLINE: Instant;
}

/// The deadline of the call this task serves, when its client set one.
pub fn call_deadline() -> Option<Instant> {
    CALL_DEADLINE.try_with(|deadline| *deadline).ok()
}

/// The `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
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

/// A deadline too far to be represented: none in practice.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<B, R, E> Around<B, R, E> for DeadlineLayer
where
    R: Default + 'static,
    E: 'static,
{
    fn around<F: Inner<R, E>>(
        &self,
        request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E> {
        // Taken here, in `call`, before tonic's own grpc-timeout (inside
        // this layer) starts its clock, so this deadline always ends first.
        let start = Instant::now();
        let deadline = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            .then(|| grpc_timeout(request.headers()))
            .flatten()
            .map(|timeout| start.checked_add(timeout).unwrap_or_else(far_future));
        let future = next(request);
        let Some(deadline) = deadline else {
            return Box::pin(future);
        };
        Box::pin(CALL_DEADLINE.scope(deadline, async move {
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), future).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(
                    "the client's deadline passed before the call finished",
                )
                .into_http()),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::*;

    fn request(timeout: Option<&str>, content_type: &str) -> http::Request<()> {
        let mut request = http::Request::new(());
        request
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        if let Some(timeout) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", timeout.parse().unwrap());
        }
        request
    }

    /// Sleeps `delay`, then answers OK with whether it saw a call deadline.
    fn sleeper(
        delay: Duration,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = Infallible,
        Future: Send + 'static,
    > {
        tower::service_fn(move |_request: http::Request<()>| async move {
            let seen = call_deadline().is_some();
            tokio::time::sleep(delay).await;
            let mut response = http::Response::new(());
            response
                .headers_mut()
                .insert("x-saw-deadline", seen.to_string().parse().unwrap());
            Ok::<_, Infallible>(response)
        })
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_answers_deadline_exceeded() {
        let service = DeadlineLayer.layer(sleeper(Duration::from_secs(5)));
        let started = Instant::now();
        let response = service
            .oneshot(request(Some("50m"), "application/grpc"))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            super::super::response_code(response.headers()),
            tonic::Code::DeadlineExceeded
        );
    }

    #[tokio::test]
    async fn a_call_within_its_deadline_sees_it_and_answers() {
        let service = DeadlineLayer.layer(sleeper(Duration::ZERO));
        let response = service
            .oneshot(request(Some("10S"), "application/grpc"))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-saw-deadline"], "true");
        assert!(response.headers().get("grpc-status").is_none());
    }

    #[tokio::test]
    async fn without_grpc_timeout_or_a_grpc_content_type_there_is_no_deadline() {
        for request in [
            request(None, "application/grpc"),
            request(Some("1n"), "text/plain"),
        ] {
            let service = DeadlineLayer.layer(sleeper(Duration::from_millis(5)));
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.headers()["x-saw-deadline"], "false");
            assert!(response.headers().get("grpc-status").is_none());
        }
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let parse = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
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
