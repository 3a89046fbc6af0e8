//! SearchService: ranked full-text search over every record the caller may
//! see, through the store's index (FTS5 or tsvector).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Hub;
use crate::domain::paging::{self, PageTokens, SortValue};
use prost_reflect::DynamicMessage;

use crate::domain::search::SearchText;
use crate::domain::{Error, kind::record_from_body, record, search};
use crate::pb;
use crate::store::SearchQuery;

#[derive(Clone)]
pub struct SearchApi {
    hub: Arc<Hub>,
}

impl SearchApi {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl pb::search_service_server::SearchService for SearchApi {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let caller = self.hub.auth.authenticate(&request).await?;
        let req = request.into_inner();
        let query = search::parse(&req.query)?;
        let kinds = crate::domain::kind::kinds_from_proto("kinds", &req.kinds)?;
        let filter = self.hub.parse_filter(&req.filter)?;
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
        let _slot = self.hub.expensive.enter(caller.id()).await?;
        let page = self
            .hub
            .store
            .search(&SearchQuery {
                viewer: caller.id(),
                query: &query,
                kinds: &kinds,
                filter: filter.as_ref(),
                offset,
                limit: limit + 1,
            })
            .await?;
        let mut hits = page.hits;
        let next_page_token = if hits.len() > limit {
            hits.truncate(limit);
            self.hub
                .tokens
                .issue(&digest, vec![SortValue::Int((offset + limit) as i64)])?
        } else {
            String::new()
        };
        let hits = hits
            .into_iter()
            .map(|hit| {
                let kind = hit.record.kind;
                let content = DynamicMessage::decode(
                    record::schema().message(kind),
                    hit.record.body.as_slice(),
                )
                .map_err(Error::internal)?;
                Ok(pb::SearchHit {
                    record: Some(
                        record_from_body(kind, &hit.record.body).map_err(Error::internal)?,
                    ),
                    score: hit.score,
                    snippet: search::snippet(&SearchText::of(kind, &content), &query),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Response::new(pb::SearchResponse {
            hits,
            next_page_token,
            total_size: i32::try_from(page.total).unwrap_or(i32::MAX),
        }))
    }
}
