//! Reading records: `copex get`, `copex list` and `copex search`.

use tonic::transport::Channel;

use super::output::call_error;
use super::sync::RecordKindArg;
use super::{Collection, Output, demo, json};
use crate::domain::names;
use crate::pb;

/// `copex get NAME`.
pub(super) async fn get(channel: Channel, output: Output, name: &str) -> anyhow::Result<()> {
    let parsed = names::RecordName::parse_any("name", name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let record = demo::get_record(channel, parsed.kind, name)
        .await
        .map_err(call_error)?;
    match output {
        Output::Json => out!("{}", json::to_json(&record)?),
        Output::Text => out!("{}", json::to_pretty_json(&record)?),
    }
    Ok(())
}

/// `copex list COLLECTION`: every page, up to `limit` records.
pub(super) async fn list(
    channel: Channel,
    output: Output,
    collection: Collection,
    parent: &str,
    filter: &str,
    order_by: &str,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let kind = collection.kind();
    let mut page_token = String::new();
    let mut shown = 0usize;
    loop {
        let (records, next) =
            demo::list_page(channel.clone(), kind, parent, filter, order_by, &page_token)
                .await
                .map_err(call_error)?;
        for record in records {
            if limit.is_some_and(|l| shown >= l) {
                return Ok(());
            }
            shown += 1;
            match output {
                Output::Json => out!("{}", json::to_json(&record)?),
                Output::Text => out!("{}", demo::record_line(&record)),
            }
        }
        if next.is_empty() {
            break;
        }
        page_token = next;
    }
    if output == Output::Text && shown == 0 {
        eprintln!("no {} match", kind.collection());
    }
    Ok(())
}

/// `copex search QUERY`: hits best first, and facet counts when asked.
pub(super) async fn search(
    channel: Channel,
    output: Output,
    query: &str,
    kinds: &[RecordKindArg],
    filter: &str,
    limit: usize,
    facets: bool,
) -> anyhow::Result<()> {
    let mut search = pb::search_service_client::SearchServiceClient::new(channel.clone());
    let facet_names: Vec<String> = if facets {
        crate::search::FACETS
            .iter()
            .map(|f| (*f).to_owned())
            .collect()
    } else {
        Vec::new()
    };
    let mut counted = Vec::new();
    let mut page_token = String::new();
    let mut shown = 0usize;
    let mut total = 0;
    while shown < limit {
        let page = search
            .search(pb::SearchRequest {
                query: query.to_owned(),
                kinds: kinds.iter().map(|k| k.to_proto() as i32).collect(),
                filter: filter.to_owned(),
                page_size: (limit - shown).min(100) as i32,
                page_token: page_token.clone(),
                // A person reads their own writes.
                wait_for_index: page_token.is_empty(),
                facets: if page_token.is_empty() {
                    facet_names.clone()
                } else {
                    Vec::new()
                },
            })
            .await
            .map_err(call_error)?
            .into_inner();
        total = page.total_size;
        if page_token.is_empty() {
            counted = page.facets.clone();
        }
        for hit in page.hits.iter().take(limit - shown) {
            shown += 1;
            match output {
                Output::Json => out!("{}", json::to_json(hit)?),
                Output::Text => {
                    if let Some(record) = &hit.record {
                        out!("{:>7.3}  {}", hit.score, demo::record_line(record));
                    }
                    out!("         {}", terminal_snippet(&hit.snippet));
                }
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if output == Output::Text {
        eprintln!("{shown} of {total} matching records shown");
        if facets {
            out!("{}", facet_table(&counted));
        }
    } else {
        for facet in &counted {
            out!("{}", json::to_json(facet)?);
        }
    }
    Ok(())
}

/// Facet counts as a table: one row per value, under its facet.
fn facet_table(facets: &[pb::Facet]) -> String {
    let width = facets
        .iter()
        .flat_map(|f| f.values.iter().map(|v| v.value.chars().count()))
        .chain(facets.iter().map(|f| f.field.chars().count()))
        .max()
        .unwrap_or(0);
    let mut out = format!("{:<18}  {:<width$}  {:>7}", "FACET", "VALUE", "RECORDS");
    for facet in facets {
        for value in &facet.values {
            out.push_str(&format!(
                "\n{:<18}  {:<width$}  {:>7}",
                facet.field, value.value, value.count
            ));
        }
    }
    out
}

/// On a terminal, matches in bold and the escapes undone; elsewhere (a
/// file, a pipe) the Markdown the hub sent.
fn terminal_snippet(snippet: &str) -> std::borrow::Cow<'_, str> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        crate::domain::search::render(snippet, "\x1b[1m", "\x1b[22m").into()
    } else {
        snippet.into()
    }
}
