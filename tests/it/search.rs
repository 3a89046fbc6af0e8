//! SearchService over mutual TLS: ranking, the query language, sharing rules
//! in hits and counts, the index after every write path, bad input.

use copex::pb::{self, Role, Tlp, record::Kind as R};
use tonic::Code;

use crate::support::*;

type SearchClient = pb::search_service_client::SearchServiceClient<tonic::transport::Channel>;

/// A search that reads the caller's own writes (`wait_for_index`).
fn request(query: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        query: query.into(),
        wait_for_index: true,
        ..Default::default()
    }
}

/// A workshop's organiser or panellist, counted under `group`.
fn person(display_name: &str, group: pb::StakeholderGroup) -> pb::Person {
    pb::Person {
        display_name: display_name.into(),
        stakeholder_group: group as i32,
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
                sharing: public(Tlp::Green),
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
    create_practice(
        &mut microsoft,
        "p",
        pb::Practice {
            title: "Safety by design".into(),
            sharing: public(Tlp::Clear),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let paged = |kinds: Vec<pb::RecordKind>, filter: &str| pb::SearchRequest {
        query: "safety".into(),
        kinds: kinds.into_iter().map(|k| k as i32).collect(),
        filter: filter.into(),
        page_size: 5,
        ..request("")
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

/// Search without waiting for the index, until `found` holds of the page
/// (the index follows the feed: within a second, not at once).
async fn poll_until(
    partner: &Partner,
    req: pb::SearchRequest,
    found: impl Fn(&pb::SearchResponse) -> bool,
) -> pb::SearchResponse {
    let req = pb::SearchRequest {
        wait_for_index: false,
        ..req
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let page = search_page(partner, req.clone()).await.expect("search");
        if found(&page) || std::time::Instant::now() > give_up {
            return page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn batch(partner: &mut Partner, records: Vec<pb::Record>) {
    let answer = partner
        .sync
        .batch_upsert_records(pb::BatchUpsertRecordsRequest {
            records,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.results.iter().all(|r| r.error.is_none()),
        "{answer:?}"
    );
}

#[tokio::test]
async fn writes_become_searchable_and_waiting_reads_them_at_once() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    let reader = hub.partner("reader", &[Role::Reader]).await;
    for round in 0..5 {
        let id = format!("t{round}");
        create_tool(
            &mut ngo,
            &id,
            tool(&format!("Lighthouse {round}"), Tlp::Green, &[]),
        )
        .await
        .unwrap();
        // Waiting: the write is there on the first call, for another
        // partner too.
        let page = search_page(&reader, request(&format!("lighthouse {round}")))
            .await
            .unwrap();
        assert_eq!(
            page.hits.iter().map(name_of).collect::<Vec<_>>(),
            vec![format!("partners/ngo/tools/{id}")]
        );
    }
    // Not waiting: found once the indexer commits.
    create_tool(&mut ngo, "late", tool("Semaphore", Tlp::Green, &[]))
        .await
        .unwrap();
    let page = poll_until(&reader, request("semaphore"), |p| p.total_size == 1).await;
    assert_eq!(
        page.hits.iter().map(name_of).collect::<Vec<_>>(),
        vec!["partners/ngo/tools/late"]
    );
}

#[tokio::test]
async fn a_restart_mid_indexing_resumes_without_loss_or_duplicates() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    for round in 0..3 {
        batch(
            &mut ngo,
            filler_tools("ngo", &format!("r{round}-"), 1000, "Beacon of the harbour."),
        )
        .await;
    }
    // Stopped while the indexer is most likely still behind.
    let hub = hub.restart().await;
    let ngo = hub.reconnect("ngo").await;
    let page = search_page(
        &ngo,
        pb::SearchRequest {
            facets: vec!["kind".into()],
            ..request("beacon harbour")
        },
    )
    .await
    .unwrap();
    assert_eq!(page.total_size, 3000);
    assert_eq!(
        page.facets,
        vec![pb::Facet {
            field: "kind".into(),
            values: vec![pb::FacetValue {
                value: "RECORD_KIND_TOOL".into(),
                count: 3000
            }]
        }]
    );
    let (mut all, total) = search_all(
        &ngo,
        pb::SearchRequest {
            page_size: 100,
            ..request("beacon")
        },
    )
    .await;
    assert_eq!(total, 3000);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3000, "every record once");
}

#[tokio::test]
async fn a_deleted_or_damaged_index_is_rebuilt_from_the_feed() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    batch(
        &mut ngo,
        filler_tools("ngo", "f", 50, "Beacon of the harbour."),
    )
    .await;
    create_tool(&mut ngo, "gone", tool("Beacon", Tlp::Green, &[]))
        .await
        .unwrap();
    ngo.tools
        .delete_tool(pb::DeleteToolRequest {
            name: "partners/ngo/tools/gone".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(search_all(&ngo, request("beacon")).await.1, 50);
    let hub = hub
        .restart_after(|dir| {
            let index = dir.join("search");
            assert!(
                index.join("meta.json").exists(),
                "the index is in the data directory"
            );
            std::fs::remove_dir_all(index).unwrap();
        })
        .await;
    let ngo = hub.reconnect("ngo").await;
    assert_eq!(search_all(&ngo, request("beacon")).await.1, 50);
    let hub = hub
        .restart_after(|dir| std::fs::write(dir.join("search/meta.json"), "{ not json").unwrap())
        .await;
    let ngo = hub.reconnect("ngo").await;
    let (found, total) = search_all(&ngo, request("beacon")).await;
    assert_eq!((found.len(), total), (50, 50));
    assert!(!found.contains(&"gone".to_owned()));
}

#[tokio::test]
async fn a_record_made_red_leaves_the_others_results() {
    let hub = TestHub::start().await;
    let mut owner = hub.contributor("owner").await;
    let other = hub.contributor("other").await;
    let created = create_tool(&mut owner, "t", tool("Lantern", Tlp::Green, &[]))
        .await
        .unwrap();
    let browse = pb::SearchRequest {
        facets: vec!["owner".into()],
        ..request("")
    };
    let page = search_page(&other, browse.clone()).await.unwrap();
    assert_eq!(page.total_size, 1);
    update_tool(
        &mut owner,
        pb::Tool {
            sharing: Some(pb::Sharing {
                tlp: Tlp::Red as i32,
                recipients: vec![],
            }),
            ..created
        },
        &["sharing"],
        false,
    )
    .await
    .unwrap();
    let page = search_page(&other, request("lantern")).await.unwrap();
    assert_eq!((page.hits.len(), page.total_size), (0, 0));
    let page = search_page(&other, browse.clone()).await.unwrap();
    assert_eq!((page.hits.len(), page.total_size), (0, 0));
    assert_eq!(
        page.facets,
        vec![pb::Facet {
            field: "owner".into(),
            values: vec![]
        }]
    );
    // The owner still finds it.
    assert_eq!(ids(&owner, "lantern").await, vec!["t"]);
}

#[tokio::test]
async fn hidden_records_of_another_partner_move_no_score() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    let mut police = hub.contributor("police").await;
    for (id, description) in [
        (
            "a",
            "Grooming in chat rooms, and how moderators spot grooming.",
        ),
        ("b", "A guide for parents on online grooming."),
        ("c", "Reporting channels for children."),
    ] {
        create_tool(&mut ngo, id, with_description(id, description))
            .await
            .unwrap();
    }
    let ranked = |page: pb::SearchResponse| -> Vec<(String, f64)> {
        page.hits.iter().map(|h| (name_of(h), h.score)).collect()
    };
    let before = ranked(
        search_page(&ngo, request("grooming children"))
            .await
            .unwrap(),
    );
    let before_one = ranked(search_page(&ngo, request("grooming")).await.unwrap());
    assert_eq!(before_one.len(), 2);
    // Many RED records that say the same words, seen by neither the
    // searcher nor anyone but their owner.
    let red: Vec<pb::Record> = (0..200)
        .map(|i| {
            let mut t = tool(&format!("Case {i}"), Tlp::Red, &[]);
            t.name = format!("partners/police/tools/case{i}");
            t.description = "Grooming grooming grooming of children, children.".into();
            pb::Record {
                kind: Some(R::Tool(t)),
            }
        })
        .collect();
    batch(&mut police, red).await;
    assert_eq!(search_all(&police, request("grooming")).await.1, 202);
    assert_eq!(
        ranked(
            search_page(&ngo, request("grooming children"))
                .await
                .unwrap()
        ),
        before
    );
    assert_eq!(
        ranked(search_page(&ngo, request("grooming")).await.unwrap()),
        before_one
    );
}

/// Counts by facet value of the records `partner` may list, of every kind.
async fn counts_from_list(partner: &mut Partner) -> Vec<pb::Facet> {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&str, BTreeMap<String, i32>> = BTreeMap::new();
    let mut add = |facet: &'static str, value: String| {
        *counts.entry(facet).or_default().entry(value).or_default() += 1;
    };
    let group = |n: i32| {
        pb::StakeholderGroup::try_from(n)
            .unwrap()
            .as_str_name()
            .to_owned()
    };
    for t in list_all_tools(partner, "partners/-", "", 1000).await {
        add("kind", "RECORD_KIND_TOOL".into());
        add("owner", t.name.split("/tools/").next().unwrap().to_owned());
        for r in &t.regions {
            add("region", r.clone());
        }
        let mut groups: Vec<String> = t.intended_users.iter().map(|g| group(*g)).collect();
        groups.sort();
        groups.dedup();
        for g in groups {
            add("stakeholder_group", g);
        }
        // A tool without a category is not counted under it.
        if t.category != pb::ToolCategory::Unspecified as i32 {
            add(
                "tool_category",
                pb::ToolCategory::try_from(t.category)
                    .unwrap()
                    .as_str_name()
                    .to_owned(),
            );
        }
    }
    let practices = partner
        .practices
        .list_practices(pb::ListPracticesRequest {
            parent: "partners/-".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .practices;
    for p in practices {
        add("kind", "RECORD_KIND_PRACTICE".into());
        add(
            "owner",
            p.name.split("/practices/").next().unwrap().to_owned(),
        );
        for r in &p.regions {
            add("region", r.clone());
        }
        for g in &p.stakeholder_groups {
            add("stakeholder_group", group(*g));
        }
    }
    let workshops = partner
        .workshops
        .list_workshops(pb::ListWorkshopsRequest {
            parent: "partners/-".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workshops;
    for w in workshops {
        add("kind", "RECORD_KIND_WORKSHOP".into());
        add(
            "owner",
            w.name.split("/workshops/").next().unwrap().to_owned(),
        );
        let mut groups: Vec<String> = w
            .organisers
            .iter()
            .chain(&w.panellists)
            .map(|p| p.stakeholder_group)
            .filter(|g| *g != 0)
            .map(group)
            .collect();
        groups.sort();
        groups.dedup();
        for g in groups {
            add("stakeholder_group", g);
        }
    }
    copex::search::FACETS
        .iter()
        .map(|facet| {
            let mut values: Vec<pb::FacetValue> = counts
                .get(facet)
                .into_iter()
                .flatten()
                .map(|(value, count)| pb::FacetValue {
                    value: value.clone(),
                    count: *count,
                })
                .collect();
            values.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            pb::Facet {
                field: (*facet).to_owned(),
                values,
            }
        })
        .collect()
}

#[tokio::test]
async fn facets_equal_the_counts_of_what_list_shows() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    let mut police = hub.contributor("police").await;
    let mut itu = hub.contributor("itu").await;
    let groups = [
        pb::StakeholderGroup::CivilSociety,
        pb::StakeholderGroup::Industry,
        pb::StakeholderGroup::Government,
    ];
    for i in 0..9 {
        let mut t = tool(&format!("Safety tool {i}"), Tlp::Green, &[]);
        t.category = [
            pb::ToolCategory::HashMatching,
            pb::ToolCategory::Classifier,
            pb::ToolCategory::Education,
        ][i % 3] as i32;
        t.regions = [
            vec!["KE".to_owned()],
            vec!["BR".into(), "KE".into()],
            vec![],
        ][i % 3]
            .clone();
        t.intended_users = vec![groups[i % 3] as i32, groups[(i + 1) % 3] as i32];
        let owner = if i % 2 == 0 { &mut ngo } else { &mut itu };
        create_tool(owner, &format!("t{i}"), t).await.unwrap();
    }
    for i in 0..4 {
        // Hidden from everyone but the police and ITU.
        let tlp = if i % 2 == 0 { Tlp::Red } else { Tlp::Green };
        let recipients: &[&str] = if tlp == Tlp::Red {
            &["partners/itu"]
        } else {
            &[]
        };
        let mut t = tool(&format!("Case tool {i}"), tlp, recipients);
        if i == 1 {
            t.category = pb::ToolCategory::Unspecified as i32;
        }
        create_tool(&mut police, &format!("c{i}"), t).await.unwrap();
    }
    for i in 0..5 {
        create_practice(
            &mut ngo,
            &format!("p{i}"),
            pb::Practice {
                title: format!("Safety practice {i}"),
                regions: vec![["TH", "BR", "FR"][i % 3].into()],
                stakeholder_groups: vec![groups[i % 3] as i32],
                sharing: public(Tlp::Clear),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    create_workshop(
        &mut itu,
        "w",
        pb::Workshop {
            forum: "IGF".into(),
            year: 2024,
            title: "Safety by design".into(),
            organisers: vec![person("A. Organiser", pb::StakeholderGroup::Academia)],
            panellists: vec![person("B. Panellist", pb::StakeholderGroup::Academia)],
            sharing: public(Tlp::Green),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let all_facets: Vec<String> = copex::search::FACETS
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    for partner in [&mut ngo, &mut police, &mut itu] {
        let expected = counts_from_list(partner).await;
        let page = search_page(
            partner,
            pb::SearchRequest {
                facets: all_facets.clone(),
                ..request("")
            },
        )
        .await
        .unwrap();
        assert_eq!(page.facets, expected, "{}", partner.id);
        let listed: i32 = expected[0].values.iter().map(|v| v.count).sum();
        assert_eq!(page.total_size, listed);
    }
    // A query's facets count its matches only.
    let page = search_page(
        &ngo,
        pb::SearchRequest {
            facets: vec!["kind".into(), "region".into()],
            ..request("practice")
        },
    )
    .await
    .unwrap();
    assert_eq!(page.total_size, 5);
    assert_eq!(
        page.facets[0].values,
        vec![pb::FacetValue {
            value: "RECORD_KIND_PRACTICE".into(),
            count: 5
        }]
    );
    let regions: Vec<(String, i32)> = page.facets[1]
        .values
        .iter()
        .map(|v| (v.value.clone(), v.count))
        .collect();
    assert_eq!(
        regions,
        vec![("BR".into(), 2), ("TH".into(), 2), ("FR".into(), 1)]
    );
}

#[tokio::test]
async fn a_facet_value_narrows_a_search_through_the_filter() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    for (id, regions, category) in [
        ("t0", vec!["KE"], pb::ToolCategory::Classifier),
        ("t1", vec!["BR"], pb::ToolCategory::HashMatching),
    ] {
        let mut t = tool(&format!("Safety tool {id}"), Tlp::Green, &[]);
        t.regions = regions.into_iter().map(String::from).collect();
        t.category = category as i32;
        create_tool(&mut ngo, id, t).await.unwrap();
    }
    create_practice(
        &mut ngo,
        "p0",
        pb::Practice {
            title: "Safety practice".into(),
            regions: vec!["KE".into()],
            stakeholder_groups: vec![pb::StakeholderGroup::Industry as i32],
            sharing: public(Tlp::Green),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    create_workshop(
        &mut ngo,
        "w0",
        pb::Workshop {
            forum: "IGF".into(),
            year: 2024,
            title: "Safety by design".into(),
            panellists: vec![person("A panellist", pb::StakeholderGroup::Industry)],
            sharing: public(Tlp::Green),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let filtered = |filter: &str| pb::SearchRequest {
        filter: filter.into(),
        facets: vec!["kind".into(), "region".into()],
        ..request("safety")
    };
    let sorted = |(mut ids, total): (Vec<String>, i32)| {
        ids.sort();
        (ids, total)
    };
    let names = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // The region facet's value, across the kinds that have regions.
    let (ids, total) = sorted(search_all(&ngo, filtered(r#"regions:"KE""#)).await);
    assert_eq!((ids, total), (names(&["p0", "t0"]), 2));
    let page = search_page(&ngo, filtered(r#"regions:"KE""#))
        .await
        .unwrap();
    assert_eq!(
        page.facets[1].values,
        vec![pb::FacetValue {
            value: "KE".into(),
            count: 2
        }]
    );
    // A workshop has no regions: NOT finds it, as a record without a label.
    let (ids, _) = sorted(search_all(&ngo, filtered(r#"NOT regions:"KE""#)).await);
    assert_eq!(ids, names(&["t1", "w0"]));
    // The tool_category facet's value, with or without its prefix.
    for filter in [
        "category = TOOL_CATEGORY_CLASSIFIER",
        "category = CLASSIFIER",
    ] {
        let (ids, _) = sorted(search_all(&ngo, filtered(filter)).await);
        assert_eq!(ids, names(&["t0"]), "{filter}");
    }
    // The stakeholder_group facet's value, through each kind's field for
    // it, as docs/reference.md writes the filter.
    let industry = "stakeholder_groups:INDUSTRY OR intended_users:INDUSTRY \
        OR organisers.stakeholder_group = INDUSTRY OR panellists.stakeholder_group = INDUSTRY \
        OR remote_moderators.stakeholder_group = INDUSTRY";
    let page = search_page(
        &ngo,
        pb::SearchRequest {
            facets: vec!["stakeholder_group".into()],
            ..filtered("")
        },
    )
    .await
    .unwrap();
    let counted = page.facets[0]
        .values
        .iter()
        .find(|v| v.value == "STAKEHOLDER_GROUP_INDUSTRY")
        .map(|v| v.count);
    let (ids, total) = sorted(search_all(&ngo, filtered(industry)).await);
    assert_eq!((ids, Some(total)), (names(&["p0", "w0"]), counted));
    // A field of one kind only.
    let (ids, _) = sorted(search_all(&ngo, filtered("year = 2024")).await);
    assert_eq!(ids, names(&["w0"]));
    let (ids, _) =
        sorted(search_all(&ngo, filtered(r#"regions:"KE" AND category = CLASSIFIER"#)).await);
    assert_eq!(ids, names(&["t0"]));

    // Titles and long text are searched with the query, not filtered.
    for filter in [r#"title = "Safety practice""#, r#"description = "x""#] {
        let status = assert_code(
            search_page(&ngo, filtered(filter)).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().contains("search it with the query"),
            "{filter}: {status:?}"
        );
    }

    // The owner facet's value, as a name prefix (AIP-160's trailing `*`).
    let mut other = hub.contributor("other").await;
    create_tool(&mut other, "o0", tool("Safety tool o0", Tlp::Green, &[]))
        .await
        .unwrap();
    let by_owner = |filter: &str| pb::SearchRequest {
        facets: vec!["owner".into()],
        ..filtered(filter)
    };
    let page = search_page(&ngo, by_owner("")).await.unwrap();
    let owners: Vec<_> = page.facets[0]
        .values
        .iter()
        .map(|v| v.value.as_str())
        .collect();
    assert_eq!(owners, ["partners/ngo", "partners/other"]);
    let (ids, total) = sorted(search_all(&ngo, by_owner(r#"name = "partners/other/*""#)).await);
    assert_eq!((ids, total), (names(&["o0"]), 1));
    let (ids, _) = sorted(search_all(&ngo, by_owner(r#"name != "partners/other/*""#)).await);
    assert_eq!(ids, names(&["p0", "t0", "t1", "w0"]));
    let status = assert_code(
        search_page(&ngo, by_owner(r#"name > "partners/*""#)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("matches by prefix"), "{status:?}");
}

#[tokio::test]
async fn french_and_spanish_records_are_found_stemmed_and_without_accents() {
    let hub = TestHub::start().await;
    let mut ngo = hub.contributor("ngo").await;
    let practice = |title: &str, body: &str, language: &str| pb::Practice {
        title: title.into(),
        body: body.into(),
        language_code: language.into(),
        sharing: public(Tlp::Green),
        ..Default::default()
    };
    for (id, p) in [
        (
            "fr",
            practice(
                "Sécurité des enfants en ligne",
                "Les éducateurs protègent les enfants grâce à des ateliers dans les écoles.",
                "fr-FR",
            ),
        ),
        (
            // No language_code: the hub detects Spanish.
            "es",
            practice(
                "Protección de niños y niñas",
                "Las organizaciones comunitarias enseñan a las familias cómo proteger a los \
                 niños frente a los riesgos de internet, con talleres en las escuelas públicas \
                 y materiales para los docentes de cada región del país.",
                "",
            ),
        ),
        (
            "en",
            practice("Child protection", "Workshops in schools.", ""),
        ),
    ] {
        create_practice(&mut ngo, id, p).await.unwrap();
    }
    let found = |query: &'static str| {
        let ngo = &ngo;
        async move {
            let mut found = ids(ngo, query).await;
            found.sort();
            found
        }
    };
    // Accents folded, both ways.
    assert_eq!(found("securite").await, vec!["fr"]);
    assert_eq!(found("sécurité").await, vec!["fr"]);
    assert_eq!(found("proteccion").await, vec!["es"]);
    assert_eq!(found("ninos").await, vec!["es"]);
    // Stemmed in the record's language: singular and plural, verb forms.
    assert_eq!(found("enfant").await, vec!["fr"]);
    assert_eq!(found("éducateur").await, vec!["fr"]);
    assert_eq!(found("niño").await, vec!["es"]);
    assert_eq!(found("escuela").await, vec!["es"]);
    // A word of several languages finds each.
    assert_eq!(found("protection").await, vec!["en"]);
    // Snippets bold the matched words as written.
    let page = search_page(&ngo, request("enfant")).await.unwrap();
    assert!(
        page.hits[0].snippet.contains("**enfants**"),
        "{:?}",
        page.hits[0].snippet
    );
    let page = search_page(&ngo, request("securite")).await.unwrap();
    assert!(
        page.hits[0].snippet.contains("**Sécurité**"),
        "{:?}",
        page.hits[0].snippet
    );
}

#[tokio::test]
async fn bad_facets_and_blank_queries() {
    let hub = TestHub::start().await;
    let mut owner = hub.contributor("owner").await;
    create_tool(&mut owner, "t", tool("Safety tool", Tlp::Green, &[]))
        .await
        .unwrap();
    for (facets, why) in [
        (vec!["colour"], "unknown"),
        (vec!["kind", "kind"], "twice"),
        (vec![""], "empty"),
    ] {
        let status = assert_code(
            search_page(
                &owner,
                pb::SearchRequest {
                    facets: facets.iter().map(|f| (*f).to_owned()).collect(),
                    ..request("safety")
                },
            )
            .await,
            Code::InvalidArgument,
        );
        assert_eq!(
            violation_fields(&status),
            vec!["facets".to_owned()],
            "{why}"
        );
    }
    // A blank query browses; excluded words alone do not.
    for blank in ["", "   "] {
        let page = search_page(&owner, request(blank)).await.unwrap();
        assert_eq!(page.total_size, 1);
        assert_eq!(page.hits[0].score, 0.0);
    }
    let status = assert_code(
        search_page(&owner, request("-safety")).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["query".to_owned()]);
    // Nothing was changed by any of it.
    assert_eq!(search_all(&owner, request("safety")).await.1, 1);
}
