//! Trust boundaries: a CA vouches only for its own partners, an identity
//! maps to exactly one partner, and access is checked for the life of a
//! watch stream.

use std::time::Duration;

use copex::auth::cert::{fingerprint, partner_spiffe_id};
use copex::pb::{self, Role};
use copex::pki::{self, CertificateAuthority, LeafOptions};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

use crate::support::*;

/// A partner's domain, outside the hub's trust domain.
const PARTNER_DOMAIN: &str = "interpol.example";
const PARTNER_SVID: &str = "spiffe://interpol.example/sync";

fn leaf(ca: &CertificateAuthority, uri: Option<&str>) -> (String, String) {
    ca.sign_leaf(&LeafOptions {
        common_name: "client".into(),
        uri_sans: uri.map(str::to_owned).into_iter().collect(),
        client_auth: true,
        ..Default::default()
    })
    .expect("sign a leaf")
}

fn der_fingerprint(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate");
    fingerprint(der.as_ref())
}

async fn whoami(partner: &mut Partner) -> Result<pb::Partner, tonic::Status> {
    partner
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// Adds a CA and its (empty) CRL to the hub's trust bundle on disk, as an
/// operator does, and waits until the hub trusts it.
async fn add_to_bundle(hub: &TestHub, ca: &CertificateAuthority) {
    let pki = hub.pki_dir();
    let append = |file: &str, text: &str| {
        let path = pki.join(file);
        let mut all = std::fs::read_to_string(&path).expect("PKI file");
        all.push_str(text);
        std::fs::write(&path, all).expect("write PKI file");
    };
    append("crl.pem", &ca.crl_pem(&[], 1).expect("CRL"));
    append("ca.pem", &ca.cert_pem());
    let (cert, key) = leaf(ca, None);
    handshake_succeeds(hub, &cert, &key).await;
}

/// Waits until a certificate completes the handshake (its CA trusted).
async fn handshake_succeeds(hub: &TestHub, cert: &str, key: &str) {
    for _ in 0..100 {
        if let Ok(channel) = hub.channel_with(Some((cert, key))).await {
            let status = whoami(&mut Partner::on("probe", channel)).await;
            // Anything but a transport failure means the handshake passed.
            if !matches!(&status, Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown)) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hub did not come to trust the CA within 10 s");
}

async fn refused_as(hub: &TestHub, cert: &str, key: &str, reason: &str) {
    let mut client = hub.connect_as("someone", cert, key).await;
    let status = assert_code(whoami(&mut client).await, Code::Unauthenticated);
    assert_eq!(error_reason(&status).as_deref(), Some(reason), "{status:?}");
    // Not only the identity call: a read is refused the same way.
    assert_code(
        client
            .tools
            .get_tool(pb::GetToolRequest {
                name: "partners/victim/tools/secret".into(),
            })
            .await,
        Code::Unauthenticated,
    );
}

fn partner_with_ca(
    display_name: &str,
    ca: &CertificateAuthority,
    identities: &[&str],
) -> pb::Partner {
    pb::Partner {
        display_name: display_name.into(),
        kind: pb::PartnerKind::LawEnforcement as i32,
        roles: vec![Role::Reader as i32],
        identities: identities.iter().map(|i| (*i).to_owned()).collect(),
        ca_certificates: vec![ca.cert_pem()],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_second_ca_in_the_bundle_cannot_speak_for_hub_identities() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let mut victim = hub.contributor("victim").await;
    create_tool(&mut victim, "secret", tool("Secret", pb::Tlp::Red, &[]))
        .await
        .unwrap();
    // Same subject as the hub's development CA: names decide nothing.
    let rogue = CertificateAuthority::generate("copex development CA", TRUST_DOMAIN).unwrap();
    add_to_bundle(&hub, &rogue).await;

    // In the bundle but registered on no partner: it vouches for nobody,
    // not for the admin, not for the victim.
    for claimed in ["admin", "victim"] {
        let (cert, key) = leaf(&rogue, Some(&partner_spiffe_id(TRUST_DOMAIN, claimed)));
        refused_as(&hub, &cert, &key, "UNREGISTERED_CA").await;
    }

    // Registered on a partner, it vouches for that partner's own identities.
    admin
        .partners
        .create_partner(pb::CreatePartnerRequest {
            partner_id: "interpol".into(),
            partner: Some(partner_with_ca("Interpol", &rogue, &[PARTNER_SVID])),
        })
        .await
        .expect("a partner registered with its CA");
    let (cert, key) = leaf(&rogue, Some(PARTNER_SVID));
    let mut interpol = hub.connect_as("interpol", &cert, &key).await;
    assert_eq!(
        whoami(&mut interpol).await.unwrap().name,
        "partners/interpol"
    );
    // Which does not include the RED record of another partner.
    assert_code(
        interpol
            .tools
            .get_tool(pb::GetToolRequest {
                name: "partners/victim/tools/secret".into(),
            })
            .await,
        Code::NotFound,
    );

    // Never an ID of the hub's trust domain, not even its own partner's.
    for claimed in ["admin", "victim", "interpol"] {
        let (cert, key) = leaf(&rogue, Some(&partner_spiffe_id(TRUST_DOMAIN, claimed)));
        refused_as(&hub, &cert, &key, "IDENTITY_NOT_REGISTERED").await;
    }
    // Nor a fingerprint pinned on another partner.
    let (cert, key) = leaf(&rogue, None);
    admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: "partners/victim".into(),
                identities: vec![der_fingerprint(&cert)],
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["identities".into()],
            }),
        })
        .await
        .unwrap();
    refused_as(&hub, &cert, &key, "IDENTITY_NOT_REGISTERED").await;
    // Pinned on its own partner, the same certificate gets in.
    let (cert, key) = leaf(&rogue, None);
    admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: "partners/interpol".into(),
                identities: vec![PARTNER_SVID.into(), der_fingerprint(&cert)],
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["identities".into()],
            }),
        })
        .await
        .unwrap();
    let mut pinned = hub.connect_as("interpol", &cert, &key).await;
    assert_eq!(whoami(&mut pinned).await.unwrap().name, "partners/interpol");

    // The hub's own CA still speaks for its trust domain.
    assert_eq!(whoami(&mut admin).await.unwrap().name, "partners/admin");
}

#[tokio::test]
async fn a_ca_registered_on_a_partner_is_trusted_at_the_handshake() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let ca = CertificateAuthority::generate("Interpol CA", PARTNER_DOMAIN).unwrap();
    // Its CRL is given as for any CA (the hub refuses unknown revocation
    // status once it has CRLs), but the bundle is left as it is.
    let crl = hub.pki_dir().join("crl.pem");
    let mut crls = std::fs::read_to_string(&crl).unwrap();
    crls.push_str(&ca.crl_pem(&[], 1).unwrap());
    std::fs::write(&crl, crls).unwrap();
    let (cert, key) = leaf(&ca, Some(PARTNER_SVID));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let unknown = match hub.channel_with(Some((&cert, &key))).await {
        Err(_) => true,
        Ok(channel) => whoami(&mut Partner::on("interpol", channel))
            .await
            .is_err_and(|s| matches!(s.code(), Code::Unavailable | Code::Unknown)),
    };
    assert!(
        unknown,
        "a CA in neither the bundle nor a partner is not trusted"
    );

    let created = admin
        .partners
        .create_partner(pb::CreatePartnerRequest {
            partner_id: "interpol".into(),
            partner: Some(partner_with_ca("Interpol", &ca, &[PARTNER_SVID])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.ca_certificates.len(), 1);
    let mut interpol = hub.connect_as("interpol", &cert, &key).await;
    assert_eq!(
        whoami(&mut interpol).await.unwrap().name,
        "partners/interpol"
    );

    // One CA, one partner; and the hub's own CA belongs to none.
    let status = assert_code(
        admin
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "copycat".into(),
                partner: Some(partner_with_ca("Copycat", &ca, &[])),
            })
            .await,
        Code::AlreadyExists,
    );
    assert!(status.message().contains("CA certificate"), "{status:?}");
    let status = assert_code(
        admin
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "copycat".into(),
                partner: Some(partner_with_ca("Copycat", &hub.ca, &[])),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), ["partner.ca_certificates[0]"]);
    let status = assert_code(
        admin
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "copycat".into(),
                partner: Some(pb::Partner {
                    ca_certificates: vec![cert.clone()],
                    ..partner_with_ca("Copycat", &ca, &[])
                }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), ["partner.ca_certificates[0]"]);
    assert_code(
        admin
            .partners
            .get_partner(pb::GetPartnerRequest {
                name: "partners/copycat".into(),
            })
            .await,
        Code::NotFound,
    );

    // Taken off the partner, the CA is trusted no more.
    admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: "partners/interpol".into(),
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["ca_certificates".into()],
            }),
        })
        .await
        .unwrap();
    let status = assert_code(whoami(&mut interpol).await, Code::Unauthenticated);
    assert_eq!(error_reason(&status).as_deref(), Some("UNREGISTERED_CA"));
    let refused = match hub.channel_with(Some((&cert, &key))).await {
        Err(_) => true,
        Ok(channel) => whoami(&mut Partner::on("interpol", channel)).await.is_err(),
    };
    assert!(refused, "a new connection once the CA is unregistered");
}

/// An UpdatePartner of `identities` alone.
fn set_identities(id: &str, identities: &[String]) -> pb::UpdatePartnerRequest {
    pb::UpdatePartnerRequest {
        partner: Some(pb::Partner {
            name: format!("partners/{id}"),
            identities: identities.to_vec(),
            ..Default::default()
        }),
        update_mask: Some(pbjson_types::FieldMask {
            paths: vec!["identities".into()],
        }),
    }
}

#[tokio::test]
async fn an_identity_maps_to_exactly_one_partner() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let mut victim = hub.contributor("victim").await;
    create_tool(&mut victim, "secret", tool("Secret", pb::Tlp::Red, &[]))
        .await
        .unwrap();
    let mut mallory = hub.partner("mallory", &[Role::Reader]).await;
    let before = admin
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/mallory".into(),
        })
        .await
        .unwrap()
        .into_inner();

    // Another partner's implicit SPIFFE ID, and the admin's own.
    for taken in ["victim", "admin"] {
        let status = assert_code(
            admin
                .partners
                .update_partner(set_identities(
                    "mallory",
                    &[partner_spiffe_id(TRUST_DOMAIN, taken)],
                ))
                .await,
            Code::AlreadyExists,
        );
        assert!(
            status.message().contains(&format!("partners/{taken}")),
            "{status:?}"
        );
    }
    let status = assert_code(
        admin
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "mallory2".into(),
                partner: Some(pb::Partner {
                    display_name: "Mallory 2".into(),
                    kind: pb::PartnerKind::Other as i32,
                    roles: vec![Role::Reader as i32],
                    identities: vec![partner_spiffe_id(TRUST_DOMAIN, "victim")],
                    ..Default::default()
                }),
            })
            .await,
        Code::AlreadyExists,
    );
    assert!(status.message().contains("partners/victim"), "{status:?}");
    // An identity registered on one partner, and a fingerprint, given to a
    // second.
    let (cert, _) = leaf(&hub.ca, None);
    let pinned = der_fingerprint(&cert);
    admin
        .partners
        .update_partner(set_identities(
            "victim",
            &[pinned.clone(), "spiffe://ngo.example/app".into()],
        ))
        .await
        .unwrap();
    for taken in [pinned.clone(), "spiffe://ngo.example/app".to_owned()] {
        assert_code(
            admin
                .partners
                .update_partner(set_identities("mallory", &[taken]))
                .await,
            Code::AlreadyExists,
        );
    }
    // Nothing changed on mallory, and its certificate still names only it.
    let after = admin
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/mallory".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    assert_eq!(whoami(&mut mallory).await.unwrap().name, "partners/mallory");
    assert_code(
        mallory
            .tools
            .get_tool(pb::GetToolRequest {
                name: "partners/victim/tools/secret".into(),
            })
            .await,
        Code::NotFound,
    );
    // A partner's own implicit ID is no conflict.
    admin
        .partners
        .update_partner(set_identities(
            "mallory",
            &[partner_spiffe_id(TRUST_DOMAIN, "mallory")],
        ))
        .await
        .expect("its own implicit ID");
    // An implicit ID of a partner that does not exist yet is reserved.
    let status = assert_code(
        admin
            .partners
            .update_partner(set_identities(
                "mallory",
                &[partner_spiffe_id(TRUST_DOMAIN, "later")],
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), ["partner.identities[0]"]);
}

/// Suspends or reactivates `id` through the admin.
async fn set_state(admin: &mut Partner, id: &str, state: pb::PartnerState) {
    admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: format!("partners/{id}"),
                state: state as i32,
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .unwrap();
}

/// Reads a watch stream until it ends; returns the names of the changes it
/// delivered and the status it ended with.
async fn drain_until_end(stream: &mut WatchStream) -> (Vec<String>, tonic::Status) {
    let mut names = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(message)) => names.extend(message.changes.into_iter().map(|c| c.name)),
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends once access is lost");
    (names, ended)
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_partner_is_suspended() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let mut owner = hub.contributor("owner").await;
    let mut watcher = hub.partner("watcher", &[Role::Reader]).await;
    create_tool(
        &mut owner,
        "before",
        tool("Before", pb::Tlp::Amber, &["partners/watcher"]),
    )
    .await
    .unwrap();
    let mut stream = watch(&mut watcher, "", &[]).await;
    let first = next_changes(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(first.changes[0].name, "partners/owner/tools/before");

    set_state(&mut admin, "watcher", pb::PartnerState::Suspended).await;
    create_tool(
        &mut owner,
        "after",
        tool("After", pb::Tlp::Amber, &["partners/watcher"]),
    )
    .await
    .unwrap();
    let (names, status) = drain_until_end(&mut stream).await;
    assert!(names.is_empty(), "sent after the suspension: {names:?}");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("PARTNER_SUSPENDED"));

    // Reactivated, it resumes and gets what it missed, once.
    set_state(&mut admin, "watcher", pb::PartnerState::Active).await;
    let mut resumed = watch(&mut watcher, &first.cursor, &[]).await;
    let missed = next_changes(&mut resumed, Duration::from_secs(5)).await;
    assert_eq!(
        missed
            .changes
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["partners/owner/tools/after"]
    );
}

#[tokio::test]
async fn an_idle_watch_stream_ends_when_its_partner_is_suspended() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let mut watcher = hub.partner("watcher", &[Role::Reader]).await;
    let mut stream = watch(&mut watcher, "", &[]).await;
    stream.message().await.unwrap().expect("the first message");
    set_state(&mut admin, "watcher", pb::PartnerState::Suspended).await;
    // No change and no bookmark is due: the stream still ends.
    let (names, status) = drain_until_end(&mut stream).await;
    assert!(names.is_empty());
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_certificate_is_revoked() {
    let hub = TestHub::start().await;
    let mut owner = hub.contributor("owner").await;
    hub.partner("watcher", &[Role::Reader]).await;
    let pair = hub.cert_for("watcher");
    let cert_file = hub.pki_dir().join("watcher-test.pem");
    std::fs::write(&cert_file, &pair.0).unwrap();
    let mut watcher = hub.connect_as("watcher", &pair.0, &pair.1).await;
    let mut stream = watch(&mut watcher, "", &[]).await;
    stream.message().await.unwrap().expect("the first message");

    pki::revoke(&hub.pki_dir(), &cert_file).unwrap();
    // The hub reloads the CRL within a second; the stream ends before it
    // sends anything committed after that.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    create_tool(&mut owner, "after", tool("After", pb::Tlp::Green, &[]))
        .await
        .unwrap();
    let (names, status) = drain_until_end(&mut stream).await;
    assert!(names.is_empty(), "sent after the revocation: {names:?}");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("CERTIFICATE_REVOKED")
    );
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_certificate_expires() {
    let hub = TestHub::start().await;
    hub.partner("watcher", &[Role::Reader]).await;
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = hub
        .ca
        .sign_leaf(&LeafOptions {
            common_name: "watcher".into(),
            uri_sans: vec![partner_spiffe_id(TRUST_DOMAIN, "watcher")],
            client_auth: true,
            not_before: Some(now - time::Duration::hours(1)),
            not_after: Some(now + time::Duration::seconds(3)),
            ..Default::default()
        })
        .unwrap();
    let mut watcher = hub.connect_as("watcher", &cert, &key).await;
    let mut stream = watch(&mut watcher, "", &[]).await;
    stream.message().await.unwrap().expect("the first message");
    let (names, status) = drain_until_end(&mut stream).await;
    assert!(names.is_empty());
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("CERTIFICATE_EXPIRED")
    );
}

/// Fires `count` GetCurrentPartner calls at once; returns their statuses'
/// codes and reasons (OK as `Code::Ok`).
async fn burst(client: &Partner, count: usize) -> Vec<(Code, Option<String>)> {
    let calls: Vec<_> = (0..count)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { whoami(&mut client).await })
        })
        .collect();
    let mut out = Vec::new();
    for call in calls {
        out.push(match call.await.unwrap() {
            Ok(_) => (Code::Ok, None),
            Err(status) => (status.code(), error_reason(&status)),
        });
    }
    out
}

#[tokio::test]
async fn refused_certificates_are_rate_limited_before_anything_else() {
    let hub = TestHub::start_with(|args| args.rate_limit = Some(5)).await;
    let mut admin = hub.admin().await;
    let suspended = hub.partner("gone", &[Role::Reader]).await;
    set_state(&mut admin, "gone", pb::PartnerState::Suspended).await;
    let (cert, key) = hub.cert_for("nobody");
    let unknown = hub.connect_as("nobody", &cert, &key).await;

    for (client, refusal) in [
        (&suspended, Code::PermissionDenied),
        (&unknown, Code::Unauthenticated),
    ] {
        let answers = burst(client, 40).await;
        let refused = answers.iter().filter(|(code, _)| *code == refusal).count();
        let limited: Vec<_> = answers
            .iter()
            .filter(|(code, _)| *code == Code::ResourceExhausted)
            .collect();
        // A burst of twice the rate, then the bucket: the identity check
        // and its audit row are not reached.
        assert!(refused <= 12, "{refusal:?} {refused} times: {answers:?}");
        assert!(limited.len() >= 28, "{answers:?}");
        assert!(
            limited
                .iter()
                .all(|(_, reason)| reason.as_deref() == Some("RATE_LIMITED")),
            "{answers:?}"
        );
    }
    // Their buckets are their own: the admin is not limited by them.
    assert_eq!(whoami(&mut admin).await.unwrap().name, "partners/admin");
}
