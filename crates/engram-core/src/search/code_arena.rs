//! The int8 codes of every node of a graph (search/codes.rs), in chunks that never move.
//!
//! Each chunk starts on a cache-line boundary and holds the codes of up to `CHUNK_NODES` nodes
//! back to back. A plain `Vec<i8>` of this size comes from `mmap` through the allocator and
//! starts 16 bytes past a page boundary, so with 384 dimensions every node's codes straddled 7
//! cache lines instead of 6: one line in 7 of every distance computation's memory traffic was
//! wasted, and the traversal is bound by that traffic (docs/search.md, *Indexer CPU*).
//!
//! Chunks rather than one buffer: an over-aligned buffer cannot be grown in place by the
//! allocator (`realloc` of an alignment above 16 allocates, copies and frees), so a single
//! buffer copied all its codes each time it doubled: 384 MB for a million 384-dim nodes, while
//! the indexer held the namespace's write lock, and a fifth of the log replay of an open. Only
//! the first chunk grows by doubling (a small graph stays small); later ones are allocated
//! whole, and memory never touched is never resident.

pub(crate) const CACHE_LINE_BYTES: usize = 64;
/// Nodes per chunk, a power of two so that a node's chunk is a shift away: 8,192 nodes of 384
/// dimensions are 3 MiB.
const CHUNK_NODES_SHIFT: u32 = 13;
const CHUNK_NODES: usize = 1 << CHUNK_NODES_SHIFT;

/// One cache line of codes: the unit chunks are allocated in, for their alignment.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([i8; CACHE_LINE_BYTES]);

const ZERO_LINE: CacheLine = CacheLine([0; CACHE_LINE_BYTES]);

pub(crate) struct CodeArena {
    dimension: usize,
    chunks: Vec<Vec<CacheLine>>,
    nodes: usize,
}

fn bytes_of(lines: &[CacheLine]) -> &[i8] {
    // SAFETY: `CacheLine` is `repr(C)` around `[i8; 64]` with size 64 (no padding), so the lines
    // are `lines.len() * 64` initialised, contiguous bytes, borrowed as long as `lines`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<i8>(), lines.len() * CACHE_LINE_BYTES) }
}

fn bytes_of_mut(lines: &mut [CacheLine]) -> &mut [i8] {
    // SAFETY: as in `bytes_of`, borrowed mutably (and exclusively) as long as `lines`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<i8>(), lines.len() * CACHE_LINE_BYTES) }
}

impl CodeArena {
    pub fn new(dimension: usize) -> CodeArena {
        CodeArena {
            dimension,
            chunks: Vec::new(),
            nodes: 0,
        }
    }

    fn chunk_lines(&self) -> usize {
        (CHUNK_NODES * self.dimension).div_ceil(CACHE_LINE_BYTES)
    }

    /// Node `node`'s codes (the node must exist).
    #[inline]
    pub fn code(&self, node: u32) -> &[i8] {
        let node = node as usize;
        let start = (node & (CHUNK_NODES - 1)) * self.dimension;
        &bytes_of(&self.chunks[node >> CHUNK_NODES_SHIFT])[start..start + self.dimension]
    }

    /// Adds a node with zeroed codes and returns them, to be filled.
    pub fn push_zeroed(&mut self) -> &mut [i8] {
        let within = self.nodes & (CHUNK_NODES - 1);
        // `reserve` may have made the first chunk already.
        if self.chunks.len() <= self.nodes >> CHUNK_NODES_SHIFT {
            let capacity = if self.chunks.is_empty() { 0 } else { self.chunk_lines() };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        let dimension = self.dimension;
        let chunk = self.chunks.last_mut().expect("a chunk was just ensured");
        let end = (within + 1) * dimension;
        chunk.resize(end.div_ceil(CACHE_LINE_BYTES), ZERO_LINE);
        self.nodes += 1;
        &mut bytes_of_mut(chunk)[end - dimension..end]
    }

    /// Makes room for `nodes` more nodes in the first chunk (the others are allocated whole).
    pub fn reserve(&mut self, nodes: usize) {
        if self.chunks.len() > 1 {
            return;
        }
        if self.chunks.is_empty() {
            self.chunks.push(Vec::new());
        }
        let wanted = ((self.nodes + nodes).min(CHUNK_NODES) * self.dimension).div_ceil(CACHE_LINE_BYTES);
        let first = &mut self.chunks[0];
        first.reserve(wanted.saturating_sub(first.len()));
    }

    pub fn capacity_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<CacheLine>>()
            + self.chunks.iter().map(|c| c.capacity() * CACHE_LINE_BYTES).sum::<usize>()
    }

    /// Every node's codes, in node order (tests).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<i8> {
        (0..self.nodes as u32).flat_map(|n| self.code(n).iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_stay_where_they_were_written_across_chunks_and_start_on_lines_when_dimension_allows() {
        for dimension in [1, 5, 64, 384] {
            let mut arena = CodeArena::new(dimension);
            arena.reserve(10);
            let nodes = 2 * CHUNK_NODES + 3;
            let code_of = |n: usize, i: usize| ((n * 31 + i * 7) % 255) as i8;
            let mut first_address = None;
            for n in 0..nodes {
                let codes = arena.push_zeroed();
                assert!(codes.iter().all(|&c| c == 0));
                codes.iter_mut().enumerate().for_each(|(i, c)| *c = code_of(n, i));
                if n == CHUNK_NODES {
                    first_address = Some(arena.code(n as u32).as_ptr());
                }
            }
            // Chunks after the first never move: a later chunk's first node is where it was.
            assert_eq!(first_address, Some(arena.code(CHUNK_NODES as u32).as_ptr()));
            for n in 0..nodes {
                let expected: Vec<i8> = (0..dimension).map(|i| code_of(n, i)).collect();
                assert_eq!(arena.code(n as u32), expected.as_slice(), "dimension {dimension}, node {n}");
                if dimension.is_multiple_of(CACHE_LINE_BYTES) {
                    assert!((arena.code(n as u32).as_ptr() as usize).is_multiple_of(CACHE_LINE_BYTES));
                }
            }
            assert_eq!(arena.to_vec().len(), nodes * dimension);
            assert!(arena.capacity_bytes() >= nodes * dimension);
        }
    }
}
