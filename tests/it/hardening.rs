//! Limits, hostile input, revocation and rotation while serving (issue 7).

use std::time::Duration;

use copex::pb::{self, Role, Tlp};
use copex::pki::{self, LeafOptions};
use rustls::pki_types::pem::PemObject;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

/// Lists partner `a`'s tools by name, to show what a refused call left.
async fn tool_names(partner: &mut Partner) -> Vec<String> {
    let parent = partner.name();
    list_all_tools(partner, &parent, "", 1000)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect()
}

#[tokio::test]
async fn the_rate_limit_refuses_a_burst_with_retry_info_and_spares_other_partners() {
    // The documented default: 200 calls/s per partner, bursts of 400.
    let hub = TestHub::start_with(|args| args.rate_limit = None).await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let name = create_tool(&mut a, "t", tool("Tool", Tlp::Green, &[]))
        .await
        .unwrap()
        .name;

    let calls = (0..800).map(|_| {
        let mut a = a.clone();
        let name = name.clone();
        tokio::spawn(async move { get_tool(&mut a, &name).await })
    });
    let mut ok = 0;
    let mut refused = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => refused.push(status),
        }
    }
    assert!(ok >= 400, "the burst of 400 is allowed, got {ok}");
    assert!(!refused.is_empty(), "800 calls at once exceed the burst");
    let mut longest = Duration::ZERO;
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(error_reason(status).as_deref(), Some("RATE_LIMITED"));
        let delay = status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo with a delay");
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(2),
            "{delay:?}"
        );
        longest = longest.max(delay);
    }
    // Another partner has its own bucket.
    assert_eq!(tool_names(&mut b).await, Vec::<String>::new());
    // After the advised delay, `a` may call again.
    tokio::time::sleep(longest + Duration::from_millis(20)).await;
    get_tool(&mut a, &name)
        .await
        .expect("allowed after the delay");
}

#[tokio::test]
async fn a_partner_may_hold_only_so_many_watch_streams() {
    let hub = TestHub::start_with(|args| args.max_watchers_per_partner = Some(2)).await;
    let mut a = hub.contributor("a").await;
    let mut b = hub.contributor("b").await;
    let first = watch(&mut a, "", &[]).await;
    let _second = watch(&mut a, "", &[]).await;
    let status = assert_code(
        a.sync
            .watch_changes(pb::WatchChangesRequest::default())
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("TOO_MANY_WATCHERS"));
    // Others are not affected.
    let _b = watch(&mut b, "", &[]).await;
    // Closing a stream frees its place.
    drop(first);
    let mut reopened = false;
    for _ in 0..50 {
        if a.sync
            .watch_changes(pb::WatchChangesRequest::default())
            .await
            .is_ok()
        {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "a closed stream's place is given back");
}

/// CreateToolRequest with `tool.display_name` as raw bytes, to send a
/// string that is not UTF-8 (the tags are those of tool.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateToolRequest {
    #[prost(string, tag = "1")]
    parent: String,
    #[prost(message, optional, tag = "2")]
    tool: Option<RawTool>,
    #[prost(string, tag = "3")]
    tool_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawTool {
    #[prost(bytes = "vec", tag = "10")]
    display_name: Vec<u8>,
}

async fn create_raw(partner: &Partner, request: RawCreateToolRequest) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(partner.channel.clone());
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<RawCreateToolRequest, pb::Tool>::default();
    let path = http::uri::PathAndQuery::from_static("/copex.v1.ToolService/CreateTool");
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .expect_err("a request that is not valid is refused")
}

#[tokio::test]
async fn hostile_requests_get_clear_statuses_and_change_nothing() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    let kept = create_tool(&mut a, "kept", tool("Kept", Tlp::Green, &[]))
        .await
        .unwrap();

    // A 5 MiB request: over the 4 MiB limit.
    let status = assert_code(
        create_tool(
            &mut a,
            "huge",
            pb::Tool {
                description: "x".repeat(5 << 20),
                ..tool("Huge", Tlp::Green, &[])
            },
        )
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("REQUEST_TOO_LARGE"));

    // A 100,000-character title and 10,000 labels.
    let status = assert_code(
        create_tool(
            &mut a,
            "long",
            pb::Tool {
                summary: "Short".into(),
                ..tool(&"t".repeat(100_000), Tlp::Green, &[])
            },
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["tool.display_name"]);
    let status = assert_code(
        create_tool(
            &mut a,
            "labels",
            pb::Tool {
                labels: (0..10_000).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..tool("Labels", Tlp::Green, &[])
            },
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["tool.labels"]);

    // Unknown enum numbers.
    let status = assert_code(
        create_tool(&mut a, "tlp", tool("Odd", Tlp::Green, &[]).with_tlp(99)).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["tool.sharing.tlp"]);

    // NUL, which PostgreSQL text cannot hold: refused on both backends.
    let status = assert_code(
        create_tool(
            &mut a,
            "nul",
            pb::Tool {
                summary: "before\0after".into(),
                labels: [("k".to_owned(), "v\0".to_owned())].into(),
                ..tool("Nul", Tlp::Green, &[])
            },
        )
        .await,
        Code::InvalidArgument,
    );
    let mut fields = violation_fields(&status);
    fields.sort();
    assert_eq!(fields, vec!["tool.labels.k", "tool.summary"]);

    // SQL in an id.
    let status = assert_code(
        create_tool(
            &mut a,
            "x'); DROP TABLE records; --",
            tool("Sql", Tlp::Green, &[]),
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["tool_id"]);

    // A string that is not UTF-8.
    let status = create_raw(
        &a,
        RawCreateToolRequest {
            parent: "partners/a".into(),
            tool: Some(RawTool {
                display_name: vec![b'o', b'k', 0xff, 0xfe],
            }),
            tool_id: "utf8".into(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("MALFORMED_REQUEST"));

    // Hostile listings: deep nesting, 100 KiB, SQL in filter, order_by and
    // page token.
    let list = |filter: String, order_by: &str, page_token: &str| pb::ListToolsRequest {
        parent: "partners/-".into(),
        page_size: 10,
        page_token: page_token.to_owned(),
        filter,
        order_by: order_by.to_owned(),
    };
    let nested = format!(
        "{}display_name = \"x\"{}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let long = format!("display_name = \"{}\"", "y".repeat(100 * 1024));
    for (what, request, field) in [
        ("nested", list(nested, "", ""), "filter"),
        ("100 KiB", list(long, "", ""), "filter"),
        (
            "sql in order_by",
            list(String::new(), "display_name; DROP TABLE records", ""),
            "order_by",
        ),
        (
            "sql in page token",
            list(String::new(), "", "' OR 1=1 --"),
            "page_token",
        ),
    ] {
        let status = assert_code(a.tools.list_tools(request).await, Code::InvalidArgument);
        assert_eq!(violation_fields(&status), vec![field], "{what}");
    }
    // SQL inside a filter's string is only a string: it matches nothing.
    let page = a
        .tools
        .list_tools(list(
            "display_name = \"x' OR '1'='1\" OR display_name = \"\\\" OR 1=1 --\"".into(),
            "",
            "",
        ))
        .await
        .expect("a filter with quotes in its strings is valid")
        .into_inner();
    assert!(page.tools.is_empty(), "{:?}", page.tools);

    // The hub is alive and holds exactly what it held.
    assert_eq!(tool_names(&mut a).await, vec![kept.name.clone()]);
    assert_eq!(get_tool(&mut a, &kept.name).await.unwrap(), kept);
}

trait WithTlp {
    fn with_tlp(self, tlp: i32) -> Self;
}

impl WithTlp for pb::Tool {
    fn with_tlp(mut self, tlp: i32) -> Self {
        if let Some(sharing) = &mut self.sharing {
            sharing.tlp = tlp;
        }
        self
    }
}

/// Writes a leaf to files, as a partner keeps it.
fn write_pair(dir: &std::path::Path, id: &str, pair: &(String, String)) -> std::path::PathBuf {
    let cert = dir.join(format!("{id}-test.pem"));
    std::fs::write(&cert, &pair.0).unwrap();
    std::fs::write(dir.join(format!("{id}-test.key")), &pair.1).unwrap();
    cert
}

async fn whoami(partner: &mut Partner) -> Result<pb::Partner, tonic::Status> {
    partner
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// Polls until `check` holds, for changes the hub picks up "within seconds".
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// Waits until calls of `partner` are UNAUTHENTICATED with `reason`.
async fn until_unauthenticated(partner: &Partner, reason: &str) {
    eventually(reason, || {
        let mut partner = partner.clone();
        async move {
            match whoami(&mut partner).await {
                Ok(_) => false,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                    assert_eq!(error_reason(&status).as_deref(), Some(reason));
                    true
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_on_open_and_new_connections() {
    let hub = TestHub::start().await;
    hub.partner("a", &[Role::Reader]).await;
    let mut b = hub.partner("b", &[Role::Reader]).await;
    let pair = hub.cert_for("a");
    let cert_file = write_pair(&hub.pki_dir(), "a", &pair);
    let mut open = hub.connect_as("a", &pair.0, &pair.1).await;
    whoami(&mut open).await.expect("a valid certificate");

    pki::revoke(&hub.pki_dir(), &cert_file).unwrap();

    until_unauthenticated(&open, "CERTIFICATE_REVOKED").await;
    // A new connection fails its handshake.
    let refused = match hub.channel_with(Some((&pair.0, &pair.1))).await {
        Err(_) => true,
        Ok(channel) => whoami(&mut Partner::on("a", channel)).await.is_err(),
    };
    assert!(refused, "a new connection with a revoked certificate");
    // Other partners, on their open connections, carry on.
    assert_eq!(whoami(&mut b).await.unwrap().name, "partners/b");
    // And a new certificate for the same partner works.
    let fresh = hub.cert_for("a");
    let mut renewed = hub.connect_as("a", &fresh.0, &fresh.1).await;
    assert_eq!(whoami(&mut renewed).await.unwrap().name, "partners/a");
}

#[tokio::test]
async fn a_certificate_that_expires_on_an_open_connection_is_refused_from_then_on() {
    let hub = TestHub::start().await;
    hub.partner("a", &[Role::Reader]).await;
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = hub
        .ca
        .sign_leaf(&LeafOptions {
            common_name: "a".into(),
            uri_sans: vec![copex::auth::cert::partner_spiffe_id(TRUST_DOMAIN, "a")],
            client_auth: true,
            not_before: Some(now - time::Duration::hours(1)),
            not_after: Some(now + time::Duration::seconds(3)),
            ..Default::default()
        })
        .unwrap();
    let mut a = hub.connect_as("a", &cert, &key).await;
    whoami(&mut a).await.expect("valid for a few seconds");
    until_unauthenticated(&a, "CERTIFICATE_EXPIRED").await;
}

/// The leaf certificate a new TLS connection to the hub is served.
async fn served_certificate(hub: &TestHub) -> Vec<u8> {
    let ca = std::fs::read(hub.pki_dir().join("ca.pem")).unwrap();
    let (cert, key) = hub.cert_for("admin");
    let config = copex::auth::tls::client_config(&ca, cert.as_bytes(), key.as_bytes()).unwrap();
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.to_vec())
        .expect("the server's certificate")
}

#[tokio::test]
async fn a_server_certificate_rotated_on_disk_is_served_without_dropping_connections() {
    let hub = TestHub::start().await;
    let mut admin = hub.admin().await;
    let mut stream = watch(&mut admin, "", &[]).await;
    stream.next().await.unwrap().unwrap();
    let before = served_certificate(&hub).await;

    let (cert, key) = hub
        .ca
        .sign_leaf(&LeafOptions {
            common_name: "localhost".into(),
            dns_sans: vec!["localhost".into()],
            ip_sans: vec![std::net::Ipv4Addr::LOCALHOST.into()],
            server_auth: true,
            ..Default::default()
        })
        .unwrap();
    let new_der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
        .unwrap()
        .to_vec();
    assert_ne!(new_der, before);
    // Key first: a certificate without its key would not load.
    std::fs::write(hub.pki_dir().join("server.key"), &key).unwrap();
    std::fs::write(hub.pki_dir().join("server.pem"), &cert).unwrap();

    eventually("serving the new certificate", || {
        let new_der = new_der.clone();
        let hub = &hub;
        async move { served_certificate(hub).await == new_der }
    })
    .await;
    // The connection opened before the rotation still works, stream and all.
    whoami(&mut admin)
        .await
        .expect("the open connection carries on");
    create_tool(&mut admin, "after", tool("After", Tlp::Green, &[]))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the open stream carries on")
        .unwrap()
        .unwrap();
    assert_eq!(message.changes.len(), 1);
}

/// SIGTERM to the real `copex serve`: calls in flight finish, watch streams
/// end with UNAVAILABLE, the process exits 0; and its log, at the default
/// level, never held a record's contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_ends_watches_and_logs_no_record_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let pki = data_dir.join("pki");
    let served = crate::process::serve(&data_dir);
    let log = served.log.clone();
    let mut admin = Partner::connect_files("admin", &served.hub, &pki).await;
    let marker = "Secret-Marker-5c1f";

    // Record contents in every place a log could pick them up: a write, a
    // refused write, a search, a filter.
    create_tool(
        &mut admin,
        "m",
        tool(&format!("{marker} title"), Tlp::Green, &[]),
    )
    .await
    .unwrap();
    assert_code(
        create_tool(
            &mut admin,
            "bad",
            tool(&format!("{marker} bad"), Tlp::Unspecified, &[]),
        )
        .await,
        Code::InvalidArgument,
    );
    assert_code(
        admin
            .tools
            .list_tools(pb::ListToolsRequest {
                parent: "partners/-".into(),
                filter: format!("display_name = {marker} AND ("),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    let mut stream = watch(&mut admin, "", &[]).await;
    stream.next().await.unwrap().unwrap();
    // Two batches of 1000 keep the hub busy for a while; SIGTERM comes
    // once they are in flight.
    let batches: Vec<_> = (0..2)
        .map(|lane| {
            let mut p = admin.clone();
            let records = filler_tools(
                "admin",
                &format!("l{lane}-"),
                1000,
                &format!("{marker} {}", "d".repeat(3000)),
            );
            tokio::spawn(async move {
                p.sync
                    .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                        records,
                        request_id: String::new(),
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stopping = std::thread::spawn(move || crate::process::terminate(served));

    let status = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => panic!("the watch ended without a status"),
            }
        }
    })
    .await
    .expect("the watch ends");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    for batch in batches {
        let response = batch
            .await
            .unwrap()
            .expect("a batch in flight at SIGTERM finishes")
            .into_inner();
        assert_eq!(response.results.len(), 1000);
        assert!(
            response
                .results
                .iter()
                .all(|r| r.outcome == pb::UpsertOutcome::Created as i32)
        );
    }
    stopping.join().expect("copex serve exits 0 on SIGTERM");

    // Everything the batches were told is there after a restart.
    let again = crate::process::serve(&data_dir);
    let mut admin = Partner::connect_files("admin", &again.hub, &pki).await;
    assert_eq!(
        list_all_tools(&mut admin, "partners/admin", "", 1000)
            .await
            .len(),
        2001
    );
    crate::process::terminate(again);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("call finished"),
        "the log has the calls:\n{text}"
    );
    assert!(
        !text.contains(marker),
        "record contents reached the log:\n{}",
        text.lines()
            .filter(|l| l.contains(marker))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn admin_grants_no_read_of_restricted_records() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    hub.contributor("b").await;
    let red = create_tool(&mut a, "red", tool("Zebrafinch red", Tlp::Red, &[]))
        .await
        .unwrap();
    let amber = create_tool(
        &mut a,
        "amber",
        tool("Zebrafinch amber", Tlp::Amber, &["partners/b"]),
    )
    .await
    .unwrap();
    let green = create_tool(&mut a, "green", tool("Zebrafinch green", Tlp::Green, &[]))
        .await
        .unwrap();

    let mut admin = hub.admin().await;
    for hidden in [&red, &amber] {
        // NOT_FOUND, exactly as for a record that does not exist.
        let status = assert_code(get_tool(&mut admin, &hidden.name).await, Code::NotFound);
        assert_eq!(error_reason(&status).as_deref(), Some("RESOURCE_NOT_FOUND"));
    }
    let listed: Vec<String> = list_all_tools(&mut admin, "partners/-", "", 100)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(listed, vec![green.name.clone()]);
    let mut search = pb::search_service_client::SearchServiceClient::new(admin.channel.clone());
    let found = search
        .search(pb::SearchRequest {
            query: "zebrafinch".into(),
            page_size: 10,
            wait_for_index: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.total_size, 1, "counts hide them too");
    assert_eq!(found.hits.len(), 1);
    let page = admin
        .sync
        .list_changes(pb::ListChangesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = page.changes.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&green.name.as_str()), "{names:?}");
    assert!(!names.contains(&red.name.as_str()) && !names.contains(&amber.name.as_str()));
}

#[tokio::test]
async fn a_client_deadline_ends_the_call_with_deadline_exceeded() {
    let hub = TestHub::start().await;
    let mut a = hub.contributor("a").await;
    // Enough to make a full page of the feed take many milliseconds.
    for lane in 0..3 {
        let records = filler_tools("a", &format!("d{lane}-"), 1000, &"d".repeat(2000));
        a.sync
            .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                records,
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let full_page = || pb::ListChangesRequest {
        page_size: 5000,
        ..Default::default()
    };
    // A bare HTTP/2 call with `grpc-timeout: 1m`, as any gRPC client sends
    // it: tonic's own client would give up by itself at the deadline, and
    // this test is about what the hub answers.
    let ca = std::fs::read(hub.pki_dir().join("ca.pem")).unwrap();
    let (cert, key) = hub.cert_for("a");
    let config = copex::auth::tls::client_config(&ca, cert.as_bytes(), key.as_bytes()).unwrap();
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "https://localhost:{}/copex.v1.SyncService/ListChanges",
        hub.addr.port()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "1m")
    .body(())
    .unwrap();
    let message = prost::Message::encode_to_vec(&full_page());
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    let (response, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from(framed), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the hub answers")
        .unwrap();
    // A trailers-only answer: the status is in the headers.
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    assert_eq!(code, Some(Code::DeadlineExceeded as i32), "{response:?}");

    // Without the deadline the same call answers, and the hub is unharmed.
    let page = a.sync.list_changes(full_page()).await.unwrap().into_inner();
    assert!(!page.changes.is_empty());
}

#[tokio::test]
async fn the_request_size_limit_is_configurable() {
    let hub = TestHub::start_with(|args| args.max_request_bytes = Some(128 * 1024)).await;
    let mut a = hub.contributor("a").await;
    // Under the new limit: fine. Over it, though under the default: refused.
    let fits = pb::Tool {
        description: "x".repeat(60 * 1024),
        ..tool("Fits", Tlp::Green, &[])
    };
    create_tool(&mut a, "fits", fits).await.unwrap();
    let batch = filler_tools("a", "big-", 4, &"y".repeat(60 * 1024));
    let status = assert_code(
        a.sync
            .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                records: batch,
                request_id: String::new(),
            })
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(error_reason(&status).as_deref(), Some("REQUEST_TOO_LARGE"));
    assert_eq!(tool_names(&mut a).await, vec!["partners/a/tools/fits"]);
}

/// With file checks off, a revocation waits for SIGHUP, and SIGHUP alone
/// applies it, to the real `copex serve` and its open connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let pki_dir = data_dir.join("pki");
    let served = crate::process::serve_with(&data_dir, &["--tls-reload-interval", "0s"]);
    let mut admin = Partner::connect_files("admin", &served.hub, &pki_dir).await;
    create_partner(&mut admin, "a", &[Role::Reader]).await;
    let (cert_file, _) = pki::issue(&pki_dir, "a", 30).unwrap();
    let mut a = Partner::connect_files("a", &served.hub, &pki_dir).await;
    whoami(&mut a).await.expect("a valid certificate");

    pki::revoke(&pki_dir, &cert_file).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    whoami(&mut a)
        .await
        .expect("no reload yet: file checks are off");

    let sent = std::process::Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    until_unauthenticated(&a, "CERTIFICATE_REVOKED").await;
    assert_eq!(whoami(&mut admin).await.unwrap().name, "partners/admin");
    crate::process::terminate(served);
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_and_a_freed_slot_lets_the_next_in() {
    let hub = TestHub::start_with(|args| args.max_handshakes = Some(2)).await;
    let (cert, key) = hub.cert_for("admin");
    // Two connections that never send a ClientHello take both slots...
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(tokio::net::TcpStream::connect(hub.addr).await.unwrap());
    }
    // ...so a real client's handshake waits: it is not even accepted.
    let connecting = hub.channel_with(Some((&cert, &key)));
    tokio::pin!(connecting);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut connecting)
            .await
            .is_err(),
        "a third handshake ran beside two stalled ones"
    );
    // One stalled connection closes: the waiting client gets its slot.
    drop(stalled.pop());
    let channel = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .expect("the client connects once a slot is free")
        .expect("the handshake succeeds");
    let mut admin = Partner::on("admin", channel);
    assert_eq!(whoami(&mut admin).await.unwrap().name, "partners/admin");
    drop(stalled);
}
