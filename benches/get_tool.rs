//! GetTool and Health/Check calls per second over real mutual TLS on
//! loopback, at several concurrencies, against a hub started in-process on
//! the embedded SQLite default. Run: `cargo bench --bench get_tool`
//! (`-- --seconds N` to measure longer).

use std::time::{Duration, Instant};

use copex::auth::cert::partner_spiffe_id;
use copex::auth::pki::{CertificateAuthority, LeafOptions};
use copex::config::ServeArgs;
use copex::pb;
use copex::server::Server;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TOOLS: usize = 1000;
const CONNECTIONS: usize = 4;

async fn connect(addr: std::net::SocketAddr, ca: &CertificateAuthority) -> anyhow::Result<Channel> {
    let (cert, key) = ca.sign_leaf(&LeafOptions {
        uri_sans: vec![partner_spiffe_id("copex.local", "admin")],
        client_auth: true,
        ..Default::default()
    })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

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
    let dir = tempfile::tempdir()?;
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".parse()?),
        data_dir: Some(dir.path().to_path_buf()),
        log: Some("warn".into()),
        ..Default::default()
    }
    .resolve()?;
    let (server, _) = Server::build(&config).await?;
    let addr = server.local_addr()?;
    let ca = CertificateAuthority::load(&dir.path().join("pki"))?;
    tokio::spawn(server.run_until_stopped(std::future::pending()));

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(addr, &ca).await?);
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
