//! Full-text search as a tantivy index that follows the change feed.
//!
//! Writes carry no full-text work: an indexer task (`indexer`) reads the
//! feed as an all-seeing internal reader and indexes each change, committing
//! at least every `COMMIT_INTERVAL` while changes arrive, with the feed
//! position the commit covers in its payload. A restart resumes from that
//! position; a missing or unreadable index, or one of another layout
//! (`LAYOUT_VERSION`), is rebuilt from the feed. Each hub instance keeps its
//! own index in `<data-dir>/search/`.
//!
//! Each record's audience (`*` for every partner, else its owner and
//! recipients) is in the index and filtered in the query; the hits' records
//! are then read from the store and any the caller may no longer see are
//! dropped (`query`). Text is analysed in its own language (`languages`).

pub mod indexer;
pub mod languages;
pub mod query;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use tantivy::schema::{
    FAST, Facet, FacetOptions, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema,
    TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument};
use tokio::sync::watch;

use crate::domain::search::SearchText;
use crate::domain::{Error, Kind, Result, record, sharing};
use crate::store::StoredRecord;

/// The layout of the index: raise it when the schema, the analysis or what
/// is indexed changes, and every hub rebuilds its index from the feed.
pub const LAYOUT_VERSION: u32 = 1;

/// Commits come at least this often while changes arrive.
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Changes the index may be behind the feed head before a batch write waits
/// for it (`SearchIndex::admit_write`): a few hundred milliseconds of
/// indexing.
pub const WRITE_AHEAD_LIMIT: i64 = 2_000;

/// The longest a batch write waits for the index.
pub const WRITE_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The audience term of a record every partner may see.
pub const EVERYONE: &str = "*";

/// The index directory in a data directory.
pub fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("search")
}

/// The facet fields a search may count, as `SearchRequest.facets` names
/// them.
pub const FACETS: [&str; 5] = [
    "kind",
    "region",
    "stakeholder_group",
    "tool_category",
    "owner",
];

/// The searched text fields of one language: title, the other short
/// fields, long text.
#[derive(Debug, Clone, Copy)]
pub struct TextFields {
    pub title: Field,
    pub short: Field,
    pub body: Field,
}

/// Relevance weight of a match in the title, short fields, long text.
pub const BOOSTS: [f32; 3] = [4.0, 2.0, 1.0];

impl TextFields {
    pub fn all(&self) -> [Field; 3] {
        [self.title, self.short, self.body]
    }
}

#[derive(Debug, Clone)]
pub struct Fields {
    pub name: Field,
    pub kind: Field,
    pub audience: Field,
    pub language: Field,
    pub facets: Field,
    pub update_time: Field,
    /// One set per entry of `languages::LANGUAGES`, in its order.
    pub text: Vec<TextFields>,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let name = b.add_text_field("name", STRING | STORED);
    let kind = b.add_text_field("kind", STRING);
    let audience = b.add_text_field("audience", STRING);
    let language = b.add_text_field("language", STRING);
    let facets = b.add_facet_field("facets", FacetOptions::default());
    let update_time = b.add_i64_field("update_time", INDEXED | FAST);
    let text = languages::LANGUAGES
        .iter()
        .map(|lang| {
            let options = TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(&lang.analyzer_name())
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            );
            TextFields {
                title: b.add_text_field(&format!("title_{}", lang.code), options.clone()),
                short: b.add_text_field(&format!("short_{}", lang.code), options.clone()),
                body: b.add_text_field(&format!("body_{}", lang.code), options),
            }
        })
        .collect();
    (
        b.build(),
        Fields {
            name,
            kind,
            audience,
            language,
            facets,
            update_time,
            text,
        },
    )
}

/// What a commit's payload says: the layout and the feed position covered.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Payload {
    layout: u32,
    position: i64,
}

/// The index, its reader and how far it follows the feed. The writer
/// belongs to the indexer task alone (`indexer::run`).
pub struct SearchIndex {
    /// Its directory, whose files are kept private (`data_dir::tighten`).
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// Feed position the reader's searcher covers.
    indexed: watch::Sender<i64>,
    /// The indexer has read up to the feed head since the index was opened
    /// or emptied: batch writes may then wait for it (`admit_write`).
    following: AtomicBool,
    /// The BM25 statistics of the records every partner may see, for the
    /// searcher they were computed on (`query::PublicStats`).
    stats: Mutex<Option<std::sync::Arc<query::PublicDocs>>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("indexed", &*self.indexed.borrow())
            .finish()
    }
}

fn index_error(err: impl std::fmt::Display) -> Error {
    Error::internal(format!("search index: {err}"))
}

impl SearchIndex {
    /// Opens the index in `dir`, or makes a new one that the indexer fills
    /// from the start of the feed when there is none, it cannot be read, or
    /// its layout is not this code's (the directory is emptied first).
    pub fn open(dir: &Path) -> Result<Self> {
        let (schema, fields) = schema();
        let existing = Self::open_existing(dir, &schema);
        let (index, position) = match existing {
            Some(found) => found,
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(index_error)?;
                }
                crate::data_dir::create_private_dir(dir).map_err(index_error)?;
                tracing::info!(dir = %dir.display(), "search index created; it is built from the change feed");
                (Index::create_in_dir(dir, schema).map_err(index_error)?, 0)
            }
        };
        languages::register(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            // Only a hit's name is read from the doc store, once per hit; the
            // default cache of 100 decompressed blocks per segment held tens
            // of MiB under a steady write load (many small segments).
            .doc_store_cache_num_blocks(1)
            .try_into()
            .map_err(index_error)?;
        let opened = Self {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
            indexed: watch::Sender::new(position),
            following: AtomicBool::new(false),
            stats: Mutex::new(None),
        };
        opened.tighten();
        Ok(opened)
    }

    /// An index of this layout in `dir` and the position it covers.
    fn open_existing(dir: &Path, schema: &Schema) -> Option<(Index, i64)> {
        if !dir.join("meta.json").exists() {
            return None;
        }
        let found = Index::open_in_dir(dir).and_then(|index| {
            let meta = index.load_metas()?;
            Ok((index, meta.payload))
        });
        match found {
            Ok((index, payload)) => {
                let payload: Option<Payload> = payload.and_then(|p| serde_json::from_str(&p).ok());
                match payload {
                    Some(p) if p.layout == LAYOUT_VERSION && index.schema() == *schema => {
                        Some((index, p.position))
                    }
                    _ => {
                        tracing::warn!(dir = %dir.display(), "search index of another layout: rebuilding it from the change feed");
                        None
                    }
                }
            }
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "search index unreadable: rebuilding it from the change feed");
                None
            }
        }
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The feed position the index covers.
    pub fn indexed(&self) -> i64 {
        *self.indexed.borrow()
    }

    /// Waits until the index covers feed position `position`.
    pub async fn wait_for(&self, position: i64) {
        let mut rx = self.indexed.subscribe();
        // Only fails when the sender is gone, which `self` holds.
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    /// Holds a batch write back while a following index is more than
    /// `WRITE_AHEAD_LIMIT` changes behind `head`, so that commits stay
    /// searchable within a second under a bulk load: batches go at the
    /// pace the hub can index them. (Single-record writes never wait: each
    /// costs far more in its call than in the index, and their callers
    /// expect a quick answer.) An index still being built (not caught
    /// up since it was opened or emptied) holds nothing back, and one that
    /// does not come within the limit in `WRITE_WAIT_LIMIT` (an indexer that
    /// cannot commit) stops holding writes back until it catches up again.
    /// Returns how long the write waited.
    pub async fn admit_write(&self, head: i64) -> std::time::Duration {
        let floor = head - WRITE_AHEAD_LIMIT;
        if !self.following.load(Ordering::Relaxed) || self.indexed() >= floor {
            return std::time::Duration::ZERO;
        }
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(WRITE_WAIT_LIMIT, self.wait_for(floor))
            .await
            .is_err()
        {
            tracing::warn!(
                indexed = self.indexed(),
                head,
                "the search index is not keeping up: writes stop waiting for it until it catches up"
            );
            self.following.store(false, Ordering::Relaxed);
        }
        started.elapsed()
    }

    /// Whether the indexer has caught up with the feed since the index was
    /// opened or emptied (`admit_write`).
    pub(crate) fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Relaxed);
    }

    /// Narrows the modes of the files tantivy made (with the umask's) to
    /// the owner's, as every file of the data directory is kept.
    fn tighten(&self) {
        if let Err(err) = crate::data_dir::tighten(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %err, "cannot make the search index's files private");
        }
    }

    pub(crate) fn searcher(&self) -> tantivy::Searcher {
        self.reader.searcher()
    }
}

/// The tantivy document of a record.
pub fn document(fields: &Fields, record: &StoredRecord) -> Result<TantivyDocument> {
    let msg = DynamicMessage::decode(
        record::schema().message(record.kind),
        record.body.as_slice(),
    )
    .map_err(Error::internal)?;
    let text = SearchText::of(record.kind, &msg);
    let lang = languages::of_record(&record::string_field(&msg, "language_code"), &text);
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.name, &record.name);
    doc.add_text(fields.kind, record.kind.singular());
    doc.add_text(fields.language, lang.code);
    if sharing::is_restricted(record.tlp) {
        doc.add_text(fields.audience, &record.owner);
        for partner in &record.recipients {
            doc.add_text(fields.audience, partner);
        }
    } else {
        doc.add_text(fields.audience, EVERYONE);
    }
    doc.add_i64(fields.update_time, record.update_time);
    for (facet, value) in facet_values(record, &msg) {
        doc.add_facet(fields.facets, Facet::from_path([facet, value.as_str()]));
    }
    let text_fields = fields.text[lang.index];
    let short = [
        text.summary.as_str(),
        text.terms.as_str(),
        text.people.as_str(),
    ]
    .join("\n");
    doc.add_text(text_fields.title, &text.title);
    doc.add_text(text_fields.short, &short);
    doc.add_text(text_fields.body, &text.body);
    Ok(doc)
}

/// The values a record is counted under, by facet (`FACETS`).
fn facet_values(record: &StoredRecord, msg: &DynamicMessage) -> Vec<(&'static str, String)> {
    let kind = match record.kind {
        Kind::Workshop => crate::pb::RecordKind::Workshop,
        Kind::Practice => crate::pb::RecordKind::Practice,
        Kind::Tool => crate::pb::RecordKind::Tool,
    };
    let mut values = vec![
        ("kind", kind.as_str_name().to_owned()),
        ("owner", crate::domain::names::partner_name(&record.owner)),
    ];
    let (regions, groups, category): (&str, &[&str], Option<&str>) = match record.kind {
        Kind::Practice => ("regions", &["stakeholder_groups"], None),
        Kind::Tool => ("regions", &["intended_users"], Some("category")),
        Kind::Workshop => ("", &["organisers", "panellists", "remote_moderators"], None),
    };
    let mut seen = std::collections::HashSet::new();
    let mut push =
        |facet: &'static str, value: String, values: &mut Vec<(&'static str, String)>| {
            if !value.is_empty() && seen.insert((facet, value.clone())) {
                values.push((facet, value));
            }
        };
    if !regions.is_empty()
        && let Some(Value::List(list)) = msg.get_field_by_name(regions).as_deref()
    {
        for v in list {
            if let Value::String(s) = v {
                push("region", s.clone(), &mut values);
            }
        }
    }
    for field in groups {
        let Some(descriptor) = msg.descriptor().get_field_by_name(field) else {
            continue;
        };
        let Value::List(list) = &*msg.get_field(&descriptor) else {
            continue;
        };
        for v in list {
            let group = match v {
                Value::EnumNumber(n) => Some(*n),
                // People carry their stakeholder group.
                Value::Message(person) => {
                    match person.get_field_by_name("stakeholder_group").as_deref() {
                        Some(Value::EnumNumber(n)) => Some(*n),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(name) = group
                .filter(|n| *n != 0)
                .and_then(|n| crate::pb::StakeholderGroup::try_from(n).ok())
            {
                push(
                    "stakeholder_group",
                    name.as_str_name().to_owned(),
                    &mut values,
                );
            }
        }
    }
    if let Some(field) = category
        && let Some(Value::EnumNumber(n)) = msg.get_field_by_name(field).as_deref()
        && *n != 0
        && let Ok(c) = crate::pb::ToolCategory::try_from(*n)
    {
        push("tool_category", c.as_str_name().to_owned(), &mut values);
    }
    values
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn writes_wait_for_a_following_index_that_is_too_far_behind() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SearchIndex::open(&dir.path().join("search")).unwrap());
        let head = 10_000;

        // Still being built: nothing waits.
        assert_eq!(index.admit_write(head).await, Duration::ZERO);

        index.set_following(true);
        let waiting = tokio::spawn({
            let index = index.clone();
            async move { index.admit_write(head).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "a write went ahead of an index 10,000 changes behind"
        );
        index.indexed.send_replace(head - WRITE_AHEAD_LIMIT);
        let waited = waiting.await.unwrap();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");

        // Within the limit: no wait.
        assert_eq!(index.admit_write(head).await, Duration::ZERO);
    }

    #[tokio::test]
    async fn an_index_that_does_not_catch_up_stops_holding_writes_back() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(&dir.path().join("search")).unwrap();
        index.set_following(true);
        let waited = index.admit_write(50_000).await;
        assert!(waited >= WRITE_WAIT_LIMIT, "{waited:?}");
        // Until the indexer catches up again, writes go ahead at once.
        assert_eq!(index.admit_write(50_000).await, Duration::ZERO);
        assert_eq!(index.indexed(), 0);
    }
}
