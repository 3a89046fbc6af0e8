//! The data directory holds the database (every record, RED ones too, and
//! the keys of page tokens and cursors) and the development PKI's private
//! keys, so only the hub's user may read it: directories 0700, files 0600,
//! set when they are made whatever the umask. Certificates and CRLs
//! (`*.pem`) are public by nature and stay 0644.

use std::io;
use std::path::{Path, PathBuf};

/// Directories: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files: the owner only.
pub const FILE_MODE: u32 = 0o600;
/// Certificates and CRLs: anyone may read, only the owner write.
pub const PUBLIC_MODE: u32 = 0o644;

/// Creates the data directory private, or narrows one that an earlier
/// version made, logging each path it tightened.
pub fn make_private(dir: &Path) -> io::Result<()> {
    create_private_dir(dir)?;
    for path in tighten(dir)? {
        tracing::warn!(
            path = %path.display(),
            "tightened permissions an earlier version left open: the data directory is for the hub's user only"
        );
    }
    Ok(())
}

/// Creates `dir` and any missing parents with mode 0700; an existing
/// directory is left as it is (see `tighten`).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)
}

/// Creates `path` empty with mode 0600 unless it exists, so that a file
/// another library goes on to create (SQLite's database, whose -wal and
/// -shm files copy its mode) is private from the start.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Takes from `path` the permission bits `allowed` does not grant (never
/// adds any). True when its mode changed; false also when it is missing.
pub fn restrict(path: &Path, allowed: u32) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        // A link's target is not ours to change.
        if meta.file_type().is_symlink() {
            return Ok(false);
        }
        let mode = meta.permissions().mode() & 0o7777;
        let narrowed = mode & allowed;
        if narrowed == mode {
            return Ok(false);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(narrowed))?;
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, allowed);
        Ok(false)
    }
}

/// What an existing entry of the data directory may keep: its owner's bits,
/// and for certificates and CRLs reading by others. Owner bits are never
/// taken, so an operator's own file in the directory keeps working.
fn allowed(path: &Path, is_dir: bool) -> u32 {
    if !is_dir && path.extension().is_some_and(|e| e == "pem") {
        0o755
    } else {
        0o700
    }
}

/// Narrows `dir`, its entries and those of its subdirectories (the PKI),
/// not following links, to what they may allow: a data directory of an
/// earlier version, whose files took the umask's modes (the database was
/// 0644, now 0600). Returns what changed.
pub fn tighten(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((path, depth)) = pending.pop() {
        // Gone since its directory was listed (the search index merges
        // segments as it runs).
        let vanished = |err: &io::Error| err.kind() == io::ErrorKind::NotFound && depth > 0;
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if vanished(&err) => continue,
            Err(err) => return Err(err),
        };
        if !meta.is_dir() && !meta.is_file() {
            continue;
        }
        if restrict(&path, allowed(&path, meta.is_dir()))? {
            changed.push(path.clone());
        }
        // What the hub writes lies at most one directory down; an operator's
        // data directory may hold more, which is theirs.
        if meta.is_dir() && depth < 2 {
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(err) if vanished(&err) => continue,
                Err(err) => return Err(err),
            };
            for entry in entries {
                pending.push((entry?.path(), depth + 1));
            }
        }
    }
    Ok(changed)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn tighten_narrows_what_an_earlier_version_left_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        create_private_dir(&dir.join("pki")).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("pki")), 0o700);
        let db = dir.join("copex.db");
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let cert = dir.join("pki/ca.pem");
        let script = dir.join("backup.sh");
        for path in [&cert, &script] {
            std::fs::write(path, "x").unwrap();
        }
        for (path, open) in [
            (&dir, 0o755),
            (&db, 0o644),
            (&cert, 0o666),
            (&script, 0o775),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(open)).unwrap();
        }
        let mut changed = tighten(&dir).unwrap();
        changed.sort();
        assert_eq!(
            changed,
            vec![dir.clone(), script.clone(), db.clone(), cert.clone()]
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&cert), 0o644);
        // The owner keeps what it had: an operator's script still runs.
        assert_eq!(mode(&script), 0o700);
        assert!(tighten(&dir).unwrap().is_empty(), "nothing left to do");
        // Never widens, and an existing file keeps its content.
        std::fs::write(&db, "kept").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).unwrap();
        create_private_file(&db).unwrap();
        assert!(!restrict(&db, FILE_MODE).unwrap());
        assert_eq!(mode(&db), 0o400);
        assert_eq!(std::fs::read_to_string(&db).unwrap(), "kept");
    }
}
