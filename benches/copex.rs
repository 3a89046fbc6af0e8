//! The bench harness: starts `copex serve` (the release binary, as a child
//! process), loads a generated data set of tool and practice records, drives
//! the hub over real mutual TLS on loopback, and prints one table.
//!
//! Run: `cargo bench --bench copex` (SQLite). Options after `--`:
//! `--database postgres://user@host/db` also runs on a fresh database made
//! on that PostgreSQL server (and dropped after); `--json` prints the
//! figures as JSON; `--records N` (default 100,000); `--seconds S` per
//! row of unary calls (default 3); `--quick` a small, short run whose
//! figures mean nothing (CI runs it so the harness keeps working); `--keep`
//! keeps the SQLite data directory and the PostgreSQL database for a closer
//! look; `--only-storm` loads the data and runs only the storm rows (one
//! partner's costly filters beside another's plain calls), printing them
//! with the load's rows.

use std::time::{Duration, Instant};

mod common;

use common::dataset::{Rng, Vocabulary, record};
use common::{PgDatabase, ServeProcess, arg, connect, pki_dir};
use copex::pb::{self, record::Kind as R};
use futures_util::StreamExt;
use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

type SyncClient = pb::sync_service_client::SyncServiceClient<Channel>;

/// Connections the unary calls are spread over.
const CONNECTIONS: usize = 4;
/// Watch streams per connection when many are open (the hub allows 256).
const STREAMS_PER_CONNECTION: usize = 200;

struct Options {
    records: usize,
    queries: usize,
    window: Duration,
    fan_out_commits: usize,
    idle_watchers: usize,
    quick: bool,
    keep: bool,
    only_storm: bool,
}

impl Options {
    fn from_args() -> Self {
        let quick = std::env::args().any(|a| a == "--quick");
        let records = arg("--records")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 2_000 } else { 100_000 });
        let window_ms = arg("--seconds")
            .and_then(|s| s.parse::<f64>().ok())
            .map(|s| (s * 1000.0) as u64)
            .unwrap_or(if quick { 200 } else { 3000 });
        Self {
            records,
            queries: if quick { 50 } else { 1000 },
            window: Duration::from_millis(window_ms),
            fan_out_commits: if quick { 5 } else { 50 },
            idle_watchers: if quick { 100 } else { 1000 },
            quick,
            keep: std::env::args().any(|a| a == "--keep"),
            only_storm: std::env::args().any(|a| a == "--only-storm"),
        }
    }
}

#[derive(Serialize)]
struct Unary {
    call: &'static str,
    concurrency: usize,
    calls_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The hub's CPU time per call, user and system.
    server_cpu_us_per_call: f64,
}

/// Another partner's plain calls while one partner sends costly filters.
#[derive(Serialize)]
struct Storm {
    call: &'static str,
    idle_p99_ms: f64,
    storm_p99_ms: f64,
    /// Storm p99 over idle p99; the target is at most 5.
    ratio: f64,
    /// The other partner's calls that failed, idle and in the storm.
    failed: usize,
    /// The stormer's calls that ended, and how many of them answered.
    storm_calls: usize,
    storm_answered: usize,
}

#[derive(Serialize, Default)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
}

/// Everything one backend's run measured.
#[derive(Serialize)]
struct Figures {
    backend: &'static str,
    records: usize,
    record_kib: f64,
    batch_upsert_records_per_s: f64,
    list_changes_records_per_s: f64,
    watch_changes_records_per_s: f64,
    unary: Vec<Unary>,
    get_tool_to_health_at_64: f64,
    search: Latency,
    /// Commit to searchable during the BatchUpsertRecords load.
    index_lag: Latency,
    /// `copex reindex` of everything, hub stopped (seconds), and how many
    /// changes it indexed (the load, the pushed copy and the rows' writes).
    reindex_s: f64,
    reindexed: u64,
    fan_out_100_watchers: Latency,
    fan_out_other_instance: Option<Latency>,
    idle_watchers: usize,
    rss_with_idle_watchers_mib: f64,
    peak_rss_mib: f64,
    start_to_serving_ms: f64,
    storm: Vec<Storm>,
    /// `copex export` of everything, to a file (records/s).
    export_records_per_s: f64,
    /// `copex push` of as many new records from a JSONL file (records/s).
    push_records_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    cores: usize,
    quick: bool,
    /// The floor under any SQLite design (`bare_sqlite`), records/s.
    bare_sqlite_records_per_s: f64,
    runs: Vec<Figures>,
}

/// Progress goes to stderr, so `--json` output stays clean.
macro_rules! step {
    ($($arg:tt)*) => { eprintln!("[{}] {}", clock(), format!($($arg)*)) };
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::from_args();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    step!(
        "bare rusqlite: {} encoded records and a change row each",
        options.records
    );
    let bare_sqlite_records_per_s = bare_sqlite(options.records)?;
    let mut runs = vec![run("SQLite", None, &options).await?];
    if let Some(server) = arg("--database") {
        let database = PgDatabase::create(&server).await?;
        let result = run("PostgreSQL", Some(database.url.clone()), &options).await;
        if options.keep {
            step!("kept the PostgreSQL database {}", database.url);
        } else {
            database.drop_database().await?;
        }
        runs.push(result?);
    }
    let report = Report {
        cores,
        quick: options.quick,
        bare_sqlite_records_per_s,
        runs,
    };
    if std::env::args().any(|a| a == "--json") {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The UTC time of day, for progress lines.
fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{:02}:{:02}:{:02}",
        now / 3600 % 24,
        now / 60 % 60,
        now % 60
    )
}

async fn run(
    backend: &'static str,
    database_url: Option<String>,
    options: &Options,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let database_args: Vec<String> = database_url
        .iter()
        .map(|url| format!("--database={url}"))
        .collect();
    step!("{backend}: starting copex serve");
    let hub = ServeProcess::start(dir.path(), &database_args)?;
    let pki = pki_dir(dir.path());
    let channel = connect(hub.addr, &pki).await?;

    step!(
        "{backend}: BatchUpsertRecords of {} records",
        options.records
    );
    let Loaded {
        records_per_s: batch_upsert_records_per_s,
        record_kib,
        index_lag,
    } = load(&channel, options.records).await?;

    step!("{backend}: costly filters of one partner beside another's plain calls");
    let storm = storm(hub.addr, &pki, &channel, options).await?;
    if options.only_storm {
        hub.stop()?;
        return Ok(Figures {
            backend,
            records: options.records,
            record_kib,
            batch_upsert_records_per_s,
            list_changes_records_per_s: f64::NAN,
            watch_changes_records_per_s: f64::NAN,
            unary: Vec::new(),
            get_tool_to_health_at_64: f64::NAN,
            search: Latency::default(),
            index_lag,
            reindex_s: f64::NAN,
            reindexed: 0,
            fan_out_100_watchers: Latency::default(),
            fan_out_other_instance: None,
            idle_watchers: 0,
            rss_with_idle_watchers_mib: f64::NAN,
            peak_rss_mib: f64::NAN,
            start_to_serving_ms: f64::NAN,
            storm,
            export_records_per_s: f64::NAN,
            push_records_per_s: f64::NAN,
        });
    }

    step!("{backend}: full sync");
    let (list_changes_records_per_s, head) = list_sync(&channel, options.records).await?;
    let watch_changes_records_per_s = watch_sync(&channel, options.records).await?;

    step!("{backend}: GetTool and Health/Check");
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(hub.addr, &pki).await?);
    }
    let tools = options.records.div_ceil(2);
    let mut unary = Vec::new();
    for concurrency in [1, 16, 64] {
        for call in [Call::GetTool, Call::Health] {
            let cpu = hub.cpu_seconds()?;
            let mut figures = drive(&channels, call, concurrency, options.window, tools).await;
            let calls = figures.calls_per_s * options.window.as_secs_f64();
            figures.server_cpu_us_per_call = (hub.cpu_seconds()? - cpu) * 1e6 / calls.max(1.0);
            unary.push(figures);
        }
    }
    let rate = |call: &str, c: usize| {
        unary
            .iter()
            .find(|u| u.call == call && u.concurrency == c)
            .map_or(0.0, |u| u.calls_per_s)
    };
    let get_tool_to_health_at_64 = rate("GetTool", 64) / rate("Health/Check", 64);

    step!("{backend}: Search");
    let search = search(&channel, options.queries).await?;

    step!("{backend}: fan-out to 100 watchers");
    let fan_out_100_watchers = fan_out(
        &channel,
        &channels,
        &head,
        "fanout",
        options.fan_out_commits,
    )
    .await?;
    let fan_out_other_instance = match &database_url {
        Some(url) => {
            step!("{backend}: fan-out to 100 watchers of a second instance");
            let other_dir = tempfile::tempdir()?;
            let args = vec![
                format!("--database={url}"),
                format!("--tls-cert={}", pki.join("server.pem").display()),
                format!("--tls-key={}", pki.join("server.key").display()),
                format!("--client-ca={}", pki.join("ca.pem").display()),
            ];
            let other = ServeProcess::start(other_dir.path(), &args)?;
            let mut other_channels = Vec::new();
            for _ in 0..CONNECTIONS {
                other_channels.push(connect(other.addr, &pki).await?);
            }
            let head = feed_head(&channel).await?;
            let latency = fan_out(
                &channel,
                &other_channels,
                &head,
                "across",
                options.fan_out_commits,
            )
            .await?;
            other.stop()?;
            Some(latency)
        }
        None => None,
    };

    step!("{backend}: {} idle watchers", options.idle_watchers);
    let head = feed_head(&channel).await?;
    let streams = open_watchers(hub.addr, &pki, &head, options.idle_watchers).await?;
    // Let the hub settle after the streams opened.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_with_idle_watchers_mib, peak_rss_mib) = hub.memory_mib()?;
    drop(streams);

    step!("{backend}: copex export, then copex push of as many new records");
    let (export_records_per_s, push_records_per_s) =
        export_and_push(hub.addr, &pki, dir.path(), options.records)?;

    step!("{backend}: restart on the existing database");
    drop(channels);
    drop(channel);
    hub.stop()?;
    let start = Instant::now();
    let hub = ServeProcess::start(dir.path(), &database_args)?;
    let channel = connect(hub.addr, &pki).await?;
    let mut health = HealthClient::new(channel);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start_to_serving_ms = start.elapsed().as_secs_f64() * 1000.0;
    hub.stop()?;

    step!("{backend}: copex reindex");
    let start = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_copex"))
        .arg("reindex")
        .arg(format!("--data-dir={}", dir.path().display()))
        .args(&database_args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "copex reindex failed: {}",
        output.status
    );
    // "search index rebuilt in DIR: N changes in S s"
    let said = String::from_utf8_lossy(&output.stdout);
    let reindexed = said
        .rsplit_once(": ")
        .and_then(|(_, tail)| tail.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("copex reindex said {said:?}"))?;
    let reindex_s = start.elapsed().as_secs_f64();
    if options.keep && database_url.is_none() {
        step!("kept the SQLite data directory {}", dir.keep().display());
    }
    Ok(Figures {
        backend,
        records: options.records,
        record_kib,
        batch_upsert_records_per_s,
        list_changes_records_per_s,
        watch_changes_records_per_s,
        unary,
        get_tool_to_health_at_64,
        search,
        index_lag,
        reindex_s,
        reindexed,
        fan_out_100_watchers,
        fan_out_other_instance,
        idle_watchers: options.idle_watchers,
        rss_with_idle_watchers_mib,
        peak_rss_mib,
        start_to_serving_ms,
        storm,
        export_records_per_s,
        push_records_per_s,
    })
}

/// The floor under any SQLite design: rusqlite inserting the data set's
/// records, encoded beforehand, and one change row each, in transactions of
/// 1,000, WAL and `synchronous=NORMAL` as the hub runs; records/s.
fn bare_sqlite(total: usize) -> anyhow::Result<f64> {
    use prost::Message;
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("bare.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE records (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, body BLOB NOT NULL);
         CREATE TABLE changes (seq INTEGER PRIMARY KEY, record INTEGER NOT NULL);",
    )?;
    let vocabulary = Vocabulary::new();
    let encoded: Vec<(String, Vec<u8>)> = (0..total)
        .map(|i| {
            let r = record(&vocabulary, "admin", i);
            (r.name().to_owned(), r.encode_to_vec())
        })
        .collect();
    let start = Instant::now();
    for chunk in encoded.chunks(1000) {
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO records (name, body) VALUES (?1, ?2)")?;
            let mut change = tx.prepare_cached("INSERT INTO changes (record) VALUES (?1)")?;
            for (name, body) in chunk {
                insert.execute(rusqlite::params![name, body])?;
                change.execute([tx.last_insert_rowid()])?;
            }
        }
        tx.commit()?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// `copex export` of the hub's records into a file, then `copex push` of as
/// many new records from a JSONL file, each timed as the user runs them
/// (the release binary, its own TLS connection); records/s of each.
fn export_and_push(
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    dir: &std::path::Path,
    total: usize,
) -> anyhow::Result<(f64, f64)> {
    use anyhow::Context;
    use std::io::Write;
    let copex = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_copex"));
        command
            .arg(format!("--hub=https://127.0.0.1:{}", addr.port()))
            .arg(format!("--ca={}", pki.join("ca.pem").display()))
            .arg(format!("--cert={}", pki.join("admin.pem").display()))
            .arg(format!("--key={}", pki.join("admin.key").display()))
            .stderr(std::process::Stdio::inherit());
        command
    };

    let exported = dir.join("export.jsonl");
    let start = Instant::now();
    let status = copex()
        .arg("export")
        .stdout(std::fs::File::create(&exported)?)
        .status()
        .context("cannot run copex export")?;
    let export_seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "copex export failed: {status}");
    let lines = std::fs::read_to_string(&exported)?.lines().count();

    let vocabulary = Vocabulary::new();
    let pushed = dir.join("push.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&pushed)?);
    for i in total..2 * total {
        writeln!(
            file,
            "{}",
            serde_json::to_string(&record(&vocabulary, "admin", i))?
        )?;
    }
    file.flush()?;
    drop(file);
    let start = Instant::now();
    let output = copex()
        .arg("push")
        .arg(&pushed)
        .output()
        .context("cannot run copex push")?;
    let push_seconds = start.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success() && report.contains(&format!("{total} created")),
        "copex push did not create every record: {report}"
    );
    Ok((lines as f64 / export_seconds, total as f64 / push_seconds))
}

/// Connections the costly partner sends from, and its calls in flight on
/// each.
const STORM_CONNECTIONS: usize = 8;
const STORM_CALLS_PER_CONNECTION: usize = 4;
/// The other partner's plain calls in flight.
const PLAIN_CONCURRENCY: usize = 4;

/// A filter within the default cap of 50 comparisons that is costly on the
/// data set: `labels:*` walks every indexed value of a record, and no
/// record of the data set has a label, so every comparison is made.
fn costly_filter() -> String {
    vec!["labels:*"; 50].join(" OR ")
}

/// `partners/{id}` registered by the admin, with a certificate in `pki`.
async fn register(admin: &Channel, pki: &std::path::Path, id: &str) -> anyhow::Result<()> {
    copex::pki::issue(pki, id, 1)?;
    pb::partner_service_client::PartnerServiceClient::new(admin.clone())
        .create_partner(pb::CreatePartnerRequest {
            partner_id: id.to_owned(),
            partner: Some(pb::Partner {
                display_name: format!("Bench partner {id}"),
                kind: pb::PartnerKind::Ngo as i32,
                roles: vec![pb::Role::Contributor as i32],
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// The other partner's plain calls (GetTool, or ListTools without a
/// filter) at `PLAIN_CONCURRENCY` for `window`: sorted latencies in ms,
/// and the calls that failed.
async fn plain_calls(
    channel: &Channel,
    list: bool,
    window: Duration,
    tools: usize,
) -> (Vec<f64>, usize) {
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..PLAIN_CONCURRENCY)
        .map(|i| {
            let mut client = pb::tool_service_client::ToolServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0;
                let mut n = i;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let ok = if list {
                        client
                            .list_tools(pb::ListToolsRequest {
                                parent: "partners/-".into(),
                                page_size: 10,
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                    } else {
                        client
                            .get_tool(pb::GetToolRequest {
                                name: format!("partners/admin/tools/t{}", 2 * (n % tools)),
                            })
                            .await
                            .is_ok()
                    };
                    latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                    failed += usize::from(!ok);
                    n += PLAIN_CONCURRENCY;
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (latencies, f) = task.await.expect("bench task");
        all.extend(latencies);
        failed += f;
    }
    all.sort_by(f64::total_cmp);
    (all, failed)
}

/// One partner (`stormer`) sends `costly_filter` lists, without a
/// deadline, from `STORM_CONNECTIONS` connections while another
/// (`bystander`) makes plain calls; the bystander's p99 idle and in the
/// storm, for GetTool and for ListTools without a filter.
async fn storm(
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    admin: &Channel,
    options: &Options,
) -> anyhow::Result<Vec<Storm>> {
    register(admin, pki, "bystander").await?;
    register(admin, pki, "stormer").await?;
    let bystander = common::connect_as(addr, pki, "bystander").await?;
    let tools = options.records.div_ceil(2);
    let mut rows = Vec::new();
    for (call, list) in [("GetTool", false), ("ListTools, no filter", true)] {
        // Warm up, then idle.
        plain_calls(&bystander, list, Duration::from_millis(300), tools).await;
        let (idle, idle_failed) = plain_calls(&bystander, list, options.window, tools).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut stormers = Vec::new();
        for _ in 0..STORM_CONNECTIONS {
            let channel = common::connect_as(addr, pki, "stormer").await?;
            for _ in 0..STORM_CALLS_PER_CONNECTION {
                let mut client = pb::tool_service_client::ToolServiceClient::new(channel.clone());
                let stop = stop.clone();
                stormers.push(tokio::spawn(async move {
                    let (mut calls, mut answered) = (0, 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // A deadline, as a real client sets: calls queued
                        // behind the partner's cap end with it.
                        let mut request = tonic::Request::new(pb::ListToolsRequest {
                            parent: "partners/-".into(),
                            filter: costly_filter(),
                            page_size: 10,
                            ..Default::default()
                        });
                        request.set_timeout(Duration::from_secs(2));
                        let result = client.list_tools(request).await;
                        calls += 1;
                        answered += usize::from(result.is_ok());
                    }
                    (calls, answered)
                }));
            }
        }
        // Let the storm take what it can before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (stormy, storm_failed) = plain_calls(&bystander, list, options.window, tools).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut storm_calls, mut storm_answered) = (0, 0);
        for task in stormers {
            let (calls, answered) = task.await?;
            storm_calls += calls;
            storm_answered += answered;
        }
        let idle_p99_ms = pct(&idle, 0.99);
        let storm_p99_ms = pct(&stormy, 0.99);
        rows.push(Storm {
            call,
            idle_p99_ms,
            storm_p99_ms,
            ratio: storm_p99_ms / idle_p99_ms,
            failed: idle_failed + storm_failed,
            storm_calls,
            storm_answered,
        });
    }
    Ok(rows)
}

fn sync_client(channel: Channel) -> SyncClient {
    SyncClient::new(channel).max_decoding_message_size(256 << 20)
}

/// BatchUpsertRecords of the data set in batches of 1000 from two clients,
/// so the writer is never idle; returns records/s and the mean record KiB.
/// What the load measured: records/s, KiB per record, and how long its
/// batches took from commit to searchable.
struct Loaded {
    records_per_s: f64,
    record_kib: f64,
    index_lag: Latency,
}

async fn load(channel: &Channel, total: usize) -> anyhow::Result<Loaded> {
    let vocabulary = std::sync::Arc::new(Vocabulary::new());
    let start = Instant::now();
    let (committed, probes) = tokio::sync::mpsc::unbounded_channel();
    let prober = tokio::spawn(index_lag(channel.clone(), vocabulary.clone(), probes));
    let mut tasks = Vec::new();
    for lane in 0..2 {
        let mut client = sync_client(channel.clone());
        let vocabulary = vocabulary.clone();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0;
            for first in (lane * 1000..total).step_by(2000) {
                let records: Vec<pb::Record> = (first..(first + 1000).min(total))
                    .map(|i| record(&vocabulary, "admin", i))
                    .collect();
                bytes += records
                    .iter()
                    .map(prost::Message::encoded_len)
                    .sum::<usize>();
                let response = client
                    .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                        records,
                        request_id: String::new(),
                    })
                    .await?
                    .into_inner();
                if let Some(bad) = response
                    .results
                    .iter()
                    .find(|r| r.outcome != pb::UpsertOutcome::Created as i32)
                {
                    anyhow::bail!("a record of the data set was not created: {bad:?}");
                }
                // The batch is committed: its last record's lag to the index.
                let _ = committed.send((Instant::now(), (first + 1000).min(total) - 1));
            }
            Ok(bytes)
        }));
    }
    drop(committed);
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await??;
    }
    let records_per_s = total as f64 / start.elapsed().as_secs_f64();
    Ok(Loaded {
        records_per_s,
        record_kib: bytes as f64 / total.max(1) as f64 / 1024.0,
        index_lag: prober.await??,
    })
}

/// Commit to searchable, during the load: for the newest batch committed,
/// searches its last record (a word of its title, filtered to its name)
/// every 5 ms until found, then takes the next batch committed after that.
async fn index_lag(
    channel: Channel,
    vocabulary: std::sync::Arc<Vocabulary>,
    mut committed: tokio::sync::mpsc::UnboundedReceiver<(Instant, usize)>,
) -> anyhow::Result<Latency> {
    let mut client = pb::search_service_client::SearchServiceClient::new(channel);
    let mut lags = Vec::new();
    while let Some(mut newest) = committed.recv().await {
        while let Ok(later) = committed.try_recv() {
            newest = later;
        }
        let (at, i) = newest;
        let (name, title) = match record(&vocabulary, "admin", i).kind {
            Some(R::Tool(t)) => (t.name, t.display_name),
            Some(R::Practice(p)) => (p.name, p.title),
            _ => anyhow::bail!("the data set holds tools and practices"),
        };
        let word = title
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        loop {
            let page = client
                .search(pb::SearchRequest {
                    query: word.clone(),
                    filter: format!("name = \"{name}\""),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if !page.hits.is_empty() {
                break;
            }
            anyhow::ensure!(
                at.elapsed() < Duration::from_secs(60),
                "{name} was not searchable a minute after its commit"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    lags.sort_by(f64::total_cmp);
    Ok(Latency {
        p50_ms: pct(&lags, 0.5),
        p99_ms: pct(&lags, 0.99),
    })
}

/// Full sync through ListChanges from an empty cursor; records/s and the
/// cursor at the end.
async fn list_sync(channel: &Channel, total: usize) -> anyhow::Result<(f64, String)> {
    let mut client = sync_client(channel.clone());
    let start = Instant::now();
    let mut cursor = String::new();
    let mut received = 0;
    loop {
        let page = client
            .list_changes(pb::ListChangesRequest {
                cursor: cursor.clone(),
                kinds: vec![],
                page_size: 5000,
            })
            .await?
            .into_inner();
        received += page.changes.len();
        cursor = page.next_cursor;
        if page.caught_up {
            break;
        }
    }
    anyhow::ensure!(received == total, "ListChanges gave {received} of {total}");
    Ok((total as f64 / start.elapsed().as_secs_f64(), cursor))
}

async fn watch_sync(channel: &Channel, total: usize) -> anyhow::Result<f64> {
    let mut client = sync_client(channel.clone());
    let start = Instant::now();
    let mut stream = client
        .watch_changes(pb::WatchChangesRequest {
            cursor: String::new(),
            kinds: vec![],
        })
        .await?
        .into_inner();
    let mut received = 0;
    while received < total {
        let message = stream
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))??;
        received += message.changes.len();
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The cursor of the newest change.
async fn feed_head(channel: &Channel) -> anyhow::Result<String> {
    let mut client = sync_client(channel.clone());
    let mut stream = client
        .watch_changes(pb::WatchChangesRequest {
            cursor: String::new(),
            kinds: vec![pb::RecordKind::Workshop as i32],
        })
        .await?
        .into_inner();
    // No workshop is in the data set: the first message is the head.
    let message = stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("the watch ended"))??;
    Ok(message.cursor)
}

#[derive(Clone, Copy)]
enum Call {
    GetTool,
    Health,
}

/// Runs `concurrency` loops of calls spread over `channels` for `window`.
async fn drive(
    channels: &[Channel],
    call: Call,
    concurrency: usize,
    window: Duration,
    tools: usize,
) -> Unary {
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(async move {
                let mut tool_client =
                    pb::tool_service_client::ToolServiceClient::new(channel.clone());
                let mut health = HealthClient::new(channel);
                let mut latencies = Vec::new();
                let mut n = i;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let ok = match call {
                        Call::GetTool => tool_client
                            .get_tool(pb::GetToolRequest {
                                name: format!("partners/admin/tools/t{}", 2 * (n % tools)),
                            })
                            .await
                            .is_ok(),
                        Call::Health => health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await
                            .is_ok(),
                    };
                    assert!(ok, "a benchmark call failed");
                    latencies.push(start.elapsed());
                    n += concurrency;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("bench task"));
    }
    all.sort();
    let ms: Vec<f64> = all.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Unary {
        call: match call {
            Call::GetTool => "GetTool",
            Call::Health => "Health/Check",
        },
        concurrency,
        calls_per_s: all.len() as f64 / window.as_secs_f64(),
        p50_ms: pct(&ms, 0.5),
        p99_ms: pct(&ms, 0.99),
        server_cpu_us_per_call: 0.0,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Two-word queries with every facet, one after another, as a person
/// searching does.
async fn search(channel: &Channel, queries: usize) -> anyhow::Result<Latency> {
    let mut client = pb::search_service_client::SearchServiceClient::new(channel.clone());
    let vocabulary = Vocabulary::new();
    let mut rng = Rng::new(7);
    let facets: Vec<String> = copex::search::FACETS
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    // Warm the caches first, once the index holds every write.
    for i in 0..50 {
        client
            .search(pb::SearchRequest {
                query: vocabulary.query(&mut rng),
                wait_for_index: i == 0,
                facets: facets.clone(),
                ..Default::default()
            })
            .await?;
    }
    let mut latencies = Vec::with_capacity(queries);
    for _ in 0..queries {
        let query = vocabulary.query(&mut rng);
        let start = Instant::now();
        client
            .search(pb::SearchRequest {
                query,
                facets: facets.clone(),
                ..Default::default()
            })
            .await?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Latency {
        p50_ms: pct(&latencies, 0.5),
        p99_ms: pct(&latencies, 0.99),
    })
}

/// Commits a tool through `writer` `commits` times, 50 ms apart, and
/// measures how long each takes to reach 100 watchers spread over
/// `watch_channels`, from the Create call to receipt.
async fn fan_out(
    writer: &Channel,
    watch_channels: &[Channel],
    cursor: &str,
    prefix: &str,
    commits: usize,
) -> anyhow::Result<Latency> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut watchers = Vec::new();
    for w in 0..100 {
        let mut client = sync_client(watch_channels[w % watch_channels.len()].clone());
        let tx = tx.clone();
        let cursor = cursor.to_owned();
        let prefix = format!("{prefix}-");
        watchers.push(tokio::spawn(async move {
            let Ok(response) = client
                .watch_changes(pb::WatchChangesRequest {
                    cursor,
                    kinds: vec![],
                })
                .await
            else {
                return;
            };
            let mut stream = response.into_inner();
            while let Some(Ok(message)) = stream.next().await {
                for change in message.changes {
                    if let Some(n) = change
                        .name
                        .rsplit('/')
                        .next()
                        .and_then(|id| id.strip_prefix(&prefix))
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        let _ = tx.send((n, Instant::now()));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tools = pb::tool_service_client::ToolServiceClient::new(writer.clone());
    // Made once: the clock starts at the call, not at building its record.
    let tool = match record(&Vocabulary::new(), "admin", 0).kind {
        Some(R::Tool(mut t)) => {
            t.name.clear();
            Some(t)
        }
        _ => None,
    };
    let mut latencies = Vec::new();
    for n in 0..commits {
        let sent = Instant::now();
        tools
            .create_tool(pb::CreateToolRequest {
                parent: "partners/admin".into(),
                tool_id: format!("{prefix}-{n}"),
                tool: tool.clone(),
            })
            .await?;
        let mut got = 0;
        while got < 100 {
            let (m, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the watchers ended"))?;
            if m == n {
                latencies.push((at - sent).as_secs_f64() * 1000.0);
                got += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for watcher in watchers {
        watcher.abort();
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Latency {
        p50_ms: pct(&latencies, 0.5),
        p99_ms: pct(&latencies, 0.99),
    })
}

/// Opens `count` watch streams from `cursor` on connections of their own
/// and waits for each stream's first message.
async fn open_watchers(
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    cursor: &str,
    count: usize,
) -> anyhow::Result<Vec<tonic::Streaming<pb::WatchChangesResponse>>> {
    let mut streams = Vec::with_capacity(count);
    let mut channel = None;
    for i in 0..count {
        if i % STREAMS_PER_CONNECTION == 0 {
            channel = Some(connect(addr, pki).await?);
        }
        let Some(channel) = channel.clone() else {
            unreachable!("a connection is made for the first stream");
        };
        let mut stream = sync_client(channel)
            .watch_changes(pb::WatchChangesRequest {
                cursor: cursor.to_owned(),
                kinds: vec![],
            })
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("a watch ended at once"))?;
        streams.push(stream);
    }
    Ok(streams)
}

/// The table: one row per figure, one column per backend, and the target.
fn print_table(report: &Report) {
    let runs = &report.runs;
    let first = &runs[0];
    println!(
        "copex bench: {} cores, loopback, mutual TLS, release build; {} records of {:.1} KiB on average{}",
        report.cores,
        first.records,
        first.record_kib,
        if report.quick {
            " (--quick: these figures mean nothing)"
        } else {
            ""
        }
    );
    println!(
        "bare rusqlite (the same records, encoded, and a change row each; batches of 1000, WAL): {:.0} records/s",
        report.bare_sqlite_records_per_s
    );
    println!();
    let mut header = format!("| {:<56} |", "what");
    let mut rule = format!("|{}|", "-".repeat(58));
    for run in runs {
        header += &format!(" {:>28} |", run.backend);
        rule += &format!("{}|", "-".repeat(30));
    }
    header += " target |";
    rule += "---|";
    println!("{header}\n{rule}");
    let row = |label: String, cell: &dyn Fn(&Figures) -> String, target: &str| {
        let mut line = format!("| {label:<56} |");
        for run in runs {
            line += &format!(" {:>28} |", cell(run));
        }
        line += &format!(" {target} |");
        println!("{line}");
    };
    for (i, s) in first.storm.iter().enumerate() {
        row(
            format!(
                "{} of another partner in a storm of costly filters (p99 idle / storm ms = ratio)",
                s.call
            ),
            &|f: &Figures| {
                let s = &f.storm[i];
                format!(
                    "{:.2} / {:.2} = {:.1}{}",
                    s.idle_p99_ms,
                    s.storm_p99_ms,
                    s.ratio,
                    if s.failed > 0 {
                        format!(" ({} failed)", s.failed)
                    } else {
                        String::new()
                    }
                )
            },
            "ratio <= 5",
        );
        row(
            "... the stormer's filters that ended (answered)".into(),
            &|f: &Figures| {
                let s = &f.storm[i];
                format!("{} ({})", s.storm_calls, s.storm_answered)
            },
            "",
        );
    }
    row(
        "BatchUpsertRecords, batches of 1000 (rec/s)".into(),
        &|f: &Figures| format!("{:.0}", f.batch_upsert_records_per_s),
        "30,000 SQLite, 15,000 PostgreSQL",
    );
    row(
        "... as a fraction of bare rusqlite's rate".into(),
        &|f: &Figures| {
            format!(
                "{:.2}",
                f.batch_upsert_records_per_s / report.bare_sqlite_records_per_s
            )
        },
        ">= 0.15 SQLite",
    );
    row(
        "commit to searchable during the load (p50 / p99 ms)".into(),
        &|f: &Figures| format!("{:.0} / {:.0}", f.index_lag.p50_ms, f.index_lag.p99_ms),
        "p99 < 1000 ms",
    );
    // --only-storm ends here.
    if first.unary.is_empty() {
        return;
    }
    for (i, u) in first.unary.iter().enumerate() {
        row(
            format!(
                "{} calls/s at {} (p50 / p99 ms; hub CPU µs/call)",
                u.call, u.concurrency
            ),
            &|f: &Figures| {
                let u = &f.unary[i];
                format!(
                    "{:.0} ({:.2} / {:.2}; {:.0})",
                    u.calls_per_s, u.p50_ms, u.p99_ms, u.server_cpu_us_per_call
                )
            },
            "",
        );
    }
    row(
        "GetTool / Health at 64".into(),
        &|f: &Figures| format!("{:.2}", f.get_tool_to_health_at_64),
        ">= 0.6",
    );
    row(
        "copex push of a JSONL file, new records (rec/s)".into(),
        &|f: &Figures| format!("{:.0}", f.push_records_per_s),
        ">= 0.8x BatchUpsertRecords",
    );
    row(
        "copex export to a file (rec/s)".into(),
        &|f: &Figures| format!("{:.0}", f.export_records_per_s),
        ">= 100,000",
    );
    row(
        "full sync through ListChanges (rec/s)".into(),
        &|f: &Figures| format!("{:.0}", f.list_changes_records_per_s),
        "150,000 SQLite, 100,000 PostgreSQL",
    );
    row(
        "full sync through WatchChanges (rec/s)".into(),
        &|f: &Figures| format!("{:.0}", f.watch_changes_records_per_s),
        "150,000 SQLite, 100,000 PostgreSQL",
    );
    row(
        "Search, two words with every facet (p50 / p99 ms)".into(),
        &|f: &Figures| format!("{:.1} / {:.1}", f.search.p50_ms, f.search.p99_ms),
        "p99 < 20 ms",
    );
    row(
        "copex reindex (s; changes; s per 100,000)".to_owned(),
        &|f: &Figures| {
            format!(
                "{:.1}; {}; {:.1}",
                f.reindex_s,
                f.reindexed,
                f.reindex_s * 1e5 / f.reindexed.max(1) as f64
            )
        },
        "< 20 s",
    );
    row(
        "a commit reaching 100 watchers (p50 / p99 ms)".into(),
        &|f: &Figures| {
            let l = &f.fan_out_100_watchers;
            format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms)
        },
        "p99 < 50 ms",
    );
    if runs.iter().any(|r| r.fan_out_other_instance.is_some()) {
        row(
            "... watching another instance (p50 / p99 ms)".into(),
            &|f: &Figures| match &f.fan_out_other_instance {
                Some(l) => format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms),
                None => "-".into(),
            },
            "within 100 ms",
        );
    }
    row(
        format!(
            "server RSS with {} idle watchers (MiB)",
            first.idle_watchers
        ),
        &|f: &Figures| format!("{:.0}", f.rss_with_idle_watchers_mib),
        "",
    );
    row(
        "server peak RSS over the run (MiB)".into(),
        &|f: &Figures| format!("{:.0}", f.peak_rss_mib),
        "< 150 MiB",
    );
    row(
        "restart on the data: start to SERVING (ms)".into(),
        &|f: &Figures| format!("{:.0}", f.start_to_serving_ms),
        "< 1000 ms",
    );
    if let [sqlite, other] = runs.as_slice() {
        let ratio = |figure: fn(&Figures) -> f64| figure(other) / figure(sqlite);
        println!(
            "\n{} / {} in this run: BatchUpsertRecords {:.2}, ListChanges {:.2}, WatchChanges {:.2}",
            other.backend,
            sqlite.backend,
            ratio(|f| f.batch_upsert_records_per_s),
            ratio(|f| f.list_changes_records_per_s),
            ratio(|f| f.watch_changes_records_per_s),
        );
    }
}
