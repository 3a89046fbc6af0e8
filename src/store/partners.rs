//! Partners, their identities and CAs.

use std::collections::HashSet;

use tracing::instrument;

use super::backend::{Backend, Conn};
use super::error::db_error;
use super::rows::{self, ReadRow};
use super::sql::NAMES_PER_STATEMENT;
use super::sql_filter::SqlParam;
use super::sql_store::SqlStore;
use super::statements::SqlxDb;
use super::{AuditContext, EditPartner, audit};
use crate::domain::partner::Partner;
use crate::domain::{Error, Result};
use crate::pb::Role;

/// The one-column rows of `sql` (text), in order.
async fn texts<B: Backend>(
    conn: &mut Conn<B>,
    sql: &'static str,
    params: Vec<SqlParam>,
) -> Result<Vec<String>> {
    B::Db::fetch_all(conn, sql, params)
        .await?
        .iter()
        .map(|row| row.at(0))
        .collect()
}

/// A partner as stored, with its identities and CAs.
async fn read<B: Backend>(conn: &mut Conn<B>, row: &impl ReadRow) -> Result<Partner> {
    let id: String = row.get("id")?;
    let identities = texts::<B>(
        conn,
        "SELECT identity FROM partner_identities WHERE partner = $1 ORDER BY identity",
        vec![SqlParam::Text(id.clone())],
    )
    .await?;
    let cas = texts::<B>(
        conn,
        "SELECT pem FROM partner_cas WHERE partner = $1 ORDER BY pem",
        vec![SqlParam::Text(id)],
    )
    .await?;
    rows::partner(row, identities, cas)
}

pub async fn get<B: Backend>(store: &SqlStore<B>, id: &str) -> Result<Option<Partner>> {
    let mut conn = store.reader().await?;
    let row = B::Db::fetch_optional(
        &mut conn,
        "SELECT * FROM partners WHERE id = $1",
        vec![SqlParam::Text(id.to_owned())],
    )
    .await?;
    match row {
        Some(row) => Ok(Some(read::<B>(&mut conn, &row).await?)),
        None => Ok(None),
    }
}

pub async fn by_identity<B: Backend>(
    store: &SqlStore<B>,
    identity: &str,
) -> Result<Option<Partner>> {
    let id = {
        let mut conn = store.reader().await?;
        texts::<B>(
            &mut conn,
            "SELECT partner FROM partner_identities WHERE identity = $1",
            vec![SqlParam::Text(identity.to_owned())],
        )
        .await?
    };
    match id.into_iter().next() {
        Some(id) => get(store, &id).await,
        None => Ok(None),
    }
}

/// Every CA registered on a partner: (partner id, PEM).
pub async fn cas<B: Backend>(store: &SqlStore<B>) -> Result<Vec<(String, String)>> {
    let mut conn = store.reader().await?;
    B::Db::fetch_all(
        &mut conn,
        "SELECT partner, pem FROM partner_cas ORDER BY partner, pem",
        Vec::new(),
    )
    .await?
    .iter()
    .map(|row| Ok((row.get("partner")?, row.get("pem")?)))
    .collect()
}

pub async fn list<B: Backend>(
    store: &SqlStore<B>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Partner>> {
    let mut conn = store.reader().await?;
    let rows = B::Db::fetch_all(
        &mut conn,
        "SELECT * FROM partners WHERE id > $1 ORDER BY id LIMIT $2",
        vec![
            SqlParam::Text(after.unwrap_or("").to_owned()),
            SqlParam::Int(limit as i64),
        ],
    )
    .await?;
    let mut partners = Vec::with_capacity(rows.len());
    for row in &rows {
        partners.push(read::<B>(&mut conn, row).await?);
    }
    Ok(partners)
}

/// The ids among `ids` that name no partner.
pub async fn missing<B: Backend>(store: &SqlStore<B>, ids: &[String]) -> Result<Vec<String>> {
    let mut conn = store.reader().await?;
    let mut found = HashSet::new();
    for chunk in ids.chunks(NAMES_PER_STATEMENT) {
        let sql = format!(
            "SELECT id FROM partners WHERE id IN ({})",
            B::DIALECT.placeholders(chunk.len(), 1)
        );
        let params = chunk.iter().map(|id| SqlParam::Text(id.clone())).collect();
        for row in B::Db::fetch_all(&mut conn, sql, params).await? {
            found.insert(row.at::<String>(0)?);
        }
    }
    Ok(ids
        .iter()
        .filter(|id| !found.contains(*id))
        .cloned()
        .collect())
}

fn roles_text(roles: &[i32]) -> String {
    roles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// ALREADY_EXISTS named for what a unique violation hit; other errors as
/// they are.
fn taken(err: Error, what: impl FnOnce() -> String) -> Error {
    match err {
        Error::AlreadyExists(_) => Error::AlreadyExists(what()),
        other => other,
    }
}

/// Replaces a partner's identities and CAs; ALREADY_EXISTS when one of
/// them is another partner's.
async fn write_identities<B: Backend>(conn: &mut Conn<B>, partner: &Partner) -> Result<()> {
    let id = || SqlParam::Text(partner.id.clone());
    B::Db::execute(
        conn,
        "DELETE FROM partner_cas WHERE partner = $1",
        vec![id()],
    )
    .await?;
    for pem in &partner.ca_certificates {
        let ca = crate::auth::cert::ca_certificate(pem)
            .map_err(|why| Error::internal(format!("a stored CA certificate {why}")))?;
        B::Db::execute(
            conn,
            "INSERT INTO partner_cas (fingerprint, partner, pem) VALUES ($1, $2, $3)",
            vec![
                SqlParam::Text(ca.fingerprint.clone()),
                id(),
                SqlParam::Text(pem.clone()),
            ],
        )
        .await
        .map_err(|err| {
            taken(err, || {
                format!(
                    "the CA certificate {} (registered on another partner)",
                    ca.fingerprint
                )
            })
        })?;
    }
    B::Db::execute(
        conn,
        "DELETE FROM partner_identities WHERE partner = $1",
        vec![id()],
    )
    .await?;
    for identity in &partner.identities {
        B::Db::execute(
            conn,
            "INSERT INTO partner_identities (identity, partner) VALUES ($1, $2)",
            vec![SqlParam::Text(identity.clone()), id()],
        )
        .await
        .map_err(|err| {
            taken(err, || {
                format!("the identity {identity} (registered on another partner)")
            })
        })?;
    }
    Ok(())
}

/// ALREADY_EXISTS when the id, one of the identities or one of the CAs is
/// taken.
#[instrument(skip_all, fields(partner = %partner.id))]
pub async fn create<B: Backend>(
    store: &SqlStore<B>,
    partner: &Partner,
    audit: Option<&AuditContext>,
) -> Result<()> {
    let mut tx = store.writer.begin().await.map_err(db_error)?;
    B::Db::execute(
        &mut tx,
        "INSERT INTO partners (id, uid, display_name, kind, roles, state, etag, create_time, \
         update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        vec![
            SqlParam::Text(partner.id.clone()),
            SqlParam::Text(partner.uid.clone()),
            SqlParam::Text(partner.display_name.clone()),
            SqlParam::Int(i64::from(partner.kind)),
            SqlParam::Text(roles_text(&partner.roles)),
            SqlParam::Int(i64::from(partner.state)),
            SqlParam::Text(partner.etag.clone()),
            SqlParam::Int(partner.create_time),
            SqlParam::Int(partner.update_time),
        ],
    )
    .await
    .map_err(|err| taken(err, || partner.name()))?;
    write_identities::<B>(&mut tx, partner).await?;
    if let Some(who) = audit {
        audit::insert::<B>(&mut tx, who, &[(partner.name(), 0)]).await?;
    }
    tx.commit().await.map_err(db_error)
}

/// Read-modify-write of one partner; NOT_FOUND when absent. The hub keeps
/// at least one active admin.
#[instrument(skip_all, fields(partner = %id))]
pub async fn update<B: Backend>(
    store: &SqlStore<B>,
    id: &str,
    edit: EditPartner,
    audit: Option<&AuditContext>,
) -> Result<Partner> {
    let mut tx = store.writer.begin().await.map_err(db_error)?;
    let row = B::Db::fetch_optional(
        &mut tx,
        "SELECT * FROM partners WHERE id = $1",
        vec![SqlParam::Text(id.to_owned())],
    )
    .await?
    .ok_or_else(|| Error::NotFound(crate::domain::names::partner_name(id)))?;
    let current = read::<B>(&mut tx, &row).await?;
    let updated = edit(current.clone())?;
    if updated == current {
        return Ok(current);
    }
    let active_admin = |p: &Partner| p.is_active() && p.has_role(Role::Admin);
    if active_admin(&current) && !active_admin(&updated) {
        // The others are locked, so two admins suspending each other at
        // once cannot both succeed.
        let sql = format!(
            "SELECT * FROM partners WHERE state = $1 AND id <> $2{}",
            B::DIALECT.for_update()
        );
        let others = B::Db::fetch_all(
            &mut tx,
            sql,
            vec![
                SqlParam::Int(crate::pb::PartnerState::Active as i64),
                SqlParam::Text(id.to_owned()),
            ],
        )
        .await?;
        let mut another = false;
        for row in &others {
            another |= active_admin(&rows::partner(row, Vec::new(), Vec::new())?);
        }
        if !another {
            return Err(Error::FailedPrecondition {
                reason: "LAST_ADMIN",
                message: format!(
                    "{} is the hub's only active admin: make another partner an active admin first",
                    current.name()
                ),
            });
        }
    }
    B::Db::execute(
        &mut tx,
        "UPDATE partners SET display_name = $2, kind = $3, roles = $4, state = $5, etag = $6, \
         update_time = $7 WHERE id = $1",
        vec![
            SqlParam::Text(updated.id.clone()),
            SqlParam::Text(updated.display_name.clone()),
            SqlParam::Int(i64::from(updated.kind)),
            SqlParam::Text(roles_text(&updated.roles)),
            SqlParam::Int(i64::from(updated.state)),
            SqlParam::Text(updated.etag.clone()),
            SqlParam::Int(updated.update_time),
        ],
    )
    .await?;
    write_identities::<B>(&mut tx, &updated).await?;
    if let Some(who) = audit {
        audit::insert::<B>(&mut tx, who, &[(updated.name(), 0)]).await?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(updated)
}
