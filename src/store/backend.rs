//! The `Store` implementation shared by the SQL backends. `sql_store!`
//! instantiates it for a backend's pool and row types; what differs between
//! the databases lives in `sql::Dialect` and in four hooks each backend
//! defines (`begin_snapshot`, `before_commit`, `read_by_name`,
//! `read_feed_rows`).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::domain::Error;

/// How long one expensive read may run when its call has no deadline (or a
/// later one): a partner that sets none, or hangs up, cannot hold a
/// database connection for longer.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(10);

/// VM instructions between two looks of SQLite's progress handler at
/// `ReadBounds`: some tens of microseconds.
pub const PROGRESS_OPS: i32 = 10_000;

/// When an expensive read (a filtered list, a search, a filtered audit
/// list) must stop: at its call's deadline, or `MAX_QUERY_TIME` after it
/// began, or as soon as its call is dropped (the client cancelled, or the
/// call layer answered DEADLINE_EXCEEDED).
///
/// Dropping the future of a statement does not stop the database: SQLite
/// goes on stepping it on sqlx's connection thread, PostgreSQL goes on
/// running it, and the pool connection stays busy until it ends. So each
/// backend arms the database itself (`limit_reads`): SQLite a progress
/// handler that asks `should_stop` every `PROGRESS_OPS` instructions and
/// interrupts the statement; PostgreSQL a `statement_timeout` of the time
/// left, local to the read's transaction, and `pg_cancel_backend` when the
/// call is dropped before it.
#[derive(Debug)]
pub struct ReadBounds {
    pub until: Instant,
    /// Whether `until` is the client's deadline rather than the hub's cap.
    client_deadline: bool,
    /// The call was dropped before its read finished.
    stopped: AtomicBool,
    /// The read finished: a progress handler left on the connection must
    /// no longer stop anything.
    finished: AtomicBool,
    /// PostgreSQL's process serving the read, to cancel; 0 before known.
    pub backend_pid: AtomicI32,
}

impl ReadBounds {
    /// The bounds of a read made now, for the call this task serves.
    pub fn for_this_call() -> Self {
        let now = Instant::now();
        let cap = now + MAX_QUERY_TIME;
        let (until, client_deadline) = match crate::telemetry::call_deadline() {
            Some(deadline) if deadline < cap => (deadline, true),
            _ => (cap, false),
        };
        Self {
            until,
            client_deadline,
            stopped: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            backend_pid: AtomicI32::new(0),
        }
    }

    /// Whether the database should stop the read now.
    pub fn should_stop(&self) -> bool {
        !self.finished.load(Ordering::Relaxed)
            && (self.stopped.load(Ordering::Relaxed) || Instant::now() >= self.until)
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Time left, for PostgreSQL's `statement_timeout`.
    pub fn remaining(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// The read's outcome, an error named for the bound it ran into when
    /// it was stopped.
    pub fn outcome<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match result {
            Err(_) if Instant::now() >= self.until => Err(self.ran_out()),
            other => other,
        }
    }

    pub fn ran_out(&self) -> Error {
        if self.client_deadline {
            Error::DeadlineExceeded {
                reason: "CALL_DEADLINE",
                message: "the client's deadline passed before the call finished".into(),
            }
        } else {
            Error::DeadlineExceeded {
                reason: "QUERY_TOO_LONG",
                message: format!(
                    "the query ran longer than the hub allows one query ({} s); narrow the filter or the search",
                    MAX_QUERY_TIME.as_secs()
                ),
            }
        }
    }
}

/// Maps a database error to a domain error; raw database text goes to the
/// log, never to a client.
pub fn db_error(err: sqlx::Error) -> Error {
    let unavailable = match &err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Connection failures and an administrator's shutdown (SQLSTATE
        // classes 08 and 57P).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    };
    if unavailable {
        return unreachable(&err);
    }
    // A statement stopped by its bounds (`ReadBounds`): SQLITE_INTERRUPT,
    // PostgreSQL's query_canceled. Not a fault of the hub: no error log.
    if let sqlx::Error::Database(db) = &err
        && db.code().is_some_and(|code| code == "9" || code == "57014")
    {
        tracing::info!(error = %err, "a statement was stopped");
        return Error::DeadlineExceeded {
            reason: "QUERY_STOPPED",
            message: "the query was stopped before it finished".into(),
        };
    }
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::AlreadyExists("the resource".into())
        }
        _ => failed(&err),
    }
}

/// A database that cannot be reached now: UNAVAILABLE, worth a retry.
pub fn unreachable(err: &dyn std::fmt::Display) -> Error {
    tracing::warn!(error = %err, "database unavailable");
    Error::Unavailable("the database is unreachable; try again shortly".into())
}

/// Any other database failure: INTERNAL, its text to the log only.
pub fn failed(err: &dyn std::fmt::Display) -> Error {
    tracing::error!(error = %err, "database error");
    Error::internal("database error")
}

pub fn roles_text(roles: &[i32]) -> String {
    roles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A `StoredRecord` from a row of `sql::RECORD_COLUMNS`, recipients left
/// empty, whichever driver read it: `$get` is the row's typed getter and
/// `$err` maps its error. One list of the columns for sqlx and for the
/// SQLite direct reads (`store/sqlite.rs`).
macro_rules! stored_record {
    ($row:expr, $get:ident, $err:expr) => {{
        let kind: String = $row.$get("kind").map_err($err)?;
        $crate::store::StoredRecord {
            kind: $crate::domain::Kind::from_singular(&kind).ok_or_else(|| {
                $crate::domain::Error::internal(format!("unknown kind {kind:?} in the database"))
            })?,
            name: $row.$get("name").map_err($err)?,
            owner: $row.$get("owner").map_err($err)?,
            uid: $row.$get("uid").map_err($err)?,
            etag: $row.$get("etag").map_err($err)?,
            create_time: $row.$get("create_time").map_err($err)?,
            update_time: $row.$get("update_time").map_err($err)?,
            tlp: $row.$get("tlp").map_err($err)?,
            title: $row.$get("title").map_err($err)?,
            recipients: Vec::new(),
            body: $row.$get("body").map_err($err)?,
        }
    }};
}

pub(crate) use stored_record;

/// A change of `sql::feed_query`'s columns, by position, from either
/// driver's row.
macro_rules! feed_row {
    ($row:expr, $get:ident, $err:expr) => {{
        let kind: String = $row.$get(1).map_err($err)?;
        let commit_time: i64 = $row.$get(3).map_err($err)?;
        let body: Option<Vec<u8>> = $row.$get(4).map_err($err)?;
        let lost_time: Option<i64> = $row.$get(5).map_err($err)?;
        let lost_deleted: Option<bool> = $row.$get(6).map_err($err)?;
        let public_lost_time: Option<i64> = $row.$get(7).map_err($err)?;
        let public_deleted: bool = $row.$get(8).map_err($err)?;
        $crate::store::backend::feed_entry(
            body,
            commit_time,
            lost_time.map(|t| (t, lost_deleted.unwrap_or_default())),
            public_lost_time.map(|t| (t, public_deleted)),
        )
        .and_then(|(entry, commit_time)| {
            Ok::<_, $crate::domain::Error>($crate::store::FeedRow {
                seq: $row.$get(0).map_err($err)?,
                kind: $crate::domain::Kind::from_singular(&kind).ok_or_else(|| {
                    $crate::domain::Error::internal(format!("unknown kind {kind:?} in the feed"))
                })?,
                name: $row.$get(2).map_err($err)?,
                commit_time,
                entry,
            })
        })
    }};
}

/// What a viewer gets of a change, and at which time: the record when it
/// sees it; else the notice of the change at which it lost sight, its own
/// audience row's first (it names the viewer), else the public one's.
pub fn feed_entry(
    body: Option<Vec<u8>>,
    commit_time: i64,
    lost: Option<(i64, bool)>,
    public_lost: Option<(i64, bool)>,
) -> crate::domain::Result<(crate::store::FeedEntry, i64)> {
    use crate::store::FeedEntry;
    if let Some(body) = body {
        return Ok((FeedEntry::Upserted(body), commit_time));
    }
    match lost.or(public_lost) {
        Some((time, true)) => Ok((FeedEntry::Deleted, time)),
        Some((time, false)) => Ok((FeedEntry::Unshared, time)),
        // The query selects only changes with one of the three.
        None => Err(crate::domain::Error::internal(
            "a feed change with neither record nor notice",
        )),
    }
}

pub(crate) use feed_row;

/// The `recipients` column (`Dialect::recipients_of_r`) as partner ids.
pub fn recipients(column: Option<String>) -> Vec<String> {
    column
        .map(|r| r.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty, $dialect:expr) => {
        use sqlx::{AssertSqlSafe, Row, Transaction};
        use tracing::instrument;

        use $crate::domain::partner::Partner;
        use $crate::pb::Role;
        use $crate::domain::{Error, Result};
        use $crate::store::backend::{db_error, roles_text};
        use $crate::store::sql::{self, Exec};
        use $crate::store::sql_filter::SqlParam;
        use $crate::store::{
            AuditContext, AuditEntry, AuditEvent, BatchWritten, Decide, EditPartner, FeedPage, FeedQuery,
            HubInfo, Idempotency, IndexChange, IndexFeedPage, ListQuery,
            Store, StoredRecord, Write, Written,
        };

        const DIALECT: sql::Dialect = $dialect;

        fn bind_all<'q>(
            mut query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            params: Vec<SqlParam>,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            // Moved, not copied: a batch's parameters hold every record's body.
            for param in params {
                query = match param {
                    SqlParam::Text(text) => query.bind(text),
                    SqlParam::Int(n) => query.bind(n),
                    SqlParam::Null => query.bind(None::<i64>),
                    SqlParam::Bool(b) => query.bind(b),
                    SqlParam::Blob(bytes) => query.bind(bytes),
                };
            }
            query
        }

        fn record_from_row(row: &$row) -> Result<StoredRecord> {
            Ok($crate::store::backend::stored_record!(row, try_get, db_error))
        }

        /// A record and its `recipients` column (`Dialect::recipients_of_r`).
        fn record_with_recipients(row: &$row) -> Result<StoredRecord> {
            let mut record = record_from_row(row)?;
            record.recipients =
                $crate::store::backend::recipients(row.try_get("recipients").map_err(db_error)?);
            Ok(record)
        }

        fn partner_from_row(
            row: &$row,
            identities: Vec<String>,
            ca_certificates: Vec<String>,
        ) -> Result<Partner> {
            let roles: String = row.try_get("roles").map_err(db_error)?;
            Ok(Partner {
                id: row.try_get("id").map_err(db_error)?,
                uid: row.try_get("uid").map_err(db_error)?,
                display_name: row.try_get("display_name").map_err(db_error)?,
                kind: row.try_get("kind").map_err(db_error)?,
                roles: roles.split(',').filter_map(|r| r.parse().ok()).collect(),
                identities,
                ca_certificates,
                state: row.try_get("state").map_err(db_error)?,
                etag: row.try_get("etag").map_err(db_error)?,
                create_time: row.try_get("create_time").map_err(db_error)?,
                update_time: row.try_get("update_time").map_err(db_error)?,
            })
        }

        /// A write transaction as the shared batch code drives it.
        struct TxExec<'a>(&'a mut Transaction<'static, $db>);

        #[tonic::async_trait]
        impl Exec for TxExec<'_> {
            fn dialect(&self) -> sql::Dialect {
                DIALECT
            }

            async fn execute(&mut self, sql: String, params: Vec<SqlParam>) -> Result<u64> {
                Ok(bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                    .execute(&mut **self.0)
                    .await
                    .map_err(db_error)?
                    .rows_affected())
            }

            async fn fetch_ids(
                &mut self,
                sql: String,
                params: Vec<SqlParam>,
            ) -> Result<Vec<(i64, String)>> {
                let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                    .fetch_all(&mut **self.0)
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get("id").map_err(db_error)?,
                            row.try_get("name").map_err(db_error)?,
                        ))
                    })
                    .collect()
            }

            async fn fetch_one_i64(&mut self, sql: String, params: Vec<SqlParam>) -> Result<i64> {
                let row = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                    .fetch_one(&mut **self.0)
                    .await
                    .map_err(db_error)?;
                row.try_get(0).map_err(db_error)
            }

            async fn fetch_records(
                &mut self,
                sql: String,
                params: Vec<SqlParam>,
            ) -> Result<Vec<(i64, StoredRecord)>> {
                let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                    .fetch_all(&mut **self.0)
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|row| Ok((row.try_get("id").map_err(db_error)?, record_with_recipients(row)?)))
                    .collect()
            }
        }

        /// A reader connection for one expensive read, stopped as
        /// `ReadBounds` says. When it is dropped before `finish`, the read
        /// is stopped and the connection closed rather than reused: it may
        /// still be busy with the statement, and on SQLite it carries a
        /// progress handler that would stop the next one.
        struct Bounded {
            conn: sqlx::pool::PoolConnection<$db>,
            bounds: std::sync::Arc<$crate::store::backend::ReadBounds>,
            pool: sqlx::Pool<$db>,
        }

        impl Bounded {
            async fn acquire(pool: &sqlx::Pool<$db>) -> Result<Self> {
                let bounds = std::sync::Arc::new($crate::store::backend::ReadBounds::for_this_call());
                let conn = pool.acquire().await.map_err(db_error)?;
                Ok(Self { conn, bounds, pool: pool.clone() })
            }

            fn conn(&mut self) -> &mut <$db as sqlx::Database>::Connection {
                &mut self.conn
            }

            fn finish(self) {
                self.bounds.finish();
            }
        }

        impl Drop for Bounded {
            fn drop(&mut self) {
                if !self.bounds.finished() {
                    self.bounds.stop();
                    self.conn.close_on_drop();
                    $store::cancel_running(&self.pool, &self.bounds);
                }
            }
        }

        impl $store {
            async fn identities_of(&self, partner: &str) -> Result<Vec<String>> {
                sqlx::query_scalar(
                    "SELECT identity FROM partner_identities WHERE partner = $1 ORDER BY identity",
                )
                .bind(partner.to_owned())
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)
            }

            async fn ca_certificates_of(&self, partner: &str) -> Result<Vec<String>> {
                sqlx::query_scalar("SELECT pem FROM partner_cas WHERE partner = $1 ORDER BY pem")
                    .bind(partner.to_owned())
                    .fetch_all(&self.readers)
                    .await
                    .map_err(db_error)
            }

            /// A partner as stored, with its identities and CAs.
            async fn partner_of_row(&self, row: &$row) -> Result<Partner> {
                let id: String = row.try_get("id").map_err(db_error)?;
                partner_from_row(
                    row,
                    self.identities_of(&id).await?,
                    self.ca_certificates_of(&id).await?,
                )
            }

            /// Replaces a partner's identities and CAs; ALREADY_EXISTS when
            /// one of them is another partner's.
            async fn write_identities(
                tx: &mut Transaction<'static, $db>,
                partner: &Partner,
            ) -> Result<()> {
                sqlx::query("DELETE FROM partner_cas WHERE partner = $1")
                    .bind(partner.id.clone())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                for pem in &partner.ca_certificates {
                    let ca = $crate::auth::cert::ca_certificate(pem).map_err(|why| {
                        Error::internal(format!("a stored CA certificate {why}"))
                    })?;
                    sqlx::query(
                        "INSERT INTO partner_cas (fingerprint, partner, pem) VALUES ($1, $2, $3)",
                    )
                    .bind(ca.fingerprint.clone())
                    .bind(partner.id.clone())
                    .bind(pem.clone())
                    .execute(&mut **tx)
                    .await
                    .map_err(|err| match db_error(err) {
                        Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                            "the CA certificate {} (registered on another partner)",
                            ca.fingerprint
                        )),
                        other => other,
                    })?;
                }
                sqlx::query("DELETE FROM partner_identities WHERE partner = $1")
                    .bind(partner.id.clone())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                for identity in &partner.identities {
                    sqlx::query(
                        "INSERT INTO partner_identities (identity, partner) VALUES ($1, $2)",
                    )
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

            /// Current versions of the named records, with recipients.
            async fn records_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                names: &[String],
            ) -> Result<std::collections::HashMap<String, StoredRecord>> {
                let mut found = std::collections::HashMap::with_capacity(names.len());
                for chunk in names.chunks(sql::NAMES_PER_STATEMENT) {
                    let params: Vec<SqlParam> =
                        chunk.iter().map(|n| SqlParam::Text(n.clone())).collect();
                    let rows = bind_all(
                        sqlx::query(AssertSqlSafe(DIALECT.records_by_name(chunk.len()))),
                        params,
                    )
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?;
                    for row in rows {
                        let record = record_with_recipients(&row)?;
                        found.insert(record.name.clone(), record);
                    }
                }
                Ok(found)
            }
        }

        #[tonic::async_trait]
        impl Store for $store {
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
                    Some(row) => Ok(Some(self.partner_of_row(&row).await?)),
                    None => Ok(None),
                }
            }

            async fn partner_by_identity(&self, identity: &str) -> Result<Option<Partner>> {
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT partner FROM partner_identities WHERE identity = $1",
                )
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
                    partners.push(self.partner_of_row(&row).await?);
                }
                Ok(partners)
            }

            async fn partner_cas(&self) -> Result<Vec<(String, String)>> {
                let rows = sqlx::query("SELECT partner, pem FROM partner_cas ORDER BY partner, pem")
                    .fetch_all(&self.readers)
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get("partner").map_err(db_error)?,
                            row.try_get("pem").map_err(db_error)?,
                        ))
                    })
                    .collect()
            }

            async fn missing_partners(&self, ids: &[String]) -> Result<Vec<String>> {
                let mut found = std::collections::HashSet::new();
                for chunk in ids.chunks(sql::NAMES_PER_STATEMENT) {
                    let sql = format!(
                        "SELECT id FROM partners WHERE id IN ({})",
                        DIALECT.placeholders(chunk.len(), 1)
                    );
                    let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
                    for id in chunk {
                        query = query.bind(id.clone());
                    }
                    found.extend(query.fetch_all(&self.readers).await.map_err(db_error)?);
                }
                Ok(ids.iter().filter(|id| !found.contains(*id)).cloned().collect())
            }

            #[instrument(skip_all, fields(partner = %partner.id))]
            async fn create_partner(
                &self,
                partner: &Partner,
                audit: Option<&AuditContext>,
            ) -> Result<()> {
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
                if let Some(audit) = audit {
                    sql::insert_audit(&mut TxExec(&mut tx), audit, &[(partner.name(), 0)]).await?;
                }
                tx.commit().await.map_err(db_error)
            }

            #[instrument(skip_all, fields(partner = %id))]
            async fn update_partner(
                &self,
                id: &str,
                edit: EditPartner,
                audit: Option<&AuditContext>,
            ) -> Result<Partner> {
                let mut tx = self.writer.begin().await.map_err(db_error)?;
                let row = sqlx::query("SELECT * FROM partners WHERE id = $1")
                    .bind(id.to_owned())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .ok_or_else(|| Error::NotFound($crate::domain::names::partner_name(id)))?;
                let identities: Vec<String> = sqlx::query_scalar(
                    "SELECT identity FROM partner_identities WHERE partner = $1 ORDER BY identity",
                )
                .bind(id.to_owned())
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
                let ca_certificates: Vec<String> = sqlx::query_scalar(
                    "SELECT pem FROM partner_cas WHERE partner = $1 ORDER BY pem",
                )
                .bind(id.to_owned())
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
                let current = partner_from_row(&row, identities, ca_certificates)?;
                let updated = edit(current.clone())?;
                if updated == current {
                    return Ok(current);
                }
                let active_admin = |p: &Partner| p.is_active() && p.has_role(Role::Admin);
                if active_admin(&current) && !active_admin(&updated) {
                    // The others are locked, so two admins suspending each
                    // other at once cannot both succeed.
                    let sql = format!(
                        "SELECT * FROM partners WHERE state = $1 AND id <> $2{}",
                        DIALECT.for_update()
                    );
                    let others = sqlx::query(AssertSqlSafe(sql))
                        .bind($crate::pb::PartnerState::Active as i32)
                        .bind(id.to_owned())
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    let mut another = false;
                    for row in &others {
                        another |= active_admin(&partner_from_row(row, Vec::new(), Vec::new())?);
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
                if let Some(audit) = audit {
                    sql::insert_audit(&mut TxExec(&mut tx), audit, &[(updated.name(), 0)]).await?;
                }
                tx.commit().await.map_err(db_error)?;
                Ok(updated)
            }

            async fn read_index_feed(&self, after: i64, limit: usize) -> Result<IndexFeedPage> {
                // One snapshot for the rows and the horizon.
                let mut tx = self.readers.begin().await.map_err(db_error)?;
                Self::begin_snapshot(&mut tx).await?;
                let sql = format!(
                    "SELECT c.seq AS change_seq, c.name AS change_name, c.commit_time AS change_time, \
                     {}, {} AS recipients FROM changes c \
                     LEFT JOIN records r ON r.id = c.record AND NOT c.deleted \
                     WHERE c.seq > $1 ORDER BY c.seq LIMIT $2",
                    sql::RECORD_COLUMNS,
                    DIALECT.recipients_of_r()
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(after)
                    .bind(limit as i64)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?;
                let (head, purge_horizon): (i64, i64) = sqlx::query_as(sql::FEED_HEAD)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
                let mut changes = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: Option<i64> = row.try_get("id").map_err(db_error)?;
                    changes.push(IndexChange {
                        seq: row.try_get("change_seq").map_err(db_error)?,
                        name: row.try_get("change_name").map_err(db_error)?,
                        commit_time: row.try_get("change_time").map_err(db_error)?,
                        record: match id {
                            Some(_) => Some(record_with_recipients(row)?),
                            None => None,
                        },
                    });
                }
                Ok(IndexFeedPage {
                    changes,
                    head,
                    purge_horizon,
                })
            }

            #[instrument(skip_all)]
            async fn filtered_names(
                &self,
                viewer: &str,
                filter: &$crate::domain::filter::Expr,
            ) -> Result<std::collections::HashSet<String>> {
                let (sql, params) = sql::filtered_names_query(viewer, filter)?;
                let mut bounded = Bounded::acquire(&self.readers).await?;
                let bounds = bounded.bounds.clone();
                let names = bounds.outcome(async {
                    let mut tx = sqlx::Connection::begin(bounded.conn()).await.map_err(db_error)?;
                    Self::limit_reads(&mut tx, &bounds).await?;
                    let names: Vec<String> = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_error)?
                        .iter()
                        .map(|row| row.try_get("name").map_err(db_error))
                        .collect::<Result<_>>()?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(names)
                }.await)?;
                bounded.finish();
                Ok(names.into_iter().collect())
            }

            async fn get_records(
                &self,
                names: &[String],
            ) -> Result<std::collections::HashMap<String, StoredRecord>> {
                self.read_by_name(names).await
            }

            #[instrument(skip_all, fields(kind = %query.kind, limit = query.limit))]
            async fn list_records(&self, query: &ListQuery<'_>) -> Result<Vec<StoredRecord>> {
                let (sql, params) = sql::list_query(query)?;
                if query.filter.is_none() {
                    // A walk along an index that stops at the page's end.
                    let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                        .fetch_all(&self.readers)
                        .await
                        .map_err(db_error)?;
                    return rows.iter().map(record_from_row).collect();
                }
                let mut bounded = Bounded::acquire(&self.readers).await?;
                let bounds = bounded.bounds.clone();
                let rows = bounds.outcome(async {
                    let mut tx = sqlx::Connection::begin(bounded.conn()).await.map_err(db_error)?;
                    Self::limit_reads(&mut tx, &bounds).await?;
                    let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(rows)
                }.await)?;
                bounded.finish();
                rows.iter().map(record_from_row).collect()
            }

            #[instrument(skip_all, fields(items = items.len()))]
            async fn write_records(
                &self,
                items: Vec<(String, Decide)>,
                idempotency: Option<Idempotency>,
                audit: Option<&AuditContext>,
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
                            ops.push(sql::Op::Put {
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
                            ops.push(sql::Op::Delete { name, kind });
                        }
                    }
                }
                let head = sql::apply(&mut TxExec(&mut tx), &ops).await?;
                if let Some(audit) = audit {
                    // What changed, and what was refused; not what was unchanged.
                    let rows: Vec<(String, i32)> = resources
                        .iter()
                        .zip(&results)
                        .filter_map(|(resource, result)| match result {
                            Ok(written) if written.changed => Some((resource.clone(), 0)),
                            Ok(_) => None,
                            Err(err) => Some((resource.clone(), err.code() as i32)),
                        })
                        .collect();
                    sql::insert_audit(&mut TxExec(&mut tx), audit, &rows).await?;
                }
                if let Some(idem) = idempotency {
                    let response = (idem.encode)(&results);
                    sqlx::query(
                        "INSERT INTO batch_requests (partner, request_id, response, create_time) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(idem.partner)
                    .bind(idem.request_id)
                    .bind(response)
                    .bind($crate::domain::record::now_micros())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }
                if let Some(head) = head {
                    Self::before_commit(&mut tx, head).await?;
                }
                tx.commit().await.map_err(db_error)?;
                if let Some(head) = head {
                    self.head.send_if_modified(|known| {
                        let newer = head > *known;
                        if newer {
                            *known = head;
                        }
                        newer
                    });
                }
                Ok(BatchWritten::Done(results))
            }

            async fn read_feed(&self, query: &FeedQuery<'_>) -> Result<FeedPage> {
                let (sql, params) = sql::feed_query(query);
                self.read_feed_rows(sql, params).await
            }

            async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.writer.begin().await.map_err(db_error)?;
                sql::insert_audit_rows(
                    &mut TxExec(&mut tx),
                    events
                        .iter()
                        .map(|e| (e.event_time, &e.context, e.resource.as_str(), e.code)),
                )
                .await?;
                tx.commit().await.map_err(db_error)
            }

            async fn list_audit(
                &self,
                partner: Option<&str>,
                filter: Option<&$crate::domain::filter::Expr>,
                before: Option<i64>,
                limit: usize,
            ) -> Result<Vec<AuditEntry>> {
                let (sql, params) = sql::audit_query(partner, filter, before, limit)?;
                let rows = if filter.is_none() {
                    bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                        .fetch_all(&self.readers)
                        .await
                        .map_err(db_error)?
                } else {
                    let mut bounded = Bounded::acquire(&self.readers).await?;
                    let bounds = bounded.bounds.clone();
                    let rows = bounds.outcome(async {
                        let mut tx =
                            sqlx::Connection::begin(bounded.conn()).await.map_err(db_error)?;
                        Self::limit_reads(&mut tx, &bounds).await?;
                        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        tx.commit().await.map_err(db_error)?;
                        Ok(rows)
                    }.await)?;
                    bounded.finish();
                    rows
                };
                rows.iter()
                    .map(|row| {
                        Ok(AuditEntry {
                            id: row.try_get("id").map_err(db_error)?,
                            event_time: row.try_get("event_time").map_err(db_error)?,
                            context: AuditContext {
                                partner: row.try_get("partner").map_err(db_error)?,
                                fingerprint: row
                                    .try_get("certificate_fingerprint")
                                    .map_err(db_error)?,
                                method: row.try_get("method").map_err(db_error)?,
                                request_id: row.try_get("request_id").map_err(db_error)?,
                            },
                            resource: row.try_get("resource").map_err(db_error)?,
                            code: row.try_get("code").map_err(db_error)?,
                        })
                    })
                    .collect()
            }

            fn feed_head(&self) -> tokio::sync::watch::Receiver<i64> {
                self.head.subscribe()
            }

            fn pool_usage(&self) -> Vec<$crate::metrics::PoolUsage> {
                let mut pools = vec![$crate::metrics::PoolUsage::of("readers", &self.readers)];
                if $store::SEPARATE_WRITER {
                    pools.push($crate::metrics::PoolUsage::of("writer", &self.writer));
                }
                pools
            }

            async fn purge(&self, before: i64, batches_before: i64) -> Result<u64> {
                let mut tx = self.writer.begin().await.map_err(db_error)?;
                let horizon: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), 0) FROM changes WHERE deleted = $2 AND commit_time < $1",
                )
                .bind(before)
                .bind(true)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
                let purged =
                    sqlx::query("DELETE FROM changes WHERE deleted = $2 AND commit_time < $1")
                        .bind(before)
                        .bind(true)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?
                        .rows_affected();
                sqlx::query(
                    "UPDATE hub SET purge_horizon = CASE WHEN purge_horizon > $1 \
                     THEN purge_horizon ELSE $1 END WHERE singleton = 1",
                )
                .bind(horizon)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                // No cursor before the horizon is taken, so a loss of sight
                // there is news to no one: this prunes the audience of
                // purged tombstones and of every change long superseded.
                sqlx::query(
                    "DELETE FROM record_audience WHERE lost_at <= \
                     (SELECT purge_horizon FROM hub WHERE singleton = 1)",
                )
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
    };
}

pub(crate) use sql_store;
