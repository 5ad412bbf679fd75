//! The fuzz targets on the stable toolchain: each body of `fuzz/src/lib.rs` over its seed corpus
//! `fuzz/corpus/<target>/`, with the same oracles. Fuzzing proper (libFuzzer, new inputs) needs
//! cargo-fuzz and a longer run; see README.md, "Fuzzing".

#[path = "../../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;

/// The seeds of `target`, in name order.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 20,
        "{}: {} seeds",
        dir.display(),
        paths.len()
    );
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Runs `body` over the seeds of `target`; returns how many it accepted (allowed).
fn run(target: &str, body: fn(&[u8]) -> bool) -> usize {
    seeds(target).iter().filter(|seed| body(seed)).count()
}

#[test]
fn args_target_over_its_seeds() {
    // Of the six well-formed calls (one per tool), all but `shell.exec` (approval) are allowed; no
    // hostile seed is.
    assert_eq!(run("args", bodies::args), 5);
}

#[test]
fn jwt_target_over_its_seeds() {
    // Exactly the five valid tokens among the seeds are accepted.
    assert_eq!(run("jwt", bodies::jwt), 5);
}

#[test]
fn authorize_target_over_its_seeds() {
    // The same five, and a search whose query holds an escaped NUL (data, not a name); nothing else.
    assert_eq!(run("authorize", bodies::authorize), 6);
}
