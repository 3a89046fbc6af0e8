//! The binary as a user runs it: `copex serve` on a fresh data directory,
//! then the client commands against it, then a second start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::process::{BIN, Served, serve, serve_with_umask, terminate};

pub(crate) fn client(served: &Served, pki: &Path, partner: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--hub")
        .arg(&served.hub)
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{partner}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{partner}.key")))
        .args(args)
        .output()
        .expect("run copex client")
}

pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn serve_then_tour_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = dir.path().join("copex-data");
    let pki = data_dir.join("pki");

    let served = serve(&data_dir);
    let printed = served.stdout_lines.join("\n");
    for made in [
        "development PKI",
        "certificate of partners/admin",
        "partner partners/admin",
    ] {
        assert!(
            printed.contains(made),
            "first start should report {made:?}: {printed}"
        );
    }
    for file in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "crl.pem",
        "admin.pem",
        "admin.key",
    ] {
        assert!(pki.join(file).exists(), "{file}");
    }
    assert!(data_dir.join("copex.db").exists());

    // The first command it suggests works as printed, though this hub is on
    // another port and data directory than the client's defaults.
    let hint = served
        .stdout_lines
        .iter()
        .find_map(|l| l.split_once("try, in another terminal:  cargo run --release -- "))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("a first command to try: {printed}"));
    let args: Vec<&str> = hint
        .split_whitespace()
        .take_while(|a| !a.starts_with('('))
        .collect();
    assert_eq!(args.last(), Some(&"whoami"), "{hint}");
    assert!(args.contains(&"--hub"), "{hint}");
    let tried = Command::new(BIN)
        .args(&args)
        .current_dir(dir.path().parent().unwrap_or(dir.path()))
        .output()
        .expect("run the suggested command");
    assert!(ok(tried).contains("partners/admin"));

    let whoami = ok(client(&served, &pki, "admin", &["whoami"]));
    // As the README's tour shows it.
    assert!(
        whoami.starts_with("partners/admin (Hub administrator)\n"),
        "{whoami}"
    );
    assert!(whoami.contains("ADMIN"), "{whoami}");

    let demo = ok(client(&served, &pki, "admin", &["demo"]));
    assert!(
        demo.contains("loaded partners/admin/workshops/igf2012-ws125"),
        "{demo}"
    );
    // Loading twice changes nothing and does not fail.
    ok(client(&served, &pki, "admin", &["demo"]));

    let workshops = ok(client(&served, &pki, "admin", &["list", "workshops"]));
    assert!(
        workshops.contains("Innovative application of ICTs to facilitate child protection online"),
        "{workshops}"
    );
    assert_eq!(workshops.lines().count(), 1, "{workshops}");

    // The tour's searches: best match first, the matched words in bold.
    let hits = ok(client(
        &served,
        &pki,
        "admin",
        &[
            "search",
            "\"child protection\" -video",
            "--kind",
            "workshop",
        ],
    ));
    let first = hits.lines().next().unwrap_or_default();
    assert!(
        first.contains("partners/admin/workshops/igf2012-ws125"),
        "{hits}"
    );
    assert!(hits.contains("**"), "{hits}");
    let hits = ok(client(&served, &pki, "admin", &["search", "hash matching"]));
    assert!(hits.contains("/tools/"), "{hits}");
    let json = ok(client(
        &served,
        &pki,
        "admin",
        &[
            "--output",
            "json",
            "search",
            "hash matching",
            "--limit",
            "1",
        ],
    ));
    assert_eq!(json.lines().count(), 1, "{json}");
    let hit: serde_json::Value = serde_json::from_str(json.trim()).expect("proto3 JSON");
    assert!(hit["score"].as_f64().is_some_and(|s| s > 0.0), "{hit}");
    assert!(hit["record"]["tool"]["name"].is_string(), "{hit}");
    let refused = client(&served, &pki, "admin", &["search", "-video"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("InvalidArgument") && message.contains("query:"),
        "{message}"
    );

    let json = ok(client(
        &served,
        &pki,
        "admin",
        &[
            "--output",
            "json",
            "get",
            "partners/admin/workshops/igf2012-ws125",
        ],
    ));
    let record: serde_json::Value = serde_json::from_str(json.trim()).expect("proto3 JSON");
    let workshop = &record["workshop"];
    assert_eq!(workshop["forum"], "IGF");
    assert_eq!(workshop["year"], 2012);
    assert_eq!(workshop["proposalNumber"], 125);
    assert_eq!(workshop["status"], "WORKSHOP_STATUS_PROPOSED");
    assert_eq!(workshop["objectives"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        workshop["organisers"][0]["displayName"],
        "ECPAT International"
    );
    let panellists: Vec<&str> = workshop["panellists"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["displayName"].as_str())
        .collect();
    assert!(
        panellists.contains(&"Jacqueline Beauchere") && panellists.contains(&"Anjan Bose"),
        "{panellists:?}"
    );
    assert_eq!(
        workshop["remoteModerators"][0]["displayName"],
        "Jim Prendergast"
    );

    let tools = ok(client(
        &served,
        &pki,
        "admin",
        &["list", "tools", "--filter", "category = HASH_MATCHING"],
    ));
    assert_eq!(tools.lines().count(), 1, "{tools}");
    let bad = client(
        &served,
        &pki,
        "admin",
        &["list", "tools", "--filter", "colour = 1"],
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("colour"),
        "{stderr}"
    );

    // A new partner with a certificate from `copex pki issue`.
    ok(client(
        &served,
        &pki,
        "admin",
        &[
            "partners",
            "create",
            "ecpat",
            "--display-name",
            "ECPAT International",
            "--kind",
            "NGO",
            "--role",
            "contributor",
        ],
    ));
    let issued = ok(Command::new(BIN)
        .args(["pki", "issue", "--partner", "ecpat", "--dir"])
        .arg(&pki)
        .output()
        .unwrap());
    // The profile names the hub it was written for.
    assert!(
        issued.contains("ecpat.toml (for the hub at https://localhost:50051;"),
        "{issued}"
    );
    let ecpat = ok(client(&served, &pki, "ecpat", &["whoami"]));
    assert!(
        ecpat.contains("partners/ecpat") && ecpat.contains("CONTRIBUTOR"),
        "{ecpat}"
    );
    let partners = ok(client(&served, &pki, "ecpat", &["partners", "list"]));
    assert!(
        partners.contains("partners/admin") && partners.contains("partners/ecpat"),
        "{partners}"
    );

    let suspended = ok(client(
        &served,
        &pki,
        "admin",
        &["partners", "suspend", "ecpat"],
    ));
    assert!(suspended.contains("SUSPENDED"), "{suspended}");
    let refused = client(&served, &pki, "ecpat", &["whoami"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"));

    terminate(served);

    // A second start reuses the PKI, the partners and the records.
    let again = serve(&data_dir);
    let printed = again.stdout_lines.join("\n");
    assert!(
        !printed.contains("created"),
        "second start created something: {printed}"
    );
    let workshops = ok(client(&again, &pki, "admin", &["list", "workshops"]));
    assert!(workshops.contains("igf2012-ws125"), "{workshops}");
    terminate(again);
}

#[test]
fn pki_commands_make_a_usable_pki() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = ok(Command::new(BIN)
        .args([
            "pki",
            "init",
            "--trust-domain",
            "hub.example",
            "--server-name",
            "copex.example",
            "--dir",
        ])
        .arg(&pki)
        .output()
        .unwrap());
    assert!(out.contains("ca.pem") && out.contains("crl.pem"), "{out}");
    ok(Command::new(BIN)
        .args(["pki", "issue", "--partner", "gsma", "--days", "30", "--dir"])
        .arg(&pki)
        .output()
        .unwrap());
    let pem = std::fs::read(pki.join("gsma.pem")).unwrap();
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    let identity = copex::auth::cert::inspect(&der).unwrap();
    assert_eq!(identity.uri_sans, vec!["spiffe://hub.example/partner/gsma"]);
    // Init refuses to overwrite a CA.
    let again = Command::new(BIN)
        .args(["pki", "init", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(!again.status.success());
    // Revoke lists the certificate in the CRL.
    ok(Command::new(BIN)
        .args(["pki", "revoke", "--dir"])
        .arg(&pki)
        .arg("--cert")
        .arg(pki.join("gsma.pem"))
        .output()
        .unwrap());
    assert!(std::fs::metadata(pki.join("crl.pem")).unwrap().len() > 0);
}

/// Every entry under `dir` (not following links) with its permission bits.
#[cfg(unix)]
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let meta = std::fs::symlink_metadata(&next).expect("metadata");
        found.push((next.clone(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&next).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    found.sort();
    found
}

/// Directories 0700; files 0600, but certificates and CRLs (`.pem`) 0644.
/// Returns the files' names.
#[cfg(unix)]
fn assert_private(data_dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for (path, mode) in modes(data_dir) {
        let shown = path.strip_prefix(data_dir).unwrap().display().to_string();
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{}/{shown} is {mode:o}", data_dir.display());
        } else if path.extension().is_some_and(|e| e == "pem") {
            assert_eq!(mode, 0o644, "{shown} is {mode:o}");
            files.push(shown);
        } else {
            assert_eq!(mode, 0o600, "{shown} is {mode:o}");
            files.push(shown);
        }
    }
    files
}

/// The data directory holds every record and the keys: 0700, its files 0600
/// (certificates and CRLs may be read), whatever the umask, and a directory
/// an earlier version left readable is tightened at start, with a log line.
#[cfg(unix)]
#[test]
fn the_data_directory_is_private_to_the_hub() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = dir.path().join("copex-data");
    let pki = data_dir.join("pki");

    let served = serve_with_umask(&data_dir, "000");
    ok(client(&served, &pki, "admin", &["demo"]));
    ok(client(
        &served,
        &pki,
        "admin",
        &[
            "partners",
            "create",
            "ecpat",
            "--display-name",
            "ECPAT International",
            "--role",
            "contributor",
        ],
    ));
    ok(Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["pki", "issue", "--partner", "ecpat", "--dir"])
        .arg(&pki)
        .output()
        .unwrap());
    ok(client(&served, &pki, "ecpat", &["whoami"]));
    let files = assert_private(&data_dir);
    for expected in [
        "copex.db",
        "copex.db-wal",
        "copex.db-shm",
        "pki/ca.key",
        "pki/server.key",
        "pki/admin.key",
        "pki/ecpat.key",
        "pki/ca.pem",
        "pki/crl.pem",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} among {files:?}"
        );
    }
    terminate(served);
    assert_private(&data_dir);

    // As an earlier version left it: everything readable by all.
    for (path, _) in modes(&data_dir) {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let again = serve(&data_dir);
    ok(client(&again, &pki, "ecpat", &["whoami"]));
    let files = assert_private(&data_dir);
    assert!(files.iter().any(|f| f == "copex.db-wal"), "{files:?}");
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(
        log.contains("tightened") && log.contains("copex.db"),
        "the start says what it tightened: {log}"
    );
    terminate(again);
}

/// `copex backup` with `args`, as an operator runs it beside the hub.
fn backup(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN)
        .arg("backup")
        .args(args)
        .env_remove("COPEX_DATABASE_URL")
        .env_remove("COPEX_DATA_DIR")
        .output()
        .expect("run copex backup")
}

#[test]
fn a_backup_taken_while_serving_restores_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let pki = data_dir.join("pki");
    let served = serve(&data_dir);
    ok(client(&served, &pki, "admin", &["demo"]));
    let records = ok(client(&served, &pki, "admin", &["export"]));
    assert!(records.lines().count() > 1, "{records}");

    let copy = dir.path().join("copex-backup.db");
    let said = ok(backup(&[
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--to".as_ref(),
        copy.as_os_str(),
    ]));
    assert!(said.starts_with("backed up "), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    // The hub went on serving through the copy.
    ok(client(&served, &pki, "admin", &["whoami"]));
    terminate(served);

    // Restored as an operator would: the copy as the database of a new data
    // directory, beside the PKI's files.
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(restored.join("pki")).unwrap();
    for entry in std::fs::read_dir(&pki).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, restored.join("pki").join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&copy, restored.join("copex.db")).unwrap();
    let served = serve(&restored);
    let read_back = ok(client(&served, &restored.join("pki"), "admin", &["export"]));
    assert_eq!(read_back, records);
    terminate(served);
}

#[test]
fn backup_refuses_what_it_cannot_copy_safely() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let failed = |output: Output, message: String| {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), message);
    };

    // No data directory: nothing is created.
    let target = dir.path().join("new.db");
    failed(
        backup(&[
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--to".as_ref(),
            target.as_os_str(),
        ]),
        format!(
            "error: no database at {}: give the hub's data directory with --data-dir (or --database sqlite:PATH)\n",
            data_dir.join("copex.db").display()
        ),
    );
    assert!(!target.exists());

    // An existing target is never replaced.
    let migrated = Command::new(BIN)
        .arg("migrate")
        .arg("--data-dir")
        .arg(&data_dir)
        .env_remove("COPEX_DATABASE_URL")
        .output()
        .expect("run copex migrate");
    ok(migrated);
    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, "keep me").unwrap();
    failed(
        backup(&[
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--to".as_ref(),
            existing.as_os_str(),
        ]),
        format!(
            "error: {} already exists; copex backup never replaces a file: name a new one\n",
            existing.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");

    // PostgreSQL has its own tools.
    failed(
        backup(&[
            "--database".as_ref(),
            "postgres://copex@127.0.0.1:5432/copex".as_ref(),
            "--to".as_ref(),
            target.as_os_str(),
        ]),
        "error: copex backup copies the embedded SQLite database only; back up a PostgreSQL database with pg_dump (see docs/operations.md)\n".to_owned(),
    );
    assert!(!target.exists());
}
