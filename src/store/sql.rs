//! SQL shared by the backends: the list, feed and audit queries. The SQL
//! differs between the databases only in placeholders, row locks and one
//! aggregate (`Dialect`).

use super::sql_filter::{self, SqlParam};
use super::{FeedQuery, ListQuery, filter_attrs};
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
pub const VALUES_PER_STATEMENT: usize = 8000;

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

/// Names of the records `viewer` may see that match `filter` on the
/// fields of any kind (`filter_attrs::SearchFields`).
pub fn filtered_names_query(viewer: &str, filter: &Expr) -> Result<(String, Vec<SqlParam>)> {
    let mut params = Vec::new();
    let viewer = push_param(&mut params, SqlParam::Text(viewer.into()));
    let compiled = sql_filter::compile(filter, &filter_attrs::SearchFields, params.len() + 1)
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

/// The records `query.viewer` may see, in keyset order.
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
        let compiled =
            sql_filter::compile(expr, filter_attrs::fields(query.kind), params.len() + 1)
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
