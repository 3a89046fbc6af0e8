//! The batch write: the final version of each record a batch touched,
//! its filter values, recipients, feed entry and audience, with a few
//! multi-row statements in the batch's transaction.

use std::collections::{HashMap, HashSet};

use super::NewVersion;
use super::rows::ReadRow;
use super::sql::{Dialect, PUBLIC_NOW, VALUES_PER_STATEMENT};
use super::sql_filter::SqlParam;
use super::statements::SqlxDb;
use crate::domain::{Error, Kind, Result};

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

/// Multi-row INSERT of `values` (`width` per row), chunked.
pub async fn insert_rows<D: SqlxDb>(
    conn: &mut D::Connection,
    dialect: Dialect,
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
        let sql = format!("{head}{}{tail}", dialect.rows(chunk.len() / width, width));
        D::execute(conn, sql, chunk).await?;
    }
}

/// Writes the final version of each record a batch touched, its feed entry
/// and audience, with a few multi-row statements. Returns the newest feed
/// position, or `None` when nothing was written. `ops` is borrowed so that
/// the batch is freed after the commit, not while the transaction waits.
pub async fn apply<D: SqlxDb>(
    conn: &mut D::Connection,
    dialect: Dialect,
    ops: &[Op],
) -> Result<Option<i64>> {
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
        D::execute(conn, sql, chunk.to_vec()).await?;
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
        for row in D::fetch_all(conn, sql, params).await? {
            ids.insert(row.get("name")?, row.get("id")?);
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
            D::execute(conn, sql, chunk.to_vec()).await?;
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
    insert_rows::<D>(
        conn,
        dialect,
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
    insert_rows::<D>(
        conn,
        dialect,
        "INSERT INTO record_attrs (record, field, str, num) VALUES ",
        4,
        attrs,
        " ON CONFLICT DO NOTHING",
    )
    .await?;

    // Feed positions, taken last: the hub row stays locked from here to the
    // commit, so positions become visible in the order they are handed out.
    let count = ops.len() as i64;
    let head: i64 = D::fetch_all(
        conn,
        format!(
            "UPDATE hub SET feed_seq = feed_seq + {} WHERE singleton = 1 RETURNING feed_seq",
            dialect.placeholders(1, 1)
        ),
        vec![SqlParam::Int(count)],
    )
    .await?
    .first()
    .ok_or_else(|| Error::internal("the hub row is missing"))?
    .at(0)?;
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
    insert_rows::<D>(
        conn,
        dialect,
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
        D::execute(conn, sql, chunk.to_vec()).await?;
    }
    for chunk in public.chunks(VALUES_PER_STATEMENT) {
        let sql = format!(
            "DELETE FROM record_audience WHERE name IN ({})",
            dialect.placeholders(chunk.len(), 1)
        );
        D::execute(conn, sql, chunk.to_vec()).await?;
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
    insert_rows::<D>(
        conn,
        dialect,
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
