//! SearchService: ranked full-text search over every record the caller may
//! see, through the index that follows the change feed (`crate::search`).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::ServiceContext;
use crate::domain::paging::{self, PageTokens, SortValue};
use prost_reflect::DynamicMessage;

use crate::domain::search::SearchText;
use crate::domain::{Error, kind::record_from_body, record, search, sharing};
use crate::pb;
use crate::search::query::Request as IndexRequest;

/// The longest a call waits for the index (`wait_for_index`) when its
/// client set no deadline.
const MAX_INDEX_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct SearchApi {
    hub: Arc<ServiceContext>,
}

impl SearchApi {
    pub fn new(hub: Arc<ServiceContext>) -> Self {
        Self { hub }
    }
}

/// The facet names of a request, checked.
fn facets(names: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !crate::search::FACETS.contains(&name.as_str()) {
            return Err(Error::invalid(
                "facets",
                format!(
                    "names no facet {:?}; the facets are {}",
                    crate::domain::names::truncate(name, 40),
                    crate::search::FACETS.join(", ")
                ),
            ));
        }
        if out.contains(name) {
            return Err(Error::invalid("facets", format!("names {name} twice")));
        }
        out.push(name.clone());
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::search_service_server::SearchService for SearchApi {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        let req = request.into_inner();
        // With `wait_for_index`, the index must cover the feed head as the
        // database has it when the call begins: also the commits of other
        // instances, whose notices may not have arrived yet.
        let head = if req.wait_for_index {
            self.hub.store.read_index_feed(i64::MAX, 0).await?.head
        } else {
            0
        };
        let query = search::parse(&req.query)?;
        let kinds = crate::domain::kind::kinds_from_proto("kinds", &req.kinds)?;
        let filter = self.hub.parse_filter(&req.filter)?;
        let facet_names = facets(&req.facets)?;
        let limit = paging::page_size(
            req.page_size,
            search::DEFAULT_PAGE_SIZE,
            search::MAX_PAGE_SIZE,
        )?;
        // Pages are positions in the ranking: a search ranks what is there
        // when each page is asked for, as web search does.
        let kind_list: Vec<&str> = kinds.iter().map(|k| k.singular()).collect();
        let digest = PageTokens::query_digest(&[
            "search",
            caller.id(),
            &req.query,
            &kind_list.join(","),
            &req.filter,
        ]);
        let offset = match self.hub.tokens.open(&digest, &req.page_token)? {
            None => 0,
            Some(position) => match position.as_slice() {
                [SortValue::Int(n)] if *n >= 0 => *n as usize,
                _ => return Err(Error::invalid("page_token", "is not a search page token").into()),
            },
        };
        if req.wait_for_index && self.hub.search.indexed() < head {
            let wait = crate::telemetry::call_deadline()
                .map(|d| d.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or(MAX_INDEX_WAIT)
                .min(MAX_INDEX_WAIT);
            if tokio::time::timeout(wait, self.hub.search.wait_for(head))
                .await
                .is_err()
            {
                return Err(Error::DeadlineExceeded {
                    reason: "SEARCH_INDEX_BEHIND",
                    message: "the search index did not reach the writes committed before the call within its deadline".into(),
                }
                .into());
            }
        }
        let _slot = self.hub.expensive.enter(caller.id()).await?;
        let names = match &filter {
            Some(filter) => Some(self.hub.store.filtered_names(caller.id(), filter).await?),
            None => None,
        };
        let index = self.hub.search.clone();
        let viewer = caller.id().to_owned();
        let outcome = tokio::task::spawn_blocking(move || {
            index
                .search(&IndexRequest {
                    viewer: &viewer,
                    query: &query,
                    kinds: &kinds,
                    names: names.as_ref(),
                    offset,
                    limit: limit + 1,
                    facets: &facet_names,
                })
                .map(|outcome| (outcome, query))
        })
        .await
        .map_err(Error::internal)??;
        let (outcome, query) = outcome;
        let mut ranked = outcome.hits;
        let next_page_token = if ranked.len() > limit {
            ranked.truncate(limit);
            self.hub
                .tokens
                .issue(&digest, vec![SortValue::Int((offset + limit) as i64)])?
        } else {
            String::new()
        };
        // The records as they are now: one the caller may no longer see
        // (made restricted or deleted less than the index lag ago) is left
        // out.
        let names: Vec<String> = ranked.iter().map(|(name, _)| name.clone()).collect();
        let mut found = self.hub.store.get_records(&names).await?;
        let mut hits = Vec::with_capacity(ranked.len());
        for (name, score) in ranked {
            let Some(stored) = found.remove(&name) else {
                continue;
            };
            if !sharing::can_see(caller.id(), &stored.owner, stored.tlp, &stored.recipients) {
                continue;
            }
            let kind = stored.kind;
            let content =
                DynamicMessage::decode(record::schema().message(kind), stored.body.as_slice())
                    .map_err(Error::internal)?;
            let text = SearchText::of(kind, &content);
            // Words match as the index matched them: in the record's
            // language.
            let lang = crate::search::languages::of_record(
                &record::string_field(&content, "language_code"),
                &text,
            );
            let mut analyzer = lang.analyzer();
            let mut key = |word: &str| {
                crate::search::languages::analyse(&mut analyzer, word)
                    .pop()
                    .unwrap_or_default()
            };
            hits.push(pb::SearchHit {
                record: Some(record_from_body(kind, &stored.body).map_err(Error::internal)?),
                score: f64::from(score),
                snippet: search::snippet(&text, &query, &mut key),
            });
        }
        let facets = outcome
            .facets
            .into_iter()
            .map(|(field, values)| pb::Facet {
                field,
                values: values
                    .into_iter()
                    .map(|(value, count)| pb::FacetValue {
                        value,
                        count: i32::try_from(count).unwrap_or(i32::MAX),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::SearchResponse {
            hits,
            next_page_token,
            total_size: i32::try_from(outcome.total).unwrap_or(i32::MAX),
            facets,
        }))
    }
}
