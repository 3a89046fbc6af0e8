//! Logging: `COPEX_LOG` filters (like RUST_LOG), `COPEX_LOG_FORMAT=json`
//! switches to JSON lines. The span and log line of each call are made by
//! the call pipeline, `server::layers`.

use tracing_subscriber::EnvFilter;

/// Where the store and handlers ask for the deadline of the call they serve.
pub use crate::server::layers::call_deadline;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber once; later calls are ignored (tests start
/// several servers in one process).
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
