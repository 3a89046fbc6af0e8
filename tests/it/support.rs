//! A real hub for each test: `Server::build` (the code `copex serve` runs) on
//! 127.0.0.1:0 in a temporary data directory with its development PKI, and
//! partner clients over real mutual TLS with certificates signed in the test.

use std::net::SocketAddr;

use copex::auth::cert::partner_spiffe_id;
use copex::config::ServeArgs;
use copex::pb::{self, Role};
use copex::pki::{CertificateAuthority, LeafOptions};
use copex::server::Server;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type PartnerClient = pb::partner_service_client::PartnerServiceClient<Channel>;
pub type ToolClient = pb::tool_service_client::ToolServiceClient<Channel>;
pub type WorkshopClient = pb::workshop_service_client::WorkshopServiceClient<Channel>;
pub type PracticeClient = pb::practice_service_client::PracticeServiceClient<Channel>;
pub type SyncClient = pb::sync_service_client::SyncServiceClient<Channel>;

pub const TRUST_DOMAIN: &str = "copex.local";

pub struct TestHub {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when the hub was given `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub ca: CertificateAuthority,
    /// Opens the hub's cursors, which tests may look inside.
    pub cursors: copex::feed::Cursors,
    /// Kept so the data directory lives as long as the hub.
    _data_dir: tempfile::TempDir,
    /// The database of a hub on PostgreSQL, dropped after the test.
    _database: Option<PgDatabase>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Clients of every service, acting as one partner.
#[derive(Clone)]
pub struct Partner {
    pub id: String,
    pub channel: Channel,
    pub partners: PartnerClient,
    pub tools: ToolClient,
    pub workshops: WorkshopClient,
    pub practices: PracticeClient,
    pub sync: SyncClient,
}

impl Partner {
    pub fn on(id: &str, channel: Channel) -> Self {
        Partner {
            id: id.to_owned(),
            partners: PartnerClient::new(channel.clone()),
            tools: ToolClient::new(channel.clone()),
            workshops: WorkshopClient::new(channel.clone()),
            practices: PracticeClient::new(channel.clone()),
            sync: SyncClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            channel,
        }
    }

    /// Connects to a hub at `url` with PEM files, as a partner system does.
    pub async fn connect_files(id: &str, url: &str, pki: &std::path::Path) -> Self {
        let read = |file: &str| std::fs::read(pki.join(file)).expect("PKI file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(
                read(&format!("{id}.pem")),
                read(&format!("{id}.key")),
            ))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(url.to_owned())
            .expect("hub url")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect to the hub");
        Self::on(id, channel)
    }

    pub fn name(&self) -> String {
        format!("partners/{}", self.id)
    }
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    /// A hub with some settings changed, e.g. a short tombstone retention.
    /// `COPEX_TEST_BACKEND=postgres` runs every hub of the suite on a fresh
    /// PostgreSQL database instead of SQLite.
    pub async fn start_with(configure: impl FnOnce(&mut ServeArgs)) -> TestHub {
        let database = match std::env::var("COPEX_TEST_BACKEND").as_deref() {
            Ok("postgres") => Some(PgDatabase::create().await),
            Ok("sqlite") | Err(_) => None,
            Ok(other) => panic!("COPEX_TEST_BACKEND={other}: use sqlite or postgres"),
        };
        let url = database.as_ref().map(|d| d.url.clone());
        Self::start_on(url, database, configure).await
    }

    /// A hub on the given database URL (SQLite in its data directory when
    /// `None`).
    pub async fn start_on(
        database_url: Option<String>,
        database: Option<PgDatabase>,
        configure: impl FnOnce(&mut ServeArgs),
    ) -> TestHub {
        if std::env::var_os("COPEX_TEST_LOG").is_some() {
            copex::telemetry::init("info", copex::telemetry::LogFormat::Text);
        }
        let data_dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(data_dir, database_url, database, configure).await
    }

    /// Stops the hub and starts it again on the same data directory and
    /// database.
    pub async fn restart(self) -> TestHub {
        self.restart_after(|_| {}).await
    }

    /// `restart`, doing `between` to the data directory while it is stopped.
    pub async fn restart_after(mut self, between: impl FnOnce(&std::path::Path)) -> TestHub {
        let url = self.database_url().map(str::to_owned);
        let database = self._database.take();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
        let data_dir = std::mem::replace(
            &mut self._data_dir,
            tempfile::tempdir().expect("temporary directory"),
        );
        between(data_dir.path());
        Self::start_in(data_dir, url, database, |_| {}).await
    }

    /// The hub's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }

    async fn start_in(
        data_dir: tempfile::TempDir,
        database_url: Option<String>,
        database: Option<PgDatabase>,
        configure: impl FnOnce(&mut ServeArgs),
    ) -> TestHub {
        let mut args = ServeArgs {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: Some(data_dir.path().to_path_buf()),
            database_url,
            // Tests call faster than a partner may; the limit has its own
            // tests, which turn it back on.
            rate_limit: Some(0),
            ..Default::default()
        };
        configure(&mut args);
        let config = args.resolve().expect("test config");
        let (server, report) = Server::build(&config).await.expect("hub starts");
        assert!(report.admin_cert.is_some());
        let addr = server.local_addr().expect("bound address");
        let metrics_addr = server.metrics_addr();
        let cursors = server.cursors();
        let ca = CertificateAuthority::load(&data_dir.path().join("pki")).expect("dev CA");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async {
            let _ = rx.await;
        }));
        TestHub {
            addr,
            metrics_addr,
            ca,
            cursors,
            _data_dir: data_dir,
            _database: database,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The URL of the hub's PostgreSQL database; `None` on SQLite.
    pub fn database_url(&self) -> Option<&str> {
        self._database.as_ref().map(|d| d.url.as_str())
    }

    /// The hub's development PKI (`ca.pem`, `server.pem`, `crl.pem`, ...).
    pub fn pki_dir(&self) -> std::path::PathBuf {
        self._data_dir.path().join("pki")
    }

    /// A client certificate for `spiffe://copex.local/partner/{id}`.
    pub fn cert_for(&self, id: &str) -> (String, String) {
        self.ca
            .sign_leaf(&LeafOptions {
                common_name: id.to_owned(),
                uri_sans: vec![partner_spiffe_id(TRUST_DOMAIN, id)],
                client_auth: true,
                ..Default::default()
            })
            .expect("sign client certificate")
    }

    pub async fn channel_with(
        &self,
        identity: Option<(&str, &str)>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect()
            .await
    }

    /// Clients presenting the given certificate and key.
    pub async fn connect_as(&self, id: &str, cert: &str, key: &str) -> Partner {
        let channel = self
            .channel_with(Some((cert, key)))
            .await
            .expect("connect with a valid certificate");
        Partner::on(id, channel)
    }

    /// The bootstrap partner `partners/admin` (ADMIN, CONTRIBUTOR).
    pub async fn admin(&self) -> Partner {
        let (cert, key) = self.cert_for("admin");
        self.connect_as("admin", &cert, &key).await
    }

    /// Registers a partner through the admin and connects as it.
    pub async fn partner(&self, id: &str, roles: &[Role]) -> Partner {
        create_partner(&mut self.admin().await, id, roles).await;
        let (cert, key) = self.cert_for(id);
        self.connect_as(id, &cert, &key).await
    }

    pub async fn contributor(&self, id: &str) -> Partner {
        self.partner(id, &[Role::Contributor]).await
    }

    /// Connects as a partner registered before (e.g. before a restart).
    pub async fn reconnect(&self, id: &str) -> Partner {
        let (cert, key) = self.cert_for(id);
        self.connect_as(id, &cert, &key).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Registers `partners/{id}` (an NGO) through `admin`.
pub async fn create_partner(admin: &mut Partner, id: &str, roles: &[Role]) {
    admin
        .partners
        .create_partner(pb::CreatePartnerRequest {
            partner_id: id.to_owned(),
            partner: Some(pb::Partner {
                display_name: format!("Partner {id}"),
                kind: pb::PartnerKind::Ngo as i32,
                roles: roles.iter().map(|r| *r as i32).collect(),
                ..Default::default()
            }),
        })
        .await
        .expect("admin creates partner");
}

/// `count` GREEN tools of `owner` named `{prefix}{i}`, each with the given
/// description: load for a batch upsert.
pub fn filler_tools(owner: &str, prefix: &str, count: usize, description: &str) -> Vec<pb::Record> {
    (0..count)
        .map(|i| {
            let mut t = tool(&format!("Filler {prefix}{i}"), pb::Tlp::Green, &[]);
            t.name = format!("partners/{owner}/tools/{prefix}{i}");
            t.description = description.to_owned();
            pb::Record {
                kind: Some(pb::record::Kind::Tool(t)),
            }
        })
        .collect()
}

pub fn tool(display_name: &str, tlp: pb::Tlp, recipients: &[&str]) -> pb::Tool {
    pb::Tool {
        display_name: display_name.to_owned(),
        summary: format!("Summary of {display_name}"),
        category: pb::ToolCategory::HashMatching as i32,
        regions: vec!["KE".into(), "TH".into()],
        sharing: Some(pb::Sharing {
            tlp: tlp as i32,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }),
        ..Default::default()
    }
}

pub async fn create_tool(
    partner: &mut Partner,
    id: &str,
    tool: pb::Tool,
) -> Result<pb::Tool, Status> {
    let parent = partner.name();
    partner
        .tools
        .create_tool(pb::CreateToolRequest {
            parent,
            tool: Some(tool),
            tool_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn create_practice(
    partner: &mut Partner,
    id: &str,
    practice: pb::Practice,
) -> Result<pb::Practice, Status> {
    let parent = partner.name();
    partner
        .practices
        .create_practice(pb::CreatePracticeRequest {
            parent,
            practice: Some(practice),
            practice_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn create_workshop(
    partner: &mut Partner,
    id: &str,
    workshop: pb::Workshop,
) -> Result<pb::Workshop, Status> {
    let parent = partner.name();
    partner
        .workshops
        .create_workshop(pb::CreateWorkshopRequest {
            parent,
            workshop: Some(workshop),
            workshop_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Sharing with every partner at `tlp` (TLP_CLEAR or TLP_GREEN).
pub fn public(tlp: pb::Tlp) -> Option<pb::Sharing> {
    Some(pb::Sharing {
        tlp: tlp as i32,
        recipients: vec![],
    })
}

/// Every tool `partner` can list under `parent`, following page tokens.
pub async fn list_all_tools(
    partner: &mut Partner,
    parent: &str,
    filter: &str,
    page_size: i32,
) -> Vec<pb::Tool> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = partner
            .tools
            .list_tools(pb::ListToolsRequest {
                parent: parent.to_owned(),
                page_size,
                page_token: page_token.clone(),
                filter: filter.to_owned(),
                order_by: String::new(),
            })
            .await
            .expect("list tools")
            .into_inner();
        all.extend(page.tools);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Asserts the status code and returns the field paths of its BadRequest.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

pub fn violation_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

pub fn error_reason(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| {
        assert_eq!(i.domain, "copex");
        i.reason.clone()
    })
}

pub async fn get_tool(partner: &mut Partner, name: &str) -> Result<pb::Tool, Status> {
    partner
        .tools
        .get_tool(pb::GetToolRequest {
            name: name.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

/// UpdateTool; an empty `paths` is an empty mask (replace everything).
pub async fn update_tool(
    partner: &mut Partner,
    tool: pb::Tool,
    paths: &[&str],
    allow_missing: bool,
) -> Result<pb::Tool, Status> {
    let update_mask = (!paths.is_empty()).then(|| pbjson_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    });
    partner
        .tools
        .update_tool(pb::UpdateToolRequest {
            tool: Some(tool),
            update_mask,
            allow_missing,
        })
        .await
        .map(|r| r.into_inner())
}

/// The PostgreSQL server the tests use (`COPEX_TEST_POSTGRES`, by default the
/// machine's on 127.0.0.1:5432). Tests that need it fail when it is down.
pub fn postgres_admin_url() -> String {
    std::env::var("COPEX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database for one test, dropped afterwards.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("copex_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin);
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop is not async: a thread of its own removes the database.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

pub type WatchStream = tonic::Streaming<pb::WatchChangesResponse>;

/// Opens WatchChanges from `cursor` for `kinds` (empty: all).
pub async fn watch(partner: &mut Partner, cursor: &str, kinds: &[pb::RecordKind]) -> WatchStream {
    partner
        .sync
        .watch_changes(pb::WatchChangesRequest {
            cursor: cursor.to_owned(),
            kinds: kinds.iter().map(|k| *k as i32).collect(),
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The next message of a watch that carries changes, skipping bookmarks.
pub async fn next_changes(
    stream: &mut WatchStream,
    within: std::time::Duration,
) -> pb::WatchChangesResponse {
    tokio::time::timeout(within, async {
        loop {
            let message = stream
                .message()
                .await
                .expect("the watch goes on")
                .expect("a message");
            if !message.changes.is_empty() {
                return message;
            }
        }
    })
    .await
    .expect("changes arrive in time")
}

/// The feed position inside a cursor; tests may look inside, clients may not.
pub fn seq_of(cursors: &copex::feed::Cursors, cursor: &str) -> i64 {
    cursors.decode(cursor).expect("a cursor of this hub")
}

/// The cursors of a `copex serve` started with `serve_args` on `data_dir`,
/// opened from its database as the hub opens them.
pub async fn cursors_of(data_dir: &std::path::Path, serve_args: &[&str]) -> copex::feed::Cursors {
    let url = serve_args
        .iter()
        .position(|a| *a == "--database")
        .map(|i| serve_args[i + 1]);
    let store = copex::store::open(url, data_dir, false)
        .await
        .expect("the hub's database");
    let info = store.hub_info().await.expect("hub info");
    copex::feed::Cursors::new(info.hub_id, &info.token_key)
}
