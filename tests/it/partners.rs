//! PartnerService: reading is open to every partner, changes are for admins.

use copex::pb::{self, PartnerKind, PartnerState, Role};
use tonic::Code;

use crate::support::*;

fn partner(display_name: &str, roles: &[Role]) -> pb::Partner {
    pb::Partner {
        display_name: display_name.into(),
        kind: PartnerKind::Ngo as i32,
        roles: roles.iter().map(|r| *r as i32).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn admins_create_and_update_partners_and_everyone_reads_them() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let created = admin
        .partners
        .create_partner(pb::CreatePartnerRequest {
            partner_id: "ecpat".into(),
            partner: Some(partner(
                "ECPAT International",
                &[Role::Contributor, Role::Reader],
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "partners/ecpat");
    assert_eq!(created.state, PartnerState::Active as i32);
    assert_eq!(
        created.roles,
        vec![Role::Reader as i32, Role::Contributor as i32]
    );
    assert!(!created.uid.is_empty() && !created.etag.is_empty());

    let status = assert_code(
        admin
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "ecpat".into(),
                partner: Some(partner("Again", &[])),
            })
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("RESOURCE_EXISTS"));

    for (id, msg, field) in [
        ("Bad Id", partner("X", &[]), "partner_id"),
        ("ok-id", partner("", &[]), "partner.display_name"),
        (
            "ok-id",
            pb::Partner {
                roles: vec![0],
                ..partner("X", &[])
            },
            "partner.roles[0]",
        ),
        (
            "ok-id",
            pb::Partner {
                kind: 77,
                ..partner("X", &[])
            },
            "partner.kind",
        ),
        (
            "ok-id",
            pb::Partner {
                identities: vec!["not an identity".into()],
                ..partner("X", &[])
            },
            "partner.identities[0]",
        ),
    ] {
        let status = assert_code(
            admin
                .partners
                .create_partner(pb::CreatePartnerRequest {
                    partner_id: id.into(),
                    partner: Some(msg),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(violation_fields(&status), vec![field.to_owned()]);
    }

    // Every partner reads partners, to pick recipients.
    let (cert, key) = hub.cert_for("ecpat");
    let mut ecpat = hub.connect_as("ecpat", &cert, &key).await;
    let got = ecpat
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "partners/admin");
    assert_code(
        ecpat
            .partners
            .get_partner(pb::GetPartnerRequest {
                name: "partners/nobody".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        ecpat
            .partners
            .get_partner(pb::GetPartnerRequest {
                name: "nobody".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    let page = ecpat
        .partners
        .list_partners(pb::ListPartnersRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.partners.len(), 1);
    let rest = ecpat
        .partners
        .list_partners(pb::ListPartnersRequest {
            page_size: 10,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = page
        .partners
        .into_iter()
        .chain(rest.partners)
        .map(|p| p.name)
        .collect();
    names.sort();
    assert_eq!(names, vec!["partners/admin", "partners/ecpat"]);

    // Update with a mask and an etag.
    let updated = admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: "partners/ecpat".into(),
                display_name: "ECPAT International (Bangkok)".into(),
                etag: created.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "ECPAT International (Bangkok)");
    assert_eq!(updated.roles, created.roles);
    assert_ne!(updated.etag, created.etag);
    let status = assert_code(
        admin
            .partners
            .update_partner(pb::UpdatePartnerRequest {
                partner: Some(pb::Partner {
                    name: "partners/ecpat".into(),
                    display_name: "Stale".into(),
                    etag: created.etag,
                    ..Default::default()
                }),
                update_mask: Some(pbjson_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            })
            .await,
        Code::Aborted,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("ETAG_MISMATCH"));
    assert_code(
        admin
            .partners
            .update_partner(pb::UpdatePartnerRequest {
                partner: Some(pb::Partner {
                    name: "partners/ecpat".into(),
                    ..Default::default()
                }),
                update_mask: Some(pbjson_types::FieldMask {
                    paths: vec!["uid".into()],
                }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        admin
            .partners
            .update_partner(pb::UpdatePartnerRequest {
                partner: Some(pb::Partner {
                    name: "partners/nobody".into(),
                    display_name: "X".into(),
                    state: 1,
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
        Code::NotFound,
    );
    let now = ecpat
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.display_name, "ECPAT International (Bangkok)");
}

#[tokio::test]
async fn an_identity_belongs_to_one_partner() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let fingerprint = format!("sha256:{}", "ab".repeat(32));
    admin
        .partners
        .create_partner(pb::CreatePartnerRequest {
            partner_id: "one".into(),
            partner: Some(pb::Partner {
                identities: vec![fingerprint.clone()],
                ..partner("One", &[])
            }),
        })
        .await
        .unwrap();
    assert_code(
        admin
            .partners
            .create_partner(pb::CreatePartnerRequest {
                partner_id: "two".into(),
                partner: Some(pb::Partner {
                    identities: vec![fingerprint],
                    ..partner("Two", &[])
                }),
            })
            .await,
        Code::AlreadyExists,
    );
    // The failed create left no partner behind.
    assert_code(
        admin
            .partners
            .get_partner(pb::GetPartnerRequest {
                name: "partners/two".into(),
            })
            .await,
        Code::NotFound,
    );
}

fn set(
    name: &str,
    state: PartnerState,
    roles: &[Role],
    paths: &[&str],
) -> pb::UpdatePartnerRequest {
    pb::UpdatePartnerRequest {
        partner: Some(pb::Partner {
            name: name.into(),
            state: state as i32,
            roles: roles.iter().map(|r| *r as i32).collect(),
            ..Default::default()
        }),
        update_mask: Some(pbjson_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

/// Suspending the only active admin, or taking its role, would leave no one
/// who can undo it: refused, and nothing changes.
#[tokio::test]
async fn the_last_active_admin_can_be_neither_suspended_nor_demoted() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let before = admin
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap()
        .into_inner();
    for request in [
        set("partners/admin", PartnerState::Suspended, &[], &["state"]),
        set(
            "partners/admin",
            PartnerState::Active,
            &[Role::Contributor],
            &["roles"],
        ),
    ] {
        let status = assert_code(
            admin.partners.update_partner(request).await,
            Code::FailedPrecondition,
        );
        assert_eq!(error_reason(&status).as_deref(), Some("LAST_ADMIN"));
        assert!(status.message().contains("partners/admin"), "{status:?}");
    }
    let after = admin
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);

    // With a second admin, either may be suspended, and the other undoes it.
    let mut itu = hub.partner("itu", &[Role::Admin]).await;
    admin
        .partners
        .update_partner(set(
            "partners/admin",
            PartnerState::Suspended,
            &[],
            &["state"],
        ))
        .await
        .unwrap();
    assert_code(
        admin
            .partners
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await,
        Code::PermissionDenied,
    );
    // Now itu is the last one.
    let status = assert_code(
        itu.partners
            .update_partner(set(
                "partners/itu",
                PartnerState::Suspended,
                &[],
                &["state"],
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("LAST_ADMIN"));
    itu.partners
        .update_partner(set("partners/admin", PartnerState::Active, &[], &["state"]))
        .await
        .unwrap();
    admin
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap();
}
