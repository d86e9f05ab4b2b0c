//! The one-memory transaction of the commit benchmarks (issue 3): about 300 B of text, a 384-dim
//! embedding and small metadata.
//!
//! Built from precomputed parts: the log side of the comparison appends a payload made once, so
//! the engine side should pay for taking ownership of its input (allocations and copies), not for
//! computing it. The data are the same as when every call computed them: the text names the
//! writer and the sequence number, and the embedding depends on the sequence number mod 97.
//!
//! 97 embeddings repeated make the search index's work unlike an agent's (each new memory is an
//! exact copy of many indexed ones). With `ENGRAM_DISTINCT_EMBEDDINGS=1` every memory gets its
//! own pseudo-random embedding instead, computed in the call (about half a microsecond, paid by
//! the writer). Uniform random vectors are the search index's worst case; for embeddings shaped
//! like an agent's, `ENGRAM_EMBEDDINGS_FVECS=path` takes them in turn from an `.fvecs` file of
//! 384-dim rows (the peer suite writes clustered ones to bench/data/), each memory the next row.

use engram_core::NewMemory;
use std::fmt::Write;
use std::sync::OnceLock;

pub const TEXT_BYTES: usize = 300;
pub const DIMENSION: usize = 384;
const FILLER: &str = "the agent noted something worth remembering. ";
const DISTINCT_EMBEDDINGS: u64 = 97;

fn embeddings() -> &'static [Vec<f32>] {
    static EMBEDDINGS: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    EMBEDDINGS.get_or_init(|| {
        (0..DISTINCT_EMBEDDINGS)
            .map(|i| {
                (0..DIMENSION as u64)
                    .map(|d| ((d * 31 + i) % DISTINCT_EMBEDDINGS) as f32 / 97.0)
                    .collect()
            })
            .collect()
    })
}

/// The rows of the `.fvecs` file named by `ENGRAM_EMBEDDINGS_FVECS` (each row: its dimension as
/// a little-endian u32, then that many f32), if set.
fn fvecs_rows() -> Option<&'static [Vec<f32>]> {
    static ROWS: OnceLock<Option<Vec<Vec<f32>>>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let path = std::env::var_os("ENGRAM_EMBEDDINGS_FVECS")?;
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.to_string_lossy()));
        let row_bytes = 4 + 4 * DIMENSION;
        assert!(
            !bytes.is_empty() && bytes.len().is_multiple_of(row_bytes),
            "{}: not a whole number of {DIMENSION}-dim .fvecs rows",
            path.to_string_lossy()
        );
        let rows: Vec<Vec<f32>> = bytes
            .chunks_exact(row_bytes)
            .map(|row| {
                let dimension = u32::from_le_bytes([row[0], row[1], row[2], row[3]]) as usize;
                assert_eq!(dimension, DIMENSION, "{}: a row of dimension {dimension}", path.to_string_lossy());
                row[4..]
                    .chunks_exact(4)
                    .map(|f| f32::from_le_bytes([f[0], f[1], f[2], f[3]]))
                    .collect()
            })
            .collect();
        Some(rows)
    })
    .as_deref()
}

/// The next row of [`fvecs_rows`], in turn across all writers.
fn next_fvecs_row(rows: &[Vec<f32>]) -> Vec<f32> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    rows[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % rows.len()].clone()
}

fn distinct_embeddings() -> bool {
    static DISTINCT: OnceLock<bool> = OnceLock::new();
    *DISTINCT.get_or_init(|| std::env::var_os("ENGRAM_DISTINCT_EMBEDDINGS").is_some_and(|v| v != "0"))
}

/// A pseudo-random embedding of its own for memory `i` of `writer` (coordinates in [-0.5, 0.5)).
fn distinct_embedding(writer: usize, i: u64) -> Vec<f32> {
    let mut state = (writer as u64) << 40 ^ i ^ 0x9E37_79B9_7F4A_7C15;
    (0..DIMENSION)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Memory number `i` of `writer`, with or without its embedding.
pub fn memory(writer: usize, i: u64, with_embedding: bool) -> NewMemory {
    let mut text = String::with_capacity(TEXT_BYTES + FILLER.len());
    write!(text, "writer {writer} memory {i}: ").expect("writing to a String cannot fail");
    while text.len() < TEXT_BYTES {
        text.push_str(FILLER);
    }
    text.truncate(TEXT_BYTES);
    NewMemory {
        text,
        embedding: with_embedding.then(|| {
            if let Some(rows) = fvecs_rows() {
                next_fvecs_row(rows)
            } else if distinct_embeddings() {
                distinct_embedding(writer, i)
            } else {
                embeddings()[(i % DISTINCT_EMBEDDINGS) as usize].clone()
            }
        }),
        metadata: serde_json::json!({"writer": writer, "kind": "note"}),
    }
}
