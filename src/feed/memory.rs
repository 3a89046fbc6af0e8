//! One memory budget for the messages every watch stream holds queued.
//!
//! Each watch stream queues a few messages (up to `PAGE_BYTES` each) for a
//! client that reads them at its own pace. Per stream that is bounded, but
//! not across thousands of streams: they share one budget, and when a
//! message would take the hub past it, the stream holding the most, the
//! one furthest behind, is cut off with RESOURCE_EXHAUSTED
//! (WATCHER_TOO_SLOW). Its queued messages are dropped at once; the client
//! resumes from the last cursor it received, so it misses nothing.
//!
//! Counted are the messages in a stream's queue; the one message the
//! transport is writing out is not (HTTP/2 flow control bounds it).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use super::wire::Encoded;
use crate::domain::Error;

type Item = Result<Encoded, Status>;

/// The budget and the streams that share it.
pub struct WatchMemory {
    limit: usize,
    /// Bytes queued in every stream, together (also read by /metrics).
    used: Arc<AtomicUsize>,
    streams: Mutex<HashMap<u64, Arc<Outbox>>>,
    next_id: AtomicU64,
}

/// One stream's queue as the budget sees it.
pub struct Outbox {
    id: u64,
    held: AtomicUsize,
    rx: Mutex<mpsc::Receiver<Item>>,
    cut: AtomicBool,
    cut_notify: Notify,
}

impl Outbox {
    /// Whether the budget cut this stream off.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Resolves once the budget cuts this stream off.
    pub async fn cut_off(&self) {
        loop {
            let notified = self.cut_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cut() {
                return;
            }
            notified.await;
        }
    }
}

impl WatchMemory {
    /// A budget of `limit` bytes, counted in `used`.
    pub fn new(limit: usize, used: Arc<AtomicUsize>) -> Self {
        Self {
            limit,
            used,
            streams: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Bytes queued now, in every stream.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes a stream's receiving end into the budget: the returned stream
    /// is what the client reads, the `Outbox` what its sender checks.
    pub fn register(self: &Arc<Self>, rx: mpsc::Receiver<Item>) -> (WatchOutput, Arc<Outbox>) {
        let outbox = Arc::new(Outbox {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            held: AtomicUsize::new(0),
            rx: Mutex::new(rx),
            cut: AtomicBool::new(false),
            cut_notify: Notify::new(),
        });
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(outbox.id, outbox.clone());
        }
        (
            WatchOutput {
                memory: self.clone(),
                outbox: outbox.clone(),
                told: false,
            },
            outbox,
        )
    }

    /// Counts `size` more bytes queued in `outbox`, cutting off streams
    /// furthest behind to make room. False when `outbox` itself holds the
    /// most and is cut off: its message is not to be queued.
    ///
    /// A stream holding nothing may always queue one message, so a budget
    /// below one message still lets watchers that keep up go on; the hub
    /// then exceeds it by one message at most.
    pub fn admit(&self, outbox: &Outbox, size: usize) -> bool {
        loop {
            if outbox.is_cut() {
                return false;
            }
            let used = self.used.load(Ordering::Acquire);
            if used.saturating_add(size) <= self.limit || outbox.held.load(Ordering::Acquire) == 0 {
                if self
                    .used
                    .compare_exchange(used, used + size, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    outbox.held.fetch_add(size, Ordering::AcqRel);
                    return true;
                }
                continue;
            }
            let Ok(streams) = self.streams.lock() else {
                return true;
            };
            let mine = outbox.held.load(Ordering::Acquire);
            let furthest = streams
                .values()
                .filter(|o| o.id != outbox.id && !o.is_cut())
                .max_by_key(|o| o.held.load(Ordering::Acquire));
            match furthest {
                Some(other) if other.held.load(Ordering::Acquire) > mine => self.cut(other),
                _ => {
                    self.cut(outbox);
                    return false;
                }
            }
        }
    }

    /// Cuts `outbox` off and frees what it holds; its client gets
    /// WATCHER_TOO_SLOW next.
    fn cut(&self, outbox: &Outbox) {
        tracing::info!("watcher cut off: the watch memory budget is spent and it held the most");
        outbox.cut.store(true, Ordering::Release);
        outbox.cut_notify.notify_waiters();
        self.drain(outbox);
    }

    /// Drops every message queued in `outbox`, giving its bytes back.
    fn drain(&self, outbox: &Outbox) {
        if let Ok(mut rx) = outbox.rx.lock() {
            while let Ok(item) = rx.try_recv() {
                self.taken(outbox, &item);
            }
        }
    }

    /// A message left `outbox`'s queue.
    fn taken(&self, outbox: &Outbox, item: &Item) {
        if let Ok(message) = item {
            let size = message.0.len();
            outbox.held.fetch_sub(size, Ordering::AcqRel);
            self.used.fetch_sub(size, Ordering::AcqRel);
        }
    }
}

/// The messages of one watch stream, as the transport takes them.
pub struct WatchOutput {
    memory: Arc<WatchMemory>,
    outbox: Arc<Outbox>,
    /// Whether the client was told it was cut off.
    told: bool,
}

impl Stream for WatchOutput {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.outbox.is_cut() {
            if self.told {
                return Poll::Ready(None);
            }
            self.told = true;
            self.memory.drain(&self.outbox);
            return Poll::Ready(Some(Err(Error::ResourceExhausted {
                reason: "WATCHER_TOO_SLOW",
                message: "the hub's memory for watchers is spent and this watcher was furthest \
                          behind: resume from your last cursor"
                    .into(),
                retry_after: None,
            }
            .into())));
        }
        let polled = match self.outbox.rx.lock() {
            Ok(mut rx) => rx.poll_recv(cx),
            Err(_) => Poll::Ready(None),
        };
        if let Poll::Ready(Some(item)) = &polled {
            self.memory.taken(&self.outbox, item);
        }
        polled
    }
}

impl Drop for WatchOutput {
    /// The client went: the stream leaves the budget with what it held, and
    /// its sender sees the queue closed.
    fn drop(&mut self) {
        if let Ok(mut streams) = self.memory.streams.lock() {
            streams.remove(&self.outbox.id);
        }
        if let Ok(mut rx) = self.outbox.rx.lock() {
            rx.close();
        }
        self.memory.drain(&self.outbox);
    }
}
