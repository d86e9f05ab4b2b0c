//! engram's integration tests, one module per file, linked into one test binary:
//! a binary per file re-instantiated the same dependencies' generic code for each file
//! and linked it again, most of CI's build time (docs/benchmarks.md, *CI time*).
//! Run one file's tests with a filter: `cargo test -p engram --test integration <file>::`.

mod cli;
mod lockfiles;
mod mcp_stdio;
