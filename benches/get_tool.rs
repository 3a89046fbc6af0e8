//! GetTool and Health/Check calls per second over real mutual TLS on
//! loopback, at several concurrencies, against a hub started in-process on
//! the embedded SQLite default. Run: `cargo bench --bench get_tool`
//! (`-- --seconds N` to measure longer).

use std::time::{Duration, Instant};

mod common;

use common::{connect, start_hub};
use copex::pb;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TOOLS: usize = 1000;
const CONNECTIONS: usize = 4;

#[derive(Clone, Copy)]
enum Call {
    GetTool,
    Health,
}

/// Runs `concurrency` loops of calls spread over the channels for `window`;
/// returns (calls/s, p50 ms, p99 ms).
async fn drive(
    channels: &[Channel],
    call: Call,
    concurrency: usize,
    window: Duration,
) -> (f64, f64, f64) {
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(async move {
                let mut tools = pb::tool_service_client::ToolServiceClient::new(channel.clone());
                let mut health = HealthClient::new(channel);
                let mut latencies = Vec::new();
                let mut n = i;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    match call {
                        Call::GetTool => {
                            let name = format!("partners/admin/tools/bench-{}", n % TOOLS);
                            tools
                                .get_tool(pb::GetToolRequest { name })
                                .await
                                .expect("GetTool");
                        }
                        Call::Health => {
                            health
                                .check(HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await
                                .expect("Check");
                        }
                    }
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
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    (
        all.len() as f64 / window.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let window = Duration::from_secs(seconds);
    let hub = start_hub(None).await?;
    let (addr, ca) = (hub.addr, &hub.ca);

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(addr, ca).await?);
    }
    let mut tools = pb::tool_service_client::ToolServiceClient::new(channels[0].clone());
    for i in 0..TOOLS {
        tools
            .create_tool(pb::CreateToolRequest {
                parent: "partners/admin".into(),
                tool_id: format!("bench-{i}"),
                tool: Some(pb::Tool {
                    display_name: format!("Benchmark tool {i}"),
                    summary: "A tool of realistic size for the benchmark. ".repeat(8),
                    description: "Describes what the tool does, for whom and where. ".repeat(30),
                    capabilities: vec!["hash matching".into(), "reporting".into()],
                    regions: vec!["KE".into(), "TH".into(), "BR".into()],
                    sharing: Some(pb::Sharing {
                        tlp: pb::Tlp::Green as i32,
                        recipients: vec![],
                    }),
                    ..Default::default()
                }),
            })
            .await?;
    }

    println!(
        "copex GetTool vs Health/Check over mTLS, loopback, {} cores, {CONNECTIONS} connections, {seconds} s per row",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<14} {:>6} {:>12} {:>9} {:>9}",
        "call", "conc.", "calls/s", "p50 ms", "p99 ms"
    );
    for concurrency in [1, 16, 64] {
        let mut rates = Vec::new();
        for (label, call) in [("GetTool", Call::GetTool), ("Health/Check", Call::Health)] {
            let (rate, p50, p99) = drive(&channels, call, concurrency, window).await;
            println!("{label:<14} {concurrency:>6} {rate:>12.0} {p50:>9.3} {p99:>9.3}");
            rates.push(rate);
        }
        println!(
            "{:<14} {concurrency:>6} {:>12.2}",
            "ratio",
            rates[0] / rates[1]
        );
    }
    Ok(())
}
