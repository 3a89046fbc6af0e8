//! Records: reads by name and lists, and the read-modify-write of a batch
//! (its statements are in `batch_write`).

use std::collections::{HashMap, HashSet};

use tracing::instrument;

use super::backend::{Backend, Conn};
use super::batch_write::{self, Op};
use super::error::db_error;
use super::rows::{self, ReadRow};
use super::sql::{self, NAMES_PER_STATEMENT};
use super::sql_filter::SqlParam;
use super::sql_store::SqlStore;
use super::statements::SqlxDb;
use super::{
    AuditContext, BatchWritten, Idempotency, ListQuery, StoredRecord, Write, WriteDecision,
    Written, audit,
};
use crate::domain::filter::Expr;
use crate::domain::{Error, Result};

/// Current versions of the named records, with their recipients.
pub async fn records_in<B: Backend>(
    conn: &mut Conn<B>,
    names: &[String],
) -> Result<HashMap<String, StoredRecord>> {
    let mut found = HashMap::with_capacity(names.len());
    for chunk in names.chunks(NAMES_PER_STATEMENT) {
        let params = chunk.iter().map(|n| SqlParam::Text(n.clone())).collect();
        let sql = B::DIALECT.records_by_name(chunk.len());
        for row in B::Db::fetch_all(conn, sql, params).await? {
            let record = rows::record_with_recipients(&row)?;
            found.insert(record.name.clone(), record);
        }
    }
    Ok(found)
}

/// Names of the records `viewer` may see that match `filter`: an
/// expensive read, bounded.
#[instrument(skip_all)]
pub async fn filtered_names<B: Backend>(
    store: &SqlStore<B>,
    viewer: &str,
    filter: &Expr,
) -> Result<HashSet<String>> {
    let (sql, params) = sql::filtered_names_query(viewer, filter)?;
    let found = store
        .bounded()
        .await?
        .read(|conn| B::Db::fetch_all(conn, sql, params))
        .await?;
    found.iter().map(|row| row.get("name")).collect()
}

#[instrument(skip_all, fields(kind = %query.kind, limit = query.limit))]
pub async fn list<B: Backend>(
    store: &SqlStore<B>,
    query: &ListQuery<'_>,
) -> Result<Vec<StoredRecord>> {
    let (sql, params) = sql::list_query(query)?;
    let found = if query.filter.is_none() {
        // A walk along an index that stops at the page's end.
        let mut conn = store.reader().await?;
        B::Db::fetch_all(&mut conn, sql, params).await?
    } else {
        store
            .bounded()
            .await?
            .read(|conn| B::Db::fetch_all(conn, sql, params))
            .await?
    };
    found.iter().map(rows::stored_record).collect()
}

/// Each item's decision on the current version, written with the feed
/// entries, audit rows and the batch's answer in one transaction.
#[instrument(skip_all, fields(items = items.len()))]
pub async fn write<B: Backend>(
    store: &SqlStore<B>,
    items: Vec<(String, WriteDecision)>,
    idempotency: Option<Idempotency>,
    audit: Option<&AuditContext>,
) -> Result<BatchWritten> {
    let mut tx = store.writer.begin().await.map_err(db_error)?;
    if let Some(idem) = &idempotency {
        let earlier = B::Db::fetch_optional(
            &mut tx,
            "SELECT response FROM batch_requests WHERE partner = $1 AND request_id = $2",
            vec![
                SqlParam::Text(idem.partner.clone()),
                SqlParam::Text(idem.request_id.clone()),
            ],
        )
        .await?;
        if let Some(row) = earlier {
            return Ok(BatchWritten::Repeated(row.at(0)?));
        }
    }
    let mut names: Vec<String> = items.iter().map(|(name, _)| name.clone()).collect();
    names.sort_unstable();
    names.dedup();
    let mut current = records_in::<B>(&mut tx, &names).await?;
    let mut results = Vec::with_capacity(items.len());
    let mut ops = Vec::new();
    let mut resources = Vec::with_capacity(items.len());
    for (name, decide) in items {
        resources.push(name.clone());
        let before = current.get(&name).cloned();
        let existed = before.is_some();
        match decide(before) {
            Err(err) => results.push(Err(err)),
            Ok(Write::Nothing) => results.push(Ok(Written {
                existed,
                changed: false,
                current: current.get(&name).cloned(),
            })),
            Ok(Write::Put(version)) => {
                current.insert(name, version.record.clone());
                results.push(Ok(Written {
                    existed,
                    changed: true,
                    current: Some(version.record.clone()),
                }));
                ops.push(Op::Put {
                    version,
                    replaces: existed,
                });
            }
            Ok(Write::Delete) => {
                let kind = current
                    .remove(&name)
                    .map(|c| c.kind)
                    .ok_or_else(|| Error::internal("a delete was decided for a missing record"))?;
                results.push(Ok(Written {
                    existed,
                    changed: true,
                    current: None,
                }));
                ops.push(Op::Delete { name, kind });
            }
        }
    }
    let head = batch_write::apply::<B::Db>(&mut tx, B::DIALECT, &ops).await?;
    if let Some(who) = audit {
        // What changed, and what was refused; not what was unchanged.
        let events: Vec<(String, i32)> = resources
            .iter()
            .zip(&results)
            .filter_map(|(resource, result)| match result {
                Ok(written) if written.changed => Some((resource.clone(), 0)),
                Ok(_) => None,
                Err(err) => Some((resource.clone(), err.code() as i32)),
            })
            .collect();
        audit::insert::<B>(&mut tx, who, &events).await?;
    }
    if let Some(idem) = idempotency {
        let response = (idem.encode)(&results);
        B::Db::execute(
            &mut tx,
            "INSERT INTO batch_requests (partner, request_id, response, create_time) \
             VALUES ($1, $2, $3, $4)",
            vec![
                SqlParam::Text(idem.partner),
                SqlParam::Text(idem.request_id),
                SqlParam::Blob(response),
                SqlParam::Int(crate::domain::record::now_micros()),
            ],
        )
        .await?;
    }
    if let Some(head) = head {
        B::before_commit(&mut tx, head).await?;
    }
    tx.commit().await.map_err(db_error)?;
    if let Some(head) = head {
        store.head.advance(head);
    }
    Ok(BatchWritten::Done(results))
}
