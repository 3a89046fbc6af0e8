//! List: pagination under concurrent writes, page size rules, filters,
//! ordering and the errors of each.

use std::collections::{HashMap, HashSet};

use copex::pb::{self, Tlp};
use futures_util::future::try_join_all;
use tonic::Code;

use crate::support::*;

/// Creates `count` GREEN tools `{prefix}-{i}` with `workers` concurrent clients.
async fn create_many(partner: &Partner, prefix: &str, count: usize, workers: usize) -> Vec<String> {
    let tasks = (0..workers).map(|w| {
        let mut p = partner.clone();
        let prefix = prefix.to_owned();
        async move {
            let mut names = Vec::new();
            for i in (w..count).step_by(workers) {
                let created = create_tool(
                    &mut p,
                    &format!("{prefix}-{i}"),
                    tool(&format!("Tool {i:05}"), Tlp::Green, &[]),
                )
                .await?;
                names.push(created.name);
            }
            Ok::<_, tonic::Status>(names)
        }
    });
    try_join_all(tasks)
        .await
        .expect("create records")
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test]
async fn pages_neither_skip_nor_repeat_while_records_are_inserted() {
    let hub = TestHub::start().await;
    let a = hub.contributor("a").await;
    let before: HashSet<String> = create_many(&a, "before", 2500, 8)
        .await
        .into_iter()
        .collect();
    assert_eq!(before.len(), 2500);

    // A writer keeps inserting while the reader pages through, for every
    // ordering a client may ask for.
    for order_by in [
        "",
        "create_time desc",
        "display_name",
        "display_name desc, create_time",
        "name desc",
    ] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let mut w = a.clone();
            let stop = stop.clone();
            let tag = order_by.replace([' ', ',', '_'], "");
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    create_tool(
                        &mut w,
                        &format!("during{tag}-{n}"),
                        tool(&format!("Tool {n:05}"), Tlp::Green, &[]),
                    )
                    .await
                    .expect("concurrent insert");
                    n += 1;
                }
                n
            })
        };
        let mut reader = a.clone();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut page_token = String::new();
        loop {
            let page = reader
                .tools
                .list_tools(pb::ListToolsRequest {
                    parent: "partners/-".into(),
                    page_size: 97,
                    page_token: page_token.clone(),
                    filter: String::new(),
                    order_by: order_by.into(),
                })
                .await
                .expect("page")
                .into_inner();
            for t in page.tools {
                *seen.entry(t.name).or_default() += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let inserted = writer.await.unwrap();
        assert!(inserted > 0, "the writer ran during the listing");
        for name in &before {
            assert_eq!(
                seen.get(name),
                Some(&1),
                "order_by {order_by:?}: {name} seen {:?} times",
                seen.get(name)
            );
        }
        assert!(
            seen.values().all(|n| *n == 1),
            "order_by {order_by:?}: a record came twice"
        );
    }
}

#[tokio::test]
async fn page_size_rules() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    create_many(&a, "t", 1100, 8).await;
    let list = |page_size| pb::ListToolsRequest {
        parent: "partners/a".into(),
        page_size,
        ..Default::default()
    };

    let page = a.tools.list_tools(list(5000)).await.unwrap().into_inner();
    assert_eq!(page.tools.len(), 1000);
    assert!(!page.next_page_token.is_empty());
    let page = a.tools.list_tools(list(0)).await.unwrap().into_inner();
    assert_eq!(page.tools.len(), 50, "the default page size");
    let status = assert_code(a.tools.list_tools(list(-1)).await, Code::InvalidArgument);
    assert_eq!(violation_fields(&status), vec!["page_size"]);
    assert_eq!(
        list_all_tools(&mut a, "partners/a", "", 1000).await.len(),
        1100
    );
}

#[tokio::test]
async fn filters_select_records() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let mut ke = tool("Kenyan classifier", Tlp::Green, &[]);
    ke.category = pb::ToolCategory::Classifier as i32;
    ke.regions = vec!["KE".into()];
    ke.labels.insert("region".into(), "east-africa".into());
    create_tool(&mut a, "ke", ke).await.unwrap();
    let mut th = tool("Thai hash matcher", Tlp::Green, &[]);
    th.regions = vec!["TH".into()];
    create_tool(&mut a, "th", th).await.unwrap();
    let mut amber = tool("Amber for b", Tlp::Amber, &["partners/b"]);
    amber.regions = vec!["KE".into()];
    create_tool(&mut a, "amber", amber).await.unwrap();
    let mut mine = tool("B's own", Tlp::Red, &[]);
    mine.regions.clear();
    create_tool(&mut b, "mine", mine).await.unwrap();

    let names = |tools: Vec<pb::Tool>| {
        let mut n: Vec<String> = tools
            .into_iter()
            .map(|t| t.name.rsplit('/').next().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let cases = [
        ("regions:\"KE\"", vec!["amber", "ke"]),
        ("regions:KE AND category = CLASSIFIER", vec!["ke"]),
        (
            "category = TOOL_CATEGORY_HASH_MATCHING",
            vec!["amber", "mine", "th"],
        ),
        ("NOT regions:\"KE\"", vec!["mine", "th"]),
        ("labels.region:*", vec!["ke"]),
        ("labels.region = \"east-africa\"", vec!["ke"]),
        (
            "sharing.tlp = TLP_RED OR sharing.tlp = AMBER",
            vec!["amber", "mine"],
        ),
        ("sharing.recipients:\"partners/b\"", vec!["amber"]),
        ("display_name = \"Thai hash matcher\"", vec!["th"]),
        (
            "create_time > \"2000-01-01T00:00:00Z\" AND regions:\"TH\"",
            vec!["th"],
        ),
        ("create_time < 2000-01-01T00:00:00Z", vec![]),
        (
            "regions:KE AND category = CLASSIFIER OR category = HASH_MATCHING",
            vec!["amber", "ke"],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            names(list_all_tools(&mut b, "partners/-", filter, 50).await),
            expected,
            "{filter}"
        );
    }

    // The same filters, for a partner that may not see the AMBER and RED ones.
    let mut c = hub.contributor("c").await;
    assert_eq!(
        names(list_all_tools(&mut c, "partners/-", "regions:\"KE\"", 50).await),
        vec!["ke"]
    );
    assert_eq!(
        names(
            list_all_tools(
                &mut c,
                "partners/-",
                "sharing.recipients:\"partners/b\"",
                50
            )
            .await
        ),
        Vec::<String>::new()
    );

    // Ordering by the title field.
    let ordered = c
        .tools
        .list_tools(pb::ListToolsRequest {
            parent: "partners/a".into(),
            order_by: "display_name desc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ordered
            .tools
            .iter()
            .map(|t| t.display_name.as_str())
            .collect::<Vec<_>>(),
        vec!["Thai hash matcher", "Kenyan classifier"]
    );
}

#[tokio::test]
async fn bad_list_requests_are_invalid_argument() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    create_many(&a, "t", 3, 1).await;
    let base = pb::ListToolsRequest {
        parent: "partners/a".into(),
        page_size: 1,
        ..Default::default()
    };

    let cases = [
        (
            "unparsable filter",
            pb::ListToolsRequest {
                filter: "regions:".into(),
                ..base.clone()
            },
            "filter",
        ),
        (
            "unbalanced filter",
            pb::ListToolsRequest {
                filter: "(regions:KE".into(),
                ..base.clone()
            },
            "filter",
        ),
        (
            "unknown field",
            pb::ListToolsRequest {
                filter: "colour = \"red\"".into(),
                ..base.clone()
            },
            "filter",
        ),
        (
            "bad enum",
            pb::ListToolsRequest {
                filter: "category = PURPLE".into(),
                ..base.clone()
            },
            "filter",
        ),
        (
            "bad timestamp",
            pb::ListToolsRequest {
                filter: "create_time > \"yesterday\"".into(),
                ..base.clone()
            },
            "filter",
        ),
        (
            "forged page token",
            pb::ListToolsRequest {
                page_token: "eyJxIjoiIiwiayI6W119.AAAA".into(),
                ..base.clone()
            },
            "page_token",
        ),
        (
            "garbage page token",
            pb::ListToolsRequest {
                page_token: "' OR 1=1 --".into(),
                ..base.clone()
            },
            "page_token",
        ),
        (
            "negative page size",
            pb::ListToolsRequest {
                page_size: -5,
                ..base.clone()
            },
            "page_size",
        ),
        (
            "bad order_by",
            pb::ListToolsRequest {
                order_by: "colour".into(),
                ..base.clone()
            },
            "order_by",
        ),
        (
            "bad parent",
            pb::ListToolsRequest {
                parent: "organisations/a".into(),
                ..base.clone()
            },
            "parent",
        ),
    ];
    for (what, request, field) in cases {
        let status = assert_code(a.tools.list_tools(request).await, Code::InvalidArgument);
        assert_eq!(violation_fields(&status), vec![field.to_owned()], "{what}");
    }
    // The error names the position in the filter.
    let status = assert_code(
        a.tools
            .list_tools(pb::ListToolsRequest {
                filter: "regions:KE AND colour = 1".into(),
                ..base.clone()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("position 15"),
        "{}",
        status.message()
    );

    // A real token does not carry over to another query.
    let first = a.tools.list_tools(base.clone()).await.unwrap().into_inner();
    assert!(!first.next_page_token.is_empty());
    let status = assert_code(
        a.tools
            .list_tools(pb::ListToolsRequest {
                page_token: first.next_page_token.clone(),
                filter: "regions:KE".into(),
                ..base.clone()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["page_token"]);
    // Nor to another partner.
    let mut b = hub.contributor("b").await;
    assert_code(
        b.tools
            .list_tools(pb::ListToolsRequest {
                page_token: first.next_page_token.clone(),
                ..base.clone()
            })
            .await,
        Code::InvalidArgument,
    );
    // But it does continue its own query, with another page size.
    let second = a
        .tools
        .list_tools(pb::ListToolsRequest {
            page_token: first.next_page_token,
            page_size: 10,
            ..base
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.tools.len(), 2);
}

/// `:*` on a list of messages asks whether it has any element; free text is
/// searched, and a filter naming it is told so rather than that the field
/// does not exist.
#[tokio::test]
async fn lists_of_messages_take_has_and_free_text_is_refused_by_name() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let person = |name: &str| pb::Person {
        display_name: name.into(),
        ..Default::default()
    };
    for (id, organisers) in [
        ("named", vec![person("Ana")]),
        ("none", vec![]),
        ("blank", vec![person("")]),
    ] {
        a.workshops
            .update_workshop(pb::UpdateWorkshopRequest {
                workshop: Some(pb::Workshop {
                    name: format!("partners/a/workshops/{id}"),
                    title: format!("Workshop {id}"),
                    organisers,
                    sharing: Some(pb::Sharing {
                        tlp: Tlp::Green as i32,
                        recipients: vec![],
                    }),
                    ..Default::default()
                }),
                update_mask: None,
                allow_missing: true,
            })
            .await
            .unwrap();
    }
    let list = |filter: &str| {
        let mut client = a.workshops.clone();
        let filter = filter.to_owned();
        async move {
            client
                .list_workshops(pb::ListWorkshopsRequest {
                    parent: "partners/a".into(),
                    filter,
                    order_by: "name".into(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    r.into_inner()
                        .workshops
                        .into_iter()
                        .map(|w| {
                            w.name
                                .trim_start_matches("partners/a/workshops/")
                                .to_owned()
                        })
                        .collect::<Vec<_>>()
                })
        }
    };
    assert_eq!(list("organisers:*").await.unwrap(), ["blank", "named"]);
    assert_eq!(list("NOT organisers:*").await.unwrap(), ["none"]);
    assert!(list("panellists:*").await.unwrap().is_empty());
    assert_eq!(
        list("organisers.display_name = \"Ana\"").await.unwrap(),
        ["named"]
    );

    for (filter, says) in [
        ("organisers = \"Ana\"", "is a list of messages"),
        ("objectives:*", "is free text"),
        ("theme_question = \"x\"", "is free text"),
    ] {
        let status = assert_code(list(filter).await, Code::InvalidArgument);
        assert_eq!(violation_fields(&status), ["filter"], "{filter}");
        assert!(status.message().contains(says), "{filter}: {status:?}");
        assert!(
            !status.message().contains("unknown field"),
            "{filter}: {status:?}"
        );
    }
}
