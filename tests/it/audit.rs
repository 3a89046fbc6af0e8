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
