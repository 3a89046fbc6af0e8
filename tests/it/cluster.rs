//! Several hub instances on one PostgreSQL database, and a database outage.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use copex::pb::Tlp;
use futures_util::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;
use crate::sync::check_gap_free;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_keep_the_feed_gap_free() {
    let database = PgDatabase::create().await;
    let a = TestHub::start_on(Some(database.url.clone()), None, |_| {}).await;
    let b = TestHub::start_on(Some(database.url.clone()), None, |_| {}).await;
    check_gap_free(&[&a, &b]).await;
    drop((a, b));
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_instance_sees_commits_made_through_the_other() {
    let database = PgDatabase::create().await;
    let a = TestHub::start_on(Some(database.url.clone()), None, |_| {}).await;
    let b = TestHub::start_on(Some(database.url.clone()), None, |_| {}).await;
    let mut writer = a.contributor("w").await;
    let (cert, key) = b.cert_for("w");
    let mut watcher = b.connect_as("w", &cert, &key).await;
    let mut stream = watch(&mut watcher, "", &[]).await;
    stream.next().await.unwrap().unwrap();
    for i in 0..5 {
        create_tool(&mut writer, &format!("t{i}"), tool("T", Tlp::Green, &[]))
            .await
            .unwrap();
        // Well under the 10 s bookmark: the commit itself wakes instance B.
        let message = next_changes(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(message.changes[0].name, format!("partners/w/tools/t{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_searches_the_shared_feed_with_its_own_index() {
    let database = PgDatabase::create().await;
    let a = TestHub::start_on(Some(database.url.clone()), None, |_| {}).await;
    let b = TestHub::start_on(Some(database.url.clone()), None, |_| {}).await;
    assert_ne!(a.data_dir(), b.data_dir());
    let mut writer = a.contributor("w").await;
    let reader = b.reconnect("w").await;
    let mut search =
        copex::pb::search_service_client::SearchServiceClient::new(reader.channel.clone());
    for i in 0..5 {
        create_tool(
            &mut writer,
            &format!("t{i}"),
            tool(&format!("Lantern {i}"), Tlp::Green, &[]),
        )
        .await
        .unwrap();
        // Written through A, read through B's index, waiting for it.
        let page = search
            .search(copex::pb::SearchRequest {
                query: "lantern".into(),
                wait_for_index: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, i + 1);
    }
    for hub in [&a, &b] {
        assert!(hub.data_dir().join("search/meta.json").exists());
    }
}

/// A PostgreSQL server of the test's own, in a temporary folder, reached by
/// a Unix socket there (no port to race for). Never the machine's shared one.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("pg_ctl under /usr/lib/postgresql/*/bin")
}

/// PostgreSQL refuses to run as root; run its tools as the postgres user then.
fn as_postgres(program: &Path) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("copex-pg")
            .tempdir()
            .unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        let bin = postgres_bin();
        let data = dir.path().join("data");
        let status = as_postgres(&bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let pg = PrivatePostgres { dir, bin };
        pg.ctl("start");
        pg
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.dir.path().display()
        )
    }

    fn ctl(&self, action: &str) {
        let options = format!(
            "-k {} -c listen_addresses='' -p 5432",
            self.dir.path().display()
        );
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command
            .arg(action)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-m", "fast"]);
        if action == "start" {
            command
                .args(["-o", &options, "-l"])
                .arg(self.dir.path().join("log"));
        }
        let status = command
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl {action} failed");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

async fn health(hub: &Partner) -> i32 {
    HealthClient::new(hub.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_then_recovers_with_nothing_lost() {
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let hub = TestHub::start_on(Some(pg.url()), None, |_| {}).await;
    let mut a = hub.contributor("a").await;
    let before = create_tool(&mut a, "kept", tool("Kept", Tlp::Green, &[]))
        .await
        .unwrap();
    assert_eq!(health(&a).await, ServingStatus::Serving as i32);

    let pg = tokio::task::spawn_blocking(move || {
        pg.ctl("stop");
        pg
    })
    .await
    .unwrap();
    // Calls answer UNAVAILABLE (no hang, no crash), health says NOT_SERVING.
    let started = tokio::time::Instant::now();
    let status = assert_code(
        create_tool(&mut a, "lost", tool("Lost", Tlp::Green, &[])).await,
        Code::Unavailable,
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("DATABASE_UNAVAILABLE")
    );
    assert_code(get_tool(&mut a, &before.name).await, Code::Unavailable);
    until("NOT_SERVING", async || {
        health(&a).await == ServingStatus::NotServing as i32
    })
    .await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.ctl("start");
        pg
    })
    .await
    .unwrap();
    until("SERVING", async || {
        health(&a).await == ServingStatus::Serving as i32
    })
    .await;
    assert_eq!(get_tool(&mut a, &before.name).await.unwrap(), before);
    create_tool(&mut a, "after", tool("After", Tlp::Green, &[]))
        .await
        .unwrap();
    let names: Vec<String> = list_all_tools(&mut a, "partners/a", "", 100)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        vec!["partners/a/tools/kept", "partners/a/tools/after"]
    );

    // A restart between two calls leaves the connections kept from before
    // it dead; the next Get is answered all the same.
    assert_eq!(get_tool(&mut a, &before.name).await.unwrap(), before);
    let pg = tokio::task::spawn_blocking(move || {
        pg.ctl("stop");
        pg.ctl("start");
        pg
    })
    .await
    .unwrap();
    assert_eq!(get_tool(&mut a, &before.name).await.unwrap(), before);
    drop(hub);
    drop(pg);
}
