//! `copex serve` configuration: flags, then `COPEX_*` environment variables,
//! then an optional TOML file (`--config`), then defaults; checked once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::feed::FeedSettings;
use crate::telemetry::LogFormat;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "copex-data";
pub const DEFAULT_TRUST_DOMAIN: &str = "copex.local";
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "COPEX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: the embedded database and the development PKI.
    #[arg(long, env = "COPEX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL; the embedded SQLite database in the data directory when unset.
    #[arg(long = "database", env = "COPEX_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections to PostgreSQL per instance (default 16).
    #[arg(long, env = "COPEX_DB_POOL_SIZE")]
    pub db_pool_size: Option<u32>,
    /// Server certificate (PEM). With --tls-key and --client-ca; all three or none.
    #[arg(long, env = "COPEX_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "COPEX_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Trust bundle of client CAs (PEM, may hold several). Its first
    /// certificate is the hub's own CA unless --hub-ca names it; any other CA
    /// vouches only for the partner it is registered on.
    #[arg(long, env = "COPEX_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The hub's own CA (PEM): the only CA that vouches for IDs in the trust
    /// domain. Default: the first certificate of --client-ca.
    #[arg(long, env = "COPEX_HUB_CA")]
    pub hub_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM); repeat the flag or separate with commas.
    #[arg(long, env = "COPEX_CRL", value_delimiter = ',')]
    pub crl: Vec<PathBuf>,
    /// SPIFFE trust domain of partner certificates.
    #[arg(long, env = "COPEX_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Log filter, like RUST_LOG (e.g. `info`, `copex=debug`).
    #[arg(long, env = "COPEX_LOG")]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, env = "COPEX_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address to serve Prometheus metrics on, at `/metrics` (plain HTTP; off when unset).
    #[arg(long, env = "COPEX_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long deleted records stay in the change feed (e.g. `30d`, `2h`).
    #[arg(long, env = "COPEX_TOMBSTONE_RETENTION", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Option<Duration>,
    /// How often an idle watch stream gets a bookmark.
    #[arg(long, env = "COPEX_WATCH_BOOKMARK_INTERVAL", value_parser = humantime::parse_duration)]
    pub watch_bookmark_interval: Option<Duration>,
    /// How long a watcher may leave its buffer full before it is cut off
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COPEX_WATCH_STALL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub watch_stall_timeout: Option<Duration>,
    /// Calls per second each partner may make, with bursts of twice that
    /// (default 200; 0 turns the limit off).
    #[arg(long, env = "COPEX_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Watch streams one partner may hold open at once (default 100).
    #[arg(long, env = "COPEX_MAX_WATCHERS_PER_PARTNER")]
    pub max_watchers_per_partner: Option<u32>,
    /// Largest request message in bytes (default 4194304, 4 MiB).
    #[arg(long, env = "COPEX_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// HTTP/2 streams (calls) one connection may have open at once (default 256).
    #[arg(long, env = "COPEX_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Audit rows of refused calls waiting to be written; beyond that they
    /// are dropped and counted in `copex_audit_events_dropped_total`
    /// (default 10000, about 14 MiB at most).
    #[arg(long, env = "COPEX_AUDIT_QUEUE_CAPACITY")]
    pub audit_queue_capacity: Option<usize>,
    /// Comparisons one filter may hold (default 50).
    #[arg(long, env = "COPEX_MAX_FILTER_TERMS")]
    pub max_filter_terms: Option<usize>,
    /// Expensive calls (List with a filter, Search, ListChanges) one partner
    /// may have running at once; more wait for their turn (default: half the
    /// cores, 1 or 2).
    #[arg(long, env = "COPEX_MAX_EXPENSIVE_CALLS_PER_PARTNER")]
    pub max_expensive_calls_per_partner: Option<usize>,
    /// Bytes all watch streams together may hold queued for their clients
    /// (default `256MiB`; a number of bytes, or with KiB, MiB or GiB); past
    /// it the watcher furthest behind is cut off with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COPEX_WATCH_MEMORY", value_parser = parse_bytes)]
    pub watch_memory: Option<usize>,
    /// TLS handshakes in progress at once (default 256); further
    /// connections wait to be accepted until one finishes.
    #[arg(long, env = "COPEX_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// On SIGTERM, how long in-flight calls may take to finish (default `10s`).
    #[arg(long, env = "COPEX_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// How often the certificate, key, trust bundle and CRL files are checked
    /// for changes (default `1s`; `0s`: reload only on SIGHUP).
    #[arg(long, env = "COPEX_TLS_RELOAD_INTERVAL", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Option<Duration>,
    /// Do not run database migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
    /// TOML file with the same settings (lowest precedence but defaults).
    #[arg(long, env = "COPEX_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Settings a TOML file may hold; names as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    db_pool_size: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    hub_ca: Option<PathBuf>,
    crl: Option<Vec<PathBuf>>,
    trust_domain: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    metrics_listen: Option<SocketAddr>,
    migrate: Option<bool>,
    rate_limit: Option<u32>,
    max_watchers_per_partner: Option<u32>,
    #[serde(default, with = "humantime_serde_option")]
    tls_reload_interval: Option<Duration>,
    max_request_bytes: Option<usize>,
    max_concurrent_streams: Option<u32>,
    audit_queue_capacity: Option<usize>,
    max_filter_terms: Option<usize>,
    max_expensive_calls_per_partner: Option<usize>,
    #[serde(default, deserialize_with = "bytes_option")]
    watch_memory: Option<usize>,
    max_handshakes: Option<usize>,
    #[serde(default, with = "humantime_serde_option")]
    drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_option")]
    tombstone_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde_option")]
    watch_bookmark_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_option")]
    watch_stall_timeout: Option<Duration>,
}

/// Durations in the TOML file are written as in the flags (`30d`, `10s`).
mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Sizes in the TOML file are written as in the flags (`256MiB`).
fn bytes_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => parse_bytes(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A size: a number of bytes, or a number with `B`, `KiB`, `MiB` or `GiB`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?}: write bytes, or a number with KiB, MiB or GiB"
            ));
        }
    };
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: write e.g. 268435456 or 256MiB"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text} is too large"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// `None`: the first certificate of `client_ca`.
    pub hub_ca: Option<PathBuf>,
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub db_pool_size: u32,
    /// `None`: use (and create when missing) the development PKI in
    /// `{data_dir}/pki`.
    pub tls: Option<TlsPaths>,
    pub trust_domain: String,
    pub migrate: bool,
    pub log: String,
    pub log_format: LogFormat,
    pub metrics_listen: Option<SocketAddr>,
    pub feed: FeedSettings,
    pub limits: Limits,
    /// Zero: reload TLS files only on SIGHUP.
    pub tls_reload_interval: Duration,
}

/// What one partner may use of the hub, and how long a stop may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Calls per second per partner (bursts of twice that); 0: no limit.
    pub rate_limit: u32,
    pub max_watchers_per_partner: u32,
    pub max_request_bytes: usize,
    pub max_concurrent_streams: u32,
    /// Audit rows of refused calls waiting to be written, at most.
    pub audit_queue_capacity: usize,
    /// Comparisons in one filter: each costs the database a test per record.
    pub max_filter_terms: usize,
    /// Expensive calls of one partner running at once; the others wait
    /// behind them, holding no database connection.
    pub max_expensive_calls_per_partner: usize,
    /// Bytes all watch streams may hold queued, together.
    pub watch_memory: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_limit: 200,
            max_watchers_per_partner: 100,
            max_request_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            audit_queue_capacity: 10_000,
            max_filter_terms: 50,
            max_expensive_calls_per_partner: default_expensive_calls(),
            watch_memory: 256 << 20,
            max_handshakes: 256,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Expensive calls one partner may run at once by default: half the cores
/// (SQLite's statements run on the hub's own cores), and at most 2, half of
/// SQLite's 4 reader connections. On 2 cores a second one raised another
/// partner's ListTools p99 6.6 times in the bench's storm row, against a
/// target of 5.
fn default_expensive_calls() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, 2)
}

impl ServeConfig {
    pub fn dev_pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let tls_cert = self.tls_cert.or(file.tls_cert);
        let tls_key = self.tls_key.or(file.tls_key);
        let client_ca = self.client_ca.or(file.client_ca);
        let hub_ca = self.hub_ca.or(file.hub_ca);
        let crls = if self.crl.is_empty() {
            file.crl.unwrap_or_default()
        } else {
            self.crl
        };
        let tls = match (tls_cert, tls_key, client_ca) {
            (None, None, None) => {
                if !crls.is_empty() || hub_ca.is_some() {
                    bail!("--crl and --hub-ca need --tls-cert, --tls-key and --client-ca");
                }
                None
            }
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsPaths {
                cert,
                key,
                client_ca,
                hub_ca,
                crls,
            }),
            _ => bail!(
                "give all three of --tls-cert, --tls-key and --client-ca (COPEX_TLS_CERT, COPEX_TLS_KEY, COPEX_CLIENT_CA), or none for the development PKI"
            ),
        };
        let trust_domain = self
            .trust_domain
            .or(file.trust_domain)
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        if !crate::domain::names::is_valid_trust_domain(&trust_domain) {
            bail!(
                "trust domain {trust_domain:?} is not valid: use lower-case letters, digits, '.', '-' and '_'"
            );
        }
        let listen = match self.listen.or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let defaults = FeedSettings::default();
        let feed = FeedSettings {
            tombstone_retention: self
                .tombstone_retention
                .or(file.tombstone_retention)
                .unwrap_or(defaults.tombstone_retention),
            bookmark_interval: self
                .watch_bookmark_interval
                .or(file.watch_bookmark_interval)
                .unwrap_or(defaults.bookmark_interval),
            watcher_stall: self
                .watch_stall_timeout
                .or(file.watch_stall_timeout)
                .unwrap_or(defaults.watcher_stall),
        };
        if feed.bookmark_interval.is_zero() || feed.watcher_stall.is_zero() {
            bail!("watch intervals must be longer than zero");
        }
        let default_limits = Limits::default();
        let limits = Limits {
            rate_limit: self
                .rate_limit
                .or(file.rate_limit)
                .unwrap_or(default_limits.rate_limit),
            max_watchers_per_partner: at_least(
                self.max_watchers_per_partner
                    .or(file.max_watchers_per_partner),
                default_limits.max_watchers_per_partner,
                1,
                "a partner needs to be allowed at least one watch stream",
            )?,
            max_request_bytes: at_least(
                self.max_request_bytes.or(file.max_request_bytes),
                default_limits.max_request_bytes,
                64 * 1024,
                "--max-request-bytes must be at least 65536: records up to 64 KiB of text must fit",
            )?,
            max_concurrent_streams: at_least(
                self.max_concurrent_streams.or(file.max_concurrent_streams),
                default_limits.max_concurrent_streams,
                1,
                "a connection needs to be allowed at least one stream",
            )?,
            audit_queue_capacity: at_least(
                self.audit_queue_capacity.or(file.audit_queue_capacity),
                default_limits.audit_queue_capacity,
                1,
                "--audit-queue-capacity must be at least 1",
            )?,
            max_filter_terms: at_least(
                self.max_filter_terms.or(file.max_filter_terms),
                default_limits.max_filter_terms,
                1,
                "--max-filter-terms must allow at least one comparison",
            )?,
            max_expensive_calls_per_partner: at_least(
                self.max_expensive_calls_per_partner
                    .or(file.max_expensive_calls_per_partner),
                default_limits.max_expensive_calls_per_partner,
                1,
                "a partner needs to be allowed at least one expensive call at a time",
            )?,
            watch_memory: self
                .watch_memory
                .or(file.watch_memory)
                .unwrap_or(default_limits.watch_memory),
            max_handshakes: at_least(
                self.max_handshakes.or(file.max_handshakes),
                default_limits.max_handshakes,
                1,
                "--max-handshakes must be at least 1: no connection could be accepted",
            )?,
            drain_timeout: self
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(default_limits.drain_timeout),
        };
        Ok(ServeConfig {
            feed,
            limits,
            tls_reload_interval: self
                .tls_reload_interval
                .or(file.tls_reload_interval)
                .unwrap_or(DEFAULT_TLS_RELOAD_INTERVAL),
            listen,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            database_url: self.database_url.or(file.database_url),
            db_pool_size: match self.db_pool_size.or(file.db_pool_size) {
                Some(0) => bail!("the database pool needs at least one connection"),
                Some(n) => n,
                None => crate::store::DEFAULT_POOL_SIZE,
            },
            tls,
            trust_domain,
            migrate: !self.no_migrate && file.migrate.unwrap_or(true),
            log: self.log.or(file.log).unwrap_or_else(|| "info".to_owned()),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// `value`, or `default` when unset; refused with `refusal` below `min`.
fn at_least<T: PartialOrd + Copy>(
    value: Option<T>,
    default: T,
    min: T,
    refusal: &str,
) -> anyhow::Result<T> {
    match value {
        Some(n) if n < min => bail!("{refusal}"),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("copex.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:6000\"\ntrust_domain = \"example.org\"\nlog = \"debug\"\nrate_limit = 50\ndrain_timeout = \"3s\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            config: Some(file),
            rate_limit: Some(0),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.limits.rate_limit, 0, "the flag's 0 beats the file");
        assert_eq!(config.limits.drain_timeout, Duration::from_secs(3));
        assert_eq!(config.limits.max_watchers_per_partner, 100);
        assert_eq!(config.limits.max_request_bytes, 4 << 20);
        assert_eq!(config.limits.max_concurrent_streams, 256);
        assert_eq!(config.limits.audit_queue_capacity, 10_000);
        assert_eq!(config.limits.max_filter_terms, 50);
        assert_eq!(
            config.limits.max_expensive_calls_per_partner,
            default_expensive_calls()
        );
        assert_eq!(config.limits.watch_memory, 256 << 20);
        assert_eq!(config.limits.max_handshakes, 256);
        assert_eq!(config.trust_domain, "example.org");
        assert_eq!(config.log, "debug");
        assert_eq!(config.data_dir, PathBuf::from("copex-data"));
        assert!(config.tls.is_none());
        assert!(config.migrate);
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("10B"), Ok(10));
        for bad in ["", "MiB", "12MB", "-1", "1.5GiB", "99999999999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partial_tls_is_refused() {
        let args = ServeArgs {
            tls_cert: Some("a.pem".into()),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("copex.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:6000\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }
}
