//! The audit log: rows written in the transaction of the write they
//! record, rows written on their own (refused calls), and the log read
//! back.

use super::backend::{Backend, Conn};
use super::error::db_error;
use super::sql_filter::SqlParam;
use super::sql_store::SqlStore;
use super::statements::SqlxDb;
use super::{AuditContext, AuditEntry, AuditEvent, batch_write, rows, sql};
use crate::domain::Result;
use crate::domain::filter::Expr;

/// Audit rows `(resource, code)` of one call, in the caller's transaction.
pub async fn insert<B: Backend>(
    conn: &mut Conn<B>,
    context: &AuditContext,
    events: &[(String, i32)],
) -> Result<()> {
    let now = crate::domain::record::now_micros();
    insert_rows::<B>(
        conn,
        events
            .iter()
            .map(|(resource, code)| (now, context, resource.as_str(), *code)),
    )
    .await
}

/// Audit rows `(event_time, who, resource, code)`, in the caller's
/// transaction; every resource is cut to `MAX_AUDIT_RESOURCE_BYTES`.
pub async fn insert_rows<'a, B: Backend>(
    conn: &mut Conn<B>,
    events: impl Iterator<Item = (i64, &'a AuditContext, &'a str, i32)> + Send,
) -> Result<()> {
    let values: Vec<SqlParam> = events
        .flat_map(|(event_time, context, resource, code)| {
            [
                SqlParam::Int(event_time),
                // Stored as a name, as clients read and filter it.
                SqlParam::Text(if context.partner.is_empty() {
                    String::new()
                } else {
                    crate::domain::names::partner_name(&context.partner)
                }),
                SqlParam::Text(context.fingerprint.clone()),
                SqlParam::Text(context.method.clone()),
                SqlParam::Text(super::audit_resource(resource).into_owned()),
                SqlParam::Int(i64::from(code)),
                SqlParam::Text(context.request_id.clone()),
            ]
        })
        .collect();
    batch_write::insert_rows::<B::Db>(
        conn,
        B::DIALECT,
        "INSERT INTO audit_events (event_time, partner, certificate_fingerprint, method, resource, code, request_id) VALUES ",
        7,
        values,
        "",
    )
    .await
}

/// Adds audit rows on their own, in one transaction.
pub async fn append<B: Backend>(store: &SqlStore<B>, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = store.writer.begin().await.map_err(db_error)?;
    insert_rows::<B>(
        &mut tx,
        events
            .iter()
            .map(|e| (e.event_time, &e.context, e.resource.as_str(), e.code)),
    )
    .await?;
    tx.commit().await.map_err(db_error)
}

/// Audit rows newest first (`sql::audit_query`); a filtered list is an
/// expensive read, bounded.
pub async fn list<B: Backend>(
    store: &SqlStore<B>,
    partner: Option<&str>,
    filter: Option<&Expr>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    let (sql, params) = sql::audit_query(partner, filter, before, limit)?;
    let found = if filter.is_none() {
        let mut conn = store.reader().await?;
        B::Db::fetch_all(&mut conn, sql, params).await?
    } else {
        store
            .bounded()
            .await?
            .read(|conn| B::Db::fetch_all(conn, sql, params))
            .await?
    };
    found.iter().map(rows::audit_entry).collect()
}
