//! kill -9 of `copex serve` in the middle of batch upserts: after a restart
//! every batch is all there or not there, and a feed reader resuming from its
//! last cursor ends equal to the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use copex::pb::{self, Tlp, record::Kind as R};

use crate::process::serve_with;
use crate::support::*;
use crate::sync::{Replica, list_changes, visible_state};

const BATCH: usize = 200;

fn labelled_batch(n: usize) -> Vec<pb::Record> {
    (0..BATCH)
        .map(|i| {
            let mut t = tool(&format!("Batch {n} tool {i}"), Tlp::Green, &[]);
            t.name = format!("partners/admin/tools/b{n}-{i}");
            t.description = "d".repeat(1500);
            t.labels.insert("batch".into(), n.to_string());
            pb::Record {
                kind: Some(R::Tool(t)),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_batches_loses_or_halves_nothing() {
    kill_9_during_batches(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_batches_on_postgres_loses_or_halves_nothing() {
    let database = PgDatabase::create().await;
    kill_9_during_batches(&["--database", &database.url]).await;
}

async fn kill_9_during_batches(serve_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let pki = data_dir.join("pki");
    let mut served = serve_with(&data_dir, serve_args);
    let admin = Partner::connect_files("admin", &served.hub, &pki).await;
    let cursors = cursors_of(&data_dir, serve_args).await;

    // A feed reader follows along and keeps its cursor as a mirror would.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut p = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut replica = Replica::new(cursors);
            let mut cursor = String::new();
            while !stop.load(Ordering::SeqCst) {
                match list_changes(&mut p, &cursor, 300).await {
                    Ok(page) => {
                        replica.apply(&page.changes);
                        cursor = page.next_cursor;
                    }
                    Err(_) => break,
                }
            }
            (replica, cursor)
        })
    };
    let writer = {
        let mut p = admin.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut attempted = 0;
            for n in 0..10_000 {
                attempted = n + 1;
                match p
                    .sync
                    .batch_upsert_records(pb::BatchUpsertRecordsRequest {
                        records: labelled_batch(n),
                        request_id: String::new(),
                    })
                    .await
                {
                    Ok(response) => {
                        let response = response.into_inner();
                        assert!(
                            response
                                .results
                                .iter()
                                .all(|r| r.outcome == pb::UpsertOutcome::Created as i32)
                        );
                        acked.push(n);
                    }
                    Err(_) => break,
                }
            }
            (acked, attempted)
        })
    };

    // Let a few batches commit, then pull the plug mid-stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut probe = admin.clone();
        let count = list_all_tools(&mut probe, "partners/admin", "", 1000)
            .await
            .len();
        if count >= 3 * BATCH || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.child.kill().expect("kill -9");
    served.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let (acked, attempted) = writer.await.unwrap();
    let (mut replica, cursor) = reader.await.unwrap();
    assert!(
        acked.len() >= 3,
        "some batches were acknowledged before the kill"
    );

    // Restart on the same data directory.
    let again = serve_with(&data_dir, serve_args);
    let mut admin = Partner::connect_files("admin", &again.hub, &pki).await;
    for n in 0..attempted {
        let filter = format!("labels.batch = \"{n}\"");
        let count = list_all_tools(&mut admin, "partners/admin", &filter, 1000)
            .await
            .len();
        if acked.contains(&n) {
            assert_eq!(count, BATCH, "acknowledged batch {n} is whole");
        } else {
            assert!(
                count == 0 || count == BATCH,
                "batch {n} is half there: {count}"
            );
        }
    }

    // The reader resumes from its last cursor and ends equal to the state.
    let mut cursor = cursor;
    loop {
        let page = list_changes(&mut admin, &cursor, 500)
            .await
            .expect("resume from the cursor");
        replica.apply(&page.changes);
        cursor = page.next_cursor;
        if page.caught_up {
            break;
        }
    }
    assert_eq!(replica.records, visible_state(&mut admin).await);
    drop(again);
}
