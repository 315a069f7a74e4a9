//! `cargo fuzz run zip_entries`: see fuzz/harness.rs for what is checked.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::zip_entries(data));
