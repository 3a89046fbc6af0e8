//! The `Store` on a SQL database: `SqlStore<B>`, for either `Backend`. The
//! work is in the modules by concern (`records`, `partners`, `audit`,
//! `feed_reads`); this file holds the pools and answers the trait.

use std::collections::{HashMap, HashSet};

use sqlx::pool::PoolConnection;

use super::backend::{Backend, Pool};
use super::error::db_error;
use super::read_bounds::Bounded;
use super::statements::SqlxDb;
use super::{
    AuditContext, AuditEntry, AuditEvent, BatchWritten, EditPartner, FeedPage, FeedQuery, HubInfo,
    Idempotency, IndexFeedPage, ListQuery, Store, StoredRecord, WriteDecision, audit, feed_reads,
    partners, records, rows::ReadRow, sql,
};
use crate::domain::Result;
use crate::domain::filter::Expr;
use crate::domain::partner::Partner;
use crate::feed::Head;

pub struct SqlStore<B: Backend> {
    pub(super) backend: B,
    /// Write transactions; the same pool as `readers` where the database
    /// has no single-writer rule (`Backend::SEPARATE_WRITER`).
    pub(super) writer: Pool<B>,
    pub(super) readers: Pool<B>,
    pub(super) head: Head,
}

impl<B: Backend> SqlStore<B> {
    pub fn new(backend: B, writer: Pool<B>, readers: Pool<B>, head: Head) -> Self {
        Self {
            backend,
            writer,
            readers,
            head,
        }
    }

    /// A reader connection for a cheap read.
    pub(super) async fn reader(&self) -> Result<PoolConnection<B::Db>> {
        self.readers.acquire().await.map_err(db_error)
    }

    /// A reader connection for an expensive read, bounded in time.
    pub(super) async fn bounded(&self) -> Result<Bounded<B>> {
        Bounded::acquire(&self.readers).await
    }
}

#[tonic::async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn hub_info(&self) -> Result<HubInfo> {
        let mut conn = self.reader().await?;
        let row = B::Db::fetch_all(
            &mut conn,
            "SELECT hub_id, token_key FROM hub WHERE singleton = 1",
            Vec::new(),
        )
        .await?;
        let row = row
            .first()
            .ok_or_else(|| crate::domain::Error::internal("the hub row is missing"))?;
        Ok(HubInfo {
            hub_id: row.get("hub_id")?,
            token_key: row.get("token_key")?,
        })
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.reader().await?;
        B::Db::execute(&mut conn, "SELECT 1", Vec::new()).await?;
        Ok(())
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>> {
        partners::get(self, id).await
    }

    async fn partner_by_identity(&self, identity: &str) -> Result<Option<Partner>> {
        partners::by_identity(self, identity).await
    }

    async fn partner_cas(&self) -> Result<Vec<(String, String)>> {
        partners::cas(self).await
    }

    async fn list_partners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Partner>> {
        partners::list(self, after, limit).await
    }

    async fn missing_partners(&self, ids: &[String]) -> Result<Vec<String>> {
        partners::missing(self, ids).await
    }

    async fn create_partner(&self, partner: &Partner, audit: Option<&AuditContext>) -> Result<()> {
        partners::create(self, partner, audit).await
    }

    async fn update_partner(
        &self,
        id: &str,
        edit: EditPartner,
        audit: Option<&AuditContext>,
    ) -> Result<Partner> {
        partners::update(self, id, edit, audit).await
    }

    async fn read_index_feed(&self, after: i64, limit: usize) -> Result<IndexFeedPage> {
        feed_reads::index_page(self, after, limit).await
    }

    async fn filtered_names(&self, viewer: &str, filter: &Expr) -> Result<HashSet<String>> {
        records::filtered_names(self, viewer, filter).await
    }

    async fn get_records(&self, names: &[String]) -> Result<HashMap<String, StoredRecord>> {
        self.backend.read_by_name(names).await
    }

    async fn list_records(&self, query: &ListQuery<'_>) -> Result<Vec<StoredRecord>> {
        records::list(self, query).await
    }

    async fn write_records(
        &self,
        items: Vec<(String, WriteDecision)>,
        idempotency: Option<Idempotency>,
        audit: Option<&AuditContext>,
    ) -> Result<BatchWritten> {
        records::write(self, items, idempotency, audit).await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        audit::append(self, events).await
    }

    async fn list_audit(
        &self,
        partner: Option<&str>,
        filter: Option<&Expr>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        audit::list(self, partner, filter, before, limit).await
    }

    async fn read_feed(&self, query: &FeedQuery<'_>) -> Result<FeedPage> {
        let (sql, params) = sql::feed_query(query);
        self.backend.read_feed(&self.readers, sql, params).await
    }

    fn head(&self) -> &Head {
        &self.head
    }

    fn pool_usage(&self) -> Vec<crate::metrics::PoolUsage> {
        let mut pools = vec![crate::metrics::PoolUsage::of("readers", &self.readers)];
        if B::SEPARATE_WRITER {
            pools.push(crate::metrics::PoolUsage::of("writer", &self.writer));
        }
        pools
    }

    async fn purge(&self, before: i64, batches_before: i64) -> Result<u64> {
        feed_reads::purge(self, before, batches_before).await
    }
}
