//! `/metrics` on `metrics_listen`, scraped over plain HTTP as Prometheus does.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support::*;
use copex::pb;

/// GET `path` with HTTP/1.0; returns (status line, content type, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers end");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

pub async fn scrape(hub: &TestHub) -> String {
    let addr = hub.metrics_addr.expect("metrics are served");
    let (status, content_type, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    body
}

#[tokio::test]
async fn metrics_count_calls_watchers_feed_and_pools() {
    let hub = TestHub::start_with(|args| {
        args.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let mut ecpat = hub.contributor("ecpat").await;
    let before = scrape(&hub).await;
    let position = sample(&before, "copex_feed_position").expect("feed position");
    assert_eq!(
        sample(&before, "copex_watchers_open"),
        Some(0.0),
        "{before}"
    );

    let missing = get_tool(&mut ecpat, "partners/ecpat/tools/none").await;
    assert_code(missing, Code::NotFound);
    let mut stream = watch(&mut ecpat, "", &[]).await;
    create_tool(&mut ecpat, "t1", tool("Hash list", pb::Tlp::Green, &[]))
        .await
        .expect("create");
    next_changes(&mut stream, Duration::from_secs(5)).await;

    let text = scrape(&hub).await;
    let handled = |method: &str, code: &str| {
        sample(
            &text,
            &format!(
                "grpc_server_handled_total{{grpc_service=\"copex.v1.ToolService\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(handled("GetTool", "NOT_FOUND"), Some(1.0), "{text}");
    assert_eq!(handled("CreateTool", "OK"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "grpc_server_handling_seconds_count{grpc_service=\"copex.v1.ToolService\",grpc_method=\"CreateTool\",grpc_code=\"OK\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "copex_feed_position"),
        Some(position + 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "copex_watchers_open"), Some(1.0), "{text}");
    // The watcher has the change, so it is not behind.
    assert_eq!(
        sample(&text, "copex_watcher_lag{partner=\"partners/ecpat\"}"),
        Some(0.0),
        "{text}"
    );
    // Bytes queued for watchers, against --watch-memory.
    assert!(
        sample(&text, "copex_watch_buffer_bytes").is_some(),
        "{text}"
    );
    let max = sample(&text, "copex_db_pool_max_connections{pool=\"readers\"}").expect("pool");
    assert!(max >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            "copex_db_pool_connections{pool=\"readers\",state=\"idle\"}"
        )
        .is_some(),
        "{text}"
    );

    // A closed stream leaves the gauges.
    drop(stream);
    let mut open = None;
    for _ in 0..50 {
        let text = scrape(&hub).await;
        open = sample(&text, "copex_watchers_open");
        if open == Some(0.0) {
            assert!(!text.contains("copex_watcher_lag{"), "{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, Some(0.0));

    let (status, _, _) = http_get(hub.metrics_addr.expect("metrics"), "/other").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test]
async fn metrics_are_off_unless_asked_for() {
    let hub = TestHub::start().await;
    assert_eq!(hub.metrics_addr, None);
}

#[tokio::test]
async fn metrics_show_how_far_the_search_index_is_behind() {
    let hub = TestHub::start_with(|args| {
        args.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let mut ecpat = hub.contributor("ecpat").await;
    create_tool(&mut ecpat, "t1", tool("Hash list", pb::Tlp::Green, &[]))
        .await
        .expect("create");
    // A batch into an index that keeps up does not wait for it.
    ecpat
        .sync
        .batch_upsert_records(pb::BatchUpsertRecordsRequest {
            records: filler_tools("ecpat", "m-", 10, "Hash matching."),
            request_id: String::new(),
        })
        .await
        .expect("batch");
    // Once a waiting search has returned, the index holds the write.
    pb::search_service_client::SearchServiceClient::new(ecpat.channel.clone())
        .search(pb::SearchRequest {
            query: "hash".into(),
            wait_for_index: true,
            ..Default::default()
        })
        .await
        .expect("search");
    let text = scrape(&hub).await;
    assert_eq!(
        sample(&text, "copex_search_index_behind"),
        Some(0.0),
        "{text}"
    );
    let lag = sample(&text, "copex_search_index_lag_seconds").expect("lag");
    assert!((0.0..60.0).contains(&lag), "{text}");
    assert_eq!(
        sample(&text, "copex_search_write_wait_seconds_total"),
        Some(0.0),
        "{text}"
    );
}
