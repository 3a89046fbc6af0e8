//! One partner cannot wear the hub down for the others (issue 24, rule 5):
//! a cap on a filter's comparisons, database work stopped when its call
//! ends, and a per-partner cap on expensive calls running at once.

use std::time::Duration;

use copex::pb;
use tonic::Code;

use crate::support::*;

/// Tools with many indexed values and no labels: `labels:*` walks every
/// indexed value of such a record and matches none of them.
async fn load_heavy_tools(partner: &mut Partner, count: usize) {
    for first in (0..count).step_by(500) {
        let records = (first..(first + 500).min(count))
            .map(|i| {
                let mut t = tool(&format!("Heavy {i}"), pb::Tlp::Green, &[]);
                t.name = format!("partners/{}/tools/h{i}", partner.id);
                t.capabilities = (0..100).map(|c| format!("capability {c}")).collect();
                t.platforms = (0..100).map(|c| format!("platform {c}")).collect();
                pb::Record {
                    kind: Some(pb::record::Kind::Tool(t)),
                }
            })
            .collect();
        let results = partner
            .sync
            .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                records,
                request_id: String::new(),
            })
            .await
            .expect("load heavy tools")
            .into_inner()
            .results;
        assert!(
            results
                .iter()
                .all(|r| r.outcome == pb::UpsertOutcome::Created as i32)
        );
    }
}

/// Records `load_heavy_tools` makes in the tests: on the code before
/// rule 5, four `costly_filter` lists over them kept every SQLite reader
/// busy past its 10 s acquire timeout, long after their calls had ended.
const HEAVY_TOOLS: usize = 2000;

/// 600 comparisons (as long as a filter may be), each a walk over every
/// indexed value of every record: far more work than any deadline here.
fn costly_filter() -> String {
    vec!["labels:*"; 600].join(" OR ")
}

fn list_request(filter: &str, timeout: Option<Duration>) -> tonic::Request<pb::ListToolsRequest> {
    let mut request = tonic::Request::new(pb::ListToolsRequest {
        parent: "partners/-".into(),
        filter: filter.to_owned(),
        page_size: 10,
        ..Default::default()
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Names of the tools a plain list of `partner` returns.
async fn plain_list(partner: &mut Partner) -> Result<Vec<String>, tonic::Status> {
    Ok(partner
        .tools
        .list_tools(list_request("", None))
        .await?
        .into_inner()
        .tools
        .into_iter()
        .map(|t| t.name)
        .collect())
}

#[tokio::test]
async fn a_filter_over_the_term_cap_is_invalid_argument_naming_filter() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    create_tool(&mut admin, "one", tool("One", pb::Tlp::Green, &[]))
        .await
        .expect("create");
    let terms = |n: usize| vec!["display_name = \"One\""; n].join(" OR ");

    let at_cap = admin
        .tools
        .list_tools(list_request(&terms(50), None))
        .await
        .expect("50 comparisons are allowed")
        .into_inner();
    assert_eq!(at_cap.tools.len(), 1);

    let over = terms(51);
    let check = |status: tonic::Status| {
        assert_eq!(violation_fields(&status), ["filter"], "{status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some("INVALID_FIELD"));
        assert!(
            status.message().contains("51 comparisons; at most 50"),
            "{}",
            status.message()
        );
    };
    check(assert_code(
        admin.tools.list_tools(list_request(&over, None)).await,
        Code::InvalidArgument,
    ));
    let mut search = pb::search_service_client::SearchServiceClient::new(admin.channel.clone());
    check(assert_code(
        search
            .search(pb::SearchRequest {
                query: "one".into(),
                filter: over.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    ));
    let mut audit = pb::audit_service_client::AuditServiceClient::new(admin.channel.clone());
    check(assert_code(
        audit
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: "partners/admin".into(),
                filter: vec!["method = \"x\""; 51].join(" OR "),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    ));

    // The older limits still hold beside the new one.
    let deep = format!("{}display_name = \"One\"{}", "(".repeat(33), ")".repeat(33));
    let status = assert_code(
        admin.tools.list_tools(list_request(&deep, None)).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), ["filter"]);
    assert!(status.message().contains("nested too deeply"), "{status:?}");
    let long = format!("display_name = \"{}\"", "x".repeat(8200));
    let status = assert_code(
        admin.tools.list_tools(list_request(&long, None)).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), ["filter"]);
    assert!(status.message().contains("too long"), "{status:?}");

    // Refusals change nothing.
    assert_eq!(
        plain_list(&mut admin).await.expect("list"),
        ["partners/admin/tools/one"]
    );
}

#[tokio::test]
async fn the_term_cap_is_configurable() {
    let hub = TestHub::start_with(|args| args.max_filter_terms = Some(3)).await;
    let mut admin = hub.admin().await;
    let terms = |n: usize| vec!["display_name = \"One\""; n].join(" OR ");
    admin
        .tools
        .list_tools(list_request(&terms(3), None))
        .await
        .expect("3 comparisons are allowed");
    let status = assert_code(
        admin.tools.list_tools(list_request(&terms(4), None)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("at most 3"), "{status:?}");
}

/// The code of a ListTools call with `grpc-timeout: {timeout_ms}m`, made
/// over bare HTTP/2 as any gRPC client may: tonic's own client gives up by
/// itself at the deadline (CANCELLED), and this is about what the hub says.
async fn list_with_deadline(hub: &TestHub, id: &str, filter: &str, timeout_ms: u32) -> Option<i32> {
    let ca = std::fs::read(hub.pki_dir().join("ca.pem")).expect("CA");
    let (cert, key) = hub.cert_for(id);
    let config =
        copex::auth::tls::client_config(&ca, cert.as_bytes(), key.as_bytes()).expect("client TLS");
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("tls");
    let (mut h2, connection) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "https://localhost:{}/copex.v1.ToolService/ListTools",
        hub.addr.port()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", format!("{timeout_ms}m"))
    .body(())
    .expect("request");
    let message = prost::Message::encode_to_vec(&list_request(filter, None).into_inner());
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("size").to_be_bytes());
    framed.extend_from_slice(&message);
    let (response, mut body) = h2.send_request(request, false).expect("send");
    body.send_data(bytes::Bytes::from(framed), true)
        .expect("send body");
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("the hub answers")
        .expect("response");
    // A trailers-only answer: the status is in the headers.
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
}

/// Active statements of the hub's PostgreSQL database that read
/// `record_attrs` (what the costly filter does); 0 on SQLite.
async fn running_filters(hub: &TestHub) -> i64 {
    use sqlx::Connection;
    let Some(url) = hub.database_url() else {
        return 0;
    };
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%record_attrs%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_activity")
}

/// On PostgreSQL also: no statement of those calls is left running once
/// they have answered (before the hub turned JIT off, LLVM compiled such a
/// plan for tens of seconds deaf to statement_timeout and cancels).
#[tokio::test]
async fn a_costly_filter_past_its_deadline_stops_and_frees_the_database() {
    // Four reader connections, all of which the partner may use at once:
    // only statements that really stop leave one for the next call.
    let hub = TestHub::start_with(|args| {
        args.max_filter_terms = Some(1000);
        args.max_expensive_calls_per_partner = Some(4);
        args.db_pool_size = Some(4);
    })
    .await;
    let mut admin = hub.admin().await;
    load_heavy_tools(&mut admin, HEAVY_TOOLS).await;
    let before = plain_list(&mut admin).await.expect("list");

    let filter = costly_filter();
    let hub = std::sync::Arc::new(hub);
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let hub = hub.clone();
            let filter = filter.clone();
            tokio::spawn(async move { list_with_deadline(&hub, "admin", &filter, 2000).await })
        })
        .collect();
    for call in calls {
        assert_eq!(
            call.await.expect("task"),
            Some(Code::DeadlineExceeded as i32)
        );
    }

    // The database is free: a plain call gets a connection within a
    // deadline far shorter than the filters would have run.
    let plain = admin
        .tools
        .list_tools(list_request("", Some(Duration::from_secs(5))))
        .await
        .expect("a plain list right after the costly ones");
    assert_eq!(plain.into_inner().tools.len(), 10);
    // PostgreSQL has no statement of theirs left running (a cancel may
    // take a moment to land); on SQLite there is nothing to count.
    let mut left = running_filters(&hub).await;
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = running_filters(&hub).await;
    }
    assert_eq!(left, 0, "costly statements still running");
    assert_eq!(plain_list(&mut admin).await.expect("list"), before);
}

#[tokio::test]
async fn a_storm_of_costly_filters_leaves_other_partners_served() {
    let hub = TestHub::start_with(|args| args.max_filter_terms = Some(1000)).await;
    let mut admin = hub.admin().await;
    load_heavy_tools(&mut admin, HEAVY_TOOLS).await;
    let mut other = hub.contributor("other").await;
    create_tool(&mut other, "mine", tool("Mine", pb::Tlp::Green, &[]))
        .await
        .expect("create");
    let mut stormer = hub.contributor("stormer").await;
    let (cert, key) = hub.cert_for("stormer");

    // 8 connections, 4 calls in flight on each: more than the pool holds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut storm = Vec::new();
    for _ in 0..8 {
        let connection = hub.connect_as("stormer", &cert, &key).await;
        for _ in 0..4 {
            let mut tools = connection.tools.clone();
            let stop = stop.clone();
            let filter = costly_filter();
            storm.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let result = tools
                        .list_tools(list_request(&filter, Some(Duration::from_secs(2))))
                        .await;
                    codes.push(result.map(|_| ()).map_err(|s| s.code()));
                }
                codes
            }));
        }
    }
    // Let the storm fill what it can.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut failures = Vec::new();
    for i in 0..20 {
        if let Err(status) = plain_list(&mut other).await {
            failures.push(format!("ListTools {i}: {status:?}"));
        }
        if let Err(status) = get_tool(&mut other, "partners/other/tools/mine").await {
            failures.push(format!("GetTool {i}: {status:?}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = Vec::new();
    for task in storm {
        codes.extend(task.await.expect("storm task"));
    }
    assert!(
        failures.is_empty(),
        "the other partner was refused: {failures:?}"
    );
    // The storm ended by deadlines (the hub's answer, or tonic's client
    // giving up at the same moment) or a full queue, not by errors of the
    // hub.
    let other_ends: Vec<_> = codes
        .iter()
        .filter(|c| {
            !matches!(
                c,
                Err(Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted)
            )
        })
        .collect();
    assert!(other_ends.is_empty(), "{other_ends:?}");
    // The stormer itself is served afterwards.
    plain_list(&mut stormer)
        .await
        .expect("the stormer's plain list");
}
