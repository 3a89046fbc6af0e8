//! The change feed as partners see it: opaque cursors bound to this hub's
//! database, pages of per-caller changes, and the settings of watchers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

mod head;
pub mod memory;
pub mod watch;
pub mod wire;

pub use head::Head;

use crate::domain::seal::NumberSeal;
use crate::domain::{Error, Kind, Result};
use crate::pb;
use crate::store::{DynStore, FeedEntry, FeedQuery, FeedRow};

pub const DEFAULT_PAGE_SIZE: usize = 500;
pub const MAX_PAGE_SIZE: usize = 5000;
/// Bytes of records per page or watch message, so every response stays under
/// the 4 MiB that gRPC clients accept by default. A page always carries at
/// least one change.
pub const PAGE_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// A watcher with nothing to send gets a bookmark this often.
    pub bookmark_interval: Duration,
    /// How long a watcher may leave its buffer full before it is cut off.
    pub watcher_stall: Duration,
    /// How long tombstones stay in the feed.
    pub tombstone_retention: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(10),
            watcher_stall: Duration::from_secs(30),
            tombstone_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A cursor is base64url of a version byte, a tag of the hub database's id
/// and the position sealed in one AES block (`domain::seal::NumberSeal`):
/// opaque to clients, so it does not tell them how many changes they may
/// not see lie between two of theirs, and a cursor of another hub database
/// is recognised rather than misread.
#[derive(Clone)]
pub struct Cursors {
    hub_tag: [u8; HUB_TAG_LEN],
    hub_id: String,
    positions: NumberSeal,
}

const VERSION: u8 = 2;
const HUB_TAG_LEN: usize = 6;
const SEALED_LEN: usize = 1 + HUB_TAG_LEN + 16;

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors")
            .field("hub_id", &self.hub_id)
            .finish()
    }
}

impl Cursors {
    pub fn new(hub_id: impl Into<String>, secret: &[u8]) -> Self {
        let hub_id = hub_id.into();
        let digest = ring::digest::digest(&ring::digest::SHA256, hub_id.as_bytes());
        let mut hub_tag = [0u8; HUB_TAG_LEN];
        hub_tag.copy_from_slice(&digest.as_ref()[..HUB_TAG_LEN]);
        Self {
            hub_tag,
            hub_id,
            positions: NumberSeal::new(secret, "cursor"),
        }
    }

    /// The id of the hub database whose cursors these are.
    pub fn hub_id(&self) -> &str {
        &self.hub_id
    }

    /// Where a client stands (`next_cursor`, a watch message's cursor): a
    /// new string each time, so a bookmark does not tell whether anything
    /// the client may not see was committed since the last one.
    pub fn encode(&self, seq: i64) -> String {
        self.encode_with(seq, NumberSeal::random_salt())
    }

    /// A change's own cursor: the same change always gets the same cursor,
    /// without a system call for each change of a page.
    pub fn encode_change(&self, seq: i64) -> String {
        self.encode_with(seq, 0)
    }

    fn encode_with(&self, seq: i64, salt: u32) -> String {
        let mut bytes = [0u8; SEALED_LEN];
        bytes[0] = VERSION;
        bytes[1..=HUB_TAG_LEN].copy_from_slice(&self.hub_tag);
        // Positions are never negative.
        let seq = u64::try_from(seq).unwrap_or_default();
        bytes[1 + HUB_TAG_LEN..].copy_from_slice(&self.positions.seal(seq, salt));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The position after which to continue; 0 for an empty cursor.
    pub fn decode(&self, cursor: &str) -> Result<i64> {
        if cursor.is_empty() {
            return Ok(0);
        }
        let malformed = || {
            Error::invalid(
                "cursor",
                "is not a cursor of this API: pass a cursor or next_cursor back unchanged, or an empty cursor to start over",
            )
        };
        let other_hub = || Error::FailedPrecondition {
            reason: "CURSOR_FROM_OTHER_HUB",
            message: "the cursor was issued by another hub database: resync from an empty cursor"
                .into(),
        };
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| malformed())?;
        if let Some(hub_id) = legacy_hub_id(&bytes) {
            // Readable cursors of earlier versions are not taken back: their
            // positions can be chosen, and a chosen position probes the head.
            return Err(if hub_id == self.hub_id.as_bytes() {
                cursor_expired("is of an earlier copex version")
            } else {
                other_hub()
            });
        }
        if bytes.len() != SEALED_LEN || bytes[0] != VERSION {
            return Err(malformed());
        }
        if bytes[1..=HUB_TAG_LEN] != self.hub_tag {
            return Err(other_hub());
        }
        let seq = self
            .positions
            .open(&bytes[1 + HUB_TAG_LEN..])
            .and_then(|seq| i64::try_from(seq).ok())
            .ok_or_else(malformed)?;
        Ok(seq)
    }
}

/// A cursor the hub no longer takes: the client resyncs from an empty one.
fn cursor_expired(why: &str) -> Error {
    Error::FailedPrecondition {
        reason: "CURSOR_EXPIRED",
        message: format!("the cursor {why}: resync from an empty cursor"),
    }
}

/// The hub id inside a cursor of the first version, `c1.{hub id}.{position}`.
fn legacy_hub_id(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(b"c1.")?;
    let (hub_id, seq) = rest.split_at(rest.iter().position(|&b| b == b'.')?);
    (!seq[1..].is_empty() && seq[1..].iter().all(u8::is_ascii_digit)).then_some(hub_id)
}

/// One page of changes for one partner.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The changes, encoded as the `changes` field of a response.
    pub changes: Vec<u8>,
    pub count: usize,
    /// Position to continue after.
    pub next: i64,
    pub caught_up: bool,
}

fn push_row(out: &mut Vec<u8>, row: &FeedRow, cursors: &Cursors) {
    let (change_type, body) = match &row.entry {
        FeedEntry::Upserted(body) => (pb::ChangeType::Upserted, Some(body.as_slice())),
        FeedEntry::Deleted => (pb::ChangeType::Deleted, None),
        FeedEntry::Unshared => (pb::ChangeType::Unshared, None),
    };
    wire::push_change(
        out,
        &cursors.encode_change(row.seq),
        change_type,
        row.kind,
        &row.name,
        row.commit_time,
        body,
    );
}

/// About what a row takes on the wire, for the page's byte budget.
fn wire_size(row: &FeedRow) -> usize {
    row.name.len()
        + 96
        + match &row.entry {
            FeedEntry::Upserted(body) => body.len(),
            _ => 0,
        }
}

/// Room left after a page's changes for the fields ListChanges adds (the
/// next cursor, `caught_up`).
const PAGE_TRAILER: usize = 256;

/// Rows read per statement while filling a page, so a page of large records
/// stops near its byte budget without reading bodies it will not send.
const READ_CHUNK: usize = 500;

/// Reads the changes `query.viewer` may know of after `query.after`: at
/// most `query.limit` changes and, past the first, at most `PAGE_BYTES` of
/// records.
pub async fn page(store: &DynStore, cursors: &Cursors, query: &FeedQuery<'_>) -> Result<Page> {
    let FeedQuery { after, limit, .. } = *query;
    let mut changes = Vec::new();
    let mut count = 0;
    // The position of the last change taken, or where the page started.
    let mut position = after;
    let mut first_read = true;
    let (next, caught_up) = loop {
        let want = (limit - count).min(READ_CHUNK);
        let chunk = store
            .read_feed(&FeedQuery {
                after: position,
                limit: want,
                ..*query
            })
            .await?;
        let short = chunk.rows.len() < want;
        if first_read {
            first_read = false;
            if after > chunk.head {
                return Err(Error::invalid(
                    "cursor",
                    "is ahead of this hub's feed: pass back a cursor the hub gave you",
                ));
            }
            // An empty cursor replays the state and needs no tombstones.
            if after != 0 && after < chunk.purge_horizon {
                return Err(cursor_expired("is older than the tombstone retention"));
            }
            // The page's size guessed from its first chunk and made room for
            // at once: growing by doublings copied a full page once more.
            let chunk_bytes: usize = chunk.rows.iter().map(wire_size).sum();
            let chunks = if short {
                1
            } else {
                limit.div_ceil(want.max(1))
            };
            changes.reserve(chunk_bytes.saturating_mul(chunks).min(PAGE_BYTES) + PAGE_TRAILER);
        }
        for row in chunk.rows {
            let size = wire_size(&row);
            if count > 0 && changes.len() + size > PAGE_BYTES {
                return Ok(Page {
                    changes,
                    count,
                    next: position,
                    caught_up: false,
                });
            }
            push_row(&mut changes, &row, cursors);
            count += 1;
            position = row.seq;
        }
        if short {
            // The end of the log as this read saw it.
            break (chunk.head.max(position), true);
        }
        if count >= limit {
            break (position, false);
        }
    };
    Ok(Page {
        changes,
        count,
        next,
        caught_up,
    })
}

/// Which page a watcher asks for: the same question from every watcher of
/// one partner at one position.
type PageKey = (String, i64, Vec<Kind>, usize);

fn page_key(query: &FeedQuery<'_>) -> PageKey {
    (
        query.viewer.id.clone(),
        query.after,
        query.kinds.to_vec(),
        query.limit,
    )
}

/// A page being read, or read, after the feed head was at `head`.
struct SharedPage {
    head: i64,
    page: Arc<tokio::sync::OnceCell<Result<Page>>>,
}

/// A commit wakes every watcher at once, and the watchers of one partner at
/// one position would each ask the database the same question. The first
/// asks; the others share its answer, provided the read began once the
/// feed head had reached what they were woken for, so no one misses a
/// change.
pub struct SharedPages {
    store: DynStore,
    cursors: Cursors,
    pages: Mutex<HashMap<PageKey, SharedPage>>,
}

/// Reads kept before finished ones are dropped.
const SHARED_PAGES_KEPT: usize = 1024;

impl SharedPages {
    pub fn new(store: DynStore, cursors: Cursors) -> Self {
        Self {
            store,
            cursors,
            pages: Mutex::default(),
        }
    }

    /// The page `query` asks for, from a read that began with the feed
    /// head at `seen_head` or later.
    pub async fn page(&self, query: &FeedQuery<'_>, seen_head: i64) -> Result<Page> {
        let key = page_key(query);
        let cell = {
            let mut pages = self.pages.lock().map_err(Error::internal)?;
            let pages_full = pages.len() >= SHARED_PAGES_KEPT;
            match pages.get(&key) {
                Some(shared) if shared.head >= seen_head => shared.page.clone(),
                _ => {
                    // Answers for earlier positions of this partner are
                    // spent: its watchers have moved on.
                    pages.retain(|(partner, position, ..), shared| {
                        !(shared.page.initialized()
                            && ((*partner == key.0 && *position < key.1) || pages_full))
                    });
                    // Taken before the read starts, so the read sees at
                    // least this head.
                    let head = *self.store.feed_head().borrow();
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    pages.insert(
                        key,
                        SharedPage {
                            head,
                            page: cell.clone(),
                        },
                    );
                    cell
                }
            }
        };
        cell.get_or_init(|| page(&self.store, &self.cursors, query))
            .await
            .clone()
    }
}

/// ListChanges pages read ahead.
///
/// A syncing client asks for a page, takes it in, then asks for the next:
/// the hub's read and the client's decoding took turns, each leaving a core
/// idle. After a page that is not the last, the next one is read at once,
/// and the call that asks for it takes it.
///
/// A page read ahead is a snapshot a little older than the call that takes
/// it. That holds the feed's guarantees, as if the client had asked sooner,
/// for every page but the last: a full page holds only changes committed
/// before it was read (feed positions are given in commit order), and the
/// changes committed since come after it, in the pages that follow. Only
/// the last page says `caught_up`, which must be true when the call is
/// answered, so a read-ahead page that reached the end is read again.
pub struct ReadAhead {
    store: DynStore,
    cursors: Cursors,
    ahead: Mutex<VecDeque<(PageKey, tokio::task::JoinHandle<Result<Page>>)>>,
}

/// Pages read ahead at most (3 MiB each at most); the oldest goes first.
const READ_AHEAD_KEPT: usize = 8;

impl ReadAhead {
    pub fn new(store: DynStore, cursors: Cursors) -> Self {
        Self {
            store,
            cursors,
            ahead: Mutex::default(),
        }
    }

    /// The page `query` asks for, read ahead if it was.
    pub async fn page(&self, query: &FeedQuery<'_>) -> Result<Page> {
        let key = page_key(query);
        let read = {
            let mut ahead = self.ahead.lock().map_err(Error::internal)?;
            let found = ahead.iter().position(|(k, _)| *k == key);
            found.and_then(|i| ahead.remove(i))
        };
        let read = match read {
            // A failed read ahead is read again, and its error is this
            // call's if it persists.
            Some((_, task)) => match task.await {
                Ok(Ok(page)) if !page.caught_up => Some(page),
                _ => None,
            },
            None => None,
        };
        let page = match read {
            Some(page) => page,
            None => page(&self.store, &self.cursors, query).await?,
        };
        if !page.caught_up {
            self.read_next(&FeedQuery {
                after: page.next,
                ..*query
            })?;
        }
        Ok(page)
    }

    fn read_next(&self, query: &FeedQuery<'_>) -> Result<()> {
        let key = page_key(query);
        let (store, cursors, viewer, kinds) = (
            self.store.clone(),
            self.cursors.clone(),
            query.viewer.clone(),
            query.kinds.to_vec(),
        );
        let FeedQuery { after, limit, .. } = *query;
        let task = tokio::spawn(async move {
            let query = FeedQuery {
                viewer: &viewer,
                after,
                kinds: &kinds,
                limit,
            };
            page(&store, &cursors, &query).await
        });
        let mut ahead = self.ahead.lock().map_err(Error::internal)?;
        if ahead.len() >= READ_AHEAD_KEPT
            && let Some((_, oldest)) = ahead.pop_front()
        {
            oldest.abort();
        }
        ahead.push_back((key, task));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_strangers() {
        let cursors = Cursors::new("abc", b"secret");
        assert_eq!(cursors.decode("").unwrap(), 0);
        assert_eq!(cursors.decode(&cursors.encode(42)).unwrap(), 42);
        assert_eq!(cursors.decode(&cursors.encode_change(42)).unwrap(), 42);
        for other in [
            Cursors::new("def", b"secret").encode(42),
            Cursors::new("def", b"other").encode(42),
            URL_SAFE_NO_PAD.encode("c1.def.42"),
        ] {
            assert!(
                matches!(
                    cursors.decode(&other),
                    Err(Error::FailedPrecondition {
                        reason: "CURSOR_FROM_OTHER_HUB",
                        ..
                    })
                ),
                "{other}"
            );
        }
        assert!(matches!(
            cursors.decode(&URL_SAFE_NO_PAD.encode("c1.abc.42")),
            Err(Error::FailedPrecondition {
                reason: "CURSOR_EXPIRED",
                ..
            })
        ));
        let forged_key = Cursors::new("abc", b"other").encode(42);
        let mut flipped = URL_SAFE_NO_PAD.decode(cursors.encode(42)).unwrap();
        flipped[10] ^= 1;
        for bad in [
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("c1.abc.-1"),
            &URL_SAFE_NO_PAD.encode("c1.abc.1.2"),
            &forged_key,
            &URL_SAFE_NO_PAD.encode(flipped),
        ] {
            assert!(
                matches!(cursors.decode(bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn cursors_say_nothing_of_positions() {
        let cursors = Cursors::new("abc", b"secret");
        // Where a client stands is a new string each time it is told...
        assert_ne!(cursors.encode(1083), cursors.encode(1083));
        // ...and a change keeps its cursor.
        assert_eq!(cursors.encode_change(1083), cursors.encode_change(1083));
        for cursor in [cursors.encode(1083), cursors.encode_change(1083)] {
            let bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
            assert!(!bytes.windows(8).any(|w| w == 1083i64.to_be_bytes()));
            assert!(!String::from_utf8_lossy(&bytes).contains("1083"));
        }
    }
}
