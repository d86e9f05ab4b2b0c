//! Runs every checked-in fuzz corpus file (fuzz/corpus/<target>/) through the same entry point
//! as its cargo-fuzz target, so inputs the fuzzers found interesting keep being checked in CI
//! without nightly. A crashing input found by a fuzzer goes into the corpus once fixed.

use std::path::Path;

/// Runs a corpus; returns (inputs, inputs accepted by the entry point).
fn run_corpus(target: &str, entry: fn(&[u8]) -> bool) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut accepted = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        accepted += usize::from(outcome.unwrap_or_else(|_| panic!("{target}: input {} panicked", path.display())));
    }
    println!("{target}: {} corpus inputs ({accepted} accepted), no panic", files.len());
    (files.len(), accepted)
}

#[test]
fn the_log_record_decoder_corpus_runs_clean() {
    let (_, accepted) = run_corpus("decode_record", engram_crashtest::fuzzing::decode_record);
    assert!(accepted > 0, "no input reaches past the decoder's first checks");
}

#[test]
fn the_log_recovery_corpus_runs_clean() {
    let (_, accepted) = run_corpus("recover_log", engram_crashtest::fuzzing::recover_log);
    assert!(accepted > 0, "no input reaches past recovery");
}

#[test]
fn the_checkpoint_loader_corpus_runs_clean() {
    let (_, accepted) = run_corpus("load_checkpoint", engram_crashtest::fuzzing::load_checkpoint);
    assert!(accepted > 0, "no input reaches past the checkpoint decoder");
}

#[test]
fn the_http_request_corpus_runs_clean() {
    let (_, accepted) = run_corpus("http_request", engram_crashtest::fuzzing::http_request);
    assert!(accepted > 0, "no request was accepted: the corpus does not reach the handlers");
}

#[test]
fn the_mcp_request_corpus_runs_clean() {
    let (_, accepted) = run_corpus("mcp_request", engram_crashtest::fuzzing::mcp_request);
    assert!(accepted > 0, "no tool call succeeded: the corpus does not reach the tools");
}

/// The request harnesses tell acceptance from refusal, so "accepted > 0" above means something:
/// a write with the admin key is accepted, the same write with the read-only key is refused
/// (and, checked inside the harness, commits nothing).
#[test]
fn the_http_harness_accepts_a_valid_write_and_refuses_a_forbidden_one() {
    use engram_crashtest::fuzzing::http::{http_request, literal_input, READ_ONLY_KEY};
    let body = serde_json::json!({ "json": { "step": 1 } });
    assert!(http_request(&literal_input(
        "PUT",
        "/v1/namespaces/alpha/kv/harness",
        &[],
        Some(&body)
    )));
    let read_only = format!("Bearer {READ_ONLY_KEY}");
    assert!(!http_request(&literal_input(
        "PUT",
        "/v1/namespaces/alpha/kv/harness",
        &[("authorization", &read_only)],
        Some(&body)
    )));
}

#[test]
fn the_mcp_harness_tells_a_successful_tool_call_from_a_failed_one() {
    use engram_crashtest::fuzzing::mcp::{mcp_request, LINES_PREFIX};
    let session = |line: &str| [LINES_PREFIX, line.as_bytes()].concat();
    assert!(mcp_request(&session(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"remember","arguments":{"text":"harness"}}}"#
    )));
    assert!(!mcp_request(&session(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"forget","arguments":{"id":"no-such-memory"}}}"#
    )));
}
