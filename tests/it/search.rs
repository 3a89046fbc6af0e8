//! SearchService over mutual TLS: ranking, the query language, sharing rules
//! in hits and counts, the index after every write path, bad input.

use copex::pb::{self, Role, Tlp, record::Kind as R};
use tonic::Code;

use crate::support::*;

type SearchClient = pb::search_service_client::SearchServiceClient<tonic::transport::Channel>;

fn request(query: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        query: query.into(),
        ..Default::default()
    }
}

async fn search_page(
    partner: &Partner,
    req: pb::SearchRequest,
) -> Result<pb::SearchResponse, tonic::Status> {
    SearchClient::new(partner.channel.clone())
        .search(req)
        .await
        .map(|r| r.into_inner())
}

fn name_of(hit: &pb::SearchHit) -> String {
    match hit.record.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(R::Tool(t)) => t.name.clone(),
        Some(R::Practice(p)) => p.name.clone(),
        Some(R::Workshop(w)) => w.name.clone(),
        None => panic!("a hit without a record: {hit:?}"),
    }
}

/// The ids of every hit, best first, following page tokens; and the total.
async fn search_all(partner: &Partner, mut req: pb::SearchRequest) -> (Vec<String>, i32) {
    let mut ids = Vec::new();
    loop {
        let page = search_page(partner, req.clone()).await.expect("search");
        assert!(
            page.hits.windows(2).all(|w| w[0].score >= w[1].score),
            "hits not best first: {:?}",
            page.hits
        );
        ids.extend(
            page.hits
                .iter()
                .map(|h| name_of(h).rsplit('/').next().unwrap_or_default().to_owned()),
        );
        if page.next_page_token.is_empty() {
            return (ids, page.total_size);
        }
        req.page_token = page.next_page_token;
    }
}

async fn ids(partner: &Partner, query: &str) -> Vec<String> {
    search_all(partner, request(query)).await.0
}

fn with_description(name: &str, description: &str) -> pb::Tool {
    pb::Tool {
        description: description.into(),
        ..tool(name, Tlp::Green, &[])
    }
}

#[tokio::test]
async fn an_exact_title_match_outranks_a_passing_mention() {
    let hub = TestHub::start().await;
    let mut ecpat = hub.contributor("ecpat").await;
    let filler = "Reports from hotlines are triaged by analysts who review the \
                  queue each morning and escalate urgent cases to the police. "
        .repeat(4);
    create_tool(
        &mut ecpat,
        "mention",
        with_description(
            "Hotline triage board",
            &format!("{filler} It can import hashes from PhotoDNA. {filler}"),
        ),
    )
    .await
    .unwrap();
    create_tool(
        &mut ecpat,
        "exact",
        with_description("PhotoDNA", "Robust hashing of known images."),
    )
    .await
    .unwrap();
    create_tool(
        &mut ecpat,
        "unrelated",
        tool("Age checker", Tlp::Green, &[]),
    )
    .await
    .unwrap();

    let page = search_page(&ecpat, request("photodna")).await.unwrap();
    let found: Vec<String> = page.hits.iter().map(name_of).collect();
    assert_eq!(
        found,
        vec![
            "partners/ecpat/tools/exact".to_owned(),
            "partners/ecpat/tools/mention".to_owned()
        ]
    );
    assert_eq!(page.total_size, 2);
    assert!(page.hits[0].score > page.hits[1].score);
    assert!(
        page.hits[1].snippet.contains("**PhotoDNA**"),
        "snippet: {:?}",
        page.hits[1].snippet
    );
    assert!(
        page.hits[1].snippet.len() < 400,
        "snippet is a passage, not the text: {:?}",
        page.hits[1].snippet
    );
    // Stemming: the plural finds the singular.
    assert_eq!(ids(&ecpat, "hotlines triaged").await, vec!["mention"]);
    assert_eq!(ids(&ecpat, "analyst").await, vec!["mention"]);
}

#[tokio::test]
async fn phrases_and_excluded_words() {
    let hub = TestHub::start().await;
    let mut gsma = hub.contributor("gsma").await;
    for (id, description) in [
        ("ordered", "Hash matching for video uploads."),
        ("reversed", "Matching of a perceptual hash, for images."),
        ("video", "A video classifier."),
    ] {
        create_tool(&mut gsma, id, with_description(id, description))
            .await
            .unwrap();
    }
    let mut both = ids(&gsma, "hash matching").await;
    both.sort();
    assert_eq!(both, vec!["ordered", "reversed"]);
    assert_eq!(ids(&gsma, r#""hash matching""#).await, vec!["ordered"]);
    assert_eq!(ids(&gsma, "hash -video").await, vec!["reversed"]);
    assert_eq!(
        ids(&gsma, r#"matching -"hash matching""#).await,
        vec!["reversed"]
    );
    let mut videos = ids(&gsma, "video").await;
    videos.sort();
    assert_eq!(videos, vec!["ordered", "video"]);
    // Query syntax of the index is read as words, never as operators.
    assert_eq!(
        ids(&gsma, "video OR NEAR(hash)").await,
        Vec::<String>::new()
    );
    assert_eq!(ids(&gsma, "hash*").await.len(), 2);
}

#[tokio::test]
async fn a_red_record_of_another_partner_is_never_in_hits_or_counts() {
    let hub = TestHub::start().await;
    let mut police = hub.contributor("police").await;
    let mut ngo = hub.contributor("ngo").await;
    let itu = hub.contributor("itu").await;
    create_tool(
        &mut police,
        "secret",
        with_description("Grooming detector", "Finds grooming in chat logs."),
    )
    .await
    .map(|_| ())
    .unwrap_or_else(|e| panic!("{e:?}"));
    let red = pb::Tool {
        description: "Grooming conversations flagged by the unit.".into(),
        ..tool("Operation grooming", Tlp::Red, &["partners/itu"])
    };
    create_tool(&mut police, "red", red).await.unwrap();
    create_tool(
        &mut ngo,
        "guide",
        with_description("Parents' guide", "What grooming looks like."),
    )
    .await
    .unwrap();

    let (mut found, total) = search_all(&ngo, request("grooming")).await;
    found.sort();
    assert_eq!((found, total), (vec!["guide".into(), "secret".into()], 2));
    for query in ["operation", "grooming conversations", "unit flagged"] {
        let page = search_page(&ngo, request(query)).await.unwrap();
        assert!(page.hits.is_empty(), "{query:?}: {page:?}");
        assert_eq!(page.total_size, 0, "{query:?}");
    }
    // Filters and kinds reveal nothing either.
    let page = search_page(
        &ngo,
        pb::SearchRequest {
            filter: "sharing.tlp = TLP_RED".into(),
            kinds: vec![pb::RecordKind::Tool as i32],
            ..request("grooming")
        },
    )
    .await
    .unwrap();
    assert_eq!((page.hits.len(), page.total_size), (0, 0));
    // The recipient and the owner see it.
    assert_eq!(
        search_all(&itu, request("operation")).await,
        (vec!["red".into()], 1)
    );
    assert_eq!(search_all(&police, request("grooming")).await.1, 3);
}

#[tokio::test]
async fn the_index_follows_every_write_path() {
    let hub = TestHub::start().await;
    let mut owner = hub.contributor("owner").await;
    let other = hub.contributor("other").await;

    // Create.
    let created = create_tool(&mut owner, "t", tool("Lantern", Tlp::Green, &[]))
        .await
        .unwrap();
    assert_eq!(ids(&other, "lantern").await, vec!["t"]);

    // Update: the old words go, the new ones come.
    let renamed = update_tool(
        &mut owner,
        pb::Tool {
            display_name: "Beacon".into(),
            summary: "Summary of Beacon".into(),
            ..created
        },
        &["display_name", "summary"],
        false,
    )
    .await
    .unwrap();
    assert!(ids(&other, "lantern").await.is_empty());
    assert_eq!(ids(&other, "beacon").await, vec!["t"]);

    // A sharing change: hidden from the other partner, kept for the owner.
    let restricted = update_tool(
        &mut owner,
        pb::Tool {
            sharing: Some(pb::Sharing {
                tlp: Tlp::Amber as i32,
                recipients: vec![],
            }),
            ..renamed
        },
        &["sharing"],
        false,
    )
    .await
    .unwrap();
    assert!(ids(&other, "beacon").await.is_empty());
    assert_eq!(ids(&owner, "beacon").await, vec!["t"]);
    update_tool(
        &mut owner,
        pb::Tool {
            sharing: Some(pb::Sharing {
                tlp: Tlp::Amber as i32,
                recipients: vec!["partners/other".into()],
            }),
            ..restricted
        },
        &["sharing"],
        false,
    )
    .await
    .unwrap();
    assert_eq!(ids(&other, "beacon").await, vec!["t"]);

    // Delete.
    owner
        .tools
        .delete_tool(pb::DeleteToolRequest {
            name: "partners/owner/tools/t".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    assert!(ids(&owner, "beacon").await.is_empty());

    // Batch upsert: created, then changed, in one call each.
    let batch = |title: &str| pb::BatchUpsertRecordsRequest {
        records: vec![pb::Record {
            kind: Some(R::Practice(pb::Practice {
                name: "partners/owner/practices/p".into(),
                title: title.into(),
                summary: "Peer educators in schools.".into(),
                sharing: Some(pb::Sharing {
                    tlp: Tlp::Green as i32,
                    recipients: vec![],
                }),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    for (title, gone, found) in [
        ("Youth panels", "", "panels"),
        ("Youth juries", "panels", "juries"),
    ] {
        let answer = owner
            .sync
            .batch_upsert_records(batch(title))
            .await
            .unwrap()
            .into_inner();
        assert!(
            answer.results.iter().all(|r| r.error.is_none()),
            "{answer:?}"
        );
        if !gone.is_empty() {
            assert!(ids(&other, gone).await.is_empty());
        }
        assert_eq!(ids(&other, found).await, vec!["p"]);
        assert_eq!(ids(&other, "peer educators").await, vec!["p"]);
    }
}

#[tokio::test]
async fn kinds_filters_and_pages() {
    let hub = TestHub::start().await;
    let mut microsoft = hub.contributor("microsoft").await;
    for i in 0..23 {
        let mut t = tool(&format!("Safety tool {i}"), Tlp::Green, &[]);
        if i % 2 == 0 {
            t.labels.insert("region".into(), "eu".into());
        }
        create_tool(&mut microsoft, &format!("t{i:02}"), t)
            .await
            .unwrap();
    }
    microsoft
        .practices
        .create_practice(pb::CreatePracticeRequest {
            parent: "partners/microsoft".into(),
            practice: Some(pb::Practice {
                title: "Safety by design".into(),
                sharing: Some(pb::Sharing {
                    tlp: Tlp::Clear as i32,
                    recipients: vec![],
                }),
                ..Default::default()
            }),
            practice_id: "p".into(),
        })
        .await
        .unwrap();

    let paged = |kinds: Vec<pb::RecordKind>, filter: &str| pb::SearchRequest {
        query: "safety".into(),
        kinds: kinds.into_iter().map(|k| k as i32).collect(),
        filter: filter.into(),
        page_size: 5,
        page_token: String::new(),
    };
    let (all, total) = search_all(&microsoft, paged(vec![], "")).await;
    assert_eq!((all.len(), total), (24, 24));
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 24, "a hit repeated across pages: {all:?}");

    let (tools, total) = search_all(&microsoft, paged(vec![pb::RecordKind::Tool], "")).await;
    assert_eq!((tools.len(), total), (23, 23));
    assert!(!tools.contains(&"p".to_owned()));
    let (practices, _) = search_all(&microsoft, paged(vec![pb::RecordKind::Practice], "")).await;
    assert_eq!(practices, vec!["p"]);
    let (eu, total) = search_all(&microsoft, paged(vec![], r#"labels.region = "eu""#)).await;
    assert_eq!((eu.len(), total), (12, 12));

    // The default page is 20, above 100 is treated as 100.
    let page = search_page(&microsoft, request("safety")).await.unwrap();
    assert_eq!((page.hits.len(), page.total_size), (20, 24));
    let page = search_page(
        &microsoft,
        pb::SearchRequest {
            page_size: 5000,
            ..request("safety")
        },
    )
    .await
    .unwrap();
    assert_eq!(page.hits.len(), 24);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn bad_search_requests_are_invalid_arguments() {
    let hub = TestHub::start().await;
    let reader = hub.partner("reader", &[Role::Reader]).await;
    let mut owner = hub.contributor("owner").await;
    create_tool(&mut owner, "t", tool("Safety tool", Tlp::Green, &[]))
        .await
        .unwrap();
    let first = search_page(
        &reader,
        pb::SearchRequest {
            page_size: 0,
            ..request("safety")
        },
    )
    .await
    .expect("a reader may search");
    assert_eq!(first.total_size, 1);

    let cases: Vec<(pb::SearchRequest, &str)> = vec![
        (request(""), "query"),
        (request("   "), "query"),
        (request("-video"), "query"),
        (request("!!! ..."), "query"),
        (request(&"word ".repeat(33)), "query"),
        (request(&"x".repeat(1001)), "query"),
        (
            pb::SearchRequest {
                kinds: vec![9],
                ..request("safety")
            },
            "kinds[0]",
        ),
        (
            pb::SearchRequest {
                filter: r#"display_name = "Safety tool""#.into(),
                ..request("safety")
            },
            "filter",
        ),
        (
            pb::SearchRequest {
                filter: "name = ".into(),
                ..request("safety")
            },
            "filter",
        ),
        (
            pb::SearchRequest {
                page_size: -1,
                ..request("safety")
            },
            "page_size",
        ),
        (
            pb::SearchRequest {
                page_token: "forged.token".into(),
                ..request("safety")
            },
            "page_token",
        ),
    ];
    for (req, field) in cases {
        let status = assert_code(
            search_page(&reader, req.clone()).await,
            Code::InvalidArgument,
        );
        assert_eq!(violation_fields(&status), vec![field.to_owned()], "{req:?}");
    }

    // A token answers only the query it was issued for.
    for i in 0..3 {
        create_tool(
            &mut owner,
            &format!("more{i}"),
            tool("Safety kit", Tlp::Green, &[]),
        )
        .await
        .unwrap();
    }
    let page = search_page(
        &reader,
        pb::SearchRequest {
            page_size: 1,
            ..request("safety")
        },
    )
    .await
    .unwrap();
    assert!(!page.next_page_token.is_empty());
    let status = assert_code(
        search_page(
            &reader,
            pb::SearchRequest {
                page_size: 1,
                page_token: page.next_page_token.clone(),
                ..request("safety kit")
            },
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["page_token".to_owned()]);
    // Another partner cannot use it either.
    let status = assert_code(
        search_page(
            &owner,
            pb::SearchRequest {
                page_size: 1,
                page_token: page.next_page_token,
                ..request("safety")
            },
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["page_token".to_owned()]);
    // Nothing was changed by any of it.
    assert_eq!(search_all(&reader, request("safety")).await.1, 4);
    assert_eq!(
        list_all_tools(&mut owner, "partners/-", "", 100)
            .await
            .len(),
        4
    );
}
