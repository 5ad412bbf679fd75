//! Checks the invariants ARCHITECTURE.md states about the code's shape, by reading the sources.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            if !p.ends_with("target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Source lines that are code, not comments.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect()
}

fn broker_src() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&root().join("broker/src"), &mut files);
    assert!(files.len() > 20, "found the broker's sources");
    files
}

fn offenders(files: &[PathBuf], allowed_dir: &str, needles: &[&str]) -> Vec<String> {
    let allowed = root().join("broker/src").join(allowed_dir);
    files
        .iter()
        .filter(|f| !f.starts_with(&allowed))
        .flat_map(|f| {
            code_lines(f)
                .into_iter()
                .filter(|(_, l)| needles.iter().any(|n| l.contains(n)))
                .map(move |(n, l)| format!("{}:{n}: {}", f.display(), l.trim()))
        })
        .collect()
}

#[test]
fn only_the_api_knows_tonic_and_proto_types() {
    let found = offenders(
        &broker_src(),
        "api",
        &["tonic::", "tonic_", "broker_proto", "prost"],
    );
    assert!(
        found.is_empty(),
        "tonic or proto types outside broker::api:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_store_knows_the_database_drivers() {
    let found = offenders(
        &broker_src(),
        "store",
        &["sqlx", "rusqlite", "tokio_postgres"],
    );
    assert!(
        found.is_empty(),
        "sqlx, rusqlite or tokio_postgres outside broker::store:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_store_never_rewrites_audit_rows() {
    let mut files = Vec::new();
    rust_files(&root().join("broker/src/store"), &mut files);
    // Test helpers may tamper on purpose; production code only inserts and selects.
    let production: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !f.ends_with("tests.rs") && !f.ends_with("testing.rs"))
        .collect();
    let found: Vec<String> = production
        .iter()
        .flat_map(|f| {
            code_lines(f).into_iter().filter_map(move |(n, l)| {
                let upper = l.to_uppercase();
                (upper.contains("UPDATE AUDIT_EVENTS")
                    || upper.contains("DELETE FROM AUDIT_EVENTS")
                    || upper.contains("TRUNCATE AUDIT_EVENTS")
                    || upper.contains("TRUNCATE TABLE AUDIT_EVENTS"))
                .then(|| format!("{}:{n}: {}", f.display(), l.trim()))
            })
        })
        .collect();
    assert!(
        found.is_empty(),
        "audit rows are append-only:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_ignored_or_should_panic_tests_anywhere() {
    let mut files = Vec::new();
    for dir in ["broker", "sdk", "tests", "proto/src", "bench"] {
        rust_files(&root().join(dir), &mut files);
    }
    let this = Path::new(file!()).file_name().unwrap();
    let found: Vec<String> = files
        .iter()
        .filter(|f| f.file_name() != Some(this))
        .flat_map(|f| {
            code_lines(f)
                .into_iter()
                .filter(|(_, l)| l.contains("#[ignore") || l.contains("#[should_panic"))
                .map(move |(n, _)| format!("{}:{n}", f.display()))
        })
        .collect();
    assert!(
        found.is_empty(),
        "tests must run and assert:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_wall_clock_is_read_only_by_the_clock() {
    // Expiry and timestamps come from `clock::Clock`, so tests can move time.
    let found: Vec<String> = offenders(&broker_src(), "clock.rs", &["Utc::now", "SystemTime::now"])
        .into_iter()
        // JWT checks and the dev issuer use real time: tokens are verified against the wall clock by design;
        // the CLI (main.rs) is a client, computing e.g. `--expires-in` from the operator's clock.
        // Webhook signatures carry real time too: receivers check them against their own clocks.
        .filter(|l| !l.contains("/auth/") && !l.contains("/src/main.rs") && !l.contains("/notify/"))
        .collect();
    assert!(
        found.is_empty(),
        "wall clock read outside clock.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn architecture_md_names_every_top_level_module() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let lib = std::fs::read_to_string(root().join("broker/src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|r| r.strip_suffix(';'))
        {
            assert!(
                doc.contains(&format!("broker::{name}")),
                "ARCHITECTURE.md does not describe `broker::{name}`"
            );
        }
    }
}
