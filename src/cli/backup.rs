//! `copex backup --to FILE`: a consistent copy of the hub's SQLite database,
//! made while the hub may be serving. SQLite's `VACUUM INTO` reads the
//! database in one read transaction, so the copy is the state of one moment
//! (write-ahead log included) and the hub's writers carry on meanwhile.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::config::ServeArgs;

/// How long the copy waits for a lock the hub holds (a checkpoint) before
/// it gives up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `copex backup`.
pub(super) async fn run(args: ServeArgs, to: &Path) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let source = sqlite_path(config.database_url.as_deref(), &config.data_dir)?;
    if !source.is_file() {
        bail!(
            "no database at {}: give the hub's data directory with --data-dir (or --database sqlite:PATH)",
            source.display()
        );
    }
    let bytes = backup(&source, to).await?;
    out!(
        "backed up {} to {} ({bytes} bytes)",
        source.display(),
        to.display()
    );
    Ok(())
}

/// The SQLite database `copex serve` would open with these settings.
fn sqlite_path(database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<PathBuf> {
    match database_url {
        None => Ok(data_dir.join("copex.db")),
        Some(url) if url.starts_with("sqlite:") => Ok(PathBuf::from(
            url.trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:"),
        )),
        Some(_) => bail!(
            "copex backup copies the embedded SQLite database only; back up a PostgreSQL database with pg_dump (see docs/operations.md)"
        ),
    }
}

/// Copies `source` into the new file `to` (mode 0600, like every file of
/// the data directory) and returns its size. A file already at `to` is left
/// alone: the copy never replaces anything.
async fn backup(source: &Path, to: &Path) -> anyhow::Result<u64> {
    let target = to
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", to.display()))?;
    create_new_private(to)?;
    let copied = vacuum_into(source, target).await;
    let size = copied.and_then(|()| {
        std::fs::metadata(to)
            .map(|meta| meta.len())
            .with_context(|| format!("cannot read {}", to.display()))
    });
    if size.is_err() {
        // Half a copy must not pass for a backup.
        let _ = std::fs::remove_file(to);
    }
    size
}

/// Creates `path` empty and private, failing when anything is there.
/// `VACUUM INTO` writes into an empty file, so the copy keeps this mode.
fn create_new_private(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(crate::data_dir::FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} already exists; copex backup never replaces a file: name a new one",
            path.display()
        ),
        Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
}

async fn vacuum_into(source: &Path, target: &str) -> anyhow::Result<()> {
    // Not created when missing, and nothing but the copy runs on it.
    let mut conn = SqliteConnectOptions::new()
        .filename(source)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot open the database {}", source.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await
        .with_context(|| format!("cannot copy {} to {target}", source.display()))?;
    Ok(())
}
