//! Point reads of records by name, coalesced: reads that arrive while the
//! database is busy with earlier ones go together in one statement.
//!
//! The fixed cost of a statement (on PostgreSQL a round trip; on SQLite a
//! read transaction begun and ended, with its shared-memory locks) is much
//! of the cost of GetTool; under concurrent calls one `name IN (...)`
//! statement for many names costs little more than one for a single name.
//! A read joins only a batch that starts after it was asked for, so it sees
//! every commit made before the call, as a direct read would.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use super::{DynStore, StoredRecord};
use crate::domain::{Error, Result};

/// Names per batch (the store reads 500 per statement).
const MAX_BATCH: usize = 500;
/// Reads waiting for a batch before callers wait to queue.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Option<StoredRecord>>>;

#[derive(Clone)]
pub struct RecordReads {
    /// The batching task's queue.
    queue: mpsc::Sender<(String, Reply)>,
}

impl RecordReads {
    /// Starts the batching task; it ends when the last handle is dropped.
    pub fn new(store: DynStore) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(batch_reads(store, requests));
        Self { queue }
    }

    /// The record named `name`, with its recipients, whoever may see it.
    pub async fn get(&self, name: String) -> Result<Option<StoredRecord>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((name, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Unavailable("the hub is stopping".into())
}

/// One batch reads at a time; what arrives meanwhile queues and forms the
/// next. Two at a time made batches half as large under load, and on
/// PostgreSQL each statement is a round trip and a wake-up of the server's
/// backend (`docs/performance.md`).
async fn batch_reads(store: DynStore, mut requests: mpsc::Receiver<(String, Reply)>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (names, replies): (Vec<String>, Vec<Reply>) = batch.into_iter().unzip();
        let found: Result<HashMap<String, StoredRecord>> = store.get_records(&names).await;
        for (name, reply) in names.iter().zip(replies) {
            let answer = match &found {
                Ok(found) => Ok(found.get(name).cloned()),
                Err(err) => Err(err.clone()),
            };
            // The caller may have gone (deadline, cancel).
            let _ = reply.send(answer);
        }
    }
}
