//! Soak (`cargo test --release --test soak -- --nocapture` prints its
//! figures): the real `copex serve` with 1,000 watch streams, 4 writers and 32
//! readers for a minute (COPEX_SOAK_SECONDS), on SQLite and on PostgreSQL.
//! No call may fail unexpectedly, every watcher must end equal to what its
//! partner can see, and the server's memory must come back down once the
//! clients are gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use copex::auth::cert::partner_spiffe_id;
use copex::pb::{self, ChangeType, Role, Tlp};
use copex::pki::{CertificateAuthority, LeafOptions};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Endpoint, Identity};

use crate::process::{Served, serve_with, terminate};
use crate::support::*;

// The helpers of the integration suite; this binary uses only some of them.
#[path = "it/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "it/support.rs"]
#[allow(dead_code)]
mod support;

const READERS: usize = 10;
const WATCHERS_PER_READER: usize = 100;
const WRITERS: usize = 4;
const READER_TASKS: usize = 32;
/// Live records per writer: ids are reused, so the state stays small.
const IDS_PER_WRITER: usize = 150;

fn soak_duration() -> Duration {
    let seconds = std::env::var("COPEX_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

async fn connect(served: &Served, ca: &CertificateAuthority, id: &str) -> Partner {
    let (cert, key) = ca
        .sign_leaf(&LeafOptions {
            common_name: id.to_owned(),
            uri_sans: vec![partner_spiffe_id(TRUST_DOMAIN, id)],
            client_auth: true,
            ..Default::default()
        })
        .expect("sign");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(served.hub.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect");
    Partner::on(id, channel)
}

/// What a watcher holds: name -> etag, and its last position.
struct Mirror {
    etags: BTreeMap<String, String>,
    last_seq: i64,
    cursors: copex::feed::Cursors,
}

impl Mirror {
    fn apply(&mut self, changes: &[pb::Change]) {
        for change in changes {
            let seq = seq_of(&self.cursors, &change.cursor);
            assert!(
                seq > self.last_seq,
                "cursor went back: {} -> {seq}",
                self.last_seq
            );
            self.last_seq = seq;
            match ChangeType::try_from(change.r#type) {
                Ok(ChangeType::Upserted) => {
                    let etag = match change.record.as_ref().and_then(|r| r.kind.as_ref()) {
                        Some(pb::record::Kind::Tool(t)) => t.etag.clone(),
                        other => panic!("only tools are written, got {other:?}"),
                    };
                    self.etags.insert(change.name.clone(), etag);
                }
                Ok(ChangeType::Deleted | ChangeType::Unshared) => {
                    self.etags.remove(&change.name);
                }
                other => panic!("unexpected change type {other:?}"),
            }
        }
    }
}

async fn visible_etags(partner: &mut Partner) -> BTreeMap<String, String> {
    list_all_tools(partner, "partners/-", "", 1000)
        .await
        .into_iter()
        .map(|t| (t.name, t.etag))
        .collect()
}

/// The sharing of a writer's n-th write: public, shared with one reader,
/// or the owner's alone, so watchers see UPSERTED, UNSHARED and nothing.
fn sharing_for(n: usize) -> (Tlp, Vec<String>) {
    match n % 3 {
        0 => (Tlp::Green, vec![]),
        1 => (Tlp::Amber, vec![format!("partners/r{}", n % READERS)]),
        _ => (Tlp::Red, vec![]),
    }
}

/// A writer's record `n`, with the sharing of its n-th write.
fn soak_record(writer: &str, n: usize) -> pb::Record {
    let (tlp, recipients) = sharing_for(n);
    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let mut t = tool(&format!("Soak {n}"), tlp, &recipients);
    t.name = format!("partners/{writer}/tools/t{}", n % IDS_PER_WRITER);
    pb::Record {
        kind: Some(pb::record::Kind::Tool(t)),
    }
}

async fn upsert(w: &mut Partner, records: Vec<pb::Record>) {
    let response = w
        .sync
        .batch_upsert_records(pb::BatchUpsertRecordsRequest {
            records,
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|status| panic!("writer {}: {status:?}", w.id))
        .into_inner();
    for result in response.results {
        assert_ne!(
            result.outcome,
            pb::UpsertOutcome::Failed as i32,
            "{result:?}"
        );
    }
}

/// Upserts the writer's records in turn (each round does the same), with
/// every seventh write a delete.
async fn write_loop(mut w: Partner, stop: Arc<AtomicBool>, calls: Arc<AtomicU64>) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if n.is_multiple_of(7) {
            w.tools
                .delete_tool(pb::DeleteToolRequest {
                    name: format!("partners/{}/tools/t{}", w.id, n % IDS_PER_WRITER),
                    ..Default::default()
                })
                .await
                .or_else(|status| match status.code() {
                    Code::NotFound => Ok(tonic::Response::new(())),
                    _ => Err(status),
                })
                .unwrap_or_else(|status| panic!("writer {}: {status:?}", w.id));
        } else {
            let record = soak_record(&w.id, n);
            upsert(&mut w, vec![record]).await;
        }
        calls.fetch_add(1, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_loop(mut r: Partner, stop: Arc<AtomicBool>, calls: Arc<AtomicU64>) {
    let mut search = copex::pb::search_service_client::SearchServiceClient::new(r.channel.clone());
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        match n % 3 {
            0 => {
                r.tools
                    .list_tools(pb::ListToolsRequest {
                        parent: "partners/-".into(),
                        page_size: 50,
                        filter: "regions:\"KE\"".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| panic!("list: {s:?}"));
            }
            1 => {
                let name = format!("partners/w{}/tools/t{}", n % WRITERS, n % IDS_PER_WRITER);
                if let Err(status) = get_tool(&mut r, &name).await {
                    assert_eq!(status.code(), Code::NotFound, "get: {status:?}");
                }
            }
            _ => {
                search
                    .search(pb::SearchRequest {
                        query: "soak summary".into(),
                        page_size: 20,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| panic!("search: {s:?}"));
            }
        }
        calls.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
}

async fn soak(database_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let mut args = vec!["--max-watchers-per-partner", "100"];
    args.extend_from_slice(database_args);
    let served = serve_with(&data_dir, &args);
    let pid = served.child.id();
    let ca = CertificateAuthority::load(&data_dir.join("pki")).unwrap();
    let cursors = cursors_of(&data_dir, &args).await;
    let mut admin = connect(&served, &ca, "admin").await;
    for (id, role) in (0..READERS)
        .map(|i| (format!("r{i}"), Role::Reader))
        .chain((0..WRITERS).map(|i| (format!("w{i}"), Role::Contributor)))
    {
        create_partner(&mut admin, &id, &[role]).await;
    }
    drop(admin);
    // The state every round starts from, so the rounds do the same work.
    for w in 0..WRITERS {
        let mut p = connect(&served, &ca, &format!("w{w}")).await;
        let id = p.id.clone();
        upsert(
            &mut p,
            (0..IDS_PER_WRITER).map(|n| soak_record(&id, n)).collect(),
        )
        .await;
    }
    let baseline_kib = rss_kib(pid);

    // Two rounds of half the time each. Memory after the second must be
    // where it was after the first: nothing grows with use. Against the
    // baseline it may stay up by the caches that fill with use (SQLite's
    // page caches: 16 MiB on the writer, 2 MiB on each of four readers)
    // and what the allocator cannot return (pages with a live allocation).
    let half = soak_duration() / 2;
    let first = round(&served, &ca, &cursors, half).await;
    let second = round(&served, &ca, &cursors, half).await;
    let backend = if database_args.is_empty() {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    for (n, r) in [(1, &first), (2, &second)] {
        eprintln!(
            "soak {backend} round {n} ({half:?}): {} calls; RSS baseline {} MiB, with 1,000 watchers {} MiB, peak {} MiB, after the clients left {} MiB",
            r.calls,
            baseline_kib / 1024,
            r.with_watchers_kib / 1024,
            r.peak_kib / 1024,
            r.after_kib / 1024
        );
    }
    // 32 MiB: the caches may still be filling in the second round.
    assert!(
        second.after_kib <= first.after_kib + 32 * 1024,
        "memory grew from one round to the next: {} -> {} KiB",
        first.after_kib,
        second.after_kib
    );
    assert!(
        second.after_kib <= baseline_kib + 48 * 1024,
        "memory stayed up: baseline {baseline_kib} KiB, after {} KiB",
        second.after_kib
    );
    terminate(served);
}

/// What one round of load measured.
struct Round {
    calls: u64,
    with_watchers_kib: u64,
    peak_kib: u64,
    after_kib: u64,
}

/// One round: 1,000 watchers, then writers and readers for `duration`,
/// then every watcher checked against the state; then all clients leave.
async fn round(
    served: &Served,
    ca: &CertificateAuthority,
    cursors: &copex::feed::Cursors,
    duration: Duration,
) -> Round {
    let pid = served.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    // 1,000 watchers: 100 per reading partner, over two connections each.
    let mut mirrors: Vec<(usize, Arc<Mutex<Mirror>>)> = Vec::new();
    let mut watch_tasks = Vec::new();
    for r in 0..READERS {
        let channels = [
            connect(served, ca, &format!("r{r}")).await,
            connect(served, ca, &format!("r{r}")).await,
        ];
        for w in 0..WATCHERS_PER_READER {
            let mut p = channels[w % 2].clone();
            let mirror = Arc::new(Mutex::new(Mirror {
                etags: BTreeMap::new(),
                last_seq: 0,
                cursors: cursors.clone(),
            }));
            mirrors.push((r, mirror.clone()));
            let stop = stop.clone();
            watch_tasks.push(tokio::spawn(async move {
                let mut stream = watch(&mut p, "", &[]).await;
                loop {
                    tokio::select! {
                        message = stream.next() => match message {
                            Some(Ok(message)) => mirror.lock().unwrap().apply(&message.changes),
                            Some(Err(status)) => panic!("watcher of {}: {status:?}", p.id),
                            None => panic!("watch of {} ended", p.id),
                        },
                        () = async {
                            while !stop.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        } => return,
                    }
                }
            }));
        }
    }
    let with_watchers_kib = rss_kib(pid);

    let writing = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..WRITERS {
        let p = connect(served, ca, &format!("w{w}")).await;
        load.push(tokio::spawn(write_loop(p, writing.clone(), calls.clone())));
    }
    for t in 0..READER_TASKS {
        let p = connect(served, ca, &format!("r{}", t % READERS)).await;
        load.push(tokio::spawn(read_loop(p, writing.clone(), calls.clone())));
    }
    let started = Instant::now();
    let mut peak_kib = with_watchers_kib;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_kib = peak_kib.max(rss_kib(pid));
    }
    writing.store(true, Ordering::Relaxed);
    for task in load {
        task.await
            .expect("no unexpected status from writers and readers");
    }
    let calls = calls.load(Ordering::Relaxed);

    // Every watcher ends equal to what its partner can see.
    let mut expected = Vec::new();
    for r in 0..READERS {
        let mut p = connect(served, ca, &format!("r{r}")).await;
        expected.push(visible_etags(&mut p).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind = mirrors
            .iter()
            .filter(|(r, mirror)| mirror.lock().unwrap().etags != expected[*r])
            .count();
        if behind == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{behind} watchers did not end equal to the state"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in watch_tasks {
        task.await.expect("no watcher saw an unexpected status");
    }
    drop(mirrors);
    // What the clients held is freed at once, and handed back to the system
    // at the hub's next periodic release: the lowest reading over one
    // interval and a margin is where the hub settled.
    let settled = Instant::now() + copex::allocator::RELEASE_INTERVAL + Duration::from_secs(2);
    let mut after_kib = rss_kib(pid);
    while Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after_kib = after_kib.min(rss_kib(pid));
    }
    Round {
        calls,
        with_watchers_kib,
        peak_kib,
        after_kib,
    }
}

// Its own test binary, so it runs alone: cargo runs test binaries one after
// another, and a minute of load beside the rest of the suite would measure
// both. One test, so the two backends do not overlap either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_on_sqlite_then_postgres() {
    soak(&[]).await;
    let database = PgDatabase::create().await;
    soak(&["--database", &database.url]).await;
}
