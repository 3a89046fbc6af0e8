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
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{DynStore, StoredRecord};
use crate::domain::{Error, Result};

/// Batches reading at once; while all are busy, new reads queue and form
/// the next batch.
const BATCHES_IN_FLIGHT: usize = 2;
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

async fn batch_reads(store: DynStore, mut requests: mpsc::Receiver<(String, Reply)>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        // Wait for a free slot before gathering: what arrives meanwhile
        // joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let names: Vec<String> = batch.iter().map(|(name, _)| name.clone()).collect();
            let found: Result<HashMap<String, StoredRecord>> = store.get_records(&names).await;
            for (name, reply) in batch {
                let answer = match &found {
                    Ok(found) => Ok(found.get(&name).cloned()),
                    Err(err) => Err(err.clone()),
                };
                // The caller may have gone (deadline, cancel).
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}
