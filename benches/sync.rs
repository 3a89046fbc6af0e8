//! Sync throughput over real mutual TLS on loopback against a hub started
//! in-process on the embedded SQLite default:
//! BatchUpsertRecords (batches of 1000), full sync through ListChanges and
//! WatchChanges, and the fan-out latency of a commit to 100 idle watchers.
//! Run: `cargo bench --bench sync` (`-- --records N` to change the size;
//! `-- --postgres postgres://user@host/db` also runs on a fresh database of
//! that server and prints the ratio to SQLite).

use std::time::{Duration, Instant};

mod common;

use common::dataset::{Vocabulary, record};
use common::{PgDatabase, arg, connect, start_hub, start_hub_with};
use copex::config::ServeArgs;
use copex::pb::{self, record::Kind as R};
use futures_util::StreamExt;
use tonic::transport::Channel;

type Sync = pb::sync_service_client::SyncServiceClient<Channel>;

fn sync_client(channel: Channel) -> Sync {
    Sync::new(channel).max_decoding_message_size(256 << 20)
}

/// Figures of one run: upsert, ListChanges and WatchChanges records/s.
struct Figures {
    upsert: f64,
    list: f64,
    watch: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = arg("--records")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let sqlite = run("SQLite", None, total).await?;
    if let Some(admin) = arg("--postgres") {
        let database = PgDatabase::create(&admin).await?;
        let result = run("PostgreSQL", Some(database.url.clone()), total).await;
        database.drop_database().await?;
        let pg = result?;
        println!(
            "PostgreSQL / SQLite: BatchUpsertRecords {:.2}, ListChanges {:.2}, WatchChanges {:.2}",
            pg.upsert / sqlite.upsert,
            pg.list / sqlite.list,
            pg.watch / sqlite.watch
        );
    }
    Ok(())
}

/// Commits a tool through `writer` 50 times, 50 ms apart, and measures how
/// long each takes to reach 100 watchers spread over `watch_channels`.
async fn fan_out(
    label: &str,
    writer: &Channel,
    watch_channels: &[Channel],
    cursor: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for w in 0..100 {
        let mut client = sync_client(watch_channels[w % watch_channels.len()].clone());
        let tx = tx.clone();
        let cursor = cursor.to_owned();
        let prefix = format!("{prefix}-");
        tokio::spawn(async move {
            let mut stream = client
                .watch_changes(pb::WatchChangesRequest {
                    cursor,
                    kinds: vec![],
                })
                .await
                .expect("watch")
                .into_inner();
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
        });
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
    for n in 0..50 {
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
                .expect("watchers alive");
            if m == n {
                latencies.push(at - sent);
                got += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    println!(
        "{label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries, from the Create call to receipt)",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        latencies.len()
    );
    Ok(())
}

async fn run(label: &str, database_url: Option<String>, total: usize) -> anyhow::Result<Figures> {
    let hub = start_hub(database_url.clone()).await?;
    let (addr, ca) = (hub.addr, &hub.ca);
    let channel = connect(addr, ca).await?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("copex sync over mTLS, loopback, {label}, {cores} cores, {total} records");

    // BatchUpsertRecords: two clients keep the writer busy.
    let start = Instant::now();
    let mut tasks = Vec::new();
    let vocabulary = std::sync::Arc::new(Vocabulary::new());
    for lane in 0..2 {
        let mut client = sync_client(channel.clone());
        let vocabulary = vocabulary.clone();
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
                    .await
                    .expect("batch")
                    .into_inner();
                assert!(
                    response
                        .results
                        .iter()
                        .all(|r| r.outcome == pb::UpsertOutcome::Created as i32)
                );
            }
            bytes
        }));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let upsert = total as f64 / elapsed;
    println!(
        "BatchUpsertRecords   {:>10.0} records/s   ({total} records, {:.1} KiB average, {elapsed:.2} s)",
        upsert,
        bytes as f64 / total as f64 / 1024.0
    );

    // Full sync through ListChanges.
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
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(received, total);
    let list = total as f64 / elapsed;
    println!("ListChanges full sync {list:>9.0} records/s   ({elapsed:.2} s)");

    // Full sync through WatchChanges.
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
        let message = stream.next().await.expect("stream open")?;
        received += message.changes.len();
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(stream);
    let watch = total as f64 / elapsed;
    println!("WatchChanges full sync {watch:>8.0} records/s   ({elapsed:.2} s)");

    // Fan-out: 100 idle watchers on 4 connections, one commit every 50 ms.
    let mut watch_channels = Vec::new();
    for _ in 0..4 {
        watch_channels.push(connect(addr, ca).await?);
    }
    fan_out(
        "Fan-out to 100 watchers",
        &channel,
        &watch_channels,
        &cursor,
        "fanout",
    )
    .await?;

    // On PostgreSQL: a second instance on the same database, its watchers
    // woken by the first instance's commits.
    if let Some(url) = database_url {
        let pki = hub.dir.path().join("pki");
        let second = start_hub_with(ServeArgs {
            database_url: Some(url),
            tls_cert: Some(pki.join("server.pem")),
            tls_key: Some(pki.join("server.key")),
            client_ca: Some(pki.join("ca.pem")),
            ..Default::default()
        })
        .await?;
        let second_addr = second.addr;
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(connect(second_addr, ca).await?);
        }
        let head = sync_client(channel.clone())
            .list_changes(pb::ListChangesRequest {
                cursor: cursor.clone(),
                kinds: vec![],
                page_size: 5000,
            })
            .await?
            .into_inner()
            .next_cursor;
        fan_out(
            "Fan-out to 100 watchers on a second instance",
            &channel,
            &channels,
            &head,
            "across",
        )
        .await?;
    }
    Ok(Figures {
        upsert,
        list,
        watch,
    })
}
