//! engram-server's integration tests, one module per file, linked into one test binary:
//! a binary per file re-instantiated the same dependencies' generic code for each file
//! and linked it again, most of CI's build time (docs/benchmarks.md, *CI time*).
//! Run one file's tests with a filter: `cargo test -p engram-server --test integration <file>::`.

mod api;
mod auth;
mod bad_input;
mod common;
mod embedder;
mod feed;
mod jsonl;
mod mcp_http;
mod power_loss;
mod search;
