//! The change feed and batch upserts: gap-free delivery per caller under
//! concurrent writers, UNSHARED and DELETED to exactly the right partners,
//! bookmarks, slow watchers, expiry, and every bad input.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use copex::pb::{self, ChangeType, Role, Tlp, record::Kind as R};
use futures_util::StreamExt;
use tonic::Code;

use crate::support::*;

fn name_of(record: &pb::Record) -> String {
    match &record.kind {
        Some(R::Workshop(w)) => w.name.clone(),
        Some(R::Practice(p)) => p.name.clone(),
        Some(R::Tool(t)) => t.name.clone(),
        None => String::new(),
    }
}

/// What a partner's mirror holds after applying changes in order.
#[derive(Debug)]
pub struct Replica {
    pub records: BTreeMap<String, pb::Record>,
    pub last_seq: i64,
    pub seen: HashSet<String>,
    cursors: copex::feed::Cursors,
}

impl Replica {
    pub fn new(cursors: copex::feed::Cursors) -> Self {
        Self {
            records: BTreeMap::new(),
            last_seq: 0,
            seen: HashSet::new(),
            cursors,
        }
    }

    /// The position inside one of this hub's cursors.
    pub fn seq(&self, cursor: &str) -> i64 {
        seq_of(&self.cursors, cursor)
    }

    pub fn apply(&mut self, changes: &[pb::Change]) {
        for change in changes {
            let seq = self.seq(&change.cursor);
            assert!(
                seq > self.last_seq,
                "cursor went from {} to {seq}",
                self.last_seq
            );
            self.last_seq = seq;
            assert!(
                self.seen.insert(change.cursor.clone()),
                "change {seq} came twice"
            );
            match ChangeType::try_from(change.r#type) {
                Ok(ChangeType::Upserted) => {
                    let record = change.record.clone().expect("UPSERTED carries the record");
                    assert_eq!(name_of(&record), change.name);
                    self.records.insert(change.name.clone(), record);
                }
                Ok(ChangeType::Deleted | ChangeType::Unshared) => {
                    assert!(change.record.is_none(), "only UPSERTED carries a record");
                    self.records.remove(&change.name);
                }
                other => panic!("unexpected change type {other:?}"),
            }
        }
    }
}

/// Everything `partner` can list now, as the feed would carry it.
pub async fn visible_state(partner: &mut Partner) -> BTreeMap<String, pb::Record> {
    let mut state = BTreeMap::new();
    for tool in list_all_tools(partner, "partners/-", "", 1000).await {
        state.insert(
            tool.name.clone(),
            pb::Record {
                kind: Some(R::Tool(tool)),
            },
        );
    }
    let mut page_token = String::new();
    loop {
        let page = partner
            .practices
            .list_practices(pb::ListPracticesRequest {
                parent: "partners/-".into(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for p in page.practices {
            state.insert(
                p.name.clone(),
                pb::Record {
                    kind: Some(R::Practice(p)),
                },
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    state
}

pub async fn list_changes(
    partner: &mut Partner,
    cursor: &str,
    page_size: i32,
) -> Result<pb::ListChangesResponse, tonic::Status> {
    partner
        .sync
        .list_changes(pb::ListChangesRequest {
            cursor: cursor.into(),
            kinds: vec![],
            page_size,
        })
        .await
        .map(|r| r.into_inner())
}

/// Pages from `cursor` until caught up, applying everything to `replica`.
async fn catch_up(partner: &mut Partner, replica: &mut Replica, mut cursor: String) -> String {
    loop {
        let page = list_changes(partner, &cursor, 97)
            .await
            .expect("page of changes");
        replica.apply(&page.changes);
        cursor = page.next_cursor;
        if page.caught_up {
            return cursor;
        }
    }
}

/// A small deterministic generator, so failures can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PARTNERS: [&str; 4] = ["a", "b", "c", "d"];

fn random_sharing(rng: &mut Rng, owner: &str) -> pb::Sharing {
    let tlp = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ][rng.below(5) as usize];
    let recipients = if matches!(tlp, Tlp::Clear | Tlp::Green) {
        Vec::new()
    } else {
        PARTNERS
            .iter()
            .filter(|p| **p != owner && rng.below(2) == 0)
            .map(|p| format!("partners/{p}"))
            .collect()
    };
    pb::Sharing {
        tlp: tlp as i32,
        recipients,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_gap_free_per_caller_under_concurrent_writers() {
    let hub = TestHub::start().await;
    check_gap_free(&[&hub]).await;
}

/// Eight writers (creates, updates, sharing changes, deletes) spread over
/// `hubs`, while three watchers and a paging ListChanges reader, also spread
/// over them, follow the feed; each reader must end equal to exactly what its
/// partner can see. With several hubs they share one database.
pub async fn check_gap_free(hubs: &[&TestHub]) {
    // The hubs share one database, and so their cursors.
    let cursors = hubs[0].cursors.clone();
    // partners_on[h][p]: partner p's clients on hub h.
    let mut partners_on: Vec<Vec<Partner>> = vec![Vec::new(); hubs.len()];
    for id in PARTNERS {
        partners_on[0].push(hubs[0].contributor(id).await);
        for (h, hub) in hubs.iter().enumerate().skip(1) {
            let (cert, key) = hub.cert_for(id);
            partners_on[h].push(hub.connect_as(id, &cert, &key).await);
        }
    }
    let on = |p: usize, h: usize| partners_on[h % hubs.len()][p].clone();
    let partners = partners_on[0].clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Three watchers (b, c, d) and one paging reader (a), all from the start.
    // Each watcher runs until it has passed the end of the feed, which the
    // test learns once the writers are done.
    let (end_tx, end_rx) = tokio::sync::watch::channel::<Option<i64>>(None);
    let mut watchers = Vec::new();
    for index in 1..PARTNERS.len() {
        let mut p = on(index, index);
        let mut end_rx = end_rx.clone();
        let cursors = cursors.clone();
        let mut stream = p
            .sync
            .watch_changes(pb::WatchChangesRequest {
                cursor: String::new(),
                kinds: vec![],
            })
            .await
            .expect("watch")
            .into_inner();
        watchers.push(tokio::spawn(async move {
            let mut replica = Replica::new(cursors);
            let mut position = 0;
            loop {
                if end_rx.borrow().is_some_and(|end| position >= end) {
                    return (p.id.clone(), replica);
                }
                tokio::select! {
                    message = stream.next() => {
                        let message = match message {
                            Some(Ok(message)) => message,
                            other => panic!("watch ended: {other:?}"),
                        };
                        replica.apply(&message.changes);
                        position = replica.seq(&message.cursor);
                        assert!(position >= replica.last_seq, "message cursor behind its changes");
                    }
                    _ = end_rx.changed() => {}
                }
            }
        }));
    }
    let reader = {
        let mut p = on(0, hubs.len() - 1);
        let done = done.clone();
        let cursors = cursors.clone();
        tokio::spawn(async move {
            let mut replica = Replica::new(cursors);
            let mut cursor = String::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let page = list_changes(&mut p, &cursor, 50)
                    .await
                    .expect("ListChanges");
                replica.apply(&page.changes);
                cursor = page.next_cursor;
                if page.caught_up {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let cursor = catch_up(&mut p, &mut replica, cursor).await;
            (p, replica, cursor)
        })
    };

    // Eight writers, two per partner: creates, updates, sharing changes, deletes.
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let mut p = on((w % 4) as usize, (w / 4) as usize);
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
            let mut alive: Vec<pb::Tool> = Vec::new();
            let mut changes = 0;
            for i in 0..400 {
                let op = if alive.is_empty() { 0 } else { rng.below(10) };
                if op < 4 {
                    let mut t = tool(&format!("Tool {w}-{i}"), Tlp::Green, &[]);
                    t.sharing = Some(random_sharing(&mut rng, &p.id));
                    alive.push(
                        create_tool(&mut p, &format!("w{w}-{i}"), t)
                            .await
                            .expect("create"),
                    );
                } else if op < 7 {
                    let k = rng.below(alive.len() as u64) as usize;
                    let mut t = alive[k].clone();
                    t.summary = format!("update {i}");
                    if op == 6 {
                        t.sharing = Some(random_sharing(&mut rng, &p.id));
                    }
                    alive[k] = update_tool(&mut p, t, &[], false).await.expect("update");
                } else {
                    let k = rng.below(alive.len() as u64) as usize;
                    let t = alive.swap_remove(k);
                    p.tools
                        .delete_tool(pb::DeleteToolRequest {
                            name: t.name,
                            etag: t.etag,
                        })
                        .await
                        .expect("delete");
                }
                changes += 1;
            }
            changes
        }));
    }
    let mut total = 0;
    for writer in writers {
        total += writer.await.expect("writer");
    }
    assert_eq!(total, 3200);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut a, a_replica, a_cursor) = reader.await.expect("reader");
    end_tx.send_replace(Some(seq_of(&cursors, &a_cursor)));

    // Every reader ends equal to exactly what its partner can see.
    assert_eq!(
        a_replica.records,
        visible_state(&mut a).await,
        "the paging reader of a"
    );
    for watcher in watchers {
        let (id, replica) = tokio::time::timeout(Duration::from_secs(60), watcher)
            .await
            .expect("watcher caught up")
            .expect("watcher");
        let mut p = partners.iter().find(|p| p.id == id).unwrap().clone();
        assert_eq!(
            replica.records,
            visible_state(&mut p).await,
            "the watcher of {id}"
        );
    }
}

#[tokio::test]
async fn unshared_reaches_exactly_those_who_lost_sight() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let mut c = hub.contributor("c").await;
    let mut d = hub.contributor("d").await;
    let start: Vec<String> = {
        let mut cursors = Vec::new();
        for p in [&mut a, &mut b, &mut c, &mut d] {
            cursors.push(list_changes(p, "", 0).await.unwrap().next_cursor);
        }
        cursors
    };

    let shared = create_tool(
        &mut a,
        "shared",
        tool("Shared", Tlp::Amber, &["partners/b", "partners/c"]),
    )
    .await
    .unwrap();
    let mut narrowed = shared.clone();
    narrowed.sharing = Some(pb::Sharing {
        tlp: Tlp::Amber as i32,
        recipients: vec!["partners/c".into()],
    });
    update_tool(&mut a, narrowed, &[], false).await.unwrap();

    // A RED record no one else ever sees: created, changed, deleted.
    let secret = create_tool(&mut a, "secret", tool("Secret", Tlp::Red, &[]))
        .await
        .unwrap();
    let mut secret2 = secret.clone();
    secret2.summary = "still secret".into();
    let secret2 = update_tool(&mut a, secret2, &[], false).await.unwrap();
    a.tools
        .delete_tool(pb::DeleteToolRequest {
            name: secret2.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();

    let feed_of = |changes: &[pb::Change]| -> Vec<(String, ChangeType)> {
        changes
            .iter()
            .map(|c| {
                (
                    c.name.rsplit('/').next().unwrap().to_owned(),
                    ChangeType::try_from(c.r#type).unwrap(),
                )
            })
            .collect()
    };
    let page = |p: &mut Partner, cursor: String| {
        let mut p = p.clone();
        async move { list_changes(&mut p, &cursor, 0).await.unwrap().changes }
    };
    // The log is compacted: each partner sees the latest change per record.
    assert_eq!(
        feed_of(&page(&mut a, start[0].clone()).await),
        vec![
            ("shared".into(), ChangeType::Upserted),
            ("secret".into(), ChangeType::Deleted)
        ]
    );
    assert_eq!(
        feed_of(&page(&mut b, start[1].clone()).await),
        vec![("shared".into(), ChangeType::Unshared)]
    );
    assert_eq!(
        feed_of(&page(&mut c, start[2].clone()).await),
        vec![("shared".into(), ChangeType::Upserted)]
    );
    assert_eq!(
        feed_of(&page(&mut d, start[3].clone()).await),
        vec![],
        "d never could see anything"
    );

    // Tightening to RED takes it from c too; d still learns nothing.
    let current = get_tool(&mut a, &shared.name).await.unwrap();
    let mut red = current.clone();
    red.sharing = Some(pb::Sharing {
        tlp: Tlp::Red as i32,
        recipients: vec![],
    });
    update_tool(&mut a, red, &[], false).await.unwrap();
    assert_eq!(
        feed_of(&page(&mut c, start[2].clone()).await),
        vec![("shared".into(), ChangeType::Unshared)]
    );
    assert_eq!(feed_of(&page(&mut d, start[3].clone()).await), vec![]);

    // Nor from a replay or an error message.
    let replay = page(&mut d, String::new()).await;
    assert!(
        replay
            .iter()
            .all(|c| !c.name.contains("secret") && !c.name.contains("shared")),
        "{replay:?}"
    );
    let hidden = assert_code(get_tool(&mut d, &shared.name).await, Code::NotFound);
    let missing = assert_code(
        get_tool(&mut d, "partners/a/tools/never").await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("shared", "X"),
        missing.message().replace("never", "X")
    );

    // Made public again, every partner gets it back.
    let current = get_tool(&mut a, &shared.name).await.unwrap();
    let mut public = current.clone();
    public.sharing = Some(pb::Sharing {
        tlp: Tlp::Green as i32,
        recipients: vec![],
    });
    update_tool(&mut a, public, &[], false).await.unwrap();
    for (p, cursor) in [(&mut b, &start[1]), (&mut d, &start[3])] {
        assert_eq!(
            feed_of(&page(p, cursor.clone()).await),
            vec![("shared".into(), ChangeType::Upserted)]
        );
    }
}

fn tool_record(owner: &str, id: &str, title: &str) -> pb::Record {
    let mut t = tool(title, Tlp::Green, &[]);
    t.name = format!("partners/{owner}/tools/{id}");
    pb::Record {
        kind: Some(R::Tool(t)),
    }
}

async fn batch(
    p: &mut Partner,
    records: Vec<pb::Record>,
    request_id: &str,
) -> Result<pb::BatchUpsertRecordsResponse, tonic::Status> {
    p.sync
        .batch_upsert_records(pb::BatchUpsertRecordsRequest {
            records,
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A failed item's google.rpc.Status as a tonic Status, for its details.
fn item_status(result: &pb::UpsertResult) -> tonic::Status {
    let error = result.error.as_ref().expect("a failed item has its error");
    tonic::Status::with_details(
        Code::from_i32(error.code),
        error.message.clone(),
        prost::Message::encode_to_vec(error).into(),
    )
}

fn outcomes(response: &pb::BatchUpsertRecordsResponse) -> Vec<pb::UpsertOutcome> {
    response
        .results
        .iter()
        .map(|r| pb::UpsertOutcome::try_from(r.outcome).unwrap())
        .collect()
}

/// Recipients are looked up once per batch and then remembered: each
/// unknown one still fails its own item, naming it, and a partner created
/// after such a failure counts at once.
#[tokio::test]
async fn batch_recipients_are_checked_per_item_and_new_partners_count_at_once() {
    use pb::UpsertOutcome::*;
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut admin = hub.admin().await;
    create_partner(&mut admin, "b", &[pb::Role::Reader]).await;
    let shared = |id: &str, recipients: &[&str]| {
        let mut record = tool_record("a", id, id);
        if let Some(R::Tool(t)) = &mut record.kind {
            t.sharing = Some(pb::Sharing {
                tlp: Tlp::Amber as i32,
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
            });
        }
        record
    };
    let first = batch(
        &mut a,
        vec![
            shared("one", &["partners/b"]),
            shared("two", &["partners/b", "partners/late"]),
            shared("three", &["partners/b"]),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&first), vec![Created, Failed, Created]);
    let status = item_status(&first.results[1]);
    assert_eq!(
        violation_fields(&status),
        vec!["records[1].tool.sharing.recipients[1]"]
    );
    assert_code(
        get_tool(&mut a, "partners/a/tools/two").await,
        Code::NotFound,
    );

    // Still unknown when asked again; known once it exists.
    for (exists, outcome) in [(false, Failed), (true, Created)] {
        if exists {
            create_partner(&mut admin, "late", &[pb::Role::Reader]).await;
        }
        let retry = batch(
            &mut a,
            vec![shared("two", &["partners/b", "partners/late"])],
            "",
        )
        .await
        .unwrap();
        assert_eq!(outcomes(&retry), vec![outcome]);
    }
    let (cert, key) = hub.cert_for("late");
    let mut late = hub.connect_as("late", &cert, &key).await;
    let two = get_tool(&mut late, "partners/a/tools/two").await.unwrap();
    assert_eq!(two.display_name, "two");
}

#[tokio::test]
async fn batch_upserts_report_each_item_and_write_only_changes() {
    use pb::UpsertOutcome::*;
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let cursor = list_changes(&mut a, "", 0).await.unwrap().next_cursor;

    let mut bad_tlp = tool_record("a", "bad", "Bad");
    if let Some(R::Tool(t)) = &mut bad_tlp.kind {
        t.sharing = None;
    }
    let first = batch(
        &mut a,
        vec![
            tool_record("a", "one", "One"),
            tool_record("b", "planted", "Not mine"),
            tool_record("a", "two", "Two"),
            bad_tlp,
            pb::Record { kind: None },
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes(&first),
        vec![Created, Failed, Created, Failed, Failed]
    );
    assert_eq!(
        first.results[1].error.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );
    assert_eq!(
        first.results[3].error.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    let status = item_status(&first.results[3]);
    assert_eq!(
        violation_fields(&status),
        vec!["records[3].tool.sharing.tlp"]
    );
    // A record with no kind is wrong as a whole.
    assert_eq!(
        violation_fields(&item_status(&first.results[4])),
        vec!["records[4]"]
    );
    assert_eq!(first.results[0].name, "partners/a/tools/one");
    assert!(!first.results[0].etag.is_empty());
    assert!(
        first
            .results
            .iter()
            .filter(|r| r.outcome == Failed as i32)
            .all(|r| r.etag.is_empty())
    );

    let after_first = list_changes(&mut a, &cursor, 0).await.unwrap();
    assert_eq!(after_first.changes.len(), 2);

    // Sent back exactly as Get returns it: UNCHANGED, and no change in the feed.
    let one = get_tool(&mut a, "partners/a/tools/one").await.unwrap();
    let mut two = get_tool(&mut a, "partners/a/tools/two").await.unwrap();
    two.summary = "changed".into();
    let second = batch(
        &mut a,
        vec![
            pb::Record {
                kind: Some(R::Tool(one.clone())),
            },
            pb::Record {
                kind: Some(R::Tool(two.clone())),
            },
            pb::Record {
                kind: Some(R::Tool(pb::Tool {
                    etag: "stale".into(),
                    ..one.clone()
                })),
            },
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&second), vec![Unchanged, Updated, Failed]);
    assert_eq!(
        second.results[2].error.as_ref().unwrap().code,
        Code::Aborted as i32
    );
    let after_second = list_changes(&mut a, &after_first.next_cursor, 0)
        .await
        .unwrap();
    assert_eq!(
        after_second
            .changes
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["partners/a/tools/two"]
    );

    // A repeated request id returns the first answer and writes nothing.
    let third = batch(
        &mut a,
        vec![tool_record("a", "three", "Three")],
        "daily-2026-11-27",
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&third), vec![Created]);
    let again = batch(
        &mut a,
        vec![tool_record("a", "three", "Three, renamed")],
        "daily-2026-11-27",
    )
    .await
    .unwrap();
    assert_eq!(again, third);
    assert_eq!(
        get_tool(&mut a, "partners/a/tools/three")
            .await
            .unwrap()
            .display_name,
        "Three"
    );
    // The id belongs to the partner: another partner's request is its own.
    let mut b = hub.contributor("b").await;
    let other = batch(
        &mut b,
        vec![tool_record("b", "three", "B's three")],
        "daily-2026-11-27",
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&other), vec![Created]);
}

/// An etag means "the version I read" (AIP-154): a record deleted since is
/// not silently re-created, by a batch item (which fails alone while the
/// rest commits) nor by Update with allow_missing; both say ABORTED
/// (ETAG_MISMATCH), write nothing and add nothing to the feed.
#[tokio::test]
async fn an_etag_of_a_deleted_record_does_not_recreate_it() {
    use pb::UpsertOutcome::*;
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let read = create_tool(&mut a, "gone", tool("Gone", Tlp::Green, &[]))
        .await
        .unwrap();
    assert!(!read.etag.is_empty());
    a.tools
        .delete_tool(pb::DeleteToolRequest {
            name: read.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let cursor = list_changes(&mut a, "", 0).await.unwrap().next_cursor;

    let mut stale = read.clone();
    stale.display_name = "Gone, edited".into();
    let response = batch(
        &mut a,
        vec![
            pb::Record {
                kind: Some(R::Tool(stale.clone())),
            },
            tool_record("a", "fresh", "Fresh"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&response), vec![Failed, Created]);
    assert_eq!(response.results[0].name, read.name);
    assert!(response.results[0].etag.is_empty());
    let status = item_status(&response.results[0]);
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(error_reason(&status).as_deref(), Some("ETAG_MISMATCH"));

    // Update with allow_missing answers the same, full replacement or masked.
    for paths in [&[][..], &["display_name"][..]] {
        let status = assert_code(
            update_tool(&mut a, stale.clone(), paths, true).await,
            Code::Aborted,
        );
        assert_eq!(
            error_reason(&status).as_deref(),
            Some("ETAG_MISMATCH"),
            "{paths:?}"
        );
    }

    let status = assert_code(get_tool(&mut a, &read.name).await, Code::NotFound);
    assert_eq!(error_reason(&status).as_deref(), Some("RESOURCE_NOT_FOUND"));
    let after = list_changes(&mut a, &cursor, 0).await.unwrap();
    assert_eq!(
        after
            .changes
            .iter()
            .map(|c| (c.name.as_str(), ChangeType::try_from(c.r#type).unwrap()))
            .collect::<Vec<_>>(),
        vec![("partners/a/tools/fresh", ChangeType::Upserted)]
    );
    // Without an etag, allow_missing still creates.
    stale.etag.clear();
    let created = update_tool(&mut a, stale, &[], true).await.unwrap();
    assert_eq!(created.display_name, "Gone, edited");
    assert_ne!(created.uid, read.uid);
}

#[tokio::test]
async fn bad_sync_requests_are_refused_with_clear_statuses() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;

    for bad in ["nonsense", "Yzx", "%%%", "YzEuYWJjLi0x"] {
        let status = assert_code(list_changes(&mut a, bad, 0).await, Code::InvalidArgument);
        assert_eq!(violation_fields(&status), vec!["cursor"], "{bad}");
        let status = assert_code(
            a.sync
                .watch_changes(pb::WatchChangesRequest {
                    cursor: bad.into(),
                    kinds: vec![],
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(violation_fields(&status), vec!["cursor"]);
    }
    // A cursor of another hub database.
    let other = TestHub::start().await;
    let mut other_a = other.contributor("a").await;
    create_tool(&mut other_a, "x", tool("X", Tlp::Green, &[]))
        .await
        .unwrap();
    let foreign = list_changes(&mut other_a, "", 0).await.unwrap().next_cursor;
    let status = assert_code(
        list_changes(&mut a, &foreign, 0).await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("CURSOR_FROM_OTHER_HUB")
    );
    // A readable cursor of the first version, of this very hub: expired, so
    // the client resyncs (its position could be chosen to probe the feed).
    let legacy = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("c1.{}.1", hub.cursors.hub_id()))
    };
    let status = assert_code(
        list_changes(&mut a, &legacy, 0).await,
        Code::FailedPrecondition,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("CURSOR_EXPIRED"));

    // Unknown kinds and negative page sizes.
    let status = assert_code(
        a.sync
            .list_changes(pb::ListChangesRequest {
                cursor: String::new(),
                kinds: vec![9],
                page_size: 0,
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["kinds[0]"]);
    assert_code(list_changes(&mut a, "", -1).await, Code::InvalidArgument);

    // Batches of 0 and 1001.
    let status = assert_code(batch(&mut a, vec![], "").await, Code::InvalidArgument);
    assert_eq!(violation_fields(&status), vec!["records"]);
    let too_many: Vec<pb::Record> = (0..1001)
        .map(|i| tool_record("a", &format!("t{i}"), "T"))
        .collect();
    assert_code(batch(&mut a, too_many, "").await, Code::InvalidArgument);
    assert!(
        list_all_tools(&mut a, "partners/a", "", 1000)
            .await
            .is_empty(),
        "nothing was written"
    );

    // Readers may not upsert.
    let mut reader = hub.partner("r", &[pb::Role::Reader]).await;
    assert_code(
        batch(&mut reader, vec![tool_record("r", "x", "X")], "").await,
        Code::PermissionDenied,
    );

    // page_size above 5000 is treated as 5000.
    for chunk in 0..6 {
        let records = (0..1000)
            .map(|i| tool_record("a", &format!("t{chunk}-{i}"), "T"))
            .collect();
        let response = batch(&mut a, records, "").await.unwrap();
        assert!(
            response
                .results
                .iter()
                .all(|r| r.outcome == pb::UpsertOutcome::Created as i32)
        );
    }
    let page = list_changes(&mut a, "", 20_000).await.unwrap();
    assert_eq!(page.changes.len(), 5000);
    assert!(!page.caught_up);
    let rest = list_changes(&mut a, &page.next_cursor, 20_000)
        .await
        .unwrap();
    assert_eq!(rest.changes.len(), 1000);
    assert!(rest.caught_up);
}

/// The hub reads the next ListChanges page while the client takes in the
/// last; what the next call answers must still be the feed as it is then.
#[tokio::test]
async fn pages_read_ahead_never_hide_a_later_commit() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut made = Vec::new();
    for id in ["t0", "t1", "t2"] {
        made.push(
            create_tool(&mut a, id, tool(id, Tlp::Green, &[]))
                .await
                .unwrap(),
        );
    }
    let names = |page: &pb::ListChangesResponse| -> Vec<String> {
        page.changes.iter().map(|c| c.name.clone()).collect()
    };
    let tool_name = |id: &str| format!("partners/a/tools/{id}");

    // The page after t0, t1 is the last; it is read ahead, and a commit
    // follows. Answering from the read ahead would say caught up without it.
    let first = list_changes(&mut a, "", 2).await.unwrap();
    assert_eq!(names(&first), [tool_name("t0"), tool_name("t1")]);
    assert!(!first.caught_up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    create_tool(&mut a, "late", tool("late", Tlp::Green, &[]))
        .await
        .unwrap();
    let second = list_changes(&mut a, &first.next_cursor, 2).await.unwrap();
    assert_eq!(names(&second), [tool_name("t2"), tool_name("late")]);
    let end = list_changes(&mut a, &second.next_cursor, 2).await.unwrap();
    assert!(end.changes.is_empty() && end.caught_up, "{end:?}");

    // A full page read ahead, then a record in it changes: the page may
    // carry the older version, and the newer one follows, so a mirror
    // still ends equal to the state.
    let mut replica = Replica::new(hub.cursors.clone());
    let first = list_changes(&mut a, "", 1).await.unwrap();
    replica.apply(&first.changes);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut renamed = made[1].clone();
    renamed.display_name = "t1, renamed".into();
    update_tool(&mut a, renamed, &["display_name"], false)
        .await
        .unwrap();
    let mut cursor = first.next_cursor;
    loop {
        let page = list_changes(&mut a, &cursor, 1).await.unwrap();
        replica.apply(&page.changes);
        cursor = page.next_cursor;
        if page.caught_up {
            break;
        }
    }
    let titles: BTreeMap<String, String> = replica
        .records
        .iter()
        .map(|(name, record)| match &record.kind {
            Some(R::Tool(t)) => (name.clone(), t.display_name.clone()),
            other => panic!("not a tool: {other:?}"),
        })
        .collect();
    assert_eq!(
        titles,
        BTreeMap::from([
            (tool_name("late"), "late".to_owned()),
            (tool_name("t0"), "t0".to_owned()),
            (tool_name("t1"), "t1, renamed".to_owned()),
            (tool_name("t2"), "t2".to_owned()),
        ])
    );
}

#[tokio::test]
async fn a_cursor_older_than_the_tombstone_retention_expires() {
    let hub =
        TestHub::start_with(|args| args.tombstone_retention = Some(Duration::from_millis(500)))
            .await;
    let mut a = hub.contributor("a").await;
    create_tool(&mut a, "kept", tool("Kept", Tlp::Green, &[]))
        .await
        .unwrap();
    let old = list_changes(&mut a, "", 0).await.unwrap().next_cursor;
    create_tool(&mut a, "gone", tool("Gone", Tlp::Green, &[]))
        .await
        .unwrap();
    a.tools
        .delete_tool(pb::DeleteToolRequest {
            name: "partners/a/tools/gone".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    // Within the retention the tombstone is there.
    let changes = list_changes(&mut a, &old, 0).await.unwrap().changes;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].r#type, ChangeType::Deleted as i32);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match list_changes(&mut a, &old, 0).await {
            Err(status) => break status,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("the tombstone was never purged"),
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&status).as_deref(), Some("CURSOR_EXPIRED"));
    assert_code(
        a.sync
            .watch_changes(pb::WatchChangesRequest {
                cursor: old,
                kinds: vec![],
            })
            .await,
        Code::FailedPrecondition,
    );
    // Resync from an empty cursor replays the state, without the tombstone.
    let replay = list_changes(&mut a, "", 0).await.unwrap();
    assert_eq!(
        replay
            .changes
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["partners/a/tools/kept"]
    );
}

#[tokio::test]
async fn watchers_get_live_changes_bookmarks_and_kinds() {
    let hub =
        TestHub::start_with(|args| args.watch_bookmark_interval = Some(Duration::from_millis(300)))
            .await;
    let mut a = hub.contributor("a").await;
    let mut stream = watch(&mut a, "", &[pb::RecordKind::Tool]).await;
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.changes.is_empty(), "nothing yet");

    // A practice is filtered out; a tool arrives as it commits.
    a.practices
        .create_practice(pb::CreatePracticeRequest {
            parent: "partners/a".into(),
            practice_id: "p".into(),
            practice: Some(pb::Practice {
                title: "P".into(),
                sharing: Some(pb::Sharing {
                    tlp: Tlp::Green as i32,
                    recipients: vec![],
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    create_tool(&mut a, "live", tool("Live", Tlp::Green, &[]))
        .await
        .unwrap();
    let live = next_changes(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(live.changes.len(), 1);
    assert_eq!(live.changes[0].name, "partners/a/tools/live");
    // The message's cursor stands where its last change does, though sealed
    // afresh (so no two of them can be compared).
    assert_eq!(
        seq_of(&hub.cursors, &live.cursor),
        seq_of(&hub.cursors, &live.changes[0].cursor)
    );

    // Idle: bookmarks with the current cursor.
    let bookmark = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(bookmark.changes.is_empty());
    assert!(seq_of(&hub.cursors, &bookmark.cursor) >= seq_of(&hub.cursors, &live.cursor));
    assert_ne!(bookmark.cursor, live.cursor);
}

#[tokio::test]
async fn a_slow_watcher_is_cut_off_and_resumes_from_its_cursor() {
    let hub =
        TestHub::start_with(|args| args.watch_stall_timeout = Some(Duration::from_millis(300)))
            .await;
    let mut a = hub.contributor("a").await;
    let mut stream = watch(&mut a, "", &[]).await;
    // Never read while about 24 MiB of changes commit.
    let big = "x".repeat(4000);
    for chunk in 0..6 {
        let records = (0..1000)
            .map(|i| {
                let mut r = tool_record("a", &format!("t{chunk}-{i}"), "Big");
                if let Some(R::Tool(t)) = &mut r.kind {
                    t.description = big.clone();
                }
                r
            })
            .collect();
        batch(&mut a, records, "").await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut replica = Replica::new(hub.cursors.clone());
    let mut cursor = String::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("stream moves")
        {
            Some(Ok(message)) => {
                replica.apply(&message.changes);
                cursor = message.cursor;
            }
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("WATCHER_TOO_SLOW"));
    assert!(
        replica.records.len() < 6000,
        "it was cut off before the end"
    );

    // Resuming from the last cursor delivers the rest, nothing twice.
    let mut resumed = a
        .sync
        .watch_changes(pb::WatchChangesRequest {
            cursor,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    while replica.records.len() < 6000 {
        let message = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .expect("resumed stream moves")
            .unwrap()
            .unwrap();
        replica.apply(&message.changes);
    }
    assert_eq!(replica.records.len(), 6000);
}

#[tokio::test]
async fn shutdown_ends_watches_with_unavailable() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut stream = watch(&mut a, "", &[]).await;
    stream.next().await.unwrap().unwrap();
    let stopping = tokio::spawn(hub.stop());
    let status = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends")
        .expect("with a status")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the hub stops")
        .unwrap();
}

#[tokio::test]
async fn pages_stay_under_what_default_grpc_clients_accept() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let long = "y".repeat(60_000);
    let records: Vec<pb::Record> = (0..150)
        .map(|i| {
            let mut r = tool_record("a", &format!("big-{i}"), "Big");
            if let Some(R::Tool(t)) = &mut r.kind {
                t.description = long.clone();
                t.summary = long.clone();
            }
            r
        })
        .collect();
    for chunk in records.chunks(30) {
        batch(&mut a, chunk.to_vec(), "").await.unwrap();
    }
    // A client with gRPC's default 4 MiB limit pages through about 18 MiB.
    let mut default_limits = SyncClient::new(a.channel.clone());
    let mut cursor = String::new();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = default_limits
            .list_changes(pb::ListChangesRequest {
                cursor: cursor.clone(),
                kinds: vec![],
                page_size: 5000,
            })
            .await
            .expect("a page within 4 MiB")
            .into_inner();
        seen += page.changes.len();
        pages += 1;
        cursor = page.next_cursor;
        if page.caught_up {
            break;
        }
    }
    assert_eq!(seen, 150);
    assert!(pages >= 5, "{pages} pages");
    let mut stream = default_limits
        .watch_changes(pb::WatchChangesRequest {
            cursor: String::new(),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut watched = 0;
    while watched < 150 {
        watched += stream
            .next()
            .await
            .unwrap()
            .expect("a message within 4 MiB")
            .changes
            .len();
    }
}

/// A partner's cursors say nothing of changes it may not see: no readable
/// position to count them by, and a cursor sealed afresh on every answer, so
/// an idle reader cannot tell whether anything hidden was committed.
#[tokio::test]
async fn cursors_tell_a_partner_nothing_of_changes_it_cannot_see() {
    use base64::Engine;
    let hub = TestHub::start().await;
    let mut owner = hub.contributor("owner").await;
    let mut reader = hub.partner("reader", &[Role::Reader]).await;
    create_tool(&mut owner, "seen", tool("Seen", Tlp::Green, &[]))
        .await
        .unwrap();
    let caught_up = list_changes(&mut reader, "", 0).await.unwrap();
    assert_eq!(caught_up.changes.len(), 1);
    let before = seq_of(&hub.cursors, &caught_up.next_cursor);

    for i in 0..3 {
        create_tool(&mut owner, &format!("red-{i}"), tool("Red", Tlp::Red, &[]))
            .await
            .unwrap();
    }
    let again = list_changes(&mut reader, &caught_up.next_cursor, 0)
        .await
        .unwrap();
    assert!(again.changes.is_empty() && again.caught_up, "{again:?}");
    // The hub knows the reader now stands past the hidden changes...
    assert_eq!(seq_of(&hub.cursors, &again.next_cursor), before + 3);
    // ...the reader cannot: neither position is in either cursor, and an
    // answer with nothing new looks like one after hidden commits.
    let idle = list_changes(&mut reader, &again.next_cursor, 0)
        .await
        .unwrap();
    assert_eq!(seq_of(&hub.cursors, &idle.next_cursor), before + 3);
    for cursor in [
        &caught_up.next_cursor,
        &again.next_cursor,
        &idle.next_cursor,
    ] {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .expect("base64url");
        // Not the readable `c1.{hub}.{position}` of the first version, nor
        // the position's bytes in the clear.
        assert!(!bytes.starts_with(b"c1."), "{cursor}");
        for seq in [before, before + 3] {
            assert!(
                !bytes.windows(8).any(|w| w == seq.to_be_bytes()),
                "{cursor}"
            );
        }
        assert_eq!(cursor.len(), caught_up.next_cursor.len());
    }
    assert_ne!(again.next_cursor, idle.next_cursor);
    assert_ne!(caught_up.next_cursor, again.next_cursor);
    // A change keeps its own cursor from one read to the next.
    let replay = list_changes(&mut reader, "", 0).await.unwrap();
    assert_eq!(replay.changes[0].cursor, caught_up.changes[0].cursor);
}

/// `(record id, change type, commit time)` of each change.
fn notices(changes: &[pb::Change]) -> Vec<(String, ChangeType, i64)> {
    changes
        .iter()
        .map(|c| {
            (
                c.name.rsplit('/').next().unwrap_or_default().to_owned(),
                ChangeType::try_from(c.r#type).unwrap(),
                c.commit_time
                    .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000),
            )
        })
        .collect()
}

fn kinds_of(changes: &[pb::Change]) -> Vec<(String, ChangeType)> {
    notices(changes)
        .into_iter()
        .map(|(name, kind, _)| (name, kind))
        .collect()
}

/// Reads `stream` until it stands at `cursor`'s position or past it.
async fn drain(hub: &TestHub, stream: &mut WatchStream, cursor: &str) {
    let target = seq_of(&hub.cursors, cursor);
    loop {
        let message = next_or_bookmark(stream).await;
        if seq_of(&hub.cursors, &message.cursor) >= target {
            return;
        }
    }
}

async fn next_or_bookmark(stream: &mut WatchStream) -> pb::WatchChangesResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the watch moves")
        .expect("the watch goes on")
        .expect("a message")
}

async fn edit_summary(owner: &mut Partner, name: &str, summary: &str) -> pb::Tool {
    let mut current = get_tool(owner, name).await.unwrap();
    current.summary = summary.into();
    update_tool(owner, current, &[], false).await.unwrap()
}

async fn share(owner: &mut Partner, name: &str, tlp: Tlp, recipients: &[&str]) -> pb::Tool {
    let mut current = get_tool(owner, name).await.unwrap();
    current.sharing = Some(pb::Sharing {
        tlp: tlp as i32,
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
    });
    update_tool(owner, current, &[], false).await.unwrap()
}

#[tokio::test]
async fn a_partner_that_lost_sight_gets_one_unshared_and_nothing_of_later_edits() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let start = list_changes(&mut b, "", 0).await.unwrap().next_cursor;
    let mut stream = watch(&mut b, &start, &[]).await;
    let wait = Duration::from_secs(10);

    // "amber" is taken from b by its recipients, "green" by going RED.
    let amber = create_tool(&mut a, "amber", tool("Amber", Tlp::Amber, &["partners/b"]))
        .await
        .unwrap();
    create_tool(&mut a, "green", tool("Green", Tlp::Green, &[]))
        .await
        .unwrap();
    let seen = list_changes(&mut b, &start, 0).await.unwrap();
    assert_eq!(
        kinds_of(&seen.changes),
        vec![
            ("amber".into(), ChangeType::Upserted),
            ("green".into(), ChangeType::Upserted)
        ]
    );
    drain(&hub, &mut stream, &seen.next_cursor).await;
    let narrowed = share(&mut a, &amber.name, Tlp::Amber, &[]).await;
    let red = share(&mut a, "partners/a/tools/green", Tlp::Red, &[]).await;
    let unshared = list_changes(&mut b, &seen.next_cursor, 0).await.unwrap();
    let lost = |t: &pb::Tool| {
        let time = t.update_time.unwrap();
        time.seconds * 1_000_000 + i64::from(time.nanos) / 1000
    };
    let expected = vec![
        ("amber".to_owned(), ChangeType::Unshared, lost(&narrowed)),
        ("green".to_owned(), ChangeType::Unshared, lost(&red)),
    ];
    assert_eq!(notices(&unshared.changes), expected);

    // Edited while hidden from b, three times each; then a marker b sees.
    for i in 0..3 {
        for name in [&amber.name, "partners/a/tools/green"] {
            edit_summary(&mut a, name, &format!("edit {i}")).await;
        }
    }
    create_tool(&mut a, "marker", tool("Marker", Tlp::Green, &[]))
        .await
        .unwrap();

    // From its cursor before the loss b gets one UNSHARED each, at the time
    // it lost sight, not at the edits'...
    let after_seen = list_changes(&mut b, &seen.next_cursor, 0).await.unwrap();
    assert_eq!(
        kinds_of(&after_seen.changes),
        vec![
            ("amber".into(), ChangeType::Unshared),
            ("green".into(), ChangeType::Unshared),
            ("marker".into(), ChangeType::Upserted)
        ]
    );
    assert_eq!(notices(&after_seen.changes)[..2], expected[..]);
    // ...and from an empty cursor too...
    let replay = list_changes(&mut b, "", 0).await.unwrap();
    assert_eq!(
        notices(&replay.changes)
            .into_iter()
            .filter(|(n, ..)| n != "marker")
            .collect::<Vec<_>>(),
        expected
    );
    // ...but nothing more past it.
    let past = list_changes(&mut b, &unshared.next_cursor, 0)
        .await
        .unwrap();
    assert_eq!(
        kinds_of(&past.changes),
        vec![("marker".into(), ChangeType::Upserted)]
    );
    // The watcher likewise: the two UNSHARED, then only the marker.
    let mut watched = Vec::new();
    while !watched
        .iter()
        .any(|c: &pb::Change| c.name.ends_with("marker"))
    {
        watched.extend(next_changes(&mut stream, wait).await.changes);
    }
    assert_eq!(
        kinds_of(&watched),
        vec![
            ("amber".into(), ChangeType::Unshared),
            ("green".into(), ChangeType::Unshared),
            ("marker".into(), ChangeType::Upserted)
        ]
    );

    // Regaining sight brings the record back; losing it again, one UNSHARED.
    share(&mut a, &amber.name, Tlp::Amber, &["partners/b"]).await;
    let back = list_changes(&mut b, &past.next_cursor, 0).await.unwrap();
    assert_eq!(
        kinds_of(&back.changes),
        vec![("amber".into(), ChangeType::Upserted)]
    );
    share(&mut a, &amber.name, Tlp::Red, &[]).await;
    edit_summary(&mut a, &amber.name, "hidden again").await;
    let again = list_changes(&mut b, &back.next_cursor, 0).await.unwrap();
    assert_eq!(
        kinds_of(&again.changes),
        vec![("amber".into(), ChangeType::Unshared)]
    );
    edit_summary(&mut a, &amber.name, "and again").await;
    let quiet = list_changes(&mut b, &again.next_cursor, 0).await.unwrap();
    assert!(quiet.changes.is_empty(), "{quiet:?}");
}

#[tokio::test]
async fn a_record_created_again_under_its_name_tells_nothing_to_those_that_saw_only_the_old_one() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let mut c = hub.contributor("c").await;
    let mut d = hub.contributor("d").await;
    let name = "partners/a/tools/again";
    let start_b = list_changes(&mut b, "", 0).await.unwrap().next_cursor;
    let start_c = list_changes(&mut c, "", 0).await.unwrap().next_cursor;
    let mut watch_b = watch(&mut b, &start_b, &[]).await;
    let wait = Duration::from_secs(10);

    // b sees the last version of the first incarnation; c lost sight of it
    // before it was deleted.
    create_tool(
        &mut a,
        "again",
        tool("Again", Tlp::Amber, &["partners/b", "partners/c"]),
    )
    .await
    .unwrap();
    share(&mut a, name, Tlp::Amber, &["partners/b"]).await;
    let c_told = list_changes(&mut c, &start_c, 0).await.unwrap();
    assert_eq!(
        kinds_of(&c_told.changes),
        vec![("again".into(), ChangeType::Unshared)]
    );
    let b_before_delete = list_changes(&mut b, &start_b, 0).await.unwrap();
    assert_eq!(
        kinds_of(&b_before_delete.changes),
        vec![("again".into(), ChangeType::Upserted)]
    );
    drain(&hub, &mut watch_b, &b_before_delete.next_cursor).await;
    a.tools
        .delete_tool(pb::DeleteToolRequest {
            name: name.into(),
            etag: String::new(),
        })
        .await
        .unwrap();

    // Created again, RED for d, and edited.
    create_tool(&mut a, "again", tool("Again 2", Tlp::Red, &["partners/d"]))
        .await
        .unwrap();
    edit_summary(&mut a, name, "second incarnation, edited").await;
    create_tool(&mut a, "marker", tool("Marker", Tlp::Green, &[]))
        .await
        .unwrap();

    // b learns of the delete, once, and nothing of the new record.
    let b_after = list_changes(&mut b, &b_before_delete.next_cursor, 0)
        .await
        .unwrap();
    assert_eq!(
        kinds_of(&b_after.changes),
        vec![
            ("again".into(), ChangeType::Deleted),
            ("marker".into(), ChangeType::Upserted)
        ]
    );
    let mut watched = Vec::new();
    while !watched
        .iter()
        .any(|c: &pb::Change| c.name.ends_with("marker"))
    {
        watched.extend(next_changes(&mut watch_b, wait).await.changes);
    }
    assert_eq!(
        kinds_of(&watched),
        vec![
            ("again".into(), ChangeType::Deleted),
            ("marker".into(), ChangeType::Upserted)
        ]
    );
    edit_summary(&mut a, name, "edited once more").await;
    let b_quiet = list_changes(&mut b, &b_after.next_cursor, 0).await.unwrap();
    assert!(b_quiet.changes.is_empty(), "{b_quiet:?}");

    // c had its UNSHARED: neither the delete nor the new record reach it.
    let c_after = list_changes(&mut c, &c_told.next_cursor, 0).await.unwrap();
    assert_eq!(
        kinds_of(&c_after.changes),
        vec![("marker".into(), ChangeType::Upserted)]
    );
    // From before its loss, it gets the UNSHARED, not the DELETED (at the
    // name's latest position: the log is compacted).
    let c_from_start = list_changes(&mut c, &start_c, 0).await.unwrap();
    assert_eq!(
        kinds_of(&c_from_start.changes),
        vec![
            ("marker".into(), ChangeType::Upserted),
            ("again".into(), ChangeType::Unshared)
        ]
    );
    // d sees the new record; the owner its current version.
    let d_feed = list_changes(&mut d, "", 0).await.unwrap();
    assert_eq!(
        kinds_of(&d_feed.changes),
        vec![
            ("marker".into(), ChangeType::Upserted),
            ("again".into(), ChangeType::Upserted)
        ]
    );
    let a_feed = list_changes(&mut a, "", 0).await.unwrap();
    assert_eq!(
        kinds_of(&a_feed.changes),
        vec![
            ("marker".into(), ChangeType::Upserted),
            ("again".into(), ChangeType::Upserted)
        ]
    );
}

#[tokio::test]
async fn watchers_past_the_memory_budget_are_cut_off_slowest_first_and_resume() {
    // A budget of 1 MiB, and no stall limit to speak of: only the budget
    // cuts watchers off here.
    let hub = TestHub::start_with(|args| {
        args.watch_memory = Some(1 << 20);
        args.watch_stall_timeout = Some(Duration::from_secs(3600));
    })
    .await;
    let mut a = hub.contributor("a").await;
    let (cert, key) = hub.cert_for("a");
    // Three watchers that do not read, and one that does (of practices
    // only, small), each on a connection of its own.
    let mut clients = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut p = hub.connect_as("a", &cert, &key).await;
        idle.push(watch(&mut p, "", &[]).await);
        clients.push(p);
    }
    let mut p = hub.connect_as("a", &cert, &key).await;
    let mut reading = watch(&mut p, "", &[pb::RecordKind::Practice]).await;
    clients.push(p);
    let reader = tokio::spawn(async move {
        let mut practices = 0;
        while practices < 13 {
            let message = next_or_bookmark(&mut reading).await;
            practices += message.changes.len();
        }
        (reading, practices)
    });

    // About 12 MiB of tools, and a practice after each batch.
    let text = "x".repeat(1500);
    let batches = 8;
    for chunk in 0..batches {
        let records = (0..1000)
            .map(|i| {
                let mut r = tool_record("a", &format!("t{chunk}-{i}"), "Big");
                if let Some(R::Tool(t)) = &mut r.kind {
                    t.description = text.clone();
                }
                r
            })
            .collect();
        batch(&mut a, records, "").await.unwrap();
        create_practice(&mut a, &format!("p{chunk}")).await;
    }

    // Each idle watcher is cut off, after what it had been sent...
    for mut stream in idle {
        let mut replica = Replica::new(hub.cursors.clone());
        let mut cursor = String::new();
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("the stream moves")
            {
                Some(Ok(message)) => {
                    replica.apply(&message.changes);
                    cursor = message.cursor;
                    assert!(
                        replica.records.len() < batches * 1001,
                        "never cut off: it held everything"
                    );
                }
                Some(Err(status)) => break status,
                None => panic!("the stream ended without a status"),
            }
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some("WATCHER_TOO_SLOW"));
        let expected = batches * 1001;
        // ...and resumes from its last cursor: the rest, nothing twice
        // (cut off again, should it hold the most again, it resumes again).
        let mut resumed = watch(&mut a, &cursor, &[]).await;
        while replica.records.len() < expected {
            match tokio::time::timeout(Duration::from_secs(30), resumed.next())
                .await
                .expect("the resumed stream moves")
            {
                Some(Ok(message)) => {
                    replica.apply(&message.changes);
                    cursor = message.cursor;
                }
                Some(Err(status)) => {
                    assert_eq!(error_reason(&status).as_deref(), Some("WATCHER_TOO_SLOW"));
                    resumed = watch(&mut a, &cursor, &[]).await;
                }
                None => panic!("the resumed stream ended without a status"),
            }
        }
        assert_eq!(replica.records.len(), expected);
    }

    // The reading watcher was never cut off and goes on.
    for i in batches..13 {
        create_practice(&mut a, &format!("p{i}")).await;
    }
    let (_, practices) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reading watcher keeps up")
        .expect("no error reached the reading watcher");
    assert_eq!(practices, 13);
}

async fn create_practice(partner: &mut Partner, id: &str) {
    partner
        .practices
        .create_practice(pb::CreatePracticeRequest {
            parent: partner.name(),
            practice_id: id.into(),
            practice: Some(pb::Practice {
                title: id.into(),
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
