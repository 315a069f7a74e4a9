//! Replays the saved fuzz inputs (`tests/fuzz_regressions/TARGET/*`, one
//! directory per cargo-fuzz target) through the same harness the fuzzers
//! run (`fuzz/harness.rs`), so every input that once crashed a parser, and
//! a selection of what the fuzzers explored, runs in the normal suite
//! without nightly or libFuzzer. How to fuzz: docs/reliability.md.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

/// Run every saved input under `root/TARGET/`; (inputs run, failures).
fn replay(root: &Path) -> (usize, Vec<String>) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    let mut count = 0;
    for target in harness::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.expect("entry").path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read input");
            count += 1;
            let run = std::panic::catch_unwind(|| harness::run(target, &data, scratch.path()));
            if run.is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    (count, failures)
}

fn saved() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions")
}

#[test]
fn every_saved_fuzz_input_passes_its_harness() {
    let (count, failures) = replay(&saved());
    assert!(count > 0, "no saved inputs under {}", saved().display());
    assert!(
        failures.is_empty(),
        "{} of {count} saved inputs fail: {failures:#?}",
        failures.len()
    );
}
