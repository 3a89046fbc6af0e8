//! The hub's own commands: `serve`, `migrate` and `reindex`.

use anyhow::Context;

use crate::config::ServeArgs;
use crate::pki;
use crate::server::Server;
use crate::telemetry;

/// `copex serve`: the hub, until Ctrl-C or SIGTERM.
pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
        // As the hub was started: through cargo from a checkout, or as the
        // binary itself.
        let command = if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
            "cargo run --release --".to_owned()
        } else {
            std::env::args()
                .next()
                .unwrap_or_else(|| "copex".to_owned())
        };
        out!(
            "try, in another terminal:  {command} {}whoami   (then: demo, list tools)",
            first_command_flags(addr, &config.data_dir, cert, key, ca)
        );
    }
    let stop = shutdown_signal()?;
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
    server.run_until_stopped(stop).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `copex migrate`: brings the database's schema up to date and exits.
pub(super) async fn migrate(args: ServeArgs) -> anyhow::Result<()> {
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
    Ok(())
}

/// `copex reindex`: rebuilds this instance's search index and exits.
pub(super) async fn reindex(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    telemetry::init(&config.log, config.log_format);
    let store = crate::store::open(config.database_url.as_deref(), &config.data_dir, false)
        .await
        .context("cannot open the database")?;
    let dir = crate::search::dir_in(&config.data_dir);
    let started = std::time::Instant::now();
    let bar = super::output::progress_bar(0, "{bar:40} feed position {pos}/{len} ({eta})");
    let progress = |position: i64, head: i64| {
        bar.set_length(head.max(0) as u64);
        bar.set_position(position.max(0) as u64);
    };
    let changes = crate::search::indexer::reindex(&dir, store, Some(&progress))
        .await
        .with_context(|| format!("cannot rebuild the search index in {}", dir.display()));
    bar.finish_and_clear();
    let changes = changes?;
    out!(
        "search index rebuilt in {}: {changes} changes in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

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

/// Ctrl-C or SIGTERM, listened for from the moment this is called, before
/// the hub says it serves: a script that stops the hub as soon as it reads
/// that line gets a clean shutdown, not the default action of the signal.
fn shutdown_signal()
-> anyhow::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::info!("shutting down: finishing calls in flight");
        }))
    }
    #[cfg(not(unix))]
    Ok(Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing calls in flight");
    }))
}
