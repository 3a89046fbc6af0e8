//! The change feed as the store reads it: pages of the feed (through the
//! pool, as PostgreSQL reads them; SQLite reads its own in
//! `sqlite_direct`), the search index's feed, and the purge of old
//! tombstones.

use super::backend::{Backend, Conn, Pool};
use super::error::db_error;
use super::rows::{self, ReadRow};
use super::sql_filter::SqlParam;
use super::sql_store::SqlStore;
use super::statements::SqlxDb;
use super::{FeedPage, IndexChange, IndexFeedPage, sql};
use crate::domain::{Error, Result};

/// The feed's head and purge horizon, in the snapshot of `conn`'s
/// transaction.
async fn ends<B: Backend>(conn: &mut Conn<B>) -> Result<(i64, i64)> {
    let rows = B::Db::fetch_all(conn, sql::FEED_HEAD, Vec::new()).await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::internal("the hub row is missing"))?;
    Ok((row.at(0)?, row.at(1)?))
}

/// A page of the feed from `sql` (`sql::feed_query`) and the head, in one
/// snapshot, so a page that reaches the end of the log reports the head it
/// saw.
pub async fn page<B: Backend>(
    readers: &Pool<B>,
    sql: String,
    params: Vec<SqlParam>,
) -> Result<FeedPage> {
    let mut tx = readers.begin().await.map_err(db_error)?;
    B::begin_snapshot(&mut tx).await?;
    let found = B::Db::fetch_all(&mut tx, sql, params).await?;
    let (head, purge_horizon) = ends::<B>(&mut tx).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(FeedPage {
        rows: found.iter().map(rows::feed_row).collect::<Result<_>>()?,
        head,
        purge_horizon,
    })
}

/// The changes after `after` for the search index, whoever may see them.
pub async fn index_page<B: Backend>(
    store: &SqlStore<B>,
    after: i64,
    limit: usize,
) -> Result<IndexFeedPage> {
    // One snapshot for the rows and the horizon.
    let mut tx = store.readers.begin().await.map_err(db_error)?;
    B::begin_snapshot(&mut tx).await?;
    let sql = format!(
        "SELECT c.seq AS change_seq, c.name AS change_name, c.commit_time AS change_time, \
         {}, {} AS recipients FROM changes c \
         LEFT JOIN records r ON r.id = c.record AND NOT c.deleted \
         WHERE c.seq > $1 ORDER BY c.seq LIMIT $2",
        sql::RECORD_COLUMNS,
        B::DIALECT.recipients_of_r()
    );
    let found = B::Db::fetch_all(
        &mut tx,
        sql,
        vec![SqlParam::Int(after), SqlParam::Int(limit as i64)],
    )
    .await?;
    let (head, purge_horizon) = ends::<B>(&mut tx).await?;
    tx.commit().await.map_err(db_error)?;
    let mut changes = Vec::with_capacity(found.len());
    for row in &found {
        let id: Option<i64> = row.get("id")?;
        changes.push(IndexChange {
            seq: row.get("change_seq")?,
            name: row.get("change_name")?,
            commit_time: row.get("change_time")?,
            record: match id {
                Some(_) => Some(rows::record_with_recipients(row)?),
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

/// Purges tombstones committed before `before` and batch answers older
/// than `batches_before`; the tombstones purged.
pub async fn purge<B: Backend>(
    store: &SqlStore<B>,
    before: i64,
    batches_before: i64,
) -> Result<u64> {
    let mut tx = store.writer.begin().await.map_err(db_error)?;
    let tombstones = || vec![SqlParam::Int(before), SqlParam::Bool(true)];
    let horizon: i64 = B::Db::fetch_all(
        &mut tx,
        "SELECT COALESCE(MAX(seq), 0) FROM changes WHERE deleted = $2 AND commit_time < $1",
        tombstones(),
    )
    .await?
    .first()
    .ok_or_else(|| Error::internal("an aggregate without a row"))?
    .at(0)?;
    let purged = B::Db::execute(
        &mut tx,
        "DELETE FROM changes WHERE deleted = $2 AND commit_time < $1",
        tombstones(),
    )
    .await?;
    B::Db::execute(
        &mut tx,
        "UPDATE hub SET purge_horizon = CASE WHEN purge_horizon > $1 \
         THEN purge_horizon ELSE $1 END WHERE singleton = 1",
        vec![SqlParam::Int(horizon)],
    )
    .await?;
    // No cursor before the horizon is taken, so a loss of sight there is
    // news to no one: this prunes the audience of purged tombstones and of
    // every change long superseded.
    B::Db::execute(
        &mut tx,
        "DELETE FROM record_audience WHERE lost_at <= \
         (SELECT purge_horizon FROM hub WHERE singleton = 1)",
        Vec::new(),
    )
    .await?;
    B::Db::execute(
        &mut tx,
        "DELETE FROM batch_requests WHERE create_time < $1",
        vec![SqlParam::Int(batches_before)],
    )
    .await?;
    tx.commit().await.map_err(db_error)?;
    Ok(purged)
}
