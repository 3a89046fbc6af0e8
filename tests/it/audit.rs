//! The audit log: mutations (in their transaction) and denied calls.

use std::time::Duration;

use copex::pb::{self, Role, Tlp, record::Kind as R};
use tonic::Code;

use crate::support::*;

type AuditClient = pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>;

async fn events(partner: &Partner, parent: &str) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
    filtered(partner, parent, "").await
}

async fn filtered(
    partner: &Partner,
    parent: &str,
    filter: &str,
) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
    let mut client = AuditClient::new(partner.channel.clone());
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: parent.into(),
                page_size: 2,
                page_token: page_token.clone(),
                filter: filter.into(),
            })
            .await?
            .into_inner();
        all.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Waits until `admin` sees an event matching `wanted` (denied calls are
/// written just after their answer).
async fn find(admin: &Partner, wanted: impl Fn(&pb::AuditEvent) -> bool) -> pb::AuditEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = events(admin, "partners/-").await.unwrap();
        if let Some(found) = all.iter().find(|e| wanted(e)) {
            return found.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such audit event among {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fingerprint_of(cert_pem: &str) -> String {
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).unwrap();
    copex::auth::cert::fingerprint(&der)
}

#[tokio::test]
async fn mutations_and_denied_calls_are_audited() {
    let hub = TestHub::start().await;
    let admin = hub.admin().await;
    let mut b = hub.contributor("b").await;

    // A mutation, with the client's request id.
    let mut request = tonic::Request::new(pb::CreateToolRequest {
        parent: "partners/b".into(),
        tool: Some(tool("Audited", Tlp::Green, &[])),
        tool_id: "audited".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let response = b.tools.create_tool(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-42");
    let created = find(&admin, |e| e.resource == "partners/b/tools/audited").await;
    assert_eq!(created.method, "/copex.v1.ToolService/CreateTool");
    assert_eq!(created.partner, "partners/b");
    assert_eq!(created.code, 0);
    assert_eq!(created.request_id, "req-42");
    assert!(created.certificate_fingerprint.starts_with("sha256:"));
    assert_eq!(created.certificate_fingerprint.len(), "sha256:".len() + 64);

    // A denied call: a reader writing.
    let mut reader = hub.partner("r", &[Role::Reader]).await;
    assert_code(
        create_tool(&mut reader, "x", tool("X", Tlp::Green, &[])).await,
        Code::PermissionDenied,
    );
    let denied = find(&admin, |e| {
        e.partner == "partners/r" && e.code == Code::PermissionDenied as i32
    })
    .await;
    assert_eq!(denied.method, "/copex.v1.ToolService/CreateTool");
    assert_eq!(denied.resource, "partners/r");
    assert!(!denied.request_id.is_empty(), "the hub made a request id");

    // A certificate of no partner: UNAUTHENTICATED, audited with its fingerprint.
    let (cert, key) = hub.cert_for("ghost");
    let mut ghost = hub.connect_as("ghost", &cert, &key).await;
    assert_code(
        ghost
            .partners
            .get_current_partner(pb::GetCurrentPartnerRequest {})
            .await,
        Code::Unauthenticated,
    );
    let fingerprint = fingerprint_of(&cert);
    let unknown = find(&admin, |e| e.certificate_fingerprint == fingerprint).await;
    assert_eq!(unknown.code, Code::Unauthenticated as i32);
    assert_eq!(unknown.partner, "");
    assert_eq!(unknown.method, "/copex.v1.PartnerService/GetCurrentPartner");

    // Batch items: each change and each refusal.
    let mut other = tool("Not mine", Tlp::Green, &[]);
    other.name = "partners/admin/tools/planted".into();
    let mut mine = tool("Mine", Tlp::Green, &[]);
    mine.name = "partners/b/tools/batched".into();
    b.sync
        .batch_upsert_records(pb::BatchUpsertRecordsRequest {
            records: vec![
                pb::Record {
                    kind: Some(R::Tool(other)),
                },
                pb::Record {
                    kind: Some(R::Tool(mine)),
                },
            ],
            request_id: String::new(),
        })
        .await
        .unwrap();
    let planted = find(&admin, |e| e.resource == "partners/admin/tools/planted").await;
    assert_eq!(planted.code, Code::PermissionDenied as i32);
    let batched = find(&admin, |e| e.resource == "partners/b/tools/batched").await;
    assert_eq!(batched.code, 0);
    assert_eq!(batched.method, "/copex.v1.SyncService/BatchUpsertRecords");

    // Partner changes too.
    let partner_created = find(&admin, |e| e.resource == "partners/b").await;
    assert_eq!(
        partner_created.method,
        "/copex.v1.PartnerService/CreatePartner"
    );
    assert_eq!(partner_created.partner, "partners/admin");
}

#[tokio::test]
async fn partners_see_only_their_own_events() {
    let hub = TestHub::start().await;
    let admin = hub.admin().await;
    let mut b = hub.contributor("b").await;
    let mut c = hub.contributor("c").await;
    create_tool(&mut b, "one", tool("One", Tlp::Green, &[]))
        .await
        .unwrap();
    create_tool(&mut c, "two", tool("Two", Tlp::Green, &[]))
        .await
        .unwrap();

    let own = events(&b, "partners/-").await.unwrap();
    assert!(!own.is_empty());
    assert!(own.iter().all(|e| e.partner == "partners/b"), "{own:?}");
    assert_eq!(events(&b, "partners/b").await.unwrap(), own);
    let status = assert_code(events(&b, "partners/c").await, Code::PermissionDenied);
    assert_eq!(error_reason(&status).as_deref(), Some("ROLE_REQUIRED"));

    // Admins see everyone's, newest first, or one partner's.
    let all = events(&admin, "partners/-").await.unwrap();
    assert!(all.iter().any(|e| e.partner == "partners/c"));
    let times: Vec<i64> = all
        .iter()
        .map(|e| {
            e.event_time
                .as_ref()
                .map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    // Names are distinct and do not count events: no sequence numbers.
    let names: std::collections::HashSet<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), all.len());
    assert!(
        all.iter().all(|e| e
            .name
            .strip_prefix("auditEvents/")
            .is_some_and(|id| id.len() == 22 && id.parse::<i64>().is_err())),
        "{all:?}"
    );
    let of_c = events(&admin, "partners/c").await.unwrap();
    assert!(!of_c.is_empty() && of_c.iter().all(|e| e.partner == "partners/c"));

    // Filters.
    let created = filtered(
        &admin,
        "partners/-",
        "method = \"/copex.v1.ToolService/CreateTool\" AND code = 0",
    )
    .await
    .unwrap();
    let mut resources: Vec<String> = created.into_iter().map(|e| e.resource).collect();
    resources.sort();
    assert_eq!(
        resources,
        vec!["partners/b/tools/one", "partners/c/tools/two"]
    );
    let by_partner = filtered(&admin, "partners/-", "partner = \"partners/c\"")
        .await
        .unwrap();
    assert_eq!(by_partner, of_c);
    // A trailing `*` matches by prefix: the calls on one partner's records.
    let on_c_records = filtered(&admin, "partners/-", "resource = \"partners/c/*\"")
        .await
        .unwrap();
    assert!(!on_c_records.is_empty());
    assert!(
        on_c_records
            .iter()
            .all(|e| e.resource.starts_with("partners/c/")),
        "{on_c_records:?}"
    );
    assert!(
        on_c_records
            .iter()
            .any(|e| e.resource == "partners/c/tools/two")
    );
    assert!(
        filtered(
            &admin,
            "partners/-",
            "event_time < \"2000-01-01T00:00:00Z\""
        )
        .await
        .unwrap()
        .is_empty()
    );
    let status = assert_code(
        filtered(&admin, "partners/-", "colour = 1").await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["filter"]);
}

/// Every page of `partner`'s refused calls (code PERMISSION_DENIED), read
/// as a stock gRPC client reads (4 MiB receive limit), with each page's
/// encoded size.
async fn refused_pages(admin: &Partner, partner: &str) -> Vec<(usize, Vec<pb::AuditEvent>)> {
    use prost::Message;
    let mut stock = AuditClient::new(admin.channel.clone());
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = stock
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: "partners/-".into(),
                page_size: 1000,
                page_token: page_token.clone(),
                filter: format!("partner = \"{partner}\" AND code = 7"),
            })
            .await
            .expect("every page reads within a stock client's 4 MiB")
            .into_inner();
        pages.push((page.encoded_len(), page.audit_events));
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

/// Refused calls are audited with at most 1 KiB of the name they gave, and
/// audit pages end early rather than pass what a stock client accepts:
/// 30 calls naming 3.5 MB each made one page of 100 MiB.
#[tokio::test]
async fn refused_calls_with_huge_names_leave_readable_audit_pages() {
    let hub = TestHub::start().await;
    let admin = hub.admin().await;
    let reader = hub.partner("r", &[Role::Reader]).await;
    // Two bytes a character, so the cut falls inside one.
    let huge = format!("partners/r{}", "é".repeat(1_750_000));
    let long = format!("partners/{}", "x".repeat(1_500));
    // 30 names of 3.5 MB, then 1,000 of 1.5 KB, 50 at a time.
    let parents: Vec<&str> = std::iter::repeat_n(huge.as_str(), 30)
        .chain(std::iter::repeat_n(long.as_str(), 1000))
        .collect();
    for chunk in parents.chunks(50) {
        let calls = chunk.iter().map(|parent| {
            let mut tools = reader.tools.clone();
            let parent = parent.to_string();
            async move {
                tools
                    .create_tool(pb::CreateToolRequest {
                        parent,
                        tool: Some(tool("X", Tlp::Green, &[])),
                        tool_id: String::new(),
                    })
                    .await
            }
        });
        for result in futures_util::future::join_all(calls).await {
            assert_code(result, Code::PermissionDenied);
        }
    }

    // Written just after the answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pages = loop {
        let pages = refused_pages(&admin, "partners/r").await;
        let count: usize = pages.iter().map(|(_, events)| events.len()).sum();
        if count >= parents.len() {
            break pages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} of {} refused calls audited",
            parents.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let events: Vec<&pb::AuditEvent> = pages.iter().flat_map(|(_, e)| e).collect();
    assert_eq!(events.len(), parents.len());
    for event in &events {
        assert_eq!(event.method, "/copex.v1.ToolService/CreateTool");
        assert!(
            event.resource.len() <= 1024,
            "{} bytes",
            event.resource.len()
        );
        assert!(event.resource.ends_with('…'), "marked as cut");
    }
    let cut_huge = events
        .iter()
        .filter(|e| e.resource.starts_with("partners/ré"))
        .count();
    assert_eq!(cut_huge, 30);
    assert!(
        events
            .iter()
            .all(|e| huge.starts_with(e.resource.trim_end_matches('…'))
                || long.starts_with(e.resource.trim_end_matches('…'))),
        "each is the start of the name given"
    );
    // About 1.1 KiB each: 1,000 would pass the 1 MiB a page may hold.
    for (bytes, events) in &pages {
        assert!(*bytes <= 1 << 20, "a page of {bytes} bytes");
        assert!(!events.is_empty());
    }
    assert!(pages[0].1.len() < 1000, "the first page ended early");
    assert!(pages.len() >= 2);
}

/// A flood of refused calls (a suspended partner's) queues its audit rows;
/// what does not fit in the queue is dropped and counted in /metrics, and
/// the hub keeps answering. Every refused call is either audited or counted.
#[tokio::test]
async fn a_flood_of_refused_calls_drops_audit_rows_and_counts_them() {
    use crate::metrics::{sample, scrape};
    let hub = TestHub::start_with(|args| {
        args.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
        args.audit_queue_capacity = Some(1);
    })
    .await;
    let mut admin = hub.admin().await;
    let suspended = hub.contributor("s").await;
    admin
        .partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: "partners/s".into(),
                state: pb::PartnerState::Suspended as i32,
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .unwrap();
    let dropped_series = "copex_audit_events_dropped_total";
    assert_eq!(sample(&scrape(&hub).await, dropped_series), Some(0.0));

    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let dropped = loop {
        let calls = (0..200).map(|_| {
            let mut partners = suspended.partners.clone();
            async move {
                partners
                    .get_current_partner(pb::GetCurrentPartnerRequest {})
                    .await
            }
        });
        for result in futures_util::future::join_all(calls).await {
            let status = assert_code(result, Code::PermissionDenied);
            assert_eq!(error_reason(&status).as_deref(), Some("PARTNER_SUSPENDED"));
            sent += 1;
        }
        let dropped = sample(&scrape(&hub).await, dropped_series).expect("the counter");
        if dropped > 0.0 {
            break dropped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sent} refused calls and nothing dropped from a queue of one"
        );
    };
    assert!(dropped <= f64::from(sent));

    // The hub still answers others.
    let me = admin
        .partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.name, "partners/admin");

    // Each refused call is in the log or in the counter, once the queue
    // is written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let audited: usize = refused_pages(&admin, "partners/s")
            .await
            .iter()
            .map(|(_, events)| events.len())
            .sum();
        let dropped = sample(&scrape(&hub).await, dropped_series).expect("the counter");
        if audited as f64 + dropped == f64::from(sent) {
            break;
        }
        assert!(
            audited as f64 + dropped < f64::from(sent),
            "{audited} audited and {dropped} dropped of {sent}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{audited} audited and {dropped} dropped of {sent}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
