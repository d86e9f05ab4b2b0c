//! engram-wal's integration tests, one module per file, linked into one test binary:
//! a binary per file re-instantiated the same dependencies' generic code for each file
//! and linked it again, most of CI's build time (docs/benchmarks.md, *CI time*).
//! Run one file's tests with a filter: `cargo test -p engram-wal --test integration <file>::`.

mod api;
mod async_completion;
mod corruption;
mod crash_points;
mod io_faults;
mod model;
