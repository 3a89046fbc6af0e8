//! Who gets in: handshakes, identities, suspension and roles.

use std::sync::Arc;

use copex::auth::tls;
use copex::pb::{self, Role};
use copex::pki::{CertificateAuthority, LeafOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support::*;

/// Completes a raw TLS connection and reports whether the server accepted
/// it: with TLS 1.3 a refused client certificate shows as an alert on the
/// first read.
async fn raw_handshake(hub: &TestHub, config: rustls::ClientConfig) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(hub.addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(0) => Err("closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn client_config_without_cert(hub: &TestHub) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            hub.ca.cert_der().to_vec(),
        ))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[tokio::test]
async fn a_valid_partner_certificate_completes_the_handshake() {
    let hub = TestHub::start().await;
    let (cert, key) = hub.cert_for("admin");
    let config = tls::client_config(
        hub.ca.cert_pem().as_bytes(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap();
    raw_handshake(&hub, Arc::unwrap_or_clone(config))
        .await
        .expect("accepted");
}

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    let hub = TestHub::start().await;
    let err = raw_handshake(&hub, client_config_without_cert(&hub))
        .await
        .unwrap_err();
    assert!(
        err.contains("CertificateRequired") || err.contains("alert"),
        "{err}"
    );

    // And through gRPC: no call gets through.
    if let Ok(channel) = hub.channel_with(None).await {
        let result = PartnerClient::new(channel)
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await;
        let status = result.unwrap_err();
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown),
            "{status:?}"
        );
        assert!(
            format!("{status:?}").contains("CertificateRequired"),
            "{status:?}"
        );
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let hub = TestHub::start().await;
    let stranger = CertificateAuthority::generate("Other CA", TRUST_DOMAIN).unwrap();
    let (cert, key) = stranger
        .sign_leaf(&LeafOptions {
            uri_sans: vec![copex::auth::cert::partner_spiffe_id(TRUST_DOMAIN, "admin")],
            client_auth: true,
            ..Default::default()
        })
        .unwrap();
    let config = tls::client_config(
        hub.ca.cert_pem().as_bytes(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap();
    let err = raw_handshake(&hub, Arc::unwrap_or_clone(config))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA") || err.contains("alert"), "{err}");

    if let Ok(channel) = hub.channel_with(Some((&cert, &key))).await {
        let status = PartnerClient::new(channel)
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown),
            "{status:?}"
        );
        assert!(format!("{status:?}").contains("UnknownCA"), "{status:?}");
    }
}

#[tokio::test]
async fn a_certificate_of_no_registered_partner_is_unauthenticated() {
    let hub = TestHub::start().await;
    let (cert, key) = hub.cert_for("ghost");
    let mut ghost = hub.connect_as("ghost", &cert, &key).await;
    let status = assert_code(
        ghost
            .partners
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("UNKNOWN_PARTNER"));
    assert_code(
        ghost
            .tools
            .list_tools(pb::ListToolsRequest {
                parent: "partners/-".into(),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
    );

    // A certificate whose SPIFFE ID belongs to another trust domain maps to
    // nobody either, even with a registered partner's id in it.
    let (cert, key) = hub
        .ca
        .sign_leaf(&LeafOptions {
            uri_sans: vec!["spiffe://elsewhere.example/partner/admin".into()],
            client_auth: true,
            ..Default::default()
        })
        .unwrap();
    let mut foreign = hub.connect_as("admin", &cert, &key).await;
    assert_code(
        foreign
            .partners
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn a_leaf_with_two_uri_sans_is_refused() {
    let hub = TestHub::start().await;
    let (cert, key) = hub
        .ca
        .sign_leaf(&LeafOptions {
            uri_sans: vec![
                copex::auth::cert::partner_spiffe_id(TRUST_DOMAIN, "admin"),
                "spiffe://copex.local/partner/other".into(),
            ],
            client_auth: true,
            ..Default::default()
        })
        .unwrap();
    let mut two = hub.connect_as("admin", &cert, &key).await;
    let status = assert_code(
        two.partners
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("MULTIPLE_URI_SANS"));
}

#[tokio::test]
async fn a_registered_fingerprint_identifies_a_partner_without_spiffe_id() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    // A partner-CA style certificate with no URI SAN at all.
    let (cert, key) = hub
        .ca
        .sign_leaf(&LeafOptions {
            common_name: "industry gateway".into(),
            client_auth: true,
            ..Default::default()
        })
        .unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    let fingerprint = copex::auth::cert::fingerprint(&der);
    admin
        .partners
        .create_partner(pb::CreatePartnerRequest {
            partner_id: "industry".into(),
            partner: Some(pb::Partner {
                display_name: "Industry partner".into(),
                kind: pb::PartnerKind::Industry as i32,
                roles: vec![Role::Reader as i32],
                // Upper case with colons, as a person may paste it.
                identities: vec![fingerprint.trim_start_matches("sha256:").to_uppercase()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut industry = hub.connect_as("industry", &cert, &key).await;
    let me = industry
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.name, "partners/industry");
    assert_eq!(me.identities, vec![fingerprint]);
}

#[tokio::test]
async fn a_suspended_partner_is_refused_on_every_call() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let mut b = hub.contributor("b").await;
    create_tool(&mut b, "before", tool("Before", pb::Tlp::Green, &[]))
        .await
        .unwrap();

    admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: "partners/b".into(),
                state: pb::PartnerState::Suspended as i32,
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .unwrap();

    let status = assert_code(
        b.partners
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("PARTNER_SUSPENDED"));
    assert_code(
        b.tools
            .get_tool(pb::GetToolRequest {
                name: "partners/b/tools/before".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        b.tools
            .list_tools(pb::ListToolsRequest {
                parent: "partners/-".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        create_tool(&mut b, "after", tool("After", pb::Tlp::Green, &[])).await,
        Code::PermissionDenied,
    );
    assert_code(
        b.tools
            .delete_tool(pb::DeleteToolRequest {
                name: "partners/b/tools/before".into(),
                etag: String::new(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        b.partners
            .list_partners(pb::ListPartnersRequest::default())
            .await,
        Code::PermissionDenied,
    );

    // Nothing changed while suspended: the admin still sees the one tool.
    let tools = list_all_tools(&mut admin, "partners/b", "", 50).await;
    assert_eq!(
        tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["partners/b/tools/before"]
    );
}

#[tokio::test]
async fn roles_decide_who_writes_and_who_manages_partners() {
    let hub = TestHub::start().await;
    let mut reader = hub.partner("reader", &[Role::Reader]).await;
    let status = assert_code(
        create_tool(&mut reader, "x", tool("X", pb::Tlp::Green, &[])).await,
        Code::PermissionDenied,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("ROLE_REQUIRED"));
    // Readers read.
    reader
        .tools
        .list_tools(pb::ListToolsRequest {
            parent: "partners/-".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    reader
        .partners
        .list_partners(pb::ListPartnersRequest::default())
        .await
        .unwrap();

    // Only admins manage partners.
    let mut contributor = hub.contributor("c").await;
    assert_code(
        contributor
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "sneaky".into(),
                partner: Some(pb::Partner {
                    display_name: "Sneaky".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        contributor
            .partners
            .update_partner(pb::UpdatePartnerRequest {
                partner: Some(pb::Partner {
                    name: "partners/c".into(),
                    roles: vec![Role::Admin as i32],
                    ..Default::default()
                }),
                update_mask: Some(pbjson_types::FieldMask {
                    paths: vec!["roles".into()],
                }),
            })
            .await,
        Code::PermissionDenied,
    );
    let me = contributor
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.roles, vec![Role::Contributor as i32]);
}
