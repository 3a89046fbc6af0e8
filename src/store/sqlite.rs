//! The embedded SQLite backend: WAL, `synchronous=NORMAL`, one writer
//! connection beside a pool of readers (a deferred transaction that reads then
//! writes would otherwise fail with SQLITE_BUSY instead of waiting).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use tracing::instrument;

use super::sql_filter::{self, SqlParam};
use super::{
    BatchWritten, Decide, EditPartner, FeedEntry, FeedPage, FeedQuery, FeedRow, HubInfo,
    Idempotency, ListQuery, NewVersion, Store, StoredRecord, Write, Written, index,
};
use crate::domain::paging::{SortField, SortValue};
use crate::domain::partner::Partner;
use crate::domain::{Error, Kind, Result};
use crate::pb::Tlp;

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// The newest feed position, for watchers; sent after each commit.
    head: tokio::sync::watch::Sender<i64>,
}

/// `public_until` of a record that every partner may still see.
const PUBLIC_NOW: i64 = i64::MAX;

/// Rows per multi-row INSERT, well under SQLite's limit of bound values.
const ROWS_PER_INSERT: usize = 400;

/// Maps a database error to a domain error; raw database text goes to the log,
/// never to a client.
fn db_error(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(error = %err, "database unavailable");
            Error::Unavailable("the database is unreachable; try again shortly".into())
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::AlreadyExists("the resource".into())
        }
        _ => {
            tracing::error!(error = %err, "database error");
            Error::internal("database error")
        }
    }
}

const RECORD_COLUMNS: &str = "r.id, r.kind, r.name, r.owner, r.uid, r.etag, r.create_time, \
     r.update_time, r.tlp, r.title, r.body";

fn record_from_row(row: &SqliteRow) -> Result<StoredRecord> {
    let kind: String = row.try_get("kind").map_err(db_error)?;
    Ok(StoredRecord {
        kind: Kind::from_singular(&kind)
            .ok_or_else(|| Error::internal(format!("unknown kind {kind:?} in the database")))?,
        name: row.try_get("name").map_err(db_error)?,
        owner: row.try_get("owner").map_err(db_error)?,
        uid: row.try_get("uid").map_err(db_error)?,
        etag: row.try_get("etag").map_err(db_error)?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        tlp: row.try_get("tlp").map_err(db_error)?,
        title: row.try_get("title").map_err(db_error)?,
        recipients: Vec::new(),
        body: row.try_get("body").map_err(db_error)?,
    })
}

fn partner_from_row(row: &SqliteRow, identities: Vec<String>) -> Result<Partner> {
    let roles: String = row.try_get("roles").map_err(db_error)?;
    Ok(Partner {
        id: row.try_get("id").map_err(db_error)?,
        uid: row.try_get("uid").map_err(db_error)?,
        display_name: row.try_get("display_name").map_err(db_error)?,
        kind: row.try_get("kind").map_err(db_error)?,
        roles: roles.split(',').filter_map(|r| r.parse().ok()).collect(),
        identities,
        state: row.try_get("state").map_err(db_error)?,
        etag: row.try_get("etag").map_err(db_error)?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
    })
}

fn roles_text(roles: &[i32]) -> String {
    roles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The restricted TLP numbers, for the visibility clause.
fn restricted_tlps() -> String {
    [Tlp::Amber, Tlp::AmberStrict, Tlp::Red]
        .iter()
        .map(|t| (*t as i32).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sort_column(field: SortField) -> &'static str {
    match field {
        SortField::CreateTime => "r.create_time",
        SortField::UpdateTime => "r.update_time",
        SortField::Name => "r.name",
        SortField::Title => "r.title",
    }
}

/// Appends a parameter and returns its placeholder.
fn push_param(params: &mut Vec<SqlParam>, value: SqlParam) -> String {
    params.push(value);
    format!("${}", params.len())
}

impl SqliteStore {
    pub async fn open(path: &Path, migrate: bool) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // A page cache of 64 MiB rather than 2: index pages of a large
            // catalogue stay in memory instead of being read back per batch.
            .pragma("cache_size", "-65536")
            // Checkpoint less often than every 4 MiB of WAL under batches.
            .pragma("wal_autocheckpoint", "8192")
            .page_size(8192);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|err| Error::Unavailable(format!("cannot open {}: {err}", path.display())))?;
        if migrate {
            sqlx::migrate!("src/store/migrations/sqlite")
                .run(&writer)
                .await
                .map_err(|err| Error::internal(format!("migration failed: {err}")))?;
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|err| Error::Unavailable(format!("cannot open {}: {err}", path.display())))?;
        let head: i64 = sqlx::query_scalar("SELECT feed_seq FROM hub WHERE singleton = 1")
            .fetch_one(&readers)
            .await
            .map_err(db_error)?;
        Ok(Self {
            writer,
            readers,
            head: tokio::sync::watch::Sender::new(head),
        })
    }

    async fn identities_of(&self, partner: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT identity FROM partner_identities WHERE partner = $1 ORDER BY identity",
        )
        .bind(partner.to_owned())
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)
    }

    async fn write_identities(
        tx: &mut Transaction<'static, Sqlite>,
        partner: &Partner,
    ) -> Result<()> {
        sqlx::query("DELETE FROM partner_identities WHERE partner = $1")
            .bind(partner.id.clone())
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        for identity in &partner.identities {
            sqlx::query("INSERT INTO partner_identities (identity, partner) VALUES ($1, $2)")
                .bind(identity.clone())
                .bind(partner.id.clone())
                .execute(&mut **tx)
                .await
                .map_err(|err| match db_error(err) {
                    Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                        "the identity {identity} (registered on another partner)"
                    )),
                    other => other,
                })?;
        }
        Ok(())
    }

    /// Writes the final version of each record a batch touched, its feed
    /// entry and audience, with multi-row statements: a batch of 1000 costs
    /// a few dozen statements, not thousands. Returns the newest position.
    async fn apply(tx: &mut Transaction<'static, Sqlite>, ops: Vec<Op>) -> Result<Option<i64>> {
        // Only the last write of a name in a batch matters, at its place.
        let mut last = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            last.insert(op.name().to_owned(), i);
        }
        let ops: Vec<Op> = ops
            .into_iter()
            .enumerate()
            .filter(|(i, op)| last.get(op.name()) == Some(i))
            .map(|(_, op)| op)
            .collect();
        if ops.is_empty() {
            return Ok(None);
        }
        let deleted: Vec<SqlParam> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete { name, .. } => Some(SqlParam::Text(name.clone())),
                Op::Put { .. } => None,
            })
            .collect();
        for chunk in deleted.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "DELETE FROM records WHERE name IN ({})",
                placeholders(chunk.len())
            );
            bind_all(sqlx::query(AssertSqlSafe(sql)), chunk)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }

        let puts: Vec<&NewVersion> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { version, .. } => Some(version.as_ref()),
                Op::Delete { .. } => None,
            })
            .collect();
        let replaced: std::collections::HashSet<&str> = ops
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
        for chunk in puts.chunks(ROWS_PER_INSERT / 2) {
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
                ]);
            }
            let sql = format!(
                "INSERT INTO records (kind, owner, record_id, name, uid, etag, create_time, update_time, tlp, title, body) \
                 VALUES {} ON CONFLICT (name) DO UPDATE SET etag = excluded.etag, update_time = excluded.update_time, \
                 tlp = excluded.tlp, title = excluded.title, body = excluded.body RETURNING id, name",
                rows(chunk.len(), 11)
            );
            // The body is bound as a blob: params hold ten values per row.
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (version, row) in chunk.iter().zip(params.chunks(10)) {
                for param in row {
                    query = match param {
                        SqlParam::Text(text) => query.bind(text.clone()),
                        SqlParam::Int(n) => query.bind(*n),
                        SqlParam::Null => query.bind(None::<i64>),
                    };
                }
                query = query.bind(version.record.body.clone());
            }
            for row in query.fetch_all(&mut **tx).await.map_err(db_error)? {
                ids.insert(
                    row.try_get("name").map_err(db_error)?,
                    row.try_get("id").map_err(db_error)?,
                );
            }
        }
        let put_ids: Vec<SqlParam> = puts
            .iter()
            .filter(|v| replaced.contains(v.record.name.as_str()))
            .filter_map(|v| ids.get(&v.record.name).map(|id| SqlParam::Int(*id)))
            .collect();
        for table in ["record_recipients", "record_attrs"] {
            for chunk in put_ids.chunks(ROWS_PER_INSERT) {
                let sql = format!(
                    "DELETE FROM {table} WHERE record IN ({})",
                    placeholders(chunk.len())
                );
                bind_all(sqlx::query(AssertSqlSafe(sql)), chunk)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
            }
        }
        let id_of = |v: &NewVersion| ids.get(&v.record.name).copied().unwrap_or_default();
        let recipients: Vec<SqlParam> = puts
            .iter()
            .flat_map(|v| {
                let id = id_of(v);
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
            &recipients,
            "",
        )
        .await?;
        let attrs: Vec<SqlParam> = puts
            .iter()
            .flat_map(|v| {
                let id = id_of(v);
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
            "INSERT OR IGNORE INTO record_attrs (record, field, str, num) VALUES ",
            4,
            &attrs,
            "",
        )
        .await?;

        // Feed positions for this batch, handed out by the single writer in
        // commit order.
        let count = ops.len() as i64;
        let head: i64 = sqlx::query_scalar(
            "UPDATE hub SET feed_seq = feed_seq + $1 WHERE singleton = 1 RETURNING feed_seq",
        )
        .bind(count)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_error)?;
        let now = crate::domain::record::now_micros();
        let mut changes = Vec::with_capacity(ops.len() * 6);
        for (i, op) in ops.iter().enumerate() {
            let seq = head - count + 1 + i as i64;
            let (kind, deleted, commit_time, public) = match op {
                Op::Put { version: v, .. } => (
                    v.record.kind,
                    false,
                    v.record.update_time,
                    !crate::domain::sharing::is_restricted(v.record.tlp),
                ),
                Op::Delete { kind, .. } => (*kind, true, now, false),
            };
            changes.extend([
                SqlParam::Int(seq),
                SqlParam::Text(op.name().to_owned()),
                SqlParam::Text(kind.singular().into()),
                SqlParam::Int(i64::from(deleted)),
                SqlParam::Int(commit_time),
                if public {
                    SqlParam::Int(PUBLIC_NOW)
                } else {
                    SqlParam::Null
                },
            ]);
        }
        insert_rows(
            tx,
            "INSERT INTO changes (seq, name, kind, deleted, commit_time, public_until) VALUES ",
            6,
            &changes,
            // Compaction: a record's earlier change gives way to this one.
            " ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, kind = excluded.kind, \
             deleted = excluded.deleted, commit_time = excluded.commit_time, \
             public_until = CASE WHEN excluded.public_until IS NOT NULL THEN excluded.public_until \
                 WHEN changes.public_until = 9223372036854775807 THEN excluded.commit_time \
                 ELSE changes.public_until END",
        )
        .await?;
        let audience: Vec<SqlParam> = puts
            .iter()
            .flat_map(|v| {
                let name = v.record.name.clone();
                std::iter::once(&v.record.owner)
                    .chain(&v.record.recipients)
                    .flat_map(move |p| [SqlParam::Text(name.clone()), SqlParam::Text(p.clone())])
            })
            .collect();
        insert_rows(
            tx,
            "INSERT OR IGNORE INTO record_audience (name, partner) VALUES ",
            2,
            &audience,
            "",
        )
        .await?;
        Ok(Some(head))
    }

    /// Current versions of the named records, with recipients.
    async fn records_in(
        conn: &mut sqlx::SqliteConnection,
        names: &[String],
    ) -> Result<HashMap<String, StoredRecord>> {
        let mut found = HashMap::with_capacity(names.len());
        for chunk in names.chunks(ROWS_PER_INSERT) {
            // One statement per chunk: partner ids hold no commas.
            let sql = format!(
                "SELECT {RECORD_COLUMNS}, (SELECT group_concat(partner, ',') FROM \
                 (SELECT partner FROM record_recipients WHERE record = r.id ORDER BY partner)) \
                 AS recipients FROM records r WHERE r.name IN ({})",
                placeholders(chunk.len())
            );
            let params: Vec<SqlParam> = chunk.iter().map(|n| SqlParam::Text(n.clone())).collect();
            for row in bind_all(sqlx::query(AssertSqlSafe(sql)), &params)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?
            {
                let mut record = record_from_row(&row)?;
                let recipients: Option<String> = row.try_get("recipients").map_err(db_error)?;
                record.recipients = recipients
                    .map(|r| r.split(',').map(str::to_owned).collect())
                    .unwrap_or_default();
                found.insert(record.name.clone(), record);
            }
        }
        Ok(found)
    }

    async fn record_in(
        conn: &mut sqlx::SqliteConnection,
        name: &str,
    ) -> Result<Option<StoredRecord>> {
        Ok(Self::records_in(conn, &[name.to_owned()])
            .await?
            .remove(name))
    }
}

/// One write a batch decided.
enum Op {
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

/// `?, ?, ...` for `count` values. Bulk statements use anonymous
/// parameters: SQLite looks numbered ones up by a linear search per value,
/// which made a 1000-record batch quadratic.
fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// `(?, ?), (?, ?), ...` for `count` rows of `width` values.
fn rows(count: usize, width: usize) -> String {
    let row = format!("({})", placeholders(width));
    vec![row.as_str(); count].join(", ")
}

/// Multi-row INSERT of `values` (`width` per row), chunked under SQLite's
/// limit of bound values.
async fn insert_rows(
    tx: &mut Transaction<'static, Sqlite>,
    head: &str,
    width: usize,
    values: &[SqlParam],
    tail: &str,
) -> Result<()> {
    let per_statement = (8000 / width) * width;
    for chunk in values.chunks(per_statement) {
        let sql = format!("{head}{}{tail}", rows(chunk.len() / width, width));
        bind_all(sqlx::query(AssertSqlSafe(sql)), chunk)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    params: &[SqlParam],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    for param in params {
        query = match param {
            SqlParam::Text(text) => query.bind(text.clone()),
            SqlParam::Int(n) => query.bind(*n),
            SqlParam::Null => query.bind(None::<i64>),
        };
    }
    query
}

#[tonic::async_trait]
impl Store for SqliteStore {
    async fn hub_info(&self) -> Result<HubInfo> {
        let row = sqlx::query("SELECT hub_id, token_key FROM hub WHERE singleton = 1")
            .fetch_one(&self.readers)
            .await
            .map_err(db_error)?;
        Ok(HubInfo {
            hub_id: row.try_get("hub_id").map_err(db_error)?,
            token_key: row.try_get("token_key").map_err(db_error)?,
        })
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map(|_| ())
            .map_err(db_error)
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>> {
        let row = sqlx::query("SELECT * FROM partners WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&self.readers)
            .await
            .map_err(db_error)?;
        match row {
            Some(row) => Ok(Some(partner_from_row(&row, self.identities_of(id).await?)?)),
            None => Ok(None),
        }
    }

    async fn partner_by_identity(&self, identity: &str) -> Result<Option<Partner>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT partner FROM partner_identities WHERE identity = $1")
                .bind(identity.to_owned())
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?;
        match id {
            Some(id) => self.get_partner(&id).await,
            None => Ok(None),
        }
    }

    async fn list_partners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Partner>> {
        let rows = sqlx::query("SELECT * FROM partners WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or("").to_owned())
            .bind(limit as i64)
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
        let mut partners = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id").map_err(db_error)?;
            partners.push(partner_from_row(&row, self.identities_of(&id).await?)?);
        }
        Ok(partners)
    }

    async fn missing_partners(&self, ids: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for id in ids {
            let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM partners WHERE id = $1")
                .bind(id.clone())
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?;
            if found.is_none() {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }

    #[instrument(skip_all, fields(partner = %partner.id))]
    async fn create_partner(&self, partner: &Partner) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO partners (id, uid, display_name, kind, roles, state, etag, create_time, update_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(partner.id.clone())
        .bind(partner.uid.clone())
        .bind(partner.display_name.clone())
        .bind(partner.kind)
        .bind(roles_text(&partner.roles))
        .bind(partner.state)
        .bind(partner.etag.clone())
        .bind(partner.create_time)
        .bind(partner.update_time)
        .execute(&mut *tx)
        .await
        .map_err(|err| match db_error(err) {
            Error::AlreadyExists(_) => Error::AlreadyExists(partner.name()),
            other => other,
        })?;
        Self::write_identities(&mut tx, partner).await?;
        tx.commit().await.map_err(db_error)
    }

    #[instrument(skip_all, fields(partner = %id))]
    async fn update_partner(&self, id: &str, edit: EditPartner) -> Result<Partner> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let row = sqlx::query("SELECT * FROM partners WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::NotFound(crate::domain::names::partner_name(id)))?;
        let identities: Vec<String> = sqlx::query_scalar(
            "SELECT identity FROM partner_identities WHERE partner = $1 ORDER BY identity",
        )
        .bind(id.to_owned())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let current = partner_from_row(&row, identities)?;
        let updated = edit(current.clone())?;
        if updated == current {
            return Ok(current);
        }
        sqlx::query(
            "UPDATE partners SET display_name = $2, kind = $3, roles = $4, state = $5, etag = $6, update_time = $7
             WHERE id = $1",
        )
        .bind(updated.id.clone())
        .bind(updated.display_name.clone())
        .bind(updated.kind)
        .bind(roles_text(&updated.roles))
        .bind(updated.state)
        .bind(updated.etag.clone())
        .bind(updated.update_time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        Self::write_identities(&mut tx, &updated).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(updated)
    }

    async fn get_record(&self, name: &str) -> Result<Option<StoredRecord>> {
        let mut conn = self.readers.acquire().await.map_err(db_error)?;
        Self::record_in(&mut conn, name).await
    }

    #[instrument(skip_all, fields(kind = %query.kind, limit = query.limit))]
    async fn list_records(&self, query: &ListQuery<'_>) -> Result<Vec<StoredRecord>> {
        let mut params = Vec::new();
        let kind = push_param(&mut params, SqlParam::Text(query.kind.singular().into()));
        let viewer = push_param(&mut params, SqlParam::Text(query.viewer.into()));
        let mut sql = format!(
            "SELECT {RECORD_COLUMNS} FROM records r WHERE r.kind = {kind} \
             AND (r.tlp NOT IN ({}) OR r.owner = {viewer} OR EXISTS \
             (SELECT 1 FROM record_recipients v WHERE v.record = r.id AND v.partner = {viewer}))",
            restricted_tlps()
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

        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), &params)
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
        rows.iter().map(record_from_row).collect()
    }

    #[instrument(skip_all, fields(items = items.len()))]
    async fn write_records(
        &self,
        items: Vec<(String, Decide)>,
        idempotency: Option<Idempotency>,
    ) -> Result<BatchWritten> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        if let Some(idem) = &idempotency {
            let earlier: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT response FROM batch_requests WHERE partner = $1 AND request_id = $2",
            )
            .bind(idem.partner.clone())
            .bind(idem.request_id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            if let Some(response) = earlier {
                return Ok(BatchWritten::Repeated(response));
            }
        }
        let mut names: Vec<String> = items.iter().map(|(name, _)| name.clone()).collect();
        names.sort_unstable();
        names.dedup();
        let mut current = Self::records_in(&mut tx, &names).await?;
        let mut results = Vec::with_capacity(items.len());
        let mut ops = Vec::new();
        for (name, decide) in items {
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
                    let kind = current.remove(&name).map(|c| c.kind).ok_or_else(|| {
                        Error::internal("a delete was decided for a missing record")
                    })?;
                    results.push(Ok(Written {
                        existed,
                        changed: true,
                        current: None,
                    }));
                    ops.push(Op::Delete { name, kind });
                }
            }
        }
        let head = Self::apply(&mut tx, ops).await?;
        if let Some(idem) = idempotency {
            let response = (idem.encode)(&results);
            sqlx::query(
                "INSERT INTO batch_requests (partner, request_id, response, create_time) VALUES ($1, $2, $3, $4)",
            )
            .bind(idem.partner)
            .bind(idem.request_id)
            .bind(response)
            .bind(crate::domain::record::now_micros())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        if let Some(head) = head {
            self.head.send_replace(head);
        }
        Ok(BatchWritten::Done(results))
    }

    async fn read_feed(&self, query: &FeedQuery<'_>) -> Result<FeedPage> {
        let mut params = Vec::new();
        let viewer = push_param(&mut params, SqlParam::Text(query.viewer.id.clone()));
        let joined = push_param(&mut params, SqlParam::Int(query.viewer.create_time));
        let after = push_param(&mut params, SqlParam::Int(query.after));
        let mut sql = format!(
            "SELECT c.seq, c.kind, c.name, c.deleted, c.commit_time, \
             CASE WHEN c.deleted = 0 AND (r.tlp NOT IN ({restricted}) OR r.owner = {viewer} OR EXISTS \
                 (SELECT 1 FROM record_recipients v WHERE v.record = r.id AND v.partner = {viewer})) \
             THEN r.body END AS body \
             FROM changes c LEFT JOIN records r ON r.name = c.name \
             WHERE c.seq > {after} \
             AND (c.public_until >= {joined} OR EXISTS \
                 (SELECT 1 FROM record_audience a WHERE a.name = c.name AND a.partner = {viewer}))",
            restricted = restricted_tlps()
        );
        if !query.kinds.is_empty() {
            let kinds: Vec<String> = query
                .kinds
                .iter()
                .map(|k| push_param(&mut params, SqlParam::Text(k.singular().into())))
                .collect();
            sql.push_str(&format!(" AND c.kind IN ({})", kinds.join(", ")));
        }
        let limit = push_param(&mut params, SqlParam::Int(query.limit as i64));
        sql.push_str(&format!(" ORDER BY c.seq LIMIT {limit}"));

        // One snapshot for the rows and the head, so a page that reaches the
        // end of the log reports the head it saw.
        let mut tx = self.readers.begin().await.map_err(db_error)?;
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), &params)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        let (head, purge_horizon): (i64, i64) =
            sqlx::query_as("SELECT feed_seq, purge_horizon FROM hub WHERE singleton = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind").map_err(db_error)?;
            let deleted: bool = row.try_get("deleted").map_err(db_error)?;
            let body: Option<Vec<u8>> = row.try_get("body").map_err(db_error)?;
            out.push(FeedRow {
                seq: row.try_get("seq").map_err(db_error)?,
                kind: Kind::from_singular(&kind)
                    .ok_or_else(|| Error::internal(format!("unknown kind {kind:?} in the feed")))?,
                name: row.try_get("name").map_err(db_error)?,
                commit_time: row.try_get("commit_time").map_err(db_error)?,
                entry: match (deleted, body) {
                    (true, _) => FeedEntry::Deleted,
                    (false, Some(body)) => FeedEntry::Upserted(body),
                    (false, None) => FeedEntry::Unshared,
                },
            });
        }
        Ok(FeedPage {
            rows: out,
            head,
            purge_horizon,
        })
    }

    fn feed_head(&self) -> tokio::sync::watch::Receiver<i64> {
        self.head.subscribe()
    }

    async fn purge(&self, before: i64, batches_before: i64) -> Result<u64> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let horizon: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM changes WHERE deleted = 1 AND commit_time < $1",
        )
        .bind(before)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "DELETE FROM record_audience WHERE name IN \
             (SELECT name FROM changes WHERE deleted = 1 AND commit_time < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let purged = sqlx::query("DELETE FROM changes WHERE deleted = 1 AND commit_time < $1")
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        sqlx::query("UPDATE hub SET purge_horizon = MAX(purge_horizon, $1) WHERE singleton = 1")
            .bind(horizon)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM batch_requests WHERE create_time < $1")
            .bind(batches_before)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(purged)
    }
}

fn sort_param(value: &SortValue) -> SqlParam {
    match value {
        SortValue::Int(n) => SqlParam::Int(*n),
        SortValue::Text(t) => SqlParam::Text(t.clone()),
    }
}
