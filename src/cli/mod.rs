//! The `copex` command line: the hub (`serve`, `migrate`, `reindex`, `backup`, `pki`)
//! and a client of it (`whoami`, `partners`, `get`, `list`, `search`,
//! `demo`, `push`, `export`, `mirror`). This file holds the clap definitions
//! and sends each command to the file of its group.

/// Prints a line to stdout; a closed pipe (`copex list tools | head`) ends
/// the command quietly instead of panicking like `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod backup;
pub mod client;
mod demo;
pub mod json;
mod mirror;
mod output;
mod partners;
mod pki;
mod push;
mod records;
mod serve;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::ServeArgs;
use crate::domain::Kind;
use crate::pb;
use crate::telemetry;
use client::HubArgs;
pub use output::describe_status;
pub use sync::RecordKindArg;

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
    /// Copy the hub's SQLite database to a new file (mode 0600), consistent
    /// also while the hub serves; for PostgreSQL use pg_dump.
    Backup {
        #[command(flatten)]
        args: ServeArgs,
        /// The file to create; an existing file is never replaced.
        #[arg(long)]
        to: PathBuf,
    },
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
        kinds: Vec<RecordKindArg>,
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
        kinds: Vec<RecordKindArg>,
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
        kinds: Vec<RecordKindArg>,
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
        #[arg(long, default_value = crate::config::DEFAULT_TRUST_DOMAIN)]
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
        #[arg(long, default_value_t = crate::pki::DEFAULT_PARTNER_DAYS)]
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
        #[arg(long, default_value = crate::config::DEFAULT_TRUST_DOMAIN)]
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
        #[arg(long, default_value_t = crate::pki::DEFAULT_PARTNER_DAYS)]
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
    crate::allocator::limit_arenas();
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
        Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => serve::migrate(args).await.map(|()| ExitCode::SUCCESS),
        Command::Reindex(args) => serve::reindex(args).await.map(|()| ExitCode::SUCCESS),
        Command::Backup { args, to } => backup::run(args, &to).await.map(|()| ExitCode::SUCCESS),
        Command::Pki(command) => pki::run(command).map(|()| ExitCode::SUCCESS),
        command => {
            telemetry::init(
                &std::env::var("COPEX_LOG").unwrap_or_else(|_| "warn".into()),
                telemetry::LogFormat::Text,
            );
            let result = client_command(&cli.hub, cli.output, command).await;
            match (result, output::SETTINGS.get()) {
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

async fn client_command(
    hub: &HubArgs,
    output: Output,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let (channel, settings) = hub.connect().await?;
    let url = settings.hub.clone();
    let _ = output::SETTINGS.set(settings);
    let mut partner_client = pb::partner_service_client::PartnerServiceClient::new(channel.clone());
    match command {
        Command::Whoami => partners::whoami(&mut partner_client, output).await?,
        Command::Partners(command) => partners::run(&mut partner_client, output, command).await?,
        Command::Get { name } => records::get(channel, output, &name).await?,
        Command::List {
            collection,
            parent,
            filter,
            order_by,
            limit,
        } => {
            records::list(
                channel, output, collection, &parent, &filter, &order_by, limit,
            )
            .await?
        }
        Command::Search {
            query,
            kinds,
            filter,
            limit,
            facets,
        } => records::search(channel, output, &query, &kinds, &filter, limit, facets).await?,
        Command::Demo { file } => demo::run(channel, file.as_deref()).await?,
        Command::Push { file, batch_size } => {
            return push::push(channel, &file, batch_size).await;
        }
        Command::Export { kinds } => return push::export(channel, &kinds).await,
        Command::Mirror { into, once, kinds } => {
            return mirror::mirror(channel, &url, &into, once, &kinds).await;
        }
        Command::Serve(_)
        | Command::Migrate(_)
        | Command::Reindex(_)
        | Command::Backup { .. }
        | Command::Pki(_) => {
            bail!("not a client command")
        }
    }
    Ok(ExitCode::SUCCESS)
}
