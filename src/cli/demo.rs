//! Client calls that take any record kind, and `copex demo`.

use std::path::Path;

use anyhow::{Context, bail};
use tonic::Status;
use tonic::transport::Channel;

use crate::domain::Kind;
use crate::domain::names::{self, RecordName};
use crate::pb::{self, record::Kind as R};

/// The sample records (proto3 JSON `Record` objects), among them the IGF 2012
/// workshop proposal no. 125 on child protection online.
pub const SAMPLES: &str = include_str!("../../examples/demo/records.json");

pub async fn get_record(channel: Channel, kind: Kind, name: &str) -> Result<pb::Record, Status> {
    let name = name.to_owned();
    let inner = match kind {
        Kind::Workshop => R::Workshop(
            pb::workshop_service_client::WorkshopServiceClient::new(channel)
                .get_workshop(pb::GetWorkshopRequest { name })
                .await?
                .into_inner(),
        ),
        Kind::Practice => R::Practice(
            pb::practice_service_client::PracticeServiceClient::new(channel)
                .get_practice(pb::GetPracticeRequest { name })
                .await?
                .into_inner(),
        ),
        Kind::Tool => R::Tool(
            pb::tool_service_client::ToolServiceClient::new(channel)
                .get_tool(pb::GetToolRequest { name })
                .await?
                .into_inner(),
        ),
    };
    Ok(pb::Record { kind: Some(inner) })
}

/// One page of a List call, as `Record`s.
pub async fn list_page(
    channel: Channel,
    kind: Kind,
    parent: &str,
    filter: &str,
    order_by: &str,
    page_token: &str,
) -> Result<(Vec<pb::Record>, String), Status> {
    let (parent, filter, order_by, page_token) = (
        parent.to_owned(),
        filter.to_owned(),
        order_by.to_owned(),
        page_token.to_owned(),
    );
    let wrap = |inner| pb::Record { kind: Some(inner) };
    Ok(match kind {
        Kind::Workshop => {
            let page = pb::workshop_service_client::WorkshopServiceClient::new(channel)
                .list_workshops(pb::ListWorkshopsRequest {
                    parent,
                    page_size: 500,
                    page_token,
                    filter,
                    order_by,
                })
                .await?
                .into_inner();
            (
                page.workshops
                    .into_iter()
                    .map(|w| wrap(R::Workshop(w)))
                    .collect(),
                page.next_page_token,
            )
        }
        Kind::Practice => {
            let page = pb::practice_service_client::PracticeServiceClient::new(channel)
                .list_practices(pb::ListPracticesRequest {
                    parent,
                    page_size: 500,
                    page_token,
                    filter,
                    order_by,
                })
                .await?
                .into_inner();
            (
                page.practices
                    .into_iter()
                    .map(|p| wrap(R::Practice(p)))
                    .collect(),
                page.next_page_token,
            )
        }
        Kind::Tool => {
            let page = pb::tool_service_client::ToolServiceClient::new(channel)
                .list_tools(pb::ListToolsRequest {
                    parent,
                    page_size: 500,
                    page_token,
                    filter,
                    order_by,
                })
                .await?
                .into_inner();
            (
                page.tools.into_iter().map(|t| wrap(R::Tool(t))).collect(),
                page.next_page_token,
            )
        }
    })
}

/// Creates or replaces a record (Update with allow_missing), so loading the
/// samples twice changes nothing.
pub async fn upsert(channel: Channel, record: pb::Record) -> Result<pb::Record, Status> {
    let mask = None;
    let inner = match record.kind {
        Some(R::Workshop(w)) => R::Workshop(
            pb::workshop_service_client::WorkshopServiceClient::new(channel)
                .update_workshop(pb::UpdateWorkshopRequest {
                    workshop: Some(w),
                    update_mask: mask,
                    allow_missing: true,
                })
                .await?
                .into_inner(),
        ),
        Some(R::Practice(p)) => R::Practice(
            pb::practice_service_client::PracticeServiceClient::new(channel)
                .update_practice(pb::UpdatePracticeRequest {
                    practice: Some(p),
                    update_mask: mask,
                    allow_missing: true,
                })
                .await?
                .into_inner(),
        ),
        Some(R::Tool(t)) => R::Tool(
            pb::tool_service_client::ToolServiceClient::new(channel)
                .update_tool(pb::UpdateToolRequest {
                    tool: Some(t),
                    update_mask: mask,
                    allow_missing: true,
                })
                .await?
                .into_inner(),
        ),
        None => return Err(Status::invalid_argument("record: no kind is set")),
    };
    Ok(pb::Record { kind: Some(inner) })
}

/// Title and TLP marking of a record.
fn title_and_tlp(record: &pb::Record) -> (&str, i32) {
    let tlp = |s: &Option<pb::Sharing>| s.as_ref().map(|s| s.tlp).unwrap_or_default();
    match &record.kind {
        Some(R::Workshop(w)) => (&w.title, tlp(&w.sharing)),
        Some(R::Practice(p)) => (&p.title, tlp(&p.sharing)),
        Some(R::Tool(t)) => (&t.display_name, tlp(&t.sharing)),
        None => ("", 0),
    }
}

pub fn record_line(record: &pb::Record) -> String {
    let name = record.name();
    let (title, tlp) = title_and_tlp(record);
    let tlp = pb::Tlp::try_from(tlp)
        .map(|t| t.as_str_name().trim_start_matches("TLP_"))
        .unwrap_or("?");
    format!("{name:<60} {tlp:<12} {}", names::truncate(title, 70))
}

/// Loads records from a JSON array, rewriting the owner in each name to the
/// calling partner.
pub async fn load(channel: Channel, owner: &str, text: &str) -> anyhow::Result<Vec<String>> {
    let items: Vec<serde_json::Value> =
        serde_json::from_str(text).context("the demo file is not a JSON array")?;
    let mut loaded = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut record: pb::Record = super::json::from_json(&item.to_string())
            .with_context(|| format!("record {} of the demo file", i + 1))?;
        let name = match &mut record.kind {
            Some(R::Workshop(w)) => &mut w.name,
            Some(R::Practice(p)) => &mut p.name,
            Some(R::Tool(t)) => &mut t.name,
            None => bail!("record {} of the demo file has no kind", i + 1),
        };
        let parsed = RecordName::parse_any("name", name)
            .map_err(|e| anyhow::anyhow!("record {}: {e}", i + 1))?;
        *name = RecordName::new(owner, parsed.kind, &parsed.id).to_string();
        let stored = upsert(channel.clone(), record).await.map_err(|s| {
            anyhow::anyhow!("record {}: {}", i + 1, super::output::describe_status(&s))
        })?;
        loaded.push(stored.name().to_owned());
    }
    Ok(loaded)
}

/// `copex demo`: the samples, or the records of `file`, as the calling partner's.
pub(super) async fn run(channel: Channel, file: Option<&Path>) -> anyhow::Result<()> {
    let mut partners = pb::partner_service_client::PartnerServiceClient::new(channel.clone());
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => SAMPLES.to_owned(),
    };
    let me = partners
        .get_current_partner(pb::GetCurrentPartnerRequest {})
        .await
        .map_err(super::output::call_error)?
        .into_inner();
    let owner = names::parse_partner_name("name", &me.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = load(channel, &owner, &text).await?;
    for name in &loaded {
        out!("loaded {name}");
    }
    out!(
        "{} sample records are on the hub; try: copex list workshops",
        loaded.len()
    );
    Ok(())
}
