//! cargo-fuzz target: see tests/fuzz_regressions/harness.rs for what it
//! drives and which properties it checks.
#![no_main]

#[path = "../../tests/fuzz_regressions/harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::pod_request(data);
});
