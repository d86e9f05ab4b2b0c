//! engram-core's integration tests, one module per file, linked into one test binary:
//! a binary per file re-instantiated the same dependencies' generic code for each file
//! and linked it again, most of CI's build time (docs/benchmarks.md, *CI time*).
//! Run one file's tests with a filter: `cargo test -p engram-core --test integration <file>::`.

mod async_commit;
mod background_priority;
mod checkpoint;
mod feed;
mod graph;
mod large_transactions;
mod mapped_embeddings;
mod model;
mod options;
mod retention;
mod rng;
mod search_api;
mod search_backpressure;
mod search_persistence;
mod search_recall;
mod search_support;
mod search_visibility;
mod transactions;
