//! The one storage interface, in domain terms, and its backends. Visibility
//! of restricted records is enforced inside the queries, so a record a caller
//! may not see never leaves the store for that caller's lists.

mod audit;
mod backend;
mod batch_write;
mod error;
mod feed_reads;
pub mod filter_attrs;
mod idle;
mod migrate;
mod partners;
mod postgres;
mod read_bounds;
pub mod reads;
mod records;
mod rows;
pub mod sql;
pub mod sql_filter;
mod sql_store;
mod sqlite;
mod sqlite_direct;
mod statements;

use std::path::Path;
use std::sync::Arc;

use crate::domain::filter::Expr;
use crate::domain::paging::{OrderKey, SortField, SortValue};
use crate::domain::partner::Partner;
use crate::domain::{Kind, Result};

pub use filter_attrs::Attr;

/// A stored record version: the indexed columns and the encoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub kind: Kind,
    pub name: String,
    pub owner: String,
    pub uid: String,
    pub etag: String,
    pub create_time: i64,
    pub update_time: i64,
    pub tlp: i32,
    pub title: String,
    /// Partner ids; filled by `get_record`, empty in lists.
    pub recipients: Vec<String>,
    /// The full record, output-only fields included, prost-encoded.
    pub body: Vec<u8>,
}

impl StoredRecord {
    pub fn sort_value(&self, field: SortField) -> SortValue {
        match field {
            SortField::CreateTime => SortValue::Int(self.create_time),
            SortField::UpdateTime => SortValue::Int(self.update_time),
            SortField::Name => SortValue::Text(self.name.clone()),
            SortField::Title => SortValue::Text(self.title.clone()),
        }
    }
}

/// A version to write, with what the filters need.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub record: StoredRecord,
    pub record_id: String,
    pub attrs: Vec<Attr>,
}

/// What a read-modify-write decides, given the current version.
pub enum Write {
    Put(Box<NewVersion>),
    Delete,
    Nothing,
}

pub type WriteDecision = Box<dyn FnOnce(Option<StoredRecord>) -> Result<Write> + Send>;

/// What a write did to one record.
#[derive(Debug, Clone)]
pub struct Written {
    /// Whether the record existed before.
    pub existed: bool,
    /// Whether anything was written (and a change entered the feed).
    pub changed: bool,
    /// The version that is current afterwards.
    pub current: Option<StoredRecord>,
}

/// Who makes a write, for the audit rows it adds in its own transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditContext {
    /// Partner id (a name, `partners/{p}`, when read back from the log);
    /// empty when the certificate mapped to no partner.
    pub partner: String,
    pub fingerprint: String,
    pub method: String,
    pub request_id: String,
}

/// The most of a resource name an audit row keeps, in bytes: a refused
/// call may name anything up to the request limit.
pub const MAX_AUDIT_RESOURCE_BYTES: usize = 1024;

/// `resource` as an audit row keeps it: whole when it fits in
/// `MAX_AUDIT_RESOURCE_BYTES`, else cut on a character boundary and marked
/// with a trailing `…`, within the same bound.
pub fn audit_resource(resource: &str) -> std::borrow::Cow<'_, str> {
    const MARK: &str = "…";
    if resource.len() <= MAX_AUDIT_RESOURCE_BYTES {
        return std::borrow::Cow::Borrowed(resource);
    }
    let mut end = MAX_AUDIT_RESOURCE_BYTES - MARK.len();
    while !resource.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{MARK}", &resource[..end]))
}

/// An audit row written on its own (a refused call, a batch's refused
/// items): who, when, about what, and the code answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    pub event_time: i64,
    pub context: AuditContext,
    pub resource: String,
    pub code: i32,
}

/// One row of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub event_time: i64,
    pub context: AuditContext,
    pub resource: String,
    pub code: i32,
}

/// Encodes a batch's answer from its outcomes.
pub type EncodeAnswer = Box<dyn FnOnce(&[Result<Written>]) -> Vec<u8> + Send>;

/// Makes a batch idempotent: the answer is stored under the request id in
/// the batch's transaction, and a repeat returns it without writing.
pub struct Idempotency {
    pub partner: String,
    pub request_id: String,
    pub encode: EncodeAnswer,
}

pub enum BatchWritten {
    Done(Vec<Result<Written>>),
    /// The stored answer of an earlier request with the same id.
    Repeated(Vec<u8>),
}

/// One entry of the change feed, as a given partner sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEntry {
    /// The record as it is now (prost-encoded body).
    Upserted(Vec<u8>),
    Deleted,
    /// The partner saw an earlier version but may not see this one.
    Unshared,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    pub seq: i64,
    pub kind: Kind,
    pub name: String,
    pub commit_time: i64,
    pub entry: FeedEntry,
}

#[derive(Clone, Copy)]
pub struct FeedQuery<'a> {
    pub viewer: &'a Partner,
    /// Changes after this position.
    pub after: i64,
    /// Empty for all kinds.
    pub kinds: &'a [Kind],
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedPage {
    /// Changes the viewer may know of, in feed order.
    pub rows: Vec<FeedRow>,
    /// The newest position when the page was read.
    pub head: i64,
    /// Positions below this may have missed a purged tombstone.
    pub purge_horizon: i64,
}
pub type EditPartner = Box<dyn FnOnce(Partner) -> Result<Partner> + Send>;

pub struct ListQuery<'a> {
    pub kind: Kind,
    /// The calling partner: restricted records of others are left out unless
    /// it is a recipient.
    pub viewer: &'a str,
    /// Only records of this partner; `None` for every partner.
    pub owner: Option<&'a str>,
    pub filter: Option<&'a Expr>,
    /// Ends with `name`, so the order is total.
    pub order: &'a [OrderKey],
    /// Sort values of the last record of the previous page.
    pub after: Option<&'a [SortValue]>,
    pub limit: usize,
}

/// One change as the search index follows it, whoever may see it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexChange {
    pub seq: i64,
    pub name: String,
    /// Microseconds.
    pub commit_time: i64,
    /// The current version, with recipients; `None` when deleted.
    pub record: Option<StoredRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexFeedPage {
    /// In feed order.
    pub changes: Vec<IndexChange>,
    pub head: i64,
    /// Positions below this may have missed a purged tombstone.
    pub purge_horizon: i64,
}

/// Identity of this hub database and the key its page tokens are signed with.
#[derive(Debug, Clone)]
pub struct HubInfo {
    pub hub_id: String,
    pub token_key: Vec<u8>,
}

#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn hub_info(&self) -> Result<HubInfo>;
    /// Cheap round trip, for health.
    async fn ping(&self) -> Result<()>;

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>>;
    async fn partner_by_identity(&self, identity: &str) -> Result<Option<Partner>>;
    /// Every CA registered on a partner: (partner id, PEM).
    async fn partner_cas(&self) -> Result<Vec<(String, String)>>;
    /// Partners ordered by id, after `after`.
    async fn list_partners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Partner>>;
    /// The ids among `ids` that name no partner.
    async fn missing_partners(&self, ids: &[String]) -> Result<Vec<String>>;
    /// ALREADY_EXISTS when the id, one of the identities or one of the CAs
    /// is taken.
    async fn create_partner(&self, partner: &Partner, audit: Option<&AuditContext>) -> Result<()>;
    /// Read-modify-write of one partner; NOT_FOUND when absent.
    async fn update_partner(
        &self,
        id: &str,
        edit: EditPartner,
        audit: Option<&AuditContext>,
    ) -> Result<Partner>;

    /// The changes after `after`, for the search index (`crate::search`):
    /// every record's, whoever may see it.
    async fn read_index_feed(&self, after: i64, limit: usize) -> Result<IndexFeedPage>;
    /// Names of the records `viewer` may see that match `filter` (on the
    /// fields every record has and those the kinds having them store
    /// alike), for a filtered search.
    async fn filtered_names(
        &self,
        viewer: &str,
        filter: &Expr,
    ) -> Result<std::collections::HashSet<String>>;

    /// Records by name, with their recipients, whoever may see them; names
    /// not found are absent from the map. One statement per 500 names.
    async fn get_records(
        &self,
        names: &[String],
    ) -> Result<std::collections::HashMap<String, StoredRecord>>;
    async fn list_records(&self, query: &ListQuery<'_>) -> Result<Vec<StoredRecord>>;
    /// For each item in order, reads the current version and writes what its
    /// `decide` returns, with the feed entry, all in one transaction. An
    /// item's own error fails that item alone; a database error fails all.
    /// Each item that changed a record or failed adds an audit row (with
    /// `audit`) in the same transaction.
    async fn write_records(
        &self,
        items: Vec<(String, WriteDecision)>,
        idempotency: Option<Idempotency>,
        audit: Option<&AuditContext>,
    ) -> Result<BatchWritten>;

    /// One read-modify-write.
    async fn write_record(
        &self,
        name: &str,
        decide: WriteDecision,
        audit: Option<&AuditContext>,
    ) -> Result<Written> {
        match self
            .write_records(vec![(name.to_owned(), decide)], None, audit)
            .await?
        {
            BatchWritten::Done(mut results) if results.len() == 1 => results.remove(0),
            _ => Err(crate::domain::Error::internal(
                "a single write answered unexpectedly",
            )),
        }
    }

    /// Adds audit rows on their own, in one transaction: denied calls, or
    /// the refused items of a batch, change nothing else.
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()>;
    /// Audit rows newest first, of one partner (`partners/{p}`) or all,
    /// matching `filter`, before row `before`.
    async fn list_audit(
        &self,
        partner: Option<&str>,
        filter: Option<&Expr>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>>;

    /// A page of the change feed as `query.viewer` may see it.
    async fn read_feed(&self, query: &FeedQuery<'_>) -> Result<FeedPage>;
    /// The newest feed position, advanced after every commit (this
    /// instance's or, on PostgreSQL, another's).
    fn head(&self) -> &crate::feed::Head;
    /// A receiver of `head`, woken when it advances.
    fn feed_head(&self) -> tokio::sync::watch::Receiver<i64> {
        self.head().subscribe()
    }
    /// How full the database connection pools are, for the metrics.
    fn pool_usage(&self) -> Vec<crate::metrics::PoolUsage>;
    /// Purges tombstones committed before `before` (microseconds) and batch
    /// answers older than `batches_before`; returns the tombstones purged.
    async fn purge(&self, before: i64, batches_before: i64) -> Result<u64>;
}

pub type DynStore = Arc<dyn Store>;

/// Connections per hub instance to PostgreSQL by default: instances times
/// the pool size must stay under the server's `max_connections`.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// Opens the store named by a database URL, or the embedded SQLite database
/// in `data_dir` when there is none, and runs migrations unless told not to.
pub async fn open(database_url: Option<&str>, data_dir: &Path, migrate: bool) -> Result<DynStore> {
    open_with(database_url, data_dir, migrate, DEFAULT_POOL_SIZE).await
}

/// `open` with the PostgreSQL pool size.
pub async fn open_with(
    database_url: Option<&str>,
    data_dir: &Path,
    migrate: bool,
    pool_size: u32,
) -> Result<DynStore> {
    match database_url {
        None => {
            let path = data_dir.join("copex.db");
            Ok(Arc::new(sqlite::open(&path, migrate).await?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            Ok(Arc::new(sqlite::open(Path::new(path), migrate).await?))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(postgres::open(url, pool_size, migrate).await?))
        }
        Some(url) => Err(crate::domain::Error::Unavailable(format!(
            "unsupported database URL {:?}: use postgres://... or sqlite:PATH",
            crate::domain::names::truncate(url.split('@').next_back().unwrap_or(""), 60)
        ))),
    }
}
