//! The standard services beside ours: health and reflection.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;

#[tokio::test]
async fn health_reports_serving() {
    let hub = TestHub::start().await;
    let admin = hub.admin().await;
    let mut health = HealthClient::new(admin.channel.clone());
    for service in ["", "copex.v1.ToolService", "copex.v1.PartnerService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    use futures_util::StreamExt;
    let hub = TestHub::start().await;
    let admin = hub.admin().await;
    let expected = [
        "copex.v1.AuditService",
        "copex.v1.PartnerService",
        "copex.v1.PracticeService",
        "copex.v1.SearchService",
        "copex.v1.SyncService",
        "copex.v1.ToolService",
        "copex.v1.WorkshopService",
        "grpc.health.v1.Health",
    ];

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(admin.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(response)) = responses.next().await else {
            panic!("no reflection answer")
        };
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in expected {
            assert!(
                names.iter().any(|n| n == service),
                "v1 lacks {service}: {names:?}"
            );
        }
        // A client without the .proto files can fetch the descriptors.
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "copex.v1.ToolService".into(),
            )),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(response)) = responses.next().await else {
            panic!("no reflection answer")
        };
        assert!(
            matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty())
        );
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(admin.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(response)) = responses.next().await else {
            panic!("no reflection answer")
        };
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in expected {
            assert!(
                names.iter().any(|n| n == service),
                "v1alpha lacks {service}: {names:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_server_stops_cleanly() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    admin
        .partners
        .get_current_partner(copex::pb::GetCurrentPartnerRequest {})
        .await
        .unwrap();
    drop(admin);
    tokio::time::timeout(std::time::Duration::from_secs(10), hub.stop())
        .await
        .expect("stops in time");
}

#[tokio::test]
async fn grpc_web_calls_are_served_on_the_same_port() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let hub = TestHub::start().await;
    // As a browser does: HTTP/1.1 (by ALPN), application/grpc-web+proto, the
    // message in a gRPC frame, the status in a trailer frame of the body.
    let (cert, key) = hub.cert_for("admin");
    let mut config = Arc::unwrap_or_clone(
        copex::auth::tls::client_config(
            hub.ca.cert_pem().as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )
        .unwrap(),
    );
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = "POST /copex.v1.PartnerService/GetCurrentPartner HTTP/1.1\r\n\
                   Host: localhost\r\n\
                   Content-Type: application/grpc-web+proto\r\n\
                   X-Grpc-Web: 1\r\n\
                   Content-Length: 5\r\n\
                   Connection: close\r\n\r\n";
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut response),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_lowercase()
            .contains("content-type: application/grpc-web"),
        "{text}"
    );
    assert!(
        text.contains("partners/admin"),
        "the Partner message: {text}"
    );
    assert!(text.contains("grpc-status:0"), "the trailer frame: {text}");
}
