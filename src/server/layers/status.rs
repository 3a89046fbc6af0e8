//! tonic answers some bad requests itself (a message over the size limit, a
//! message that does not decode) with statuses of its own wording; this
//! layer gives them the hub's codes and details
//! (`api::status::from_transport`), so a client sees one error model.

use super::{Answer, Around, Inner};

#[derive(Debug, Clone, Copy, Default)]
pub struct StatusLayer;

impl<B, R, E> Around<B, R, E> for StatusLayer
where
    R: 'static,
    E: 'static,
{
    fn around<F: Inner<R, E>>(
        &self,
        request: http::Request<B>,
        next: impl FnOnce(http::Request<B>) -> F,
    ) -> Answer<R, E> {
        let future = next(request);
        Box::pin(async move {
            let mut result = future.await;
            if let Ok(response) = &mut result
                && let Some(status) = tonic::Status::from_header_map(response.headers())
                && let Some(replaced) = crate::api::status::from_transport(&status)
            {
                // Details from tonic's status do not apply to the replacement.
                response.headers_mut().remove("grpc-status-details-bin");
                let _ = replaced.add_header(response.headers_mut());
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::super::response_code;
    use super::*;

    async fn through_layer(status: tonic::Status) -> http::Response<()> {
        let service = StatusLayer.layer(tower::service_fn(move |_: http::Request<()>| {
            let status = status.clone();
            async move { Ok::<_, Infallible>(status.into_http()) }
        }));
        service.oneshot(http::Request::new(())).await.unwrap()
    }

    #[tokio::test]
    async fn tonics_too_large_becomes_resource_exhausted() {
        let response = through_layer(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ))
        .await;
        assert_eq!(
            response_code(response.headers()),
            tonic::Code::ResourceExhausted
        );
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert!(
            status.message().contains("too large"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn the_hubs_own_statuses_pass_unchanged() {
        let response = through_layer(tonic::Status::out_of_range("page token past the end")).await;
        assert_eq!(response_code(response.headers()), tonic::Code::OutOfRange);
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.message(), "page token past the end");
        let ok = StatusLayer
            .layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(()))
            }))
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert!(ok.headers().is_empty());
    }
}
