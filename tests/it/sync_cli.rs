//! The sync commands as a partner runs them: push, export, mirror. The real
//! binary against a real hub over mutual TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use copex::pb::{self, Role, Tlp};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::support::{Partner, TestHub, create_tool, seq_of, tool, update_tool};

const BIN: &str = env!("CARGO_BIN_EXE_copex");

/// The CA and partner certificates of a hub, as files for the binary.
struct Certs {
    dir: tempfile::TempDir,
    hub: String,
}

impl Certs {
    fn new(hub: &TestHub, partners: &[&str]) -> Certs {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("ca.pem"), hub.ca.cert_pem()).expect("write CA");
        for id in partners {
            let (cert, key) = hub.cert_for(id);
            std::fs::write(dir.path().join(format!("{id}.pem")), cert).expect("write cert");
            std::fs::write(dir.path().join(format!("{id}.key")), key).expect("write key");
        }
        Certs {
            dir,
            hub: format!("https://localhost:{}", hub.addr.port()),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `copex --hub .. --ca .. --cert .. --key ..` acting as `partner`.
    fn copex(&self, partner: &str) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--hub")
            .arg(&self.hub)
            .arg("--ca")
            .arg(self.path("ca.pem"))
            .arg("--cert")
            .arg(self.path(&format!("{partner}.pem")))
            .arg("--key")
            .arg(self.path(&format!("{partner}.key")))
            .env("COPEX_LOG", "warn");
        command
    }
}

/// Runs a command to its end without stalling the hub in this process.
fn run(command: &mut Command) -> Output {
    tokio::task::block_in_place(|| command.output().expect("run copex"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "copex failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The name of a proto3-JSON Record.
fn name_of(record: &Value) -> String {
    record
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|inner| inner["name"].as_str())
        .expect("a Record with a name")
        .to_owned()
}

/// JSONL Records by name.
fn by_name(jsonl: &str) -> BTreeMap<String, Value> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("a JSON line");
            (name_of(&record), record)
        })
        .collect()
}

fn export(certs: &Certs, partner: &str) -> BTreeMap<String, Value> {
    by_name(&ok(run(certs.copex(partner).arg("export"))))
}

struct MirroredRow {
    kind: String,
    update_time: String,
    json: Value,
}

/// The `records` table of a mirror database.
async fn mirrored(path: &Path) -> BTreeMap<String, MirroredRow> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open the mirror database");
    let rows = sqlx::query("SELECT name, kind, update_time, json FROM records")
        .fetch_all(&pool)
        .await
        .expect("read records");
    pool.close().await;
    rows.into_iter()
        .map(|row| {
            let json: String = row.get("json");
            (
                row.get("name"),
                MirroredRow {
                    kind: row.get("kind"),
                    update_time: row.get("update_time"),
                    json: serde_json::from_str(&json).expect("the json column holds JSON"),
                },
            )
        })
        .collect()
}

fn jsons(rows: &BTreeMap<String, MirroredRow>) -> BTreeMap<String, Value> {
    rows.iter()
        .map(|(name, row)| (name.clone(), row.json.clone()))
        .collect()
}

/// Every row has the contract's columns filled as documented.
#[track_caller]
fn assert_columns(rows: &BTreeMap<String, MirroredRow>) {
    for (name, row) in rows {
        let collection = name.split('/').nth(2).expect("a record name");
        assert_eq!(format!("{}s", row.kind), collection, "kind of {name}");
        assert!(
            row.json.get(&row.kind).is_some(),
            "{name}: json {} is not a {} Record",
            row.json,
            row.kind
        );
        time::OffsetDateTime::parse(
            &row.update_time,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|e| panic!("{name}: update_time {:?}: {e}", row.update_time));
    }
}

/// The current end of `partner`'s change feed.
/// The feed position `partner` has caught up to.
async fn feed_end(hub: &TestHub, partner: &Partner) -> i64 {
    let mut client = pb::sync_service_client::SyncServiceClient::new(partner.channel.clone());
    let mut cursor = String::new();
    loop {
        let page = client
            .list_changes(pb::ListChangesRequest {
                cursor: cursor.clone(),
                kinds: Vec::new(),
                page_size: 5000,
            })
            .await
            .expect("list changes")
            .into_inner();
        cursor = page.next_cursor;
        if page.caught_up {
            return seq_of(&hub.cursors, &cursor);
        }
    }
}

fn sharing(tlp: Tlp, recipients: &[&str]) -> Option<pb::Sharing> {
    Some(pb::Sharing {
        tlp: tlp as i32,
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_reports_failed_lines_and_repeats_idempotently() {
    let hub = TestHub::start().await;
    let alpha = hub.contributor("alpha").await;
    let certs = Certs::new(&hub, &["alpha"]);
    let file = certs.path("records.jsonl");
    let lines = [
        // 1: camelCase field names.
        r#"{"tool":{"name":"partners/alpha/tools/hasher","displayName":"Hasher","category":"TOOL_CATEGORY_HASH_MATCHING","intendedUsers":["STAKEHOLDER_GROUP_LAW_ENFORCEMENT"],"sharing":{"tlp":"TLP_GREEN"}}}"#,
        // 2: the original (snake_case) field names.
        r#"{"practice":{"name":"partners/alpha/practices/hotline","title":"A national hotline","stakeholder_groups":["STAKEHOLDER_GROUP_CIVIL_SOCIETY"],"target_groups":["children"],"sharing":{"tlp":"TLP_CLEAR"}}}"#,
        // 3: not JSON.
        "this is not a record",
        // 4: under another partner.
        r#"{"tool":{"name":"partners/someone-else/tools/x","displayName":"Not mine","sharing":{"tlp":"TLP_GREEN"}}}"#,
        // 5: no TLP marking.
        r#"{"workshop":{"name":"partners/alpha/workshops/unmarked","title":"No marking","forum":"IGF"}}"#,
        // 6: blank lines are skipped.
        "",
        // 7
        r#"{"workshop":{"name":"partners/alpha/workshops/ws125","title":"Child protection online","forum":"IGF","year":2012,"proposal_number":125,"status":"WORKSHOP_STATUS_PROPOSED","sharing":{"tlp":"TLP_AMBER"}}}"#,
    ];
    std::fs::write(&file, lines.join("\n") + "\n").expect("write the file");

    // Batches of two: lines 1-2, 4-5 and 7.
    let push = |batch_size: &str| {
        run(certs
            .copex("alpha")
            .args(["push", "--batch-size", batch_size])
            .arg(&file))
    };
    let first = push("2");
    let report = text(&first.stdout);
    assert_eq!(
        first.status.code(),
        Some(2),
        "{report}\n{}",
        text(&first.stderr)
    );
    assert!(report.contains("line 3: not a Record"), "{report}");
    assert!(
        report.contains("line 4: partners/someone-else/tools/x: PERMISSION_DENIED"),
        "{report}"
    );
    assert!(
        report.contains("line 5: partners/alpha/workshops/unmarked: INVALID_ARGUMENT"),
        "{report}"
    );
    assert!(
        report.contains(
            "line 5: partners/alpha/workshops/unmarked: INVALID_ARGUMENT: invalid fields:\n  workshop.sharing.tlp: is required"
        ),
        "{report}"
    );
    for good in ["line 1:", "line 2:", "line 6:", "line 7:"] {
        assert!(!report.contains(good), "{good} reported: {report}");
    }
    assert!(
        report.contains("3 created, 0 updated, 0 unchanged, 3 failed"),
        "{report}"
    );

    for name in [
        "partners/alpha/tools/hasher",
        "partners/alpha/practices/hotline",
        "partners/alpha/workshops/ws125",
    ] {
        let got = ok(run(certs
            .copex("alpha")
            .args(["--output", "json", "get", name])));
        assert_eq!(name_of(&serde_json::from_str(got.trim()).unwrap()), name);
    }
    let got = run(certs
        .copex("alpha")
        .args(["get", "partners/alpha/workshops/unmarked"]));
    assert!(!got.status.success());

    // The same command again: the same request ids, so the hub repeats its
    // first answers and writes nothing.
    let end = feed_end(&hub, &alpha).await;
    let again = push("2");
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(text(&again.stdout), report);
    assert_eq!(feed_end(&hub, &alpha).await, end, "a repeated push wrote");

    // Other batches are new requests: the valid records are unchanged.
    let fresh = push("500");
    let report = text(&fresh.stdout);
    assert_eq!(fresh.status.code(), Some(2), "{report}");
    assert!(
        report.contains("0 created, 0 updated, 3 unchanged, 3 failed"),
        "{report}"
    );
    assert!(
        report.contains("line 4: partners/someone-else/tools/x: PERMISSION_DENIED"),
        "{report}"
    );
    assert_eq!(feed_end(&hub, &alpha).await, end, "an unchanged push wrote");

    // A changed line is updated.
    std::fs::write(&file, lines[0].replace("Hasher", "Hasher 2") + "\n").unwrap();
    let changed = ok(push("500"));
    assert!(
        changed.contains("0 created, 1 updated, 0 unchanged, 0 failed"),
        "{changed}"
    );

    // Bad batch sizes and missing files are errors, not panics.
    let bad = push("1001");
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("--batch-size"));
    let missing = run(certs.copex("alpha").args(["push", "/nonexistent/x.jsonl"]));
    assert!(!missing.status.success());

    // A batch the hub refuses as a whole (larger than a request may be)
    // stops the push and says which lines were written.
    let huge = format!(
        r#"{{"tool":{{"name":"partners/alpha/tools/huge","displayName":"Huge","description":"{}","sharing":{{"tlp":"TLP_GREEN"}}}}}}"#,
        "x".repeat(5 << 20)
    );
    let small = r#"{"tool":{"name":"partners/alpha/tools/small","displayName":"Small","sharing":{"tlp":"TLP_GREEN"}}}"#;
    std::fs::write(&file, [small, "", &huge, small].join("\n")).unwrap();
    let aborted = push("1");
    assert!(!aborted.status.success());
    let stderr = text(&aborted.stderr);
    assert!(
        stderr.contains("lines 3 to 3 failed and was not written; every line before it was"),
        "{stderr}"
    );
    assert!(
        text(&aborted.stdout).contains("1 created, 0 updated, 0 unchanged, 0 failed"),
        "{}",
        text(&aborted.stdout)
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_round_trips_through_push() {
    let hub = TestHub::start().await;
    let mut alpha = hub.contributor("alpha").await;
    let _beta = hub.partner("beta", &[Role::Reader]).await;
    let certs = Certs::new(&hub, &["alpha", "beta"]);

    create_tool(&mut alpha, "green", tool("Green tool", Tlp::Green, &[]))
        .await
        .unwrap();
    create_tool(
        &mut alpha,
        "shared",
        tool("Shared tool", Tlp::Amber, &["partners/beta"]),
    )
    .await
    .unwrap();
    create_tool(&mut alpha, "private", tool("Private tool", Tlp::Red, &[]))
        .await
        .unwrap();
    let gone = create_tool(&mut alpha, "gone", tool("Deleted tool", Tlp::Clear, &[]))
        .await
        .unwrap();
    alpha
        .tools
        .delete_tool(pb::DeleteToolRequest {
            name: gone.name,
            etag: String::new(),
        })
        .await
        .unwrap();

    // As Python's json_format.MessageToJson writes it (camelCase, enums by
    // name), on one line.
    let python = certs.path("python.jsonl");
    std::fs::write(
        &python,
        concat!(
            r#"{"practice": {"name": "partners/alpha/practices/from-python", "title": "Written by Python", "#,
            r#""stakeholderGroups": ["STAKEHOLDER_GROUP_INDUSTRY", "STAKEHOLDER_GROUP_ACADEMIA"], "#,
            r#""maturity": "PRACTICE_MATURITY_PILOT", "evidence": [{"title": "Report", "uri": "https://example.org/r"}], "#,
            r#""labels": {"source": "python"}, "sharing": {"tlp": "TLP_AMBER", "recipients": ["partners/beta"]}}}"#,
            "\n"
        ),
    )
    .unwrap();
    let pushed = ok(run(certs.copex("alpha").arg("push").arg(&python)));
    assert!(
        pushed.contains("1 created, 0 updated, 0 unchanged, 0 failed"),
        "{pushed}"
    );

    let exported = ok(run(certs.copex("alpha").arg("export")));
    let records = by_name(&exported);
    assert_eq!(
        records.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "partners/alpha/practices/from-python".to_owned(),
            "partners/alpha/tools/green".to_owned(),
            "partners/alpha/tools/private".to_owned(),
            "partners/alpha/tools/shared".to_owned(),
        ])
    );
    let python_record = &records["partners/alpha/practices/from-python"]["practice"];
    assert_eq!(python_record["maturity"], "PRACTICE_MATURITY_PILOT");
    assert_eq!(python_record["labels"]["source"], "python");
    assert!(
        python_record["etag"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );

    // The export, pushed back by its owner, changes nothing.
    let file = certs.path("export.jsonl");
    std::fs::write(&file, &exported).unwrap();
    let end = feed_end(&hub, &alpha).await;
    let back = ok(run(certs.copex("alpha").arg("push").arg(&file)));
    assert!(
        back.contains("0 created, 0 updated, 4 unchanged, 0 failed"),
        "{back}"
    );
    assert_eq!(feed_end(&hub, &alpha).await, end);

    // Another partner sees what is shared with it, and --kind filters.
    let beta_sees: BTreeSet<String> = export(&certs, "beta").into_keys().collect();
    assert_eq!(
        beta_sees,
        BTreeSet::from([
            "partners/alpha/practices/from-python".to_owned(),
            "partners/alpha/tools/green".to_owned(),
            "partners/alpha/tools/shared".to_owned(),
        ])
    );
    let tools_only = by_name(&ok(run(certs
        .copex("beta")
        .args(["export", "--kind", "tool"]))));
    assert_eq!(tools_only.len(), 2);
    assert!(tools_only.keys().all(|n| n.contains("/tools/")));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_mirror_page_past_the_message_limit() {
    let hub = TestHub::start().await;
    hub.contributor("alpha").await;
    let certs = Certs::new(&hub, &["alpha"]);
    // More than 4 MiB of records: a page of 5000 would not fit in a
    // default-sized gRPC message.
    let description = "x".repeat(2000);
    let lines: Vec<String> = (0..2600)
        .map(|i| {
            format!(
                r#"{{"tool":{{"name":"partners/alpha/tools/t{i}","displayName":"Tool {i}","description":"{description}","sharing":{{"tlp":"TLP_GREEN"}}}}}}"#
            )
        })
        .collect();
    let file = certs.path("many.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let pushed = ok(run(certs.copex("alpha").arg("push").arg(&file)));
    assert!(pushed.contains("2600 created"), "{pushed}");

    let exported = export(&certs, "alpha");
    assert_eq!(exported.len(), 2600);
    let db = certs.path("mirror.db");
    let once = ok(run(certs
        .copex("alpha")
        .args(["mirror", "--once", "--into"])
        .arg(&db)));
    assert!(once.starts_with("mirror: 2600 records"), "{once}");
    assert_eq!(jsons(&mirrored(&db).await), exported);
    hub.stop().await;
}

/// A small deterministic generator for "random-ish" timings.
struct Jitter(u64);

impl Jitter {
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(from + self.0 % (to - from))
    }
}

/// Writes while a mirror runs: creates, updates, deletes, and sharing
/// changes that make records UNSHARED for beta.
async fn churn(mut alpha: Partner, mut beta: Partner, rounds: usize) {
    let beta_name = "partners/beta";
    for i in 0..rounds {
        let id = format!("churn-{i}");
        let created = create_tool(
            &mut alpha,
            &id,
            tool(&format!("Churn {i}"), Tlp::Amber, &[beta_name]),
        )
        .await
        .expect("create");
        match i % 6 {
            0 => {
                alpha
                    .tools
                    .delete_tool(pb::DeleteToolRequest {
                        name: created.name,
                        etag: String::new(),
                    })
                    .await
                    .expect("delete");
            }
            1 => {
                let mut changed = created;
                changed.summary = format!("Changed in round {i}");
                update_tool(&mut alpha, changed, &["summary"], false)
                    .await
                    .expect("update");
            }
            2 => {
                // beta is no longer a recipient: UNSHARED for beta.
                let mut changed = created;
                changed.sharing = sharing(Tlp::Amber, &[]);
                update_tool(&mut alpha, changed, &["sharing"], false)
                    .await
                    .expect("unshare");
            }
            3 => {
                let mut changed = created;
                changed.sharing = sharing(Tlp::Green, &[]);
                update_tool(&mut alpha, changed, &["sharing"], false)
                    .await
                    .expect("make green");
            }
            4 => {
                // Unshared, then shared again.
                let mut changed = created;
                changed.sharing = sharing(Tlp::Red, &[]);
                let changed = update_tool(&mut alpha, changed, &["sharing"], false)
                    .await
                    .expect("make red");
                let mut again = changed;
                again.sharing = sharing(Tlp::AmberStrict, &[beta_name]);
                update_tool(&mut alpha, again, &["sharing"], false)
                    .await
                    .expect("share again");
            }
            _ => {}
        }
        match i {
            3 => {
                let mut t = crate::support::get_tool(&mut alpha, "partners/alpha/tools/to-unshare")
                    .await
                    .expect("get");
                t.sharing = sharing(Tlp::Red, &[]);
                update_tool(&mut alpha, t, &["sharing"], false)
                    .await
                    .expect("unshare");
            }
            7 => {
                let mut t = crate::support::get_tool(&mut alpha, "partners/alpha/tools/green")
                    .await
                    .expect("get");
                t.sharing = sharing(Tlp::Amber, &[]);
                update_tool(&mut alpha, t, &["sharing"], false)
                    .await
                    .expect("tighten");
            }
            _ => {}
        }
        if i % 10 == 5 {
            create_tool(
                &mut beta,
                &format!("beta-{i}"),
                tool(&format!("Beta {i}"), Tlp::Red, &[]),
            )
            .await
            .expect("beta creates");
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

fn spawn_mirror(certs: &Certs, db: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("mirror log");
    certs
        .copex("beta")
        .args(["mirror", "--into"])
        .arg(db)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start copex mirror")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_survives_kill_9_and_drops_what_is_unshared() {
    let hub = TestHub::start().await;
    let mut alpha = hub.contributor("alpha").await;
    let mut beta = hub.contributor("beta").await;
    let certs = Certs::new(&hub, &["alpha", "beta"]);
    let db = certs.path("mirror.db");
    let log = certs.path("mirror.log");

    create_tool(&mut alpha, "green", tool("Green", Tlp::Green, &[]))
        .await
        .unwrap();
    create_tool(
        &mut alpha,
        "to-unshare",
        tool("Shared, then not", Tlp::Amber, &["partners/beta"]),
    )
    .await
    .unwrap();
    create_tool(&mut alpha, "private", tool("Private", Tlp::Red, &[]))
        .await
        .unwrap();
    create_tool(&mut beta, "own", tool("Beta's own", Tlp::Red, &[]))
        .await
        .unwrap();

    // --once: a complete copy, equal to the export.
    let once = ok(run(certs
        .copex("beta")
        .args(["mirror", "--once", "--into"])
        .arg(&db)));
    assert!(once.starts_with("mirror: 3 records, caught up\n"), "{once}");
    let rows = mirrored(&db).await;
    assert_columns(&rows);
    assert_eq!(jsons(&rows), export(&certs, "beta"));
    assert!(rows.contains_key("partners/alpha/tools/to-unshare"));
    assert!(rows.contains_key("partners/alpha/tools/green"));
    // Again: nothing new, the same copy.
    let again = ok(run(certs
        .copex("beta")
        .args(["mirror", "--once", "--into"])
        .arg(&db)));
    assert_eq!(again, once);

    // Watching, killed with SIGKILL again and again while alpha writes.
    let writer = tokio::spawn(churn(alpha.clone(), beta.clone(), 120));
    let mut jitter = Jitter(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 | 1)
            .unwrap_or(0x2545_f491_4f6c_dd1d),
    );
    let mut mirror = spawn_mirror(&certs, &db, &log);
    let mut kills = 0;
    while kills < 3 || !writer.is_finished() {
        tokio::time::sleep(jitter.millis(50, 700)).await;
        mirror.kill().expect("kill -9 the mirror");
        mirror.wait().expect("reap the mirror");
        kills += 1;
        mirror = spawn_mirror(&certs, &db, &log);
    }
    writer.await.expect("writer");
    assert!(kills >= 3);

    let expected = export(&certs, "beta");
    assert!(!expected.contains_key("partners/alpha/tools/to-unshare"));
    assert!(!expected.contains_key("partners/alpha/tools/green"));
    assert!(!expected.contains_key("partners/alpha/tools/private"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = mirrored(&db).await;
        if jsons(&rows) == expected || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = mirror.kill();
    let _ = mirror.wait();
    let got = jsons(&rows);
    if got != expected {
        let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        let differ: Vec<_> = got
            .iter()
            .filter(|(k, v)| expected.get(*k).is_some_and(|e| e != *v))
            .map(|(k, _)| k)
            .collect();
        panic!(
            "the mirror differs from the export after {kills} kills: missing {missing:?}, extra {extra:?}, different {differ:?}\nmirror log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    assert_columns(&rows);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_resyncs_from_another_hub_and_refuses_strangers() {
    let first = TestHub::start().await;
    let mut alpha = first.contributor("alpha").await;
    first.partner("beta", &[Role::Reader]).await;
    create_tool(&mut alpha, "one", tool("One", Tlp::Green, &[]))
        .await
        .unwrap();
    let certs = Certs::new(&first, &["beta"]);
    let db = certs.path("mirror.db");
    ok(run(certs
        .copex("beta")
        .args(["mirror", "--once", "--into"])
        .arg(&db)));
    assert_eq!(mirrored(&db).await.len(), 1);

    // The same file against another hub: its cursor means nothing there.
    let second = TestHub::start().await;
    let mut other = second.contributor("other").await;
    second.partner("beta", &[Role::Reader]).await;
    create_tool(&mut other, "two", tool("Two", Tlp::Green, &[]))
        .await
        .unwrap();
    create_tool(&mut other, "three", tool("Three", Tlp::Clear, &[]))
        .await
        .unwrap();
    let certs2 = Certs::new(&second, &["beta", "stranger"]);
    let out = ok(run(certs2
        .copex("beta")
        .args(["mirror", "--once", "--into"])
        .arg(&db)));
    assert!(out.starts_with("mirror: 2 records, caught up\n"), "{out}");
    let rows = mirrored(&db).await;
    assert_eq!(jsons(&rows), export(&certs2, "beta"));

    // A --kind filter other than the stored one starts over too.
    let out = ok(run(certs2
        .copex("beta")
        .args(["mirror", "--once", "--kind", "workshop", "--into"])
        .arg(&db)));
    assert!(out.starts_with("mirror: 0 records"), "{out}");

    // A certificate of no partner: a clear error, not a retry loop.
    let refused = run(certs2
        .copex("stranger")
        .args(["mirror", "--into"])
        .arg(certs2.path("stranger.db")));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("Unauthenticated"),
        "{}",
        text(&refused.stderr)
    );
    second.stop().await;
    first.stop().await;
}
