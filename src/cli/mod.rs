//! The `copex` command line: the hub (`serve`, `migrate`, `pki`) and a client
//! of it (`whoami`, `partners`, `get`, `list`, `demo`).

/// Prints a line to stdout; a closed pipe (`copex list tools | head`) ends
/// the command quietly instead of panicking like `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

pub mod client;
pub mod demo;
pub mod json;
pub mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::pki;
use crate::config::ServeArgs;
use crate::domain::{Kind, names};
use crate::pb::{self, PartnerKind, PartnerState, Role};
use crate::server::Server;
use crate::telemetry;
use client::HubArgs;

#[derive(Debug, Parser)]
#[command(
    name = "copex",
    version,
    about = "A gRPC hub through which child-protection organisations exchange workshop records, best practices and a catalogue of tools over mutual TLS",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub hub: HubArgs,
    /// Output format of client commands.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// proto3 JSON, one object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Run database migrations and exit.
    Migrate(ServeArgs),
    /// Rebuild this instance's search index from the change feed and exit
    /// (with the hub stopped; a hub also rebuilds a missing index itself).
    Reindex(ServeArgs),
    /// Development PKI: a CA, the hub's certificate, partner certificates, the CRL.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Show which partner this certificate acts as.
    Whoami,
    /// Manage partners (reading is open to every partner; changes need ROLE_ADMIN).
    #[command(subcommand)]
    Partners(PartnersCommand),
    /// Print one record by name, e.g. partners/admin/tools/photodna.
    Get { name: String },
    /// List records of one kind.
    List {
        collection: Collection,
        /// partners/{partner}, or partners/- for every partner.
        #[arg(long, default_value = "partners/-")]
        parent: String,
        /// AIP-160 filter, e.g. 'regions:"KE" AND year >= 2012'.
        #[arg(long, default_value = "")]
        filter: String,
        /// e.g. 'update_time desc'.
        #[arg(long, default_value = "")]
        order_by: String,
        /// Stop after this many records (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Search every record this partner can see, best match first: words,
    /// "phrases" and -excluded words; an empty query browses them all.
    Search {
        /// A query may start with an excluded word (`-video ...`).
        #[arg(allow_hyphen_values = true, default_value = "")]
        query: String,
        /// Only records of this kind; repeat for several.
        #[arg(long = "kind", value_enum)]
        kinds: Vec<sync::RecordKindArg>,
        /// AIP-160 filter on the common fields, e.g. 'sharing.tlp = TLP_GREEN'.
        #[arg(long, default_value = "")]
        filter: String,
        /// Show at most this many hits.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Also count the matches by kind, region, stakeholder group, tool
        /// category and owner, printed as a table.
        #[arg(long)]
        facets: bool,
    },
    /// Load the sample records shipped with copex into the hub, as the calling partner.
    Demo {
        /// A JSON array of proto3-JSON Record objects instead of the built-in samples.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Create or replace this partner's records from a JSONL file (one
    /// proto3-JSON Record per line), in batches, reporting each line that
    /// failed; exits with 2 when some lines failed.
    Push {
        file: PathBuf,
        /// Records per BatchUpsertRecords call (1 to 1000).
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
    },
    /// Print every record this partner can see, one proto3-JSON Record per
    /// line (what `copex push` reads).
    Export {
        /// Only records of this kind; repeat for several.
        #[arg(long = "kind", value_enum)]
        kinds: Vec<sync::RecordKindArg>,
    },
    /// Keep a local SQLite copy of every record this partner can see in sync
    /// with the hub's change feed, resuming from its stored cursor.
    Mirror {
        /// The SQLite database file (created when missing).
        #[arg(long)]
        into: PathBuf,
        /// Catch up and exit instead of watching for changes.
        #[arg(long)]
        once: bool,
        /// Only records of this kind; repeat for several.
        #[arg(long = "kind", value_enum)]
        kinds: Vec<sync::RecordKindArg>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Collection {
    Workshops,
    Practices,
    Tools,
}

impl Collection {
    fn kind(self) -> Kind {
        match self {
            Collection::Workshops => Kind::Workshop,
            Collection::Practices => Kind::Practice,
            Collection::Tools => Kind::Tool,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA, the hub's certificate and an empty CRL in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Extra names for the hub's certificate (localhost and 127.0.0.1 are always in).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
    /// Development shortcut: issue a partner's key and client certificate
    /// here, DIR/ID.pem and DIR/ID.key, with a profile DIR/ID.toml.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        partner: String,
        #[arg(long, default_value_t = pki::DEFAULT_PARTNER_DAYS)]
        days: u32,
        /// The hub URL written into DIR/ID.toml.
        #[arg(long = "profile-hub", default_value = client::DEFAULT_HUB)]
        profile_hub: String,
    },
    /// A partner's first step: make a private key DIR/ID.key (it never
    /// leaves you) and a certificate request DIR/ID.csr for the hub's operator.
    Request {
        #[arg(long)]
        partner: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The hub's trust domain (ask its operator).
        #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// The operator's step: sign a partner's certificate request and write
    /// the bundle to hand back (ca.pem, ID.pem, copex.toml, README.txt).
    /// Refuses a request for any identity but the partner's own.
    Sign {
        /// The partner's certificate request (PEM).
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        partner: String,
        /// The hub's URL as partners reach it, written into copex.toml.
        #[arg(long)]
        hub: String,
        /// The PKI directory holding the CA.
        #[arg(long, default_value = "copex-data/pki")]
        dir: PathBuf,
        /// The bundle directory [default: ./ID-bundle].
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = pki::DEFAULT_PARTNER_DAYS)]
        days: u32,
    },
    /// Revoke a certificate: add it to DIR/crl.pem.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Reader,
    Contributor,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KindArg {
    Ngo,
    Industry,
    LawEnforcement,
    Intergovernmental,
    Government,
    Academia,
    Other,
}

#[derive(Debug, Subcommand)]
pub enum PartnersCommand {
    /// Register a partner.
    Create {
        id: String,
        #[arg(long)]
        display_name: String,
        #[arg(long, value_enum, ignore_case = true, default_value = "OTHER")]
        kind: KindArg,
        /// Repeat for several roles.
        #[arg(
            long = "role",
            value_enum,
            ignore_case = true,
            default_value = "reader"
        )]
        roles: Vec<RoleArg>,
        /// Extra identities: SPIFFE IDs or sha256: certificate fingerprints.
        #[arg(long = "identity")]
        identities: Vec<String>,
        /// The partner's own CA (PEM file; each certificate in it is
        /// registered): its certificates then map to this partner only,
        /// through --identity.
        #[arg(long = "ca")]
        cas: Vec<PathBuf>,
    },
    /// List partners.
    List,
    /// Suspend a partner: every call of it is refused until it is activated.
    Suspend { id: String },
    /// Activate a suspended partner.
    Activate { id: String },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // glibc gives threads that allocate heap arenas of their own (up to 8
    // per core) and keeps what they freed: with the search index's threads
    // beside tokio's, the hub stayed 200 MiB above its baseline after a
    // load (tests/soak.rs), and 70 MiB above it with two arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => {
            let config = args.resolve()?;
            telemetry::init(&config.log, config.log_format);
            crate::data_dir::make_private(&config.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {} private to this user (0700)",
                    config.data_dir.display()
                )
            })?;
            crate::store::open(config.database_url.as_deref(), &config.data_dir, true)
                .await
                .context("migration failed")?;
            out!("migrations are up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reindex(args) => {
            let config = args.resolve()?;
            telemetry::init(&config.log, config.log_format);
            let store = crate::store::open(config.database_url.as_deref(), &config.data_dir, false)
                .await
                .context("cannot open the database")?;
            let dir = crate::search::dir_in(&config.data_dir);
            let started = std::time::Instant::now();
            let changes = crate::search::indexer::reindex(&dir, store)
                .await
                .with_context(|| format!("cannot rebuild the search index in {}", dir.display()))?;
            out!(
                "search index rebuilt in {}: {changes} changes in {:.1} s",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(command) => pki_command(command).map(|()| ExitCode::SUCCESS),
        command => {
            telemetry::init(
                &std::env::var("COPEX_LOG").unwrap_or_else(|_| "warn".into()),
                telemetry::LogFormat::Text,
            );
            let result = client_command(&cli.hub, cli.output, command).await;
            match (result, SETTINGS.get()) {
                // A refused certificate shows as any of these, depending on
                // when the connection broke.
                (Err(err), Some(settings))
                    if ["Unknown", "Unavailable", "Cancelled"]
                        .iter()
                        .any(|code| format!("{err:#}").starts_with(code)) =>
                {
                    match client::probe_handshake(settings).await {
                        Some(plain) => Err(anyhow::anyhow!(plain)),
                        None => Err(err),
                    }
                }
                (result, _) => result,
            }
        }
    }
}

/// The global flags the first command needs to reach this hub as the
/// bootstrap admin: none when it serves where the client looks by default.
fn first_command_flags(
    addr: std::net::SocketAddr,
    data_dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> String {
    let mut flags = String::new();
    let default_port = crate::config::DEFAULT_LISTEN
        .parse::<std::net::SocketAddr>()
        .map_or(50051, |a| a.port());
    let local = addr.ip().is_loopback() || addr.ip().is_unspecified();
    if addr.port() != default_port || !local {
        let host = if local {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        flags.push_str(&format!("--hub https://{host} "));
    }
    let same_dir = |a: &std::path::Path, b: &std::path::Path| {
        std::fs::canonicalize(a)
            .ok()
            .zip(std::fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
    };
    if !same_dir(
        data_dir,
        std::path::Path::new(crate::config::DEFAULT_DATA_DIR),
    ) {
        flags.push_str(&format!(
            "--ca {} --cert {} --key {} ",
            ca.display(),
            cert.display(),
            key.display()
        ));
    }
    flags
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    telemetry::init(&config.log, config.log_format);
    // Files the hub makes are its own alone, also those a library makes
    // with the umask's modes (the search index's segments, written while
    // it serves); certificates are given their modes explicitly.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let (server, report) = Server::build(&config).await?;
    let addr = server.local_addr()?;
    for line in &report.created {
        out!("created {line}");
    }
    if let (Some((cert, key)), Some(ca)) = (&report.admin_cert, &report.ca_cert) {
        // The bootstrap admin's profile names where this hub really listens,
        // so COPEX_PROFILE=copex-data/pki/admin.toml works whatever the port.
        if let Some(dir) = ca.parent() {
            let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
                format!("localhost:{}", addr.port())
            } else {
                addr.to_string()
            };
            let profile = pki::write_profile(
                dir,
                crate::server::BOOTSTRAP_PARTNER,
                &format!("https://{host}"),
            )?;
            tracing::debug!(profile = %profile.display(), "wrote the bootstrap admin's profile");
        }
        out!(
            "partners/admin: --cert {} --key {} --ca {}",
            cert.display(),
            key.display(),
            ca.display()
        );
        out!(
            "try, in another terminal:  cargo run --release -- {}whoami   (then: demo, list tools)",
            first_command_flags(addr, &config.data_dir, cert, key, ca)
        );
    }
    // Last, so a script may wait for this line.
    out!(
        "copex is serving on https://{addr} (database: {})",
        config
            .database_url
            .as_deref()
            .map(|_| "from --database".to_owned())
            .unwrap_or_else(|| config.data_dir.join("copex.db").display().to_string())
    );
    if let Some(metrics) = server.metrics_addr() {
        out!("metrics on http://{metrics}/metrics");
    }
    tracing::info!(%addr, "serving");
    server.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing calls in flight");
}

fn pki_command(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            trust_domain,
            server_names,
        } => {
            let files = pki::init(&dir, &trust_domain, &server_names)?;
            out!("created {}", files.ca_cert.display());
            out!("created {}", files.ca_key.display());
            out!("created {}", files.server_cert.display());
            out!("created {}", files.server_key.display());
            out!("created {}", files.crl.display());
        }
        PkiCommand::Issue {
            dir,
            partner,
            days,
            profile_hub,
        } => {
            let (cert, key) = pki::issue(&dir, &partner, days)?;
            let profile = pki::write_profile(&dir, &partner, &profile_hub)?;
            out!("created {}", cert.display());
            out!("created {}", key.display());
            out!("created {}", profile.display());
        }
        PkiCommand::Request {
            partner,
            dir,
            trust_domain,
        } => {
            let (key, csr) = pki::request(&dir, &partner, &trust_domain)?;
            out!(
                "created {} (your private key: keep it, never send it)",
                key.display()
            );
            out!("created {}", csr.display());
            out!(
                "send {} to the hub's operator; you will get back a bundle directory",
                csr.display()
            );
        }
        PkiCommand::Sign {
            csr,
            partner,
            hub,
            dir,
            out,
            days,
        } => {
            if !hub.starts_with("https://") {
                bail!("--hub must be the hub's https:// URL as partners reach it, not {hub:?}");
            }
            if !dir.join("ca.pem").is_file() {
                bail!(
                    "no CA in {}: run this where the hub's data directory is, or pass --dir DATA/pki",
                    dir.display()
                );
            }
            let cert = pki::sign_request(&dir, &csr, &partner, days)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{partner}-bundle")));
            let bundle = pki::write_bundle(&dir, &out, &partner, &cert, &hub)?;
            for file in [&bundle.ca, &bundle.cert, &bundle.profile, &bundle.readme] {
                out!("created {}", file.display());
            }
            out!(
                "hand {} to partner {partner}; register it if not done yet: copex partners create {partner} --display-name ...",
                bundle.dir.display()
            );
        }
        PkiCommand::Revoke { dir, cert } => {
            pki::revoke(&dir, &cert)?;
            out!(
                "revoked {} in {}",
                cert.display(),
                dir.join("crl.pem").display()
            );
        }
    }
    Ok(())
}

fn role_of(arg: RoleArg) -> Role {
    match arg {
        RoleArg::Reader => Role::Reader,
        RoleArg::Contributor => Role::Contributor,
        RoleArg::Admin => Role::Admin,
    }
}

fn kind_of(arg: KindArg) -> PartnerKind {
    match arg {
        KindArg::Ngo => PartnerKind::Ngo,
        KindArg::Industry => PartnerKind::Industry,
        KindArg::LawEnforcement => PartnerKind::LawEnforcement,
        KindArg::Intergovernmental => PartnerKind::Intergovernmental,
        KindArg::Government => PartnerKind::Government,
        KindArg::Academia => PartnerKind::Academia,
        KindArg::Other => PartnerKind::Other,
    }
}

/// Turns a failed call into an error message that shows the status and the
/// google.rpc details a person needs.
pub fn describe_status(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    // A handshake that failed after connecting (TLS 1.3 sends the hub's
    // verdict on our certificate after the client's side has finished)
    // reaches us as a failed call.
    if let Some(settings) = SETTINGS.get()
        && let Some(plain) = client::explain_tls(status, settings)
    {
        return plain;
    }
    let details = status.get_error_details();
    let mut text = format!("{:?}", status.code());
    match details.bad_request() {
        // The violations say it all; the message repeats them.
        Some(bad) if !bad.field_violations.is_empty() => {
            for v in &bad.field_violations {
                text.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        _ => text.push_str(&format!(": {}", status.message())),
    }
    if let Some(info) = details.error_info() {
        text.push_str(&format!("\n  reason: {}", info.reason));
    }
    if status.code() == tonic::Code::Unauthenticated {
        text.push_str(
            "\n  the hub accepted the certificate but does not know whom it speaks for: ask the hub's operator to register the partner (`copex partners create ID --identity spiffe://...`) or to activate it",
        );
    }
    text
}

/// The settings this process connected with, for `describe_status`.
static SETTINGS: std::sync::OnceLock<client::Resolved> = std::sync::OnceLock::new();

fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(describe_status(&status))
}

fn partner_line(p: &pb::Partner) -> String {
    let roles: Vec<&str> = p
        .roles
        .iter()
        .filter_map(|r| Role::try_from(*r).ok())
        .map(|r| r.as_str_name().trim_start_matches("ROLE_"))
        .collect();
    let state = PartnerState::try_from(p.state)
        .map(|s| s.as_str_name().trim_start_matches("PARTNER_STATE_"))
        .unwrap_or("?");
    let kind = PartnerKind::try_from(p.kind)
        .map(|k| k.as_str_name().trim_start_matches("PARTNER_KIND_"))
        .unwrap_or("?");
    format!(
        "{:<24} {:<32} {:<18} {:<10} {}",
        p.name,
        names::truncate(&p.display_name, 30),
        kind,
        state,
        roles.join(",")
    )
}

async fn client_command(
    hub: &HubArgs,
    output: Output,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let (channel, settings) = hub.connect().await?;
    let url = settings.hub.clone();
    let _ = SETTINGS.set(settings);
    let mut partners = pb::partner_service_client::PartnerServiceClient::new(channel.clone());
    match command {
        Command::Whoami => {
            let me = partners
                .get_current_partner(pb::GetCurrentPartnerRequest {})
                .await
                .map_err(call_error)?
                .into_inner();
            match output {
                Output::Json => out!("{}", json::to_json(&me)?),
                Output::Text => {
                    out!("{} ({})", me.name, me.display_name);
                    out!("{}", partner_line(&me));
                }
            }
        }
        Command::Partners(command) => partners_command(&mut partners, output, command).await?,
        Command::Get { name } => {
            let parsed =
                names::RecordName::parse_any("name", &name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let record = demo::get_record(channel, parsed.kind, &name)
                .await
                .map_err(call_error)?;
            match output {
                Output::Json => out!("{}", json::to_json(&record)?),
                Output::Text => out!("{}", json::to_pretty_json(&record)?),
            }
        }
        Command::List {
            collection,
            parent,
            filter,
            order_by,
            limit,
        } => {
            let kind = collection.kind();
            let mut page_token = String::new();
            let mut shown = 0usize;
            loop {
                let (records, next) = demo::list_page(
                    channel.clone(),
                    kind,
                    &parent,
                    &filter,
                    &order_by,
                    &page_token,
                )
                .await
                .map_err(call_error)?;
                for record in records {
                    if limit.is_some_and(|l| shown >= l) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    shown += 1;
                    match output {
                        Output::Json => out!("{}", json::to_json(&record)?),
                        Output::Text => out!("{}", demo::record_line(&record)),
                    }
                }
                if next.is_empty() {
                    break;
                }
                page_token = next;
            }
            if output == Output::Text && shown == 0 {
                eprintln!("no {} match", kind.collection());
            }
        }
        Command::Search {
            query,
            kinds,
            filter,
            limit,
            facets,
        } => {
            let mut search = pb::search_service_client::SearchServiceClient::new(channel.clone());
            let facet_names: Vec<String> = if facets {
                crate::search::FACETS
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect()
            } else {
                Vec::new()
            };
            let mut counted = Vec::new();
            let mut page_token = String::new();
            let mut shown = 0usize;
            let mut total = 0;
            while shown < limit {
                let page = search
                    .search(pb::SearchRequest {
                        query: query.clone(),
                        kinds: kinds.iter().map(|k| k.to_proto() as i32).collect(),
                        filter: filter.clone(),
                        page_size: (limit - shown).min(100) as i32,
                        page_token: page_token.clone(),
                        // A person reads their own writes.
                        wait_for_index: page_token.is_empty(),
                        facets: if page_token.is_empty() {
                            facet_names.clone()
                        } else {
                            Vec::new()
                        },
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                total = page.total_size;
                if page_token.is_empty() {
                    counted = page.facets.clone();
                }
                for hit in page.hits.iter().take(limit - shown) {
                    shown += 1;
                    match output {
                        Output::Json => out!("{}", json::to_json(hit)?),
                        Output::Text => {
                            if let Some(record) = &hit.record {
                                out!("{:>7.3}  {}", hit.score, demo::record_line(record));
                            }
                            out!("         {}", hit.snippet);
                        }
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if output == Output::Text {
                eprintln!("{shown} of {total} matching records shown");
                if facets {
                    out!("{}", facet_table(&counted));
                }
            } else {
                for facet in &counted {
                    out!("{}", json::to_json(facet)?);
                }
            }
        }
        Command::Demo { file } => {
            let text = match &file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => demo::SAMPLES.to_owned(),
            };
            let me = partners
                .get_current_partner(pb::GetCurrentPartnerRequest {})
                .await
                .map_err(call_error)?
                .into_inner();
            let owner =
                names::parse_partner_name("name", &me.name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let loaded = demo::load(channel, &owner, &text).await?;
            for name in &loaded {
                out!("loaded {name}");
            }
            out!(
                "{} sample records are on the hub; try: copex list workshops",
                loaded.len()
            );
        }
        Command::Push { file, batch_size } => {
            return sync::push(channel, &file, batch_size).await;
        }
        Command::Export { kinds } => return sync::export(channel, &kinds).await,
        Command::Mirror { into, once, kinds } => {
            return sync::mirror(channel, &url, &into, once, &kinds).await;
        }
        Command::Serve(_) | Command::Migrate(_) | Command::Reindex(_) | Command::Pki(_) => {
            bail!("not a client command")
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn partners_command(
    partners: &mut pb::partner_service_client::PartnerServiceClient<tonic::transport::Channel>,
    output: Output,
    command: PartnersCommand,
) -> anyhow::Result<()> {
    let print = |p: &pb::Partner| -> anyhow::Result<()> {
        match output {
            Output::Json => out!("{}", json::to_json(p)?),
            Output::Text => out!("{}", partner_line(p)),
        }
        Ok(())
    };
    match command {
        PartnersCommand::Create {
            id,
            display_name,
            kind,
            roles,
            identities,
            cas,
        } => {
            let mut ca_certificates = Vec::new();
            for path in &cas {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                ca_certificates.extend(pem_certificates(&text));
            }
            let created = partners
                .create_partner(pb::CreatePartnerRequest {
                    partner_id: id,
                    partner: Some(pb::Partner {
                        display_name,
                        kind: kind_of(kind) as i32,
                        roles: roles.into_iter().map(|r| role_of(r) as i32).collect(),
                        identities,
                        ca_certificates,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            print(&created)?;
        }
        PartnersCommand::List => {
            let mut page_token = String::new();
            loop {
                let page = partners
                    .list_partners(pb::ListPartnersRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                for p in &page.partners {
                    print(p)?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        PartnersCommand::Suspend { id } | PartnersCommand::Activate { id }
            if !names::is_valid_id(&id) =>
        {
            bail!("{id:?} is not a partner id")
        }
        PartnersCommand::Suspend { id } => {
            print(&set_state(partners, &id, PartnerState::Suspended).await?)?;
        }
        PartnersCommand::Activate { id } => {
            print(&set_state(partners, &id, PartnerState::Active).await?)?;
        }
    }
    Ok(())
}

/// Each PEM certificate of a file, as its own text.
fn pem_certificates(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter(|block| block.contains(END))
        .map(|block| block.trim_start().to_owned())
        .collect()
}

async fn set_state(
    partners: &mut pb::partner_service_client::PartnerServiceClient<tonic::transport::Channel>,
    id: &str,
    state: PartnerState,
) -> anyhow::Result<pb::Partner> {
    Ok(partners
        .update_partner(pb::UpdatePartnerRequest {
            partner: Some(pb::Partner {
                name: names::partner_name(id),
                state: state as i32,
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .map_err(call_error)?
        .into_inner())
}

/// Facet counts as a table: one row per value, under its facet.
fn facet_table(facets: &[pb::Facet]) -> String {
    let width = facets
        .iter()
        .flat_map(|f| f.values.iter().map(|v| v.value.chars().count()))
        .chain(facets.iter().map(|f| f.field.chars().count()))
        .max()
        .unwrap_or(0);
    let mut out = format!("{:<18}  {:<width$}  {:>7}", "FACET", "VALUE", "RECORDS");
    for facet in facets {
        for value in &facet.values {
            out.push_str(&format!(
                "\n{:<18}  {:<width$}  {:>7}",
                facet.field, value.value, value.count
            ));
        }
    }
    out
}
