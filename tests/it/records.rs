//! Publishing, reading, changing and deleting records: ownership, TLP
//! sharing, validation, etags, update masks.

use copex::pb::{self, Tlp};
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn create_get_update_delete_round_trip() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let created = create_tool(
        &mut a,
        "photo-matcher",
        tool("Photo matcher", Tlp::Green, &[]),
    )
    .await
    .unwrap();
    assert_eq!(created.name, "partners/a/tools/photo-matcher");
    assert!(!created.uid.is_empty() && !created.etag.is_empty());
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);

    let got = get_tool(&mut a, &created.name).await.unwrap();
    assert_eq!(got, created);

    // Server-made ids are UUIDs.
    let generated = create_tool(&mut a, "", tool("Generated", Tlp::Clear, &[]))
        .await
        .unwrap();
    let id = generated.name.rsplit('/').next().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

    // Update with a mask changes only the named fields.
    let mut patch = pb::Tool {
        name: created.name.clone(),
        summary: "New summary".into(),
        ..Default::default()
    };
    patch.display_name = "ignored, not in the mask".into();
    let updated = update_tool(&mut a, patch, &["summary"], false)
        .await
        .unwrap();
    assert_eq!(updated.summary, "New summary");
    assert_eq!(updated.display_name, "Photo matcher");
    assert_eq!(updated.uid, created.uid);
    assert_eq!(updated.create_time, created.create_time);
    assert_ne!(updated.etag, created.etag);
    assert_ne!(updated.update_time, created.update_time);

    // An update that changes nothing keeps the etag and the update time.
    let same = update_tool(&mut a, updated.clone(), &[], false)
        .await
        .unwrap();
    assert_eq!(same, updated);

    // Delete with the current etag; then it is gone.
    a.tools
        .delete_tool(pb::DeleteToolRequest {
            name: created.name.clone(),
            etag: updated.etag.clone(),
        })
        .await
        .unwrap();
    assert_code(get_tool(&mut a, &created.name).await, Code::NotFound);
    assert_code(
        a.tools
            .delete_tool(pb::DeleteToolRequest {
                name: created.name.clone(),
                etag: String::new(),
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn update_with_allow_missing_creates_and_without_it_is_not_found() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut workshop = pb::Workshop {
        name: "partners/a/workshops/igf-2012-125".into(),
        title: "Innovative application of ICTs to facilitate child protection online".into(),
        forum: "IGF".into(),
        year: 2012,
        proposal_number: 125,
        sharing: Some(pb::Sharing {
            tlp: Tlp::Clear as i32,
            recipients: vec![],
        }),
        ..Default::default()
    };
    let status = assert_code(
        a.workshops
            .update_workshop(pb::UpdateWorkshopRequest {
                workshop: Some(workshop.clone()),
                update_mask: None,
                allow_missing: false,
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("RESOURCE_NOT_FOUND"));
    let created = a
        .workshops
        .update_workshop(pb::UpdateWorkshopRequest {
            workshop: Some(workshop.clone()),
            update_mask: None,
            allow_missing: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, workshop.name);
    assert_eq!(created.year, 2012);
    workshop.year = 2013;
    let updated = a
        .workshops
        .update_workshop(pb::UpdateWorkshopRequest {
            workshop: Some(workshop),
            update_mask: None,
            allow_missing: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.year, 2013);
    assert_eq!(updated.uid, created.uid);
}

#[tokio::test]
async fn another_partner_cannot_write_a_records_of_a() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let original = create_tool(&mut a, "shared", tool("Shared tool", Tlp::Green, &[]))
        .await
        .unwrap();

    // B sees A's GREEN record ...
    let seen = get_tool(&mut b, &original.name).await.unwrap();
    assert_eq!(seen, original);

    // ... but may not change, delete or create under A's name.
    let mut changed = original.clone();
    changed.display_name = "Hijacked".into();
    let status = assert_code(
        update_tool(&mut b, changed.clone(), &[], false).await,
        Code::PermissionDenied,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("NOT_OWNER"));
    assert_code(
        update_tool(&mut b, changed, &[], true).await,
        Code::PermissionDenied,
    );
    assert_code(
        b.tools
            .delete_tool(pb::DeleteToolRequest {
                name: original.name.clone(),
                etag: String::new(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        b.tools
            .create_tool(pb::CreateToolRequest {
                parent: "partners/a".into(),
                tool: Some(tool("Planted", Tlp::Green, &[])),
                tool_id: "planted".into(),
            })
            .await,
        Code::PermissionDenied,
    );

    // A's record is exactly as it was, and nothing was planted.
    let after = get_tool(&mut a, &original.name).await.unwrap();
    assert_eq!(after, original);
    let names: Vec<String> = list_all_tools(&mut a, "partners/a", "", 100)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec![original.name]);
}

#[tokio::test]
async fn an_amber_record_exists_only_for_its_owner_and_recipients() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let mut c = hub.contributor("c").await;
    let amber = create_tool(
        &mut a,
        "amber",
        tool("Amber tool", Tlp::Amber, &["partners/b"]),
    )
    .await
    .unwrap();
    create_tool(&mut a, "green", tool("Green tool", Tlp::Green, &[]))
        .await
        .unwrap();

    // The recipient reads it.
    let got = get_tool(&mut b, &amber.name).await.unwrap();
    assert_eq!(got, amber);
    assert_eq!(list_all_tools(&mut b, "partners/a", "", 50).await.len(), 2);

    // A non-recipient gets exactly what a missing record gets.
    let hidden = assert_code(get_tool(&mut c, &amber.name).await, Code::NotFound);
    let missing = assert_code(
        get_tool(&mut c, "partners/a/tools/never-made").await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("amber", "X"),
        missing.message().replace("never-made", "X")
    );

    let mut edit = amber.clone();
    edit.summary = "changed".into();
    let on_hidden = update_tool(&mut c, edit.clone(), &[], false)
        .await
        .unwrap_err();
    edit.name = "partners/a/tools/never-made".into();
    let on_missing = update_tool(&mut c, edit, &[], false).await.unwrap_err();
    assert_eq!(on_hidden.code(), on_missing.code());
    assert_eq!(
        on_hidden.message().replace("amber", "X"),
        on_missing.message().replace("never-made", "X")
    );
    let del_hidden = c
        .tools
        .delete_tool(pb::DeleteToolRequest {
            name: amber.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    let del_missing = c
        .tools
        .delete_tool(pb::DeleteToolRequest {
            name: "partners/a/tools/never-made".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(del_hidden.code(), del_missing.code());
    assert_eq!(del_hidden.message(), del_missing.message());

    // Never in a list, whatever the filter or page size.
    for filter in [
        "",
        "name = \"partners/a/tools/amber\"",
        "sharing.tlp = TLP_AMBER",
        "display_name = \"Amber tool\"",
    ] {
        for page_size in [1, 50] {
            for parent in ["partners/a", "partners/-"] {
                let names: Vec<String> = list_all_tools(&mut c, parent, filter, page_size)
                    .await
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                assert!(
                    !names.contains(&amber.name),
                    "{filter:?} {page_size} {parent}: {names:?}"
                );
            }
        }
    }
    // A page token taken right before the hidden record does not reveal it.
    let first = c
        .tools
        .list_tools(pb::ListToolsRequest {
            parent: "partners/a".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tools.len(), 1);
    assert_eq!(first.tools[0].name, "partners/a/tools/green");
    assert!(
        first.next_page_token.is_empty(),
        "a token would hint at more records"
    );

    // The owner's change of recipients takes effect at once.
    let mut reshared = amber.clone();
    reshared.sharing = Some(pb::Sharing {
        tlp: Tlp::Amber as i32,
        recipients: vec!["partners/c".into()],
    });
    update_tool(&mut a, reshared, &[], false).await.unwrap();
    assert_code(get_tool(&mut b, &amber.name).await, Code::NotFound);
    get_tool(&mut c, &amber.name).await.unwrap();
}

#[tokio::test]
async fn each_invalid_field_is_named_and_nothing_is_stored() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;

    let cases: Vec<(&str, &str, pb::Tool, &str)> = vec![
        ("bad id", "Bad_ID", tool("Ok", Tlp::Green, &[]), "tool_id"),
        (
            "id ending in a dash",
            "tool-",
            tool("Ok", Tlp::Green, &[]),
            "tool_id",
        ),
        (
            "missing tlp",
            "t1",
            tool("Ok", Tlp::Unspecified, &[]),
            "tool.sharing.tlp",
        ),
        (
            "no sharing at all",
            "t2",
            pb::Tool {
                display_name: "Ok".into(),
                ..Default::default()
            },
            "tool.sharing.tlp",
        ),
        (
            "recipients on GREEN",
            "t3",
            tool("Ok", Tlp::Green, &["partners/admin"]),
            "tool.sharing.recipients",
        ),
        (
            "unknown recipient",
            "t4",
            tool("Ok", Tlp::Amber, &["partners/nobody"]),
            "tool.sharing.recipients[0]",
        ),
        (
            "malformed recipient",
            "t5",
            tool("Ok", Tlp::Red, &["nobody"]),
            "tool.sharing.recipients[0]",
        ),
        (
            "title over 300 characters",
            "t6",
            tool(&"x".repeat(301), Tlp::Green, &[]),
            "tool.display_name",
        ),
        (
            "empty title",
            "t7",
            tool("", Tlp::Green, &[]),
            "tool.display_name",
        ),
        (
            "unknown enum number",
            "t8",
            pb::Tool {
                category: 42,
                ..tool("Ok", Tlp::Green, &[])
            },
            "tool.category",
        ),
        (
            "too many regions",
            "t9",
            pb::Tool {
                regions: vec!["KE".into(); 101],
                ..tool("Ok", Tlp::Green, &[])
            },
            "tool.regions",
        ),
        (
            "bad related name",
            "t10",
            pb::Tool {
                related: vec!["not a name".into()],
                ..tool("Ok", Tlp::Green, &[])
            },
            "tool.related[0]",
        ),
    ];
    for (what, id, bad, field) in cases {
        let status = assert_code(create_tool(&mut a, id, bad).await, Code::InvalidArgument);
        let fields = violation_fields(&status);
        assert!(
            fields.iter().any(|f| f == field),
            "{what}: expected a violation of {field}, got {fields:?}"
        );
        // ErrorInfo beside BadRequest, as on every error (AIP-193).
        assert_eq!(
            error_reason(&status).as_deref(),
            Some("INVALID_FIELD"),
            "{what}"
        );
    }
    // A title of exactly 300 characters is fine.
    create_tool(&mut a, "long", tool(&"y".repeat(300), Tlp::Green, &[]))
        .await
        .unwrap();
    let names: Vec<String> = list_all_tools(&mut a, "partners/a", "", 100)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["partners/a/tools/long"]);

    // Invalid names on Get are INVALID_ARGUMENT, not NOT_FOUND.
    for name in [
        "tools/x",
        "partners/a/tools/",
        "partners/a/workshops/x",
        "partners/a/tools/x'; DROP TABLE records; --",
    ] {
        let status = assert_code(get_tool(&mut a, name).await, Code::InvalidArgument);
        assert_eq!(violation_fields(&status), vec!["name"]);
    }
    // A missing record body.
    let status = assert_code(
        a.tools
            .create_tool(pb::CreateToolRequest {
                parent: "partners/a".into(),
                tool: None,
                tool_id: "x".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["tool"]);
    // An invalid update leaves the record as it was.
    let mut stored = get_tool(&mut a, "partners/a/tools/long").await.unwrap();
    let before = stored.clone();
    stored.sharing = Some(pb::Sharing {
        tlp: Tlp::Green as i32,
        recipients: vec!["partners/admin".into()],
    });
    let status = assert_code(
        update_tool(&mut a, stored, &[], false).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["tool.sharing.recipients"]);
    let after = get_tool(&mut a, &before.name).await.unwrap();
    assert_eq!(after, before);
    // An unknown mask path.
    let status = assert_code(
        update_tool(&mut a, before.clone(), &["no_such_field"], false).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["update_mask"]);
}

#[tokio::test]
async fn a_stale_etag_is_aborted_and_changes_nothing() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let v1 = create_tool(&mut a, "t", tool("Version one", Tlp::Green, &[]))
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2.display_name = "Version two".into();
    let v2 = update_tool(&mut a, v2, &[], false).await.unwrap();

    // v1's etag is stale now.
    let mut stale = v1.clone();
    stale.display_name = "Lost update".into();
    let status = assert_code(update_tool(&mut a, stale, &[], false).await, Code::Aborted);
    assert_eq!(error_reason(&status).as_deref(), Some("ETAG_MISMATCH"));
    let status = assert_code(
        a.tools
            .delete_tool(pb::DeleteToolRequest {
                name: v1.name.clone(),
                etag: v1.etag.clone(),
            })
            .await,
        Code::Aborted,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("ETAG_MISMATCH"));
    let now = get_tool(&mut a, &v1.name).await.unwrap();
    assert_eq!(now, v2);
}

#[tokio::test]
async fn a_taken_id_is_already_exists() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let first = create_tool(&mut a, "dup", tool("First", Tlp::Green, &[]))
        .await
        .unwrap();
    let status = assert_code(
        create_tool(&mut a, "dup", tool("Second", Tlp::Green, &[])).await,
        Code::AlreadyExists,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("RESOURCE_EXISTS"));
    let still = get_tool(&mut a, &first.name).await.unwrap();
    assert_eq!(still, first);
    // The same id in another collection is another record.
    a.practices
        .create_practice(pb::CreatePracticeRequest {
            parent: "partners/a".into(),
            practice_id: "dup".into(),
            practice: Some(pb::Practice {
                title: "A practice".into(),
                sharing: Some(pb::Sharing {
                    tlp: Tlp::Green as i32,
                    recipients: vec![],
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// Get calls made at once are read together (store/reads.rs): each still
/// gets its own record, NOT_FOUND for a missing or hidden one, and the
/// version committed before it was asked for.
#[tokio::test]
async fn concurrent_gets_each_get_their_own_answer() {
    let hub = TestHub::start().await;
    let mut ecpat = hub.contributor("ecpat").await;
    let mut msft = hub.contributor("msft").await;
    for i in 0..40 {
        create_tool(
            &mut ecpat,
            &format!("t{i}"),
            tool(&format!("Tool {i}"), Tlp::Green, &[]),
        )
        .await
        .expect("create");
    }
    create_tool(&mut msft, "secret", tool("Secret", Tlp::Red, &[]))
        .await
        .expect("create red");

    let mut calls = Vec::new();
    for round in 0..5 {
        for i in 0..44 {
            let mut reader = ecpat.clone();
            calls.push(tokio::spawn(async move {
                let name = match i {
                    40 => "partners/msft/tools/secret".to_owned(),
                    41..=43 => format!("partners/ecpat/tools/missing-{round}-{i}"),
                    _ => format!("partners/ecpat/tools/t{i}"),
                };
                (i, name.clone(), get_tool(&mut reader, &name).await)
            }));
        }
    }
    for call in calls {
        let (i, name, answer) = call.await.expect("call");
        match i {
            0..40 => {
                let got = answer.expect("a tool of ecpat");
                assert_eq!(got.name, name);
                assert_eq!(got.display_name, format!("Tool {i}"));
            }
            _ => {
                let status = assert_code(answer, Code::NotFound);
                assert!(status.message().contains(&name), "{}", status.message());
            }
        }
    }

    // A read after an update sees the update, while other reads run.
    let noise: Vec<_> = (0..40)
        .map(|i| {
            let mut reader = ecpat.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    get_tool(&mut reader, &format!("partners/ecpat/tools/t{i}"))
                        .await
                        .expect("get");
                }
            })
        })
        .collect();
    for n in 0..10 {
        let mut current = get_tool(&mut ecpat, "partners/ecpat/tools/t0")
            .await
            .expect("get");
        current.display_name = format!("Tool 0, version {n}");
        update_tool(&mut ecpat, current, &["display_name"], false)
            .await
            .expect("update");
        let read = get_tool(&mut ecpat, "partners/ecpat/tools/t0")
            .await
            .expect("get");
        assert_eq!(read.display_name, format!("Tool 0, version {n}"));
    }
    for task in noise {
        task.await.expect("reader");
    }
}
