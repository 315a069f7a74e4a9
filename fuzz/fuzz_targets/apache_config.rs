//! `cargo fuzz run apache_config`: see fuzz/harness.rs for what is checked.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

#[path = "../harness.rs"]
mod harness;

/// One private ServerRoot per fuzzing process (left in the temp dir).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("certswap-fuzz-apache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch ServerRoot");
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::apache_config(data, scratch()));
