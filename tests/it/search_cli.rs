//! `copex search --facets` and `copex reindex` as a partner and an operator
//! run them: facet counts printed as a table equal to what `copex list`
//! shows, and an index rebuilt on demand, refused while a hub uses it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::cli::ok;
use crate::process::{BIN, Served, serve, terminate};

/// A client command as the hub's bootstrap admin.
fn client(served: &Served, pki: &Path, args: &[&str]) -> Output {
    crate::cli::client(served, pki, "admin", args)
}

/// The rows under the FACET header: (facet, value) -> count.
fn facet_rows(printed: &str) -> BTreeMap<(String, String), u32> {
    let table = printed
        .split_once("\nFACET ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no facet table in {printed}"));
    table
        .lines()
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let [facet, value, count] = cells[..] else {
                panic!("a facet row has three cells: {line:?}");
            };
            (
                (facet.to_owned(), value.to_owned()),
                count.parse().expect("a count"),
            )
        })
        .collect()
}

fn reindex(data_dir: &Path) -> Output {
    Command::new(BIN)
        .args(["reindex", "--data-dir"])
        .arg(data_dir)
        .env_remove("COPEX_LOG")
        .output()
        .expect("run copex reindex")
}

#[test]
fn facets_print_as_a_table_and_reindex_rebuilds_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("copex-data");
    let pki = data_dir.join("pki");
    let served = serve(&data_dir);
    ok(client(&served, &pki, &["demo"]));

    let mut expected = BTreeMap::new();
    for (kind, name) in [
        ("workshops", "RECORD_KIND_WORKSHOP"),
        ("practices", "RECORD_KIND_PRACTICE"),
        ("tools", "RECORD_KIND_TOOL"),
    ] {
        let listed = ok(client(&served, &pki, &["list", kind]));
        let count = listed
            .lines()
            .filter(|l| l.starts_with("partners/"))
            .count() as u32;
        assert!(count > 0, "the demo data has {kind}");
        expected.insert(("kind".to_owned(), name.to_owned()), count);
    }
    let total: u32 = expected.values().sum();
    expected.insert(("owner".to_owned(), "partners/admin".to_owned()), total);

    let browsed = ok(client(&served, &pki, &["search", "--facets"]));
    let rows = facet_rows(&browsed);
    for (key, count) in &expected {
        assert_eq!(rows.get(key), Some(count), "{key:?} in {browsed}");
    }
    assert!(
        rows.keys().any(|(facet, _)| facet == "region"),
        "regions are counted: {browsed}"
    );
    // Without --facets no table is printed.
    let plain = ok(client(&served, &pki, &["search", "child"]));
    assert!(!plain.contains("FACET"), "{plain}");
    let before = ok(client(&served, &pki, &["search", "child", "--limit", "50"]));

    // While the hub runs, reindex refuses and leaves the index in place.
    let refused = reindex(&data_dir);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("stop it first"), "{said}");
    assert!(data_dir.join("search/meta.json").exists());
    assert_eq!(
        ok(client(&served, &pki, &["search", "child", "--limit", "50"])),
        before
    );

    terminate(served);
    let rebuilt = ok(reindex(&data_dir));
    assert!(
        rebuilt.contains(&format!("{total} changes")),
        "every record of the feed is indexed again: {rebuilt}"
    );
    let served = serve(&data_dir);
    assert_eq!(
        ok(client(&served, &pki, &["search", "child", "--limit", "50"])),
        before,
        "the rebuilt index answers as the one before"
    );
    assert_eq!(
        facet_rows(&ok(client(&served, &pki, &["search", "--facets"]))),
        rows
    );
    terminate(served);
}

#[test]
fn reindex_of_a_directory_without_a_database_fails_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let output = reindex(&missing);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("error"), "{said}");
    assert!(
        !missing.join("search").exists(),
        "nothing is made on a failure"
    );
}
