//! SQL shared by the backends: the list and feed queries, and the batch
//! write (records, filter values, recipients, feed entries, audience) with
//! multi-row statements. Each backend supplies an `Exec` over its own
//! transaction; the SQL differs only in placeholders and one aggregate.

use std::collections::{HashMap, HashSet};

use super::sql_filter::{self, SqlParam};
use super::{AuditContext, FeedQuery, ListQuery, NewVersion, index};
use crate::domain::filter::Expr;
use crate::domain::paging::{SortField, SortValue};
use crate::domain::{Error, Kind, Result};
use crate::pb::Tlp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Placeholders for `count` values, numbered from `first` where the
    /// dialect numbers them. SQLite gets anonymous `?`: it looks numbered
    /// ones up by a linear search per value, which made large batches
    /// quadratic.
    pub fn placeholders(self, count: usize, first: usize) -> String {
        let mut sql = String::with_capacity(count * 7);
        self.push_placeholders(&mut sql, count, first);
        sql
    }

    /// `(.., ..), (.., ..)` for `count` rows of `width` values. Written into
    /// one string: a batch's statements hold thousands of placeholders, and
    /// a string for each was 3% of the hub's CPU during BatchUpsertRecords,
    /// spent while the transaction waited.
    pub fn rows(self, count: usize, width: usize) -> String {
        let mut sql = String::with_capacity(count * (width * 7 + 4));
        for r in 0..count {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            self.push_placeholders(&mut sql, width, r * width + 1);
            sql.push(')');
        }
        sql
    }

    fn push_placeholders(self, sql: &mut String, count: usize, first: usize) {
        use std::fmt::Write;
        for i in 0..count {
            if i > 0 {
                sql.push_str(", ");
            }
            match self {
                Dialect::Sqlite => sql.push('?'),
                // Writing into a String cannot fail.
                Dialect::Postgres => {
                    let _ = write!(sql, "${}", first + i);
                }
            }
        }
    }

    /// Locks what a read inside a write transaction selects until the
    /// commit; SQLite's one writer needs no lock.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The recipients of record `r` joined by commas (partner ids hold
    /// none), sorted.
    pub fn recipients_of_r(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "(SELECT group_concat(partner, ',') FROM (SELECT partner FROM record_recipients \
                 WHERE record = r.id ORDER BY partner))"
            }
            Dialect::Postgres => {
                "(SELECT string_agg(partner, ',' ORDER BY partner) FROM record_recipients \
                 WHERE record = r.id)"
            }
        }
    }

    /// Current versions of up to `count` records by name, with their
    /// recipients.
    pub fn records_by_name(self, count: usize) -> String {
        let recipients = self.recipients_of_r();
        format!(
            "SELECT {RECORD_COLUMNS}, {recipients} AS recipients FROM records r WHERE r.name IN ({})",
            self.placeholders(count, 1)
        )
    }
}

/// Names (or partner ids) per `IN (...)` statement, as `records_by_name`'s.
pub const NAMES_PER_STATEMENT: usize = 500;

pub const RECORD_COLUMNS: &str = "r.id, r.kind, r.name, r.owner, r.uid, r.etag, r.create_time, \
     r.update_time, r.tlp, r.title, r.body";

/// `public_until` of a record every partner may still see.
pub const PUBLIC_NOW: i64 = i64::MAX;

/// Values per statement, under both databases' limits.
const VALUES_PER_STATEMENT: usize = 8000;

/// The restricted TLP numbers, for the visibility clause.
pub fn restricted_tlps() -> String {
    [Tlp::Amber, Tlp::AmberStrict, Tlp::Red]
        .iter()
        .map(|t| (*t as i32).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `viewer` (a placeholder) may see record `r`: anyone unless it
/// is restricted, else its owner and its recipients.
pub fn visible_to(viewer: &str) -> String {
    format!(
        "(r.tlp NOT IN ({}) OR r.owner = {viewer} OR EXISTS \
         (SELECT 1 FROM record_recipients v WHERE v.record = r.id AND v.partner = {viewer}))",
        restricted_tlps()
    )
}

fn sort_column(field: SortField) -> &'static str {
    match field {
        SortField::CreateTime => "r.create_time",
        SortField::UpdateTime => "r.update_time",
        SortField::Name => "r.name",
        SortField::Title => "r.title",
    }
}

fn sort_param(value: &SortValue) -> SqlParam {
    match value {
        SortValue::Int(n) => SqlParam::Int(*n),
        SortValue::Text(t) => SqlParam::Text(t.clone()),
    }
}

/// Appends a parameter and returns its placeholder (`$N` works on both).
pub fn push_param(params: &mut Vec<SqlParam>, value: SqlParam) -> String {
    params.push(value);
    format!("${}", params.len())
}

/// Binds `kinds` and returns their placeholders, comma separated.
pub fn kind_params(params: &mut Vec<SqlParam>, kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| push_param(params, SqlParam::Text(k.singular().into())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The records `query.viewer` may see, in keyset order.
/// Names of the records `viewer` may see that match `filter` on the
/// fields every record has.
pub fn filtered_names_query(viewer: &str, filter: &Expr) -> Result<(String, Vec<SqlParam>)> {
    let mut params = Vec::new();
    let viewer = push_param(&mut params, SqlParam::Text(viewer.into()));
    let compiled = sql_filter::compile(filter, &index::CommonFields, params.len() + 1)
        .map_err(|e| Error::invalid("filter", e.to_string()))?;
    params.extend(compiled.params);
    Ok((
        format!(
            "SELECT r.name AS name FROM records r WHERE {} AND ({})",
            visible_to(&viewer),
            compiled.sql
        ),
        params,
    ))
}

pub fn list_query(query: &ListQuery<'_>) -> Result<(String, Vec<SqlParam>)> {
    let mut params = Vec::new();
    let kind = push_param(&mut params, SqlParam::Text(query.kind.singular().into()));
    let viewer = push_param(&mut params, SqlParam::Text(query.viewer.into()));
    let mut sql = format!(
        "SELECT {RECORD_COLUMNS} FROM records r WHERE r.kind = {kind} AND {}",
        visible_to(&viewer)
    );
    if let Some(owner) = query.owner {
        let owner = push_param(&mut params, SqlParam::Text(owner.into()));
        sql.push_str(&format!(" AND r.owner = {owner}"));
    }
    if let Some(expr) = query.filter {
        let compiled = sql_filter::compile(expr, index::fields(query.kind), params.len() + 1)
            .map_err(|e| Error::invalid("filter", e.to_string()))?;
        sql.push_str(&format!(" AND ({})", compiled.sql));
        params.extend(compiled.params);
    }
    if let Some(after) = query.after {
        if after.len() != query.order.len() {
            return Err(Error::invalid(
                "page_token",
                "does not belong to this query",
            ));
        }
        // Keyset: (k1 > v1) OR (k1 = v1 AND k2 > v2) OR ..., each
        // comparison in its key's direction.
        let mut alternatives = Vec::new();
        for (i, key) in query.order.iter().enumerate() {
            let mut terms = Vec::new();
            for (prev, value) in query.order[..i].iter().zip(after) {
                let p = push_param(&mut params, sort_param(value));
                terms.push(format!("{} = {p}", sort_column(prev.field)));
            }
            let p = push_param(&mut params, sort_param(&after[i]));
            let op = if key.desc { "<" } else { ">" };
            terms.push(format!("{} {op} {p}", sort_column(key.field)));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
    }
    let order: Vec<String> = query
        .order
        .iter()
        .map(|k| {
            format!(
                "{} {}",
                sort_column(k.field),
                if k.desc { "DESC" } else { "ASC" }
            )
        })
        .collect();
    let limit = push_param(&mut params, SqlParam::Int(query.limit as i64));
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
    Ok((sql, params))
}

/// The feed's head and purge horizon, read in the snapshot of a feed chunk.
pub const FEED_HEAD: &str = "SELECT feed_seq, purge_horizon FROM hub WHERE singleton = 1";

/// The changes after `query.after` that `query.viewer` may know of: the
/// record's body when it may see it now; else, once, the notice of the
/// change at which it lost sight (UNSHARED or DELETED, at that change's
/// time), to a caller whose cursor is before that change; nothing when it
/// never could see it or was told already.
///
/// Columns: seq, kind, name, commit_time, body, then the notice from the
/// viewer's audience row (its time, whether it was a delete) and the one of
/// partners that saw the record while it was public (likewise).
pub fn feed_query(query: &FeedQuery<'_>) -> (String, Vec<SqlParam>) {
    let mut params = Vec::new();
    let viewer = push_param(&mut params, SqlParam::Text(query.viewer.id.clone()));
    let joined = push_param(&mut params, SqlParam::Int(query.viewer.create_time));
    let after = push_param(&mut params, SqlParam::Int(query.after));
    let visible = visible_to(&viewer);
    let restricted = restricted_tlps();
    let lost = format!(
        "FROM record_audience a WHERE a.name = c.name AND a.partner = {viewer} AND a.lost_at > {after}"
    );
    let public_lost = format!("c.public_lost_at > {after} AND c.public_until >= {joined}");
    // Only a tombstone or a restricted record can have a notice: the cheap
    // test keeps the audience lookups off the common public change.
    let may_notice = format!("c.record IS NULL OR r.tlp IN ({restricted})");
    let mut sql = format!(
        "SELECT c.seq, c.kind, c.name, c.commit_time, \
         CASE WHEN NOT c.deleted AND {visible} THEN r.body END AS body, \
         CASE WHEN {may_notice} THEN (SELECT a.lost_time {lost}) END AS lost_time, \
         CASE WHEN {may_notice} THEN (SELECT a.deleted {lost}) END AS lost_deleted, \
         CASE WHEN {public_lost} THEN c.public_until END AS public_lost_time, \
         c.public_deleted \
         FROM changes c LEFT JOIN records r ON r.id = c.record \
         WHERE c.seq > {after} \
         AND ((NOT c.deleted AND {visible}) OR ({public_lost}) OR EXISTS (SELECT 1 {lost}))"
    );
    if !query.kinds.is_empty() {
        sql.push_str(&format!(
            " AND c.kind IN ({})",
            kind_params(&mut params, query.kinds)
        ));
    }
    let limit = push_param(&mut params, SqlParam::Int(query.limit as i64));
    sql.push_str(&format!(" ORDER BY c.seq LIMIT {limit}"));
    (sql, params)
}

/// One write a batch decided.
pub enum Op {
    /// `replaces`: the record existed before the batch, so its old filter
    /// values and recipients go.
    Put {
        version: Box<NewVersion>,
        replaces: bool,
    },
    Delete {
        name: String,
        kind: Kind,
    },
}

impl Op {
    fn name(&self) -> &str {
        match self {
            Op::Put { version, .. } => &version.record.name,
            Op::Delete { name, .. } => name,
        }
    }
}

/// A backend's transaction, as the batch write needs it.
#[tonic::async_trait]
pub trait Exec: Send {
    fn dialect(&self) -> Dialect;
    async fn execute(&mut self, sql: String, params: Vec<SqlParam>) -> Result<u64>;
    /// Rows of `(id, name)`.
    async fn fetch_ids(&mut self, sql: String, params: Vec<SqlParam>)
    -> Result<Vec<(i64, String)>>;
    async fn fetch_one_i64(&mut self, sql: String, params: Vec<SqlParam>) -> Result<i64>;
    /// Records with their recipients (`Dialect::records_by_name` columns).
    async fn fetch_records(
        &mut self,
        sql: String,
        params: Vec<SqlParam>,
    ) -> Result<Vec<(i64, super::StoredRecord)>>;
}

/// Multi-row INSERT of `values` (`width` per row), chunked.
pub async fn insert_rows(
    tx: &mut dyn Exec,
    head: &str,
    width: usize,
    values: Vec<SqlParam>,
    tail: &str,
) -> Result<()> {
    let per_statement = (VALUES_PER_STATEMENT / width) * width;
    let mut values = values.into_iter();
    loop {
        let chunk: Vec<SqlParam> = values.by_ref().take(per_statement).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "{head}{}{tail}",
            tx.dialect().rows(chunk.len() / width, width)
        );
        tx.execute(sql, chunk).await?;
    }
}

/// Writes the final version of each record a batch touched, its feed entry
/// and audience, with a few multi-row statements. Returns the newest feed
/// position, or `None` when nothing was written. `ops` is borrowed so that
/// the batch is freed after the commit, not while the transaction waits.
pub async fn apply(tx: &mut dyn Exec, ops: &[Op]) -> Result<Option<i64>> {
    // Only the last write of a name in a batch matters, at its place.
    let mut last = HashMap::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        last.insert(op.name(), i);
    }
    let ops: Vec<&Op> = ops
        .iter()
        .enumerate()
        .filter(|(i, op)| last.get(op.name()) == Some(i))
        .map(|(_, op)| op)
        .collect();
    if ops.is_empty() {
        return Ok(None);
    }
    let dialect = tx.dialect();
    let deleted: Vec<SqlParam> = ops
        .iter()
        .filter_map(|op| match *op {
            Op::Delete { name, .. } => Some(SqlParam::Text(name.clone())),
            Op::Put { .. } => None,
        })
        .collect();
    for chunk in deleted.chunks(VALUES_PER_STATEMENT) {
        let sql = format!(
            "DELETE FROM records WHERE name IN ({})",
            dialect.placeholders(chunk.len(), 1)
        );
        tx.execute(sql, chunk.to_vec()).await?;
    }

    let puts: Vec<&NewVersion> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Put { version, .. } => Some(version.as_ref()),
            Op::Delete { .. } => None,
        })
        .collect();
    let replaced: HashSet<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Put {
                version,
                replaces: true,
            } => Some(version.record.name.as_str()),
            _ => None,
        })
        .collect();
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(puts.len());
    for chunk in puts.chunks(VALUES_PER_STATEMENT / 11) {
        let mut params = Vec::with_capacity(chunk.len() * 11);
        for version in chunk {
            let r = &version.record;
            params.extend([
                SqlParam::Text(r.kind.singular().into()),
                SqlParam::Text(r.owner.clone()),
                SqlParam::Text(version.record_id.clone()),
                SqlParam::Text(r.name.clone()),
                SqlParam::Text(r.uid.clone()),
                SqlParam::Text(r.etag.clone()),
                SqlParam::Int(r.create_time),
                SqlParam::Int(r.update_time),
                SqlParam::Int(i64::from(r.tlp)),
                SqlParam::Text(r.title.clone()),
                SqlParam::Blob(r.body.clone()),
            ]);
        }
        let sql = format!(
            "INSERT INTO records (kind, owner, record_id, name, uid, etag, create_time, update_time, tlp, title, body) \
             VALUES {} ON CONFLICT (name) DO UPDATE SET etag = excluded.etag, update_time = excluded.update_time, \
             tlp = excluded.tlp, title = excluded.title, body = excluded.body RETURNING id, name",
            dialect.rows(chunk.len(), 11)
        );
        for (id, name) in tx.fetch_ids(sql, params).await? {
            ids.insert(name, id);
        }
    }
    // Each put beside its row id, looked up once: the rows below are keyed
    // by it.
    let puts: Vec<(&NewVersion, i64)> = puts
        .into_iter()
        .map(|v| (v, ids.get(&v.record.name).copied().unwrap_or_default()))
        .collect();
    let replaced_puts: Vec<(&NewVersion, i64)> = puts
        .iter()
        .filter(|(v, _)| replaced.contains(v.record.name.as_str()))
        .copied()
        .collect();
    let replaced_ids: Vec<SqlParam> = replaced_puts
        .iter()
        .map(|(_, id)| SqlParam::Int(*id))
        .collect();
    for table in ["record_recipients", "record_attrs"] {
        for chunk in replaced_ids.chunks(VALUES_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM {table} WHERE record IN ({})",
                dialect.placeholders(chunk.len(), 1)
            );
            tx.execute(sql, chunk.to_vec()).await?;
        }
    }
    let recipients: Vec<SqlParam> = puts
        .iter()
        .flat_map(|&(v, id)| {
            v.record
                .recipients
                .iter()
                .flat_map(move |p| [SqlParam::Int(id), SqlParam::Text(p.clone())])
        })
        .collect();
    insert_rows(
        tx,
        "INSERT INTO record_recipients (record, partner) VALUES ",
        2,
        recipients,
        " ON CONFLICT DO NOTHING",
    )
    .await?;
    let attrs: Vec<SqlParam> = puts
        .iter()
        .flat_map(|&(v, id)| {
            v.attrs.iter().flat_map(move |a| {
                [
                    SqlParam::Int(id),
                    SqlParam::Text(a.field.clone()),
                    SqlParam::Text(a.str.clone().unwrap_or_default()),
                    SqlParam::Int(a.num.unwrap_or_default()),
                ]
            })
        })
        .collect();
    insert_rows(
        tx,
        "INSERT INTO record_attrs (record, field, str, num) VALUES ",
        4,
        attrs,
        " ON CONFLICT DO NOTHING",
    )
    .await?;

    // Feed positions, taken last: the hub row stays locked from here to the
    // commit, so positions become visible in the order they are handed out.
    let count = ops.len() as i64;
    let head = tx
        .fetch_one_i64(
            format!(
                "UPDATE hub SET feed_seq = feed_seq + {} WHERE singleton = 1 RETURNING feed_seq",
                dialect.placeholders(1, 1)
            ),
            vec![SqlParam::Int(count)],
        )
        .await?;
    let now = crate::domain::record::now_micros();
    let mut changes = Vec::with_capacity(ops.len() * 7);
    // Puts come in the order of their ops.
    let mut put_ids = puts.iter().map(|&(_, id)| id);
    for (i, op) in ops.iter().enumerate() {
        let seq = head - count + 1 + i as i64;
        // A tombstone names no row, since a deleted record's row id may be
        // reused; `deleted` says the same, for the tombstone index and purge.
        let (kind, record, commit_time, public) = match *op {
            Op::Put { version: v, .. } => (
                v.record.kind,
                put_ids.next(),
                v.record.update_time,
                !crate::domain::sharing::is_restricted(v.record.tlp),
            ),
            Op::Delete { kind, .. } => (*kind, None, now, false),
        };
        changes.extend([
            SqlParam::Int(seq),
            SqlParam::Text(op.name().to_owned()),
            SqlParam::Text(kind.singular().into()),
            SqlParam::Bool(record.is_none()),
            SqlParam::Int(commit_time),
            if public {
                SqlParam::Int(PUBLIC_NOW)
            } else {
                SqlParam::Null
            },
            record.map_or(SqlParam::Null, SqlParam::Int),
        ]);
    }
    insert_rows(
        tx,
        "INSERT INTO changes (seq, name, kind, deleted, commit_time, public_until, record) VALUES ",
        7,
        changes,
        // Compaction: a record's earlier change gives way to this one. A
        // record that stops being public (restricted or deleted) takes
        // sight from those that saw it then, at this change, once.
        " ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, kind = excluded.kind, \
         deleted = excluded.deleted, commit_time = excluded.commit_time, record = excluded.record, \
         public_until = CASE WHEN excluded.public_until IS NOT NULL THEN excluded.public_until \
             WHEN changes.public_until = 9223372036854775807 THEN excluded.commit_time \
             ELSE changes.public_until END, \
         public_lost_at = CASE WHEN excluded.public_until IS NOT NULL THEN NULL \
             WHEN changes.public_until = 9223372036854775807 THEN excluded.seq \
             ELSE changes.public_lost_at END, \
         public_deleted = CASE WHEN excluded.public_until IS NOT NULL THEN excluded.public_deleted \
             WHEN changes.public_until = 9223372036854775807 THEN excluded.deleted \
             ELSE changes.public_deleted END",
    )
    .await?;
    // The audience: each restricted version's owner and recipients see it
    // (lost_at NULL); whoever saw the record and no longer does loses
    // sight at this change, once (the feed tells it of this change and of
    // nothing later); a public version needs no rows, since every partner
    // sees it and `changes` keeps when that stopped.
    let mut losing = Vec::new();
    let mut public = Vec::new();
    for op in &ops {
        match op {
            Op::Put { version, .. }
                if !crate::domain::sharing::is_restricted(version.record.tlp) =>
            {
                public.push(SqlParam::Text(op.name().to_owned()));
            }
            _ => losing.push(SqlParam::Text(op.name().to_owned())),
        }
    }
    for chunk in losing.chunks(VALUES_PER_STATEMENT) {
        let sql = format!(
            "UPDATE record_audience SET lost_at = c.seq, lost_time = c.commit_time, \
             deleted = c.deleted FROM changes c WHERE c.name = record_audience.name \
             AND record_audience.lost_at IS NULL AND record_audience.name IN ({})",
            dialect.placeholders(chunk.len(), 1)
        );
        tx.execute(sql, chunk.to_vec()).await?;
    }
    for chunk in public.chunks(VALUES_PER_STATEMENT) {
        let sql = format!(
            "DELETE FROM record_audience WHERE name IN ({})",
            dialect.placeholders(chunk.len(), 1)
        );
        tx.execute(sql, chunk.to_vec()).await?;
    }
    let audience: Vec<SqlParam> = puts
        .iter()
        .filter(|(v, _)| crate::domain::sharing::is_restricted(v.record.tlp))
        .flat_map(|&(v, _)| {
            let name = v.record.name.clone();
            std::iter::once(&v.record.owner)
                .chain(&v.record.recipients)
                .flat_map(move |p| [SqlParam::Text(name.clone()), SqlParam::Text(p.clone())])
        })
        .collect();
    insert_rows(
        tx,
        "INSERT INTO record_audience (name, partner) VALUES ",
        2,
        audience,
        // Sight regained, or kept: the row says so again.
        " ON CONFLICT (name, partner) DO UPDATE SET lost_at = NULL, lost_time = NULL, \
         deleted = excluded.deleted",
    )
    .await?;
    Ok(Some(head))
}

/// Audit rows `(resource, code)` of one call, in the caller's transaction.
pub async fn insert_audit(
    tx: &mut dyn Exec,
    context: &AuditContext,
    rows: &[(String, i32)],
) -> Result<()> {
    let now = crate::domain::record::now_micros();
    insert_audit_rows(
        tx,
        rows.iter()
            .map(|(resource, code)| (now, context, resource.as_str(), *code)),
    )
    .await
}

/// Audit rows `(event_time, who, resource, code)`, in the caller's
/// transaction; every resource is cut to `MAX_AUDIT_RESOURCE_BYTES`.
pub async fn insert_audit_rows<'a>(
    tx: &mut dyn Exec,
    rows: impl Iterator<Item = (i64, &'a AuditContext, &'a str, i32)>,
) -> Result<()> {
    let values: Vec<SqlParam> = rows
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
    insert_rows(
        tx,
        "INSERT INTO audit_events (event_time, partner, certificate_fingerprint, method, resource, code, request_id) VALUES ",
        7,
        values,
        "",
    )
    .await
}

/// The filterable fields of audit events: columns of `audit_events`.
pub struct AuditFields;

impl sql_filter::FieldResolver for AuditFields {
    fn resolve(&self, path: &str) -> Option<sql_filter::FieldTarget> {
        use sql_filter::{FieldTarget, Storage, ValueType};
        let (column, ty) = match path {
            "method" => ("method", ValueType::String),
            "resource" => ("resource", ValueType::String),
            "partner" => ("partner", ValueType::String),
            "request_id" => ("request_id", ValueType::String),
            "certificate_fingerprint" => ("certificate_fingerprint", ValueType::String),
            "code" => ("code", ValueType::Int),
            "event_time" => ("event_time", ValueType::Timestamp),
            _ => return None,
        };
        Some(FieldTarget {
            storage: Storage::Column(column),
            ty,
            repeated: false,
        })
    }
}

/// Audit rows newest first: of one partner (a name) or all, matching the
/// filter, before row `before`.
pub fn audit_query(
    partner: Option<&str>,
    filter: Option<&crate::domain::filter::Expr>,
    before: Option<i64>,
    limit: usize,
) -> Result<(String, Vec<SqlParam>)> {
    let mut params = Vec::new();
    let before = push_param(&mut params, SqlParam::Int(before.unwrap_or(i64::MAX)));
    // `r`, as the filter compiler names the row.
    let mut sql = format!("SELECT * FROM audit_events r WHERE r.id < {before}");
    if let Some(partner) = partner {
        let p = push_param(&mut params, SqlParam::Text(partner.to_owned()));
        sql.push_str(&format!(" AND r.partner = {p}"));
    }
    if let Some(expr) = filter {
        let compiled = sql_filter::compile(expr, &AuditFields, params.len() + 1)
            .map_err(|e| Error::invalid("filter", e.to_string()))?;
        sql.push_str(&format!(" AND ({})", compiled.sql));
        params.extend(compiled.params);
    }
    let limit = push_param(&mut params, SqlParam::Int(limit as i64));
    sql.push_str(&format!(" ORDER BY r.id DESC LIMIT {limit}"));
    Ok((sql, params))
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn placeholders_number_rows_from_one_on_postgres_only() {
        assert_eq!(Dialect::Sqlite.placeholders(3, 1), "?, ?, ?");
        assert_eq!(Dialect::Postgres.placeholders(3, 4), "$4, $5, $6");
        assert_eq!(Dialect::Sqlite.rows(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Dialect::Postgres.rows(3, 2), "($1, $2), ($3, $4), ($5, $6)");
        assert_eq!(Dialect::Postgres.rows(0, 2), "");
        assert_eq!(Dialect::Postgres.placeholders(0, 1), "");
    }
}
