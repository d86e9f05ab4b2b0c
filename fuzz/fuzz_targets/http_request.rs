#![no_main]
//! See engram_crashtest::fuzzing::http_request (the same entry point runs the checked-in corpus in CI).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = engram_crashtest::fuzzing::http_request(data);
});
