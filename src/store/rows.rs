//! Reading result rows into the store's types, whichever driver read them:
//! sqlx on either database, or rusqlite for SQLite's direct reads
//! (`sqlite_direct.rs`). Each type is read by one function for all three.

use sqlx::postgres::{PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};

use super::error::db_error;
use super::sqlite_direct::DirectValue;
use super::{AuditContext, AuditEntry, FeedEntry, FeedRow, StoredRecord};
use crate::domain::partner::Partner;
use crate::domain::{Error, Kind, Result};

/// A value a column is read into, by any of the drivers.
pub trait Value:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + DirectValue
{
}

impl<T> Value for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + DirectValue
{
}

/// A result row.
pub trait ReadRow {
    /// The value of the column named `column`.
    fn get<T: Value>(&self, column: &str) -> Result<T>;
    /// The value of the column at `index`, from 0.
    fn at<T: Value>(&self, index: usize) -> Result<T>;
}

impl ReadRow for SqliteRow {
    fn get<T: Value>(&self, column: &str) -> Result<T> {
        sqlx::Row::try_get(self, column).map_err(db_error)
    }

    fn at<T: Value>(&self, index: usize) -> Result<T> {
        sqlx::Row::try_get(self, index).map_err(db_error)
    }
}

impl ReadRow for PgRow {
    fn get<T: Value>(&self, column: &str) -> Result<T> {
        sqlx::Row::try_get(self, column).map_err(db_error)
    }

    fn at<T: Value>(&self, index: usize) -> Result<T> {
        sqlx::Row::try_get(self, index).map_err(db_error)
    }
}

fn kind(name: &str) -> Result<Kind> {
    Kind::from_singular(name)
        .ok_or_else(|| Error::internal(format!("unknown kind {name:?} in the database")))
}

/// A `StoredRecord` from a row of `sql::RECORD_COLUMNS`, recipients left
/// empty.
pub fn stored_record(row: &impl ReadRow) -> Result<StoredRecord> {
    Ok(StoredRecord {
        kind: kind(&row.get::<String>("kind")?)?,
        name: row.get("name")?,
        owner: row.get("owner")?,
        uid: row.get("uid")?,
        etag: row.get("etag")?,
        create_time: row.get("create_time")?,
        update_time: row.get("update_time")?,
        tlp: row.get("tlp")?,
        title: row.get("title")?,
        recipients: Vec::new(),
        body: row.get("body")?,
    })
}

/// A record and its `recipients` column (`Dialect::recipients_of_r`:
/// partner ids joined by commas).
pub fn record_with_recipients(row: &impl ReadRow) -> Result<StoredRecord> {
    let mut record = stored_record(row)?;
    record.recipients = row
        .get::<Option<String>>("recipients")?
        .map(|r| r.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(record)
}

/// A change of `sql::feed_query`'s columns, read by position.
pub fn feed_row(row: &impl ReadRow) -> Result<FeedRow> {
    let lost_time: Option<i64> = row.at(5)?;
    let lost_deleted: Option<bool> = row.at(6)?;
    let public_lost_time: Option<i64> = row.at(7)?;
    let public_deleted: bool = row.at(8)?;
    let (entry, commit_time) = feed_entry(
        row.at(4)?,
        row.at(3)?,
        lost_time.map(|t| (t, lost_deleted.unwrap_or_default())),
        public_lost_time.map(|t| (t, public_deleted)),
    )?;
    Ok(FeedRow {
        seq: row.at(0)?,
        kind: kind(&row.at::<String>(1)?)?,
        name: row.at(2)?,
        commit_time,
        entry,
    })
}

/// What a viewer gets of a change, and at which time: the record when it
/// sees it; else the notice of the change at which it lost sight, its own
/// audience row's first (it names the viewer), else the public one's.
fn feed_entry(
    body: Option<Vec<u8>>,
    commit_time: i64,
    lost: Option<(i64, bool)>,
    public_lost: Option<(i64, bool)>,
) -> Result<(FeedEntry, i64)> {
    if let Some(body) = body {
        return Ok((FeedEntry::Upserted(body), commit_time));
    }
    match lost.or(public_lost) {
        Some((time, true)) => Ok((FeedEntry::Deleted, time)),
        Some((time, false)) => Ok((FeedEntry::Unshared, time)),
        // The query selects only changes with one of the three.
        None => Err(Error::internal(
            "a feed change with neither record nor notice",
        )),
    }
}

/// A partner from a row of `partners`, with its identities and CAs.
pub fn partner(
    row: &impl ReadRow,
    identities: Vec<String>,
    ca_certificates: Vec<String>,
) -> Result<Partner> {
    let roles: String = row.get("roles")?;
    Ok(Partner {
        id: row.get("id")?,
        uid: row.get("uid")?,
        display_name: row.get("display_name")?,
        kind: row.get("kind")?,
        roles: roles.split(',').filter_map(|r| r.parse().ok()).collect(),
        identities,
        ca_certificates,
        state: row.get("state")?,
        etag: row.get("etag")?,
        create_time: row.get("create_time")?,
        update_time: row.get("update_time")?,
    })
}

/// An audit row from a row of `audit_events`.
pub fn audit_entry(row: &impl ReadRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get("id")?,
        event_time: row.get("event_time")?,
        context: AuditContext {
            partner: row.get("partner")?,
            fingerprint: row.get("certificate_fingerprint")?,
            method: row.get("method")?,
            request_id: row.get("request_id")?,
        },
        resource: row.get("resource")?,
        code: row.get("code")?,
    })
}
