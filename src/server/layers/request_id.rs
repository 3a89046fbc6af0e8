//! Every call gets a request id: the client's `x-request-id` when it sent a
//! usable one, else a new UUID. It goes into the request's extensions for
//! the layers and handlers inside, and back to the client on the answer.

use super::{Answer, Around, Inner};

const HEADER: &str = "x-request-id";
/// Longer ids are replaced rather than stored in every log line and audit row.
const MAX_LEN: usize = 128;

/// The call's request id, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<B, R, E> Around<B, R, E> for RequestIdLayer
where
    R: 'static,
    E: 'static,
{
    fn around<F: Inner<R, E>>(
        &self,
        mut request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E> {
        let id = request
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_LEN)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let echo = http::HeaderValue::from_str(&id).ok();
        request.extensions_mut().insert(RequestId(id));
        let future = next(request);
        Box::pin(async move {
            let mut result = future.await;
            if let (Ok(response), Some(value)) = (&mut result, echo) {
                response.headers_mut().insert(HEADER, value);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::*;

    /// Answers with the request id it was given, as its only header.
    async fn call(header: Option<&str>) -> (String, Option<String>) {
        let service =
            RequestIdLayer.layer(tower::service_fn(|request: http::Request<()>| async move {
                let seen = request
                    .extensions()
                    .get::<RequestId>()
                    .map(|id| id.0.clone())
                    .unwrap_or_default();
                Ok::<_, Infallible>(http::Response::new(seen))
            }));
        let mut request = http::Request::new(());
        if let Some(value) = header {
            request.headers_mut().insert(HEADER, value.parse().unwrap());
        }
        let response = service.oneshot(request).await.unwrap();
        let echoed = response
            .headers()
            .get(HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        (response.into_body(), echoed)
    }

    #[tokio::test]
    async fn the_clients_id_is_kept_and_echoed() {
        let (seen, echoed) = call(Some("abc-123")).await;
        assert_eq!(seen, "abc-123");
        assert_eq!(echoed.as_deref(), Some("abc-123"));
    }

    #[tokio::test]
    async fn a_missing_empty_or_long_id_is_replaced_by_a_new_one() {
        let long = "x".repeat(MAX_LEN + 1);
        for header in [None, Some(""), Some(long.as_str())] {
            let (seen, echoed) = call(header).await;
            assert!(uuid::Uuid::parse_str(&seen).is_ok(), "{header:?}: {seen}");
            assert_eq!(echoed.as_deref(), Some(seen.as_str()));
        }
        let (first, _) = call(None).await;
        let (second, _) = call(None).await;
        assert_ne!(first, second);
    }
}
