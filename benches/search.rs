//! Search latency over real mutual TLS on loopback: 100,000 tool and
//! practice records of realistic text (Zipf-distributed words, 1-3 KiB),
//! then two-word queries one after another, as a person searching does.
//! Run: `cargo bench --bench search` (`-- --records N`, `-- --queries N`;
//! `-- --postgres postgres://user@host/db` also runs on a fresh database of
//! that server and prints it beside SQLite; `-- --keep` keeps the SQLite
//! database for a closer look).

use std::time::{Duration, Instant};

mod common;

use common::dataset::{Rng, Vocabulary, record};
use common::{PgDatabase, arg, connect, start_hub};
use copex::pb;
use tonic::transport::Channel;

struct Figures {
    p50: f64,
    p99: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let records: usize = arg("--records")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let queries: usize = arg("--queries")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let sqlite = run("SQLite", None, records, queries).await?;
    if let Some(admin) = arg("--postgres") {
        let database = PgDatabase::create(&admin).await?;
        let result = run("PostgreSQL", Some(database.url.clone()), records, queries).await;
        database.drop_database().await?;
        let pg = result?;
        println!(
            "two-word queries, p50 / p99: SQLite {:.2} / {:.2} ms, PostgreSQL {:.2} / {:.2} ms",
            sqlite.p50, sqlite.p99, pg.p50, pg.p99
        );
    }
    Ok(())
}

async fn load(channel: &Channel, vocabulary: &Vocabulary, total: usize) -> anyhow::Result<()> {
    let mut client = pb::sync_service_client::SyncServiceClient::new(channel.clone());
    for first in (0..total).step_by(1000) {
        let records = (first..(first + 1000).min(total))
            .map(|i| record(vocabulary, "admin", i))
            .collect();
        client
            .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                records,
                request_id: String::new(),
            })
            .await?;
    }
    Ok(())
}

/// Latencies of `queries` in ms, sorted, and the mean number of matches.
async fn measure(channel: &Channel, queries: &[String]) -> anyhow::Result<(Vec<f64>, f64)> {
    let mut client = pb::search_service_client::SearchServiceClient::new(channel.clone());
    let mut latencies = Vec::with_capacity(queries.len());
    let mut matches = 0u64;
    for query in queries {
        let start = Instant::now();
        let page = client
            .search(pb::SearchRequest {
                query: query.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        matches += page.total_size as u64;
    }
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, matches as f64 / queries.len().max(1) as f64))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run(
    label: &str,
    database_url: Option<String>,
    records: usize,
    queries: usize,
) -> anyhow::Result<Figures> {
    let hub = start_hub(database_url).await?;
    let channel = connect(hub.addr, &hub.ca).await?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let vocabulary = Vocabulary::new();
    let start = Instant::now();
    load(&channel, &vocabulary, records).await?;
    println!(
        "copex Search over mTLS, loopback, {label}, {cores} cores, {records} records (loaded in {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    // Let the database settle (PostgreSQL's autovacuum, SQLite's checkpoint).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut rng = Rng::new(7);
    let warm: Vec<String> = (0..50).map(|_| vocabulary.query(&mut rng)).collect();
    measure(&channel, &warm).await?;
    let typed: Vec<String> = (0..queries).map(|_| vocabulary.query(&mut rng)).collect();
    let (latencies, mean_matches) = measure(&channel, &typed).await?;
    let figures = Figures {
        p50: pct(&latencies, 0.5),
        p99: pct(&latencies, 0.99),
    };
    println!(
        "two-word queries      p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  ({} queries, {:.0} matches on average, first page of 20)",
        figures.p50,
        pct(&latencies, 0.9),
        figures.p99,
        pct(&latencies, 1.0),
        latencies.len(),
        mean_matches
    );
    // The worst case: the most common domain words, matching most records.
    let common: Vec<String> = [
        "child protection",
        "online safety",
        "hash matching",
        "child abuse",
    ]
    .iter()
    .cycle()
    .take(100)
    .map(|q| q.to_string())
    .collect();
    let (latencies, mean_matches) = measure(&channel, &common).await?;
    println!(
        "most common words     p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  ({} queries, {:.0} matches on average)",
        pct(&latencies, 0.5),
        pct(&latencies, 0.9),
        pct(&latencies, 0.99),
        pct(&latencies, 1.0),
        latencies.len(),
        mean_matches
    );
    if std::env::args().any(|a| a == "--keep") {
        println!("kept the hub's data in {}", hub.dir.keep().display());
    }
    Ok(figures)
}
