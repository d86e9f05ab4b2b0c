//! A hierarchical navigable small-world graph (Malkov & Yashunin, 2016) over memory versions.
//!
//! Own code rather than a library because the index must (docs/search.md): keep every version
//! of a memory as its own node (a version superseded at LSN L is still the answer at a snapshot
//! below L), accept or reject nodes *during* traversal by snapshot validity and metadata filter
//! (so a filtered query still fills k), and be deterministic (levels come from a hash of the node
//! number, ties break by node number), so tests reproduce exactly. The graph is a function of the
//! vectors, their order, and how their insertions were grouped: an insertion is planned (the
//! search, which only reads the graph) and then applied (the linking), and the indexer plans
//! groups of queued vectors at once on several threads (search/planning.rs).
//!
//! Nodes are never removed: superseded versions stay as waypoints, which keeps the graph
//! connected however many updates and deletions happen.
//!
//! Nodes hold compact codes of their vectors (int8, search/codes.rs), not the vectors: the
//! graph is built and traversed on code distances, and its answers are approximate in distance
//! as well as in membership; the caller re-scores them exactly (search/index.rs).

use super::code_arena::{CodeArena, CACHE_LINE_BYTES};
use super::codes::{encode_into, encode_to, CodeParams, EncodedQuery, CODE_MAX};
use super::flat_graph::{FlatGraph, MAX_M};
use super::vector::{Metric, Scored};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Links per node on the upper levels; level 0 keeps twice as many. 32, as faiss and hnswlib are
/// configured in the peer suite: on its 100k x 384 clustered set, M = 16 needed ef 128 for
/// recall@10 0.975 where M = 32 reaches 0.992 at ef 64 (docs/search.md has the measurements).
/// A graph loaded from an index file keeps the parameters it was built with.
pub(crate) const DEFAULT_M: usize = 32;
/// Candidate list size while inserting (the peers use 200: measured 1.3x our build time for
/// 0.02 to 0.05x of the ratio to faiss at the same recall, docs/search.md).
pub(crate) const DEFAULT_EF_CONSTRUCTION: usize = 128;
/// Cache lines of a neighbour's codes prefetched before its distance is computed: all of them
/// up to 512 dimensions (384 codes span 6 or 7 lines).
const PREFETCH_LINES: usize = 8;
/// Links a node keeps to exact copies of itself (`Hnsw::select_neighbours`).
const MAX_DUPLICATE_LINKS: usize = 2;
/// Candidates ahead in the neighbour-selection heuristic whose codes are requested while the
/// current one is compared (its list is long, up to `ef_construction`, and often left early).
/// Elsewhere a node's whole list of unvisited neighbours is requested at once: measured on
/// 100k x 384, running 2 or 5 nodes ahead there instead was no faster (docs/benchmarks.md,
/// *Indexer CPU*).
const PREFETCH_AHEAD_NODES: usize = 2;
/// Levels are capped so that a hash that happens to be tiny cannot make a tall, empty tower.
pub(crate) const MAX_LEVEL: usize = 16;

pub(crate) struct Hnsw {
    metric: Metric,
    dimension: usize,
    m: usize,
    ef_construction: usize,
    level_multiplier: f64,
    /// Every node's codes (search/codes.rs), in chunks that never move (search/code_arena.rs).
    codes: CodeArena,
    /// Node i's code parameters.
    params: Vec<CodeParams>,
    /// Level-0 links, the ones every search walks, in one flat array (one cache-friendly block
    /// per node): at `node * (2m + 1)`, the count, then up to `2m` neighbours.
    level0: Vec<u32>,
    /// `upper[node][level - 1]`: the node's neighbours on the levels above 0.
    upper: Vec<Vec<Vec<u32>>>,
    /// Each node's top level.
    levels: Vec<u8>,
    /// The entry point and its top level.
    entry: Option<(u32, usize)>,
}

/// The search half of one insertion ([`Hnsw::plan_insert`]).
pub(crate) struct InsertPlan {
    /// The node number it was made for (which fixes the node's level).
    node: u32,
    /// Nodes in the graph its search ran on.
    searched_nodes: u32,
    /// The vector's codes.
    query: EncodedQuery,
    /// Per level, from 0 up to the node's top level (or the graph's, if lower): the nearest
    /// nodes, nearest first.
    found: Vec<Vec<Scored>>,
}

impl InsertPlan {
    /// The node number the plan is for.
    pub fn node(&self) -> u32 {
        self.node
    }
}

/// A (distance, node) pair packed into one `u64` whose integer order is [`Scored`]'s order
/// (distance by `f32::total_cmp`, then node): the traversal heaps compare one integer instead
/// of a float total order and a tie-break, and sorting them gives exactly the order sorting the
/// pairs would, so the graph built is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ranked(u64);

impl Ranked {
    #[inline]
    fn new(distance: f32, node: u32) -> Ranked {
        let bits = distance.to_bits();
        // total_cmp's order as an unsigned one: negative values (sign bit set) bit-inverted so
        // that a larger magnitude sorts lower and all of them below the non-negative ones,
        // which get the top bit set.
        let key = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
        Ranked((u64::from(key) << 32) | u64::from(node))
    }

    #[inline]
    fn of(scored: Scored) -> Ranked {
        Ranked::new(scored.distance, scored.node)
    }

    #[inline]
    fn distance(self) -> f32 {
        let key = (self.0 >> 32) as u32;
        f32::from_bits(if key >> 31 == 1 { key & 0x7fff_ffff } else { !key })
    }

    #[inline]
    fn node(self) -> u32 {
        self.0 as u32
    }

    #[inline]
    fn scored(self) -> Scored {
        Scored {
            distance: self.distance(),
            node: self.node(),
        }
    }
}

/// Per-thread traversal scratch, reused by every search and insertion on the thread: a visited
/// bitmap of which only the words a traversal set are cleared by the next, and the buffers of
/// [`Hnsw::search_layer`], so a traversal allocates nothing but its answer.
struct Scratch {
    /// One bit per node: set once the traversal has seen it.
    visited: Vec<u64>,
    /// The words of `visited` this traversal set bits in (cleared by the next `reset`).
    touched_words: Vec<u32>,
    /// The unvisited neighbours of the node being expanded.
    fresh: Vec<u32>,
    /// Nodes to expand, nearest first.
    candidates: BinaryHeap<Reverse<Ranked>>,
    /// The admitted nodes found so far, farthest on top.
    results: BinaryHeap<Ranked>,
    /// The results being sorted into the answer.
    sorted: Vec<Ranked>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            visited: Vec::new(),
            touched_words: Vec::new(),
            fresh: Vec::new(),
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            sorted: Vec::new(),
        })
    };
}

impl Scratch {
    fn reset(&mut self, nodes: usize) {
        for &word in &self.touched_words {
            self.visited[word as usize] = 0;
        }
        self.touched_words.clear();
        let words = nodes.div_ceil(64);
        if self.visited.len() < words {
            self.visited.resize(words, 0);
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks `node`; true if it was not marked yet in this traversal.
    #[inline]
    fn first_visit(&mut self, node: u32) -> bool {
        let word = &mut self.visited[node as usize / 64];
        let bit = 1u64 << (node % 64);
        if *word & bit != 0 {
            return false;
        }
        if *word == 0 {
            self.touched_words.push(node / 64);
        }
        *word |= bit;
        true
    }
}

/// A deterministic pseudo-random number for `node` (splitmix64).
fn node_hash(node: u32) -> u64 {
    let mut z = u64::from(node).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Hnsw {
    pub fn new(metric: Metric, dimension: usize) -> Hnsw {
        Hnsw::with_parameters(metric, dimension, DEFAULT_M, DEFAULT_EF_CONSTRUCTION)
    }

    pub fn with_parameters(metric: Metric, dimension: usize, m: usize, ef_construction: usize) -> Hnsw {
        let m = m.max(2);
        Hnsw {
            metric,
            dimension,
            m,
            ef_construction: ef_construction.max(m),
            level_multiplier: 1.0 / (m as f64).ln(),
            codes: CodeArena::new(dimension),
            params: Vec::new(),
            level0: Vec::new(),
            upper: Vec::new(),
            levels: Vec::new(),
            entry: None,
        }
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    fn level0_stride(&self) -> usize {
        2 * self.m + 1
    }

    /// The neighbours of `node` on `level` (which the node must have).
    #[inline]
    fn neighbours(&self, node: u32, level: usize) -> &[u32] {
        if level == 0 {
            let base = node as usize * self.level0_stride();
            let count = self.level0[base] as usize;
            &self.level0[base + 1..base + 1 + count]
        } else {
            &self.upper[node as usize][level - 1]
        }
    }

    /// Replaces the neighbours of `node` on `level` (at most `max_links(level)` of them).
    fn set_neighbours(&mut self, node: u32, level: usize, list: Vec<u32>) {
        if level == 0 {
            let base = node as usize * self.level0_stride();
            self.level0[base] = list.len() as u32;
            self.level0[base + 1..base + 1 + list.len()].copy_from_slice(&list);
        } else {
            self.upper[node as usize][level - 1] = list;
        }
    }

    #[inline]
    fn code(&self, node: u32) -> &[i8] {
        self.codes.code(node)
    }

    /// The distance between two nodes' codes.
    #[inline]
    fn node_distance(&self, a: u32, b: u32) -> f32 {
        self.metric
            .code_distance(self.code(a), self.params[a as usize], self.code(b), self.params[b as usize])
    }

    /// Bytes held by the graph: codes, their parameters and links (not counting allocator
    /// overhead).
    pub fn heap_bytes(&self) -> usize {
        let upper: usize = self
            .upper
            .iter()
            .map(|levels| levels.capacity() * 24 + levels.iter().map(|l| l.capacity() * 4).sum::<usize>())
            .sum();
        self.codes.capacity_bytes()
            + self.params.capacity() * std::mem::size_of::<CodeParams>()
            + self.level0.capacity() * 4
            + self.upper.capacity() * 24
            + upper
            + self.levels.capacity()
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            self.m * 2
        } else {
            self.m
        }
    }

    fn random_level(&self, node: u32) -> usize {
        // Uniform in (0, 1]: the top 53 bits of the hash, plus one, over 2^53.
        let uniform = ((node_hash(node) >> 11) + 1) as f64 / (1u64 << 53) as f64;
        ((-uniform.ln() * self.level_multiplier) as usize).min(MAX_LEVEL)
    }

    /// Asks the CPU to start loading `node`'s codes (every cache line they touch, up to
    /// `PREFETCH_LINES`) and parameters, so the distance computations of an expansion overlap
    /// their memory loads.
    #[inline]
    fn prefetch_codes(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let code = self.code(node);
            // Lines are counted from the line the codes start in (they need not be aligned).
            let misalignment = code.as_ptr() as usize % CACHE_LINE_BYTES;
            let lines = (misalignment + code.len()).div_ceil(CACHE_LINE_BYTES).min(PREFETCH_LINES);
            for line in 0..lines {
                let offset = (line * CACHE_LINE_BYTES).saturating_sub(misalignment);
                if let Some(byte) = code.get(offset) {
                    // SAFETY: SSE is part of the x86-64 baseline, and a prefetch never faults (it
                    // only hints; the address is inside the codes anyway).
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(byte).cast()) };
                }
            }
            // SAFETY: as above; the parameters of an existing node.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(&self.params[node as usize]).cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = node;
    }

    /// Asks the CPU to start loading `node`'s level-0 link block (the count and the first links),
    /// so expanding the next candidate does not begin with a cache miss.
    #[inline]
    fn prefetch_links(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let base = node as usize * self.level0_stride();
            if let Some(block) = self.level0.get(base..base + self.level0_stride()) {
                for line in block.chunks(16).take(2) {
                    // SAFETY: as in `prefetch_vector`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = node;
    }

    #[inline]
    fn distance_to(&self, query: &EncodedQuery, node: u32) -> f32 {
        self.metric
            .code_distance(&query.codes, query.params, self.code(node), self.params[node as usize])
    }

    /// Adds a prepared vector (see [`Metric::prepare`]) of the graph's dimension, stored as its
    /// codes; returns its node number (nodes are numbered in insertion order).
    pub fn insert(&mut self, vector: &[f32]) -> u32 {
        let plan = self.plan_insert(vector, self.len() as u32);
        self.insert_planned(plan)
    }

    /// The search half of inserting `vector` as node number `node`: its codes and, on each
    /// level it will have links on, the `ef_construction` nearest nodes of the graph as it is
    /// now. Only reads the graph, so the plans of several vectors can be computed at once on
    /// several threads (search/planning.rs); [`Hnsw::insert_planned`] then links them one by one.
    pub fn plan_insert(&self, vector: &[f32], node: u32) -> InsertPlan {
        debug_assert_eq!(vector.len(), self.dimension);
        let level = self.random_level(node);
        // The node's own codes are its query: its links are chosen by the same code distances
        // searches walk them with.
        let mut codes = vec![0; self.dimension];
        let params = encode_to(vector, &mut codes);
        let query = EncodedQuery { codes, params };
        let Some((entry, top)) = self.entry else {
            return InsertPlan {
                node,
                searched_nodes: self.len() as u32,
                query,
                found: Vec::new(),
            };
        };
        let mut nearest = Scored {
            distance: self.distance_to(&query, entry),
            node: entry,
        };
        for l in (level + 1..=top).rev() {
            nearest = self.greedy(&query, nearest, l);
        }
        let highest = level.min(top);
        let mut found = vec![Vec::new(); highest + 1];
        for l in (0..=highest).rev() {
            // Each level's search starts from what the level above found.
            let entry_points = if l == highest {
                std::slice::from_ref(&nearest)
            } else {
                &found[l + 1]
            };
            let nearest_on_level = self.search_layer(&query, entry_points, self.ef_construction, l, &|_| true);
            found[l] = nearest_on_level;
        }
        InsertPlan {
            node,
            searched_nodes: self.len() as u32,
            query,
            found,
        }
    }

    /// Adds the node `plan` was made for (it must be the next node number: see
    /// [`InsertPlan::node`]) and links it. Nodes added since the plan was made (the plans of a
    /// group are all made on the graph before the group) were not seen by its search; they join
    /// its candidates on every level both have, so a group of close vectors still links its
    /// members to each other. With no such node the graph is the one a sequential insertion
    /// builds.
    pub fn insert_planned(&mut self, plan: InsertPlan) -> u32 {
        let node = self.len() as u32;
        assert_eq!(plan.node, node, "an insertion plan is for one node number");
        let first_unplanned = plan.searched_nodes;
        let level = self.random_level(node);
        self.codes.push_zeroed().copy_from_slice(&plan.query.codes);
        self.params.push(plan.query.params);
        self.level0.resize(self.level0.len() + self.level0_stride(), 0);
        self.upper.push(vec![Vec::new(); level]);
        self.levels.push(level as u8);
        let Some((_, top)) = self.entry else {
            self.entry = Some((node, level));
            return node;
        };
        let mut found = plan.found;
        for l in (0..=level).rev() {
            let mut candidates = found.get_mut(l).map(std::mem::take).unwrap_or_default();
            let unplanned: Vec<u32> = (first_unplanned..node)
                .filter(|&n| usize::from(self.levels[n as usize]) >= l)
                .collect();
            if !unplanned.is_empty() {
                unplanned.iter().for_each(|&n| self.prefetch_codes(n));
                let mut ranked: Vec<Ranked> = candidates.iter().map(|&c| Ranked::of(c)).collect();
                ranked.extend(unplanned.iter().map(|&n| Ranked::new(self.node_distance(node, n), n)));
                // No two keys are equal (nodes differ), so unstable is exact.
                ranked.sort_unstable();
                candidates = ranked.into_iter().map(Ranked::scored).collect();
            }
            if candidates.is_empty() {
                continue;
            }
            let chosen = self.select_neighbours(node, &candidates, self.m);
            for &neighbour in &chosen {
                self.link(neighbour, node, l);
            }
            self.set_neighbours(node, l, chosen);
        }
        if level > top {
            self.entry = Some((node, level));
        }
        node
    }

    /// Adds `node` to `neighbour`'s links on `level`; when they overflow, re-runs the selection
    /// heuristic over the old links and the new one (as hnswlib and faiss do). Keeping simply the
    /// nearest is cheaper (about 33 distance computations instead of up to about 500) but, on
    /// clustered data, leaves links that all point into the same clump: on the peer suite's
    /// 100k x 384 set it needed ef 384 for recall@10 0.95, the heuristic ef 64 to 96 (docs/search.md).
    fn link(&mut self, neighbour: u32, node: u32, level: usize) {
        let limit = self.max_links(level);
        if level == 0 {
            // Room left: append in place in the flat array (no allocation).
            let base = neighbour as usize * self.level0_stride();
            let count = self.level0[base] as usize;
            if count < limit {
                self.level0[base + 1 + count] = node;
                self.level0[base] = count as u32 + 1;
                return;
            }
        }
        let mut current = Vec::with_capacity(limit + 1);
        current.extend_from_slice(self.neighbours(neighbour, level));
        current.push(node);
        if current.len() > limit {
            current.iter().for_each(|&n| self.prefetch_codes(n));
            let mut ranked: Vec<Ranked> = current.iter().map(|&n| Ranked::new(self.node_distance(neighbour, n), n)).collect();
            // The pairs' order (see `Ranked`); no two are equal, so unstable is exact.
            ranked.sort_unstable();
            let scored: Vec<Scored> = ranked.into_iter().map(Ranked::scored).collect();
            current = self.select_neighbours(neighbour, &scored, limit);
        }
        self.set_neighbours(neighbour, level, current);
    }

    /// The neighbour-selection heuristic of the paper for `base`'s links: take candidates nearest
    /// first, keeping one only if it is closer to the base than to every neighbour kept so far
    /// (spreads links across directions, which keeps clustered data navigable). `candidates` is
    /// sorted nearest first by their distance from `base`.
    ///
    /// Exact copies of the base (the same codes: the same embedding stored again) are set apart:
    /// a copy is as far from every candidate as the base is, so, kept first, it pruned every
    /// other candidate and left the base one link (a graph of many copies fell apart into
    /// pieces of a few nodes). Copies are not used to prune, and at most
    /// [`MAX_DUPLICATE_LINKS`] of them are kept, the newest: each copy then links to the copies
    /// inserted just before it and is linked from those inserted after it, so every copy stays
    /// reachable.
    fn select_neighbours(&self, base: u32, candidates: &[Scored], limit: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(limit);
        let base_distance_to_itself = self.node_distance(base, base);
        let mut duplicates: Vec<u32> = Vec::new();
        // Each candidate is a random node whose comparisons cannot start before its codes
        // arrive: they are requested a few candidates ahead.
        candidates
            .iter()
            .take(PREFETCH_AHEAD_NODES)
            .for_each(|c| self.prefetch_codes(c.node));
        for (i, c) in candidates.iter().enumerate() {
            if kept.len() + duplicates.len().min(MAX_DUPLICATE_LINKS) >= limit {
                break;
            }
            if let Some(ahead) = candidates.get(i + PREFETCH_AHEAD_NODES) {
                self.prefetch_codes(ahead.node);
            }
            // Copies have the base's own distance; comparing the codes settles the rare tie.
            if c.distance <= base_distance_to_itself && self.is_copy(c.node, base) {
                duplicates.push(c.node);
                continue;
            }
            if kept.iter().all(|&k| self.node_distance(c.node, k) > c.distance) {
                kept.push(c.node);
            }
        }
        duplicates.sort_unstable();
        kept.extend(duplicates.iter().rev().take(MAX_DUPLICATE_LINKS));
        kept
    }

    /// Whether two nodes hold the same codes (one embedding stored twice, up to rounding).
    fn is_copy(&self, a: u32, b: u32) -> bool {
        self.params[a as usize].scale.to_bits() == self.params[b as usize].scale.to_bits() && self.code(a) == self.code(b)
    }

    fn greedy(&self, query: &EncodedQuery, mut nearest: Scored, level: usize) -> Scored {
        loop {
            let mut moved = false;
            let neighbours = self.neighbours(nearest.node, level);
            // All their codes requested before the first distance, so the loads overlap.
            neighbours.iter().for_each(|&n| self.prefetch_codes(n));
            for &n in neighbours {
                let d = self.distance_to(query, n);
                if d < nearest.distance || (d == nearest.distance && n < nearest.node) {
                    nearest = Scored { distance: d, node: n };
                    moved = true;
                }
            }
            if !moved {
                return nearest;
            }
        }
    }

    /// Best-first search of one level from `entry_points`: the up to `ef` nearest nodes that
    /// `accept` admits, nearest first. Rejected nodes are still expanded (they are waypoints);
    /// the search stops when the nearest unexpanded candidate is farther than the worst of `ef`
    /// admitted results.
    fn search_layer(
        &self,
        query: &EncodedQuery,
        entry_points: &[Scored],
        ef: usize,
        level: usize,
        accept: &impl Fn(u32) -> bool,
    ) -> Vec<Scored> {
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.reset(self.len());
            let mut candidates = std::mem::take(&mut scratch.candidates);
            let mut results = std::mem::take(&mut scratch.results);
            let mut fresh = std::mem::take(&mut scratch.fresh);
            for &ep in entry_points {
                if scratch.first_visit(ep.node) {
                    candidates.push(Reverse(Ranked::of(ep)));
                    if accept(ep.node) {
                        results.push(Ranked::of(ep));
                    }
                }
            }
            while results.len() > ef {
                results.pop();
            }
            // The distance of the worst kept result once `ef` are kept (infinite before): a
            // candidate or neighbour farther than it cannot improve the answer.
            let bound = |results: &BinaryHeap<Ranked>| {
                if results.len() >= ef {
                    results.peek().map_or(f32::INFINITY, |w| w.distance())
                } else {
                    f32::INFINITY
                }
            };
            let mut worst = bound(&results);
            while let Some(Reverse(current)) = candidates.pop() {
                if current.distance() > worst {
                    break;
                }
                // Unvisited neighbours first, their codes prefetched together, so the memory
                // loads of the distance computations below overlap instead of queueing one by one.
                fresh.clear();
                for &n in self.neighbours(current.node(), level) {
                    if scratch.first_visit(n) {
                        self.prefetch_codes(n);
                        fresh.push(n);
                    }
                }
                for &n in &fresh {
                    let d = self.distance_to(query, n);
                    if results.len() < ef || d < worst {
                        let ranked = Ranked::new(d, n);
                        candidates.push(Reverse(ranked));
                        if accept(n) {
                            results.push(ranked);
                            if results.len() > ef {
                                results.pop();
                            }
                            worst = bound(&results);
                        }
                    }
                }
                if let Some(Reverse(next)) = candidates.peek() {
                    self.prefetch_links(next.node());
                }
            }
            // Sorting the packed keys gives the pairs' order (see `Ranked`); an unstable sort
            // is exact because no two keys are equal (nodes differ).
            scratch.sorted.clear();
            scratch.sorted.extend(results.drain());
            scratch.sorted.sort_unstable();
            let answer = scratch.sorted.iter().map(|r| r.scored()).collect();
            candidates.clear();
            scratch.candidates = candidates;
            scratch.results = results;
            scratch.fresh = fresh;
            answer
        })
    }

    /// The up to `ef` nearest nodes to a prepared `query` that `accept` admits, nearest first
    /// by code distance (approximate: the caller re-scores them exactly).
    pub fn search(&self, query: &[f32], ef: usize, accept: &impl Fn(u32) -> bool) -> Vec<Scored> {
        let Some((entry, top)) = self.entry else { return Vec::new() };
        let query = &EncodedQuery::new(query);
        let mut nearest = Scored {
            distance: self.distance_to(query, entry),
            node: entry,
        };
        for l in (1..=top).rev() {
            nearest = self.greedy(query, nearest, l);
        }
        self.search_layer(query, &[nearest], ef.max(1), 0, accept)
    }
}

/// A graph as a checkpoint stores it (search/persist.rs). `N` is the node form: [`SavedNode`]
/// (links and codes: what [`Hnsw::import`] takes, and index format 2), [`SavedLinks`] (index
/// format 3: codes only where they cannot be recomputed) or [`SavedNodeV1`] (f32 vectors, index
/// format 1, converted at load).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedGraph<N = SavedNode> {
    pub dimension: u32,
    pub m: u32,
    pub ef_construction: u32,
    /// Entry point and its top level (absent when the graph is empty).
    pub entry: Option<(u32, u32)>,
    pub nodes: Vec<N>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedNode {
    /// The node's links, level 0 first.
    pub links: Vec<Vec<u32>>,
    /// The codes of the prepared vector, each in -127..=127 (search/codes.rs).
    #[serde(with = "codes_as_bytes")]
    pub codes: Vec<i8>,
    /// The vector is `scale * codes`.
    pub scale: f32,
}

/// A node of index format 3: its links, and its codes only when they may not be recomputable
/// at load from the memory version the node indexes (see [`Hnsw::export`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedLinks {
    /// The node's links, level 0 first.
    pub links: Vec<Vec<u32>>,
    pub coded: Option<SavedCodes>,
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedCodes {
    #[serde(with = "codes_as_bytes")]
    pub codes: Vec<i8>,
    pub scale: f32,
}

/// The saved node forms taken apart: their links, level 0 first, and their codes if saved
/// (what [`FlatGraph::from_saved`] keeps).
pub(crate) trait SavedNodeParts {
    fn into_parts(self) -> (Vec<Vec<u32>>, Option<SavedCodes>);
}

impl SavedNodeParts for SavedNode {
    fn into_parts(self) -> (Vec<Vec<u32>>, Option<SavedCodes>) {
        let codes = SavedCodes {
            codes: self.codes,
            scale: self.scale,
        };
        (self.links, Some(codes))
    }
}

impl SavedNodeParts for SavedLinks {
    fn into_parts(self) -> (Vec<Vec<u32>>, Option<SavedCodes>) {
        (self.links, self.coded)
    }
}

/// Node `n`'s saved codes copied into `slot` once checked: as long as the slot, each in
/// -127..=127, and a finite, non-negative scale.
fn saved_codes(n: usize, codes: &[i8], scale: f32, slot: &mut [i8]) -> std::result::Result<CodeParams, String> {
    if codes.len() != slot.len() || codes.iter().any(|&c| c < -CODE_MAX) {
        return Err(format!("node {n}: bad codes"));
    }
    if !scale.is_finite() || scale < 0.0 {
        return Err(format!("node {n}: bad scale {scale}"));
    }
    slot.copy_from_slice(codes);
    Ok(CodeParams::of(slot, scale))
}

impl SavedGraph<SavedLinks> {
    /// The graph with every node's codes: those saved, and for the rest the encoding of
    /// `embedding(n)` (node `n`'s memory's embedding) prepared for `metric`, exactly as an
    /// insert encodes it, so the graph loaded is the graph that was saved. A node without codes
    /// whose embedding is missing, of the wrong length or not finite is refused.
    #[cfg(test)]
    pub fn with_codes<'e>(
        self,
        metric: Metric,
        mut embedding: impl FnMut(usize) -> Option<&'e [f32]>,
    ) -> std::result::Result<SavedGraph, String> {
        let dimension = self.dimension as usize;
        let mut prepared = Vec::with_capacity(dimension);
        self.try_map_nodes(|n, node| match node.coded {
            Some(SavedCodes { codes, scale }) => Ok(SavedNode {
                links: node.links,
                codes,
                scale,
            }),
            None => {
                let vector = embedding(n).ok_or_else(|| format!("node {n}: no codes and no embedding to compute them from"))?;
                if vector.len() != dimension {
                    return Err(format!("node {n}: bad vector"));
                }
                metric.prepare_into(vector, &mut prepared);
                coded_node(n, node.links, &prepared, dimension)
            }
        })
    }
}

/// Node `n` with the codes of the prepared `vector`, exactly as an insert encodes them; a vector
/// of the wrong length or not finite is refused.
fn coded_node(n: usize, links: Vec<Vec<u32>>, vector: &[f32], dimension: usize) -> std::result::Result<SavedNode, String> {
    if vector.len() != dimension || vector.iter().any(|x| !x.is_finite()) {
        return Err(format!("node {n}: bad vector"));
    }
    let mut codes = Vec::with_capacity(dimension);
    let params = encode_into(vector, &mut codes);
    Ok(SavedNode {
        links,
        codes,
        scale: params.scale,
    })
}

impl<N> SavedGraph<N> {
    /// The same graph with each node converted.
    pub fn map_nodes<M>(self, mut convert: impl FnMut(N) -> M) -> SavedGraph<M> {
        match self.try_map_nodes(|_, node| Ok::<M, std::convert::Infallible>(convert(node))) {
            Ok(graph) => graph,
            Err(never) => match never {},
        }
    }

    /// The same graph with node `n` converted by `convert(n, node)`, or the first error.
    pub fn try_map_nodes<M, E>(
        self,
        mut convert: impl FnMut(usize, N) -> std::result::Result<M, E>,
    ) -> std::result::Result<SavedGraph<M>, E> {
        let nodes = self
            .nodes
            .into_iter()
            .enumerate()
            .map(|(n, node)| convert(n, node))
            .collect::<std::result::Result<_, E>>()?;
        Ok(SavedGraph {
            dimension: self.dimension,
            m: self.m,
            ef_construction: self.ef_construction,
            entry: self.entry,
            nodes,
        })
    }
}

impl From<SavedNode> for SavedLinks {
    fn from(n: SavedNode) -> SavedLinks {
        SavedLinks {
            links: n.links,
            coded: Some(SavedCodes {
                codes: n.codes,
                scale: n.scale,
            }),
        }
    }
}

/// A node's codes written and read as one byte string rather than element by element. In
/// postcard both are a varint count followed by one two's-complement byte per code, so the file
/// format is unchanged; only the copy is whole (a checkpoint of a million 384-dimension nodes
/// otherwise makes 384 million serializer calls each way).
mod codes_as_bytes {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(codes: &[i8], s: S) -> Result<S::Ok, S::Error> {
        // SAFETY: i8 and u8 have the same size and alignment and no invalid bit patterns; the
        // slice covers exactly the codes' memory, borrowed for as long as `codes`.
        let bytes = unsafe { std::slice::from_raw_parts(codes.as_ptr().cast::<u8>(), codes.len()) };
        s.serialize_bytes(bytes)
    }

    struct CodesVisitor;

    impl Visitor<'_> for CodesVisitor {
        type Value = Vec<i8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a node's codes, one byte each")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<i8>, E> {
            Ok(bytes.iter().map(|&b| b as i8).collect())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i8>, D::Error> {
        d.deserialize_bytes(CodesVisitor)
    }
}

/// A node of an index file of format 1, which stored the prepared vector itself.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedNodeV1 {
    pub links: Vec<Vec<u32>>,
    pub vector: Vec<f32>,
}

impl SavedGraph<SavedNodeV1> {
    /// The same graph with each vector replaced by its codes, as this build would have encoded
    /// it when inserting (so a converted graph equals one built by this build from the same
    /// links). A vector of the wrong length or not finite is refused, as format 1 required.
    pub fn encode(self) -> std::result::Result<SavedGraph, String> {
        let dimension = self.dimension as usize;
        self.try_map_nodes(|n, node| coded_node(n, node.links, &node.vector, dimension))
    }
}

impl Hnsw {
    /// The graph restricted to its first `limit` nodes (links to later nodes dropped; the entry
    /// point moved to the highest kept node if it was later), with the codes of the nodes
    /// `keep_codes` names (the others' are recomputed at load from their memories' embeddings).
    pub fn export(&self, limit: usize, keep_codes: impl Fn(usize) -> bool) -> SavedGraph<SavedLinks> {
        let limit = limit.min(self.len());
        let nodes: Vec<SavedLinks> = (0..limit)
            .map(|n| SavedLinks {
                links: (0..=self.levels[n] as usize)
                    .map(|level| {
                        self.neighbours(n as u32, level)
                            .iter()
                            .copied()
                            .filter(|&l| (l as usize) < limit)
                            .collect()
                    })
                    .collect(),
                coded: keep_codes(n).then(|| SavedCodes {
                    codes: self.code(n as u32).to_vec(),
                    scale: self.params[n].scale,
                }),
            })
            .collect();
        let entry = match self.entry {
            Some((node, level)) if (node as usize) < limit => Some((node, level as u32)),
            _ => (0..limit)
                .max_by_key(|&n| (self.levels[n], std::cmp::Reverse(n)))
                .map(|n| (n as u32, u32::from(self.levels[n]))),
        };
        SavedGraph {
            dimension: self.dimension as u32,
            m: self.m as u32,
            ef_construction: self.ef_construction as u32,
            entry,
            nodes,
        }
    }

    /// Rebuilds a graph from its saved form (every node with its codes), checking every
    /// invariant searches rely on. Index files load through [`Hnsw::import_recomputing`];
    /// this form is the tests'.
    #[cfg(test)]
    pub fn import(metric: Metric, saved: SavedGraph) -> std::result::Result<Hnsw, String> {
        Self::import_flat(metric, FlatGraph::from_saved(saved)?, |n, coded, slot| match coded {
            Some(SavedCodes { codes, scale }) => saved_codes(n, codes, *scale, slot),
            None => Err(format!("node {n}: no codes")),
        })
    }

    /// The graph of an index file: nodes without saved codes get the encoding of
    /// `embedding(n)` (node `n`'s memory's embedding) prepared for `metric`, exactly as an
    /// insert encodes it, so the graph loaded is the graph that was saved. The codes are
    /// written straight into the graph, not into a [`SavedNode`] first (at 1M memories that
    /// copy was 384 MB of fresh memory for the kernel to zero). A node without codes whose
    /// embedding is missing, of the wrong length or not finite is refused.
    pub fn import_recomputing<'e>(
        metric: Metric,
        saved: FlatGraph,
        mut embedding: impl FnMut(usize) -> Option<&'e [f32]>,
    ) -> std::result::Result<Hnsw, String> {
        let mut prepared = Vec::with_capacity(saved.dimension as usize);
        Self::import_flat(metric, saved, |n, coded, slot| match coded {
            Some(SavedCodes { codes, scale }) => saved_codes(n, codes, *scale, slot),
            None => {
                let vector = embedding(n).ok_or_else(|| format!("node {n}: no codes and no embedding to compute them from"))?;
                if vector.len() != slot.len() {
                    return Err(format!("node {n}: bad vector"));
                }
                metric.prepare_into(vector, &mut prepared);
                if prepared.len() != slot.len() || prepared.iter().any(|x| !x.is_finite()) {
                    return Err(format!("node {n}: bad vector"));
                }
                Ok(encode_to(&prepared, slot))
            }
        })
    }

    /// The graph of `saved`, checked for every invariant searches rely on (a damaged file must
    /// fail here, never panic later); its links are taken over as they are. Node `n`'s codes
    /// are written into its slot (zeroed, `dimension` long) by `codes(n, saved codes, slot)`,
    /// which checks them and returns their parameters.
    fn import_flat(
        metric: Metric,
        saved: FlatGraph,
        mut codes: impl FnMut(usize, Option<&SavedCodes>, &mut [i8]) -> std::result::Result<CodeParams, String>,
    ) -> std::result::Result<Hnsw, String> {
        let dimension = saved.dimension as usize;
        if dimension == 0 || dimension > crate::names::MAX_DIMENSION {
            return Err(format!("graph dimension {dimension}"));
        }
        if saved.m < 2 || saved.m > MAX_M || saved.ef_construction < saved.m || saved.ef_construction > 100_000 {
            return Err(format!("graph parameters m {} ef_construction {}", saved.m, saved.ef_construction));
        }
        let count = saved.len();
        let mut graph = Hnsw::with_parameters(metric, dimension, saved.m as usize, saved.ef_construction as usize);
        let stride = graph.level0_stride();
        if saved.level0.len() != count * stride {
            return Err(format!("{} level-0 entries for {count} nodes", saved.level0.len()));
        }
        let levels_of = |node: u32| saved.upper.get(node as usize).map(|upper| upper.len() + 1);
        for (n, (block, upper)) in saved.level0.chunks_exact(stride).zip(&saved.upper).enumerate() {
            if upper.len() > MAX_LEVEL {
                return Err(format!("node {n}: {} levels", upper.len() + 1));
            }
            let level0_links = block
                .get(1..1 + block[0] as usize)
                .ok_or_else(|| format!("node {n}: {} links on level 0", block[0]))?;
            for (level, links) in std::iter::once(level0_links).chain(upper.iter().map(Vec::as_slice)).enumerate() {
                if links.len() > graph.max_links(level) {
                    return Err(format!("node {n}: {} links on level {level}", links.len()));
                }
                // A link must point at a node that exists on that level.
                if let Some(bad) = links.iter().find(|&&l| levels_of(l).is_none_or(|levels| levels <= level)) {
                    return Err(format!("node {n}: link to {bad} on level {level}"));
                }
            }
        }
        graph.entry = match saved.entry {
            None if count == 0 => None,
            Some((node, level)) if levels_of(node) == Some(level as usize + 1) => Some((node, level as usize)),
            other => return Err(format!("entry point {other:?} with {count} nodes")),
        };
        if saved.coded.windows(2).any(|w| w[0].0 >= w[1].0) || saved.coded.last().is_some_and(|c| c.0 as usize >= count) {
            return Err("saved codes out of node order or range".into());
        }
        graph.codes.reserve(count);
        graph.params.reserve(count);
        let mut coded = saved.coded.iter().peekable();
        for n in 0..count {
            let saved_codes = coded.next_if(|c| c.0 as usize == n).map(|c| &c.1);
            graph.params.push(codes(n, saved_codes, graph.codes.push_zeroed())?);
        }
        graph.levels = saved.upper.iter().map(|upper| upper.len() as u8).collect();
        graph.level0 = saved.level0;
        graph.upper = saved.upper;
        Ok(graph)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::search::vector::TopK;

    /// Index files written before the codes were copied as bytes (a `Vec<i8>` element by
    /// element) are the same bytes: both ways round, every code value and the empty vector.
    #[test]
    fn a_node_encodes_exactly_as_a_vec_of_i8_did() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct AsSequence {
            links: Vec<Vec<u32>>,
            codes: Vec<i8>,
            scale: f32,
        }
        for codes in [(-128..=127).collect::<Vec<i8>>(), vec![], vec![-127; 384]] {
            let node = SavedNode {
                links: vec![vec![1, 300], vec![]],
                codes: codes.clone(),
                scale: 0.25,
            };
            let sequence = AsSequence {
                links: node.links.clone(),
                codes,
                scale: 0.25,
            };
            let bytes = postcard::to_stdvec(&node).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&sequence).unwrap());
            assert_eq!(postcard::from_bytes::<AsSequence>(&bytes).unwrap(), sequence);
            let read: SavedNode = postcard::from_bytes(&bytes).unwrap();
            assert_eq!((read.links, read.codes, read.scale), (node.links, node.codes, node.scale));
        }
    }

    fn flat(saved: SavedGraph<SavedLinks>) -> FlatGraph {
        FlatGraph::from_saved(saved).unwrap()
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// With `ef` as large as the graph, the search reaches every node (the graph is connected
    /// on code distances), so re-scoring its answer exactly gives the exact top 10. (Before the
    /// graph held codes, its own top 10 was compared; it is approximate in distance now, and
    /// the exact re-scoring is the index's job, search/index.rs.)
    #[test]
    fn reaches_every_node_of_small_random_sets_with_a_large_ef() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let mut seed = 7;
            let mut graph = Hnsw::new(metric, 8);
            let mut data = Vec::new();
            for _ in 0..500 {
                let v: Vec<f32> = metric.prepare(&(0..8).map(|_| lcg(&mut seed)).collect::<Vec<_>>());
                graph.insert(&v);
                data.push(v);
            }
            for _ in 0..20 {
                let q = metric.prepare(&(0..8).map(|_| lcg(&mut seed)).collect::<Vec<_>>());
                let mut exact = TopK::new(10);
                for (i, v) in data.iter().enumerate() {
                    exact.push(Scored {
                        distance: metric.distance(&q, v),
                        node: i as u32,
                    });
                }
                let expected: Vec<u32> = exact.into_sorted().iter().map(|s| s.node).collect();
                let found = graph.search(&q, 500, &|_| true);
                assert_eq!(found.len(), 500, "{metric:?}");
                let mut rescored = TopK::new(10);
                for s in &found {
                    rescored.push(Scored {
                        distance: metric.distance(&q, &data[s.node as usize]),
                        node: s.node,
                    });
                }
                let got: Vec<u32> = rescored.into_sorted().iter().map(|s| s.node).collect();
                assert_eq!(got, expected, "{metric:?}");
            }
        }
    }

    /// Agents store the same embedding many times (the same text remembered again). Exact
    /// duplicates tie on every distance, and a strict "closer to the base than to every kept
    /// neighbour" test turned each duplicate into the only link of the others (one link per
    /// node: searches reached a handful of nodes and the index fell back to exact scans, 87 ms
    /// a query at 1M). With duplicates capped and not used to prune, the graph stays navigable:
    /// every node is reachable, and a small ef finds the nearest distinct vectors.
    #[test]
    fn a_graph_of_many_exact_duplicates_stays_connected_and_navigable() {
        let metric = Metric::Cosine;
        let mut seed = 11;
        let distinct: Vec<Vec<f32>> = (0..40)
            .map(|_| metric.prepare(&(0..8).map(|_| lcg(&mut seed)).collect::<Vec<_>>()))
            .collect();
        let mut graph = Hnsw::new(metric, 8);
        let mut data = Vec::new();
        // Three copies of the 40 vectors in turn, then a vector of its own: 75 copies of each.
        for i in 0..4_000 {
            let v = if i % 4 == 3 {
                metric.prepare(&(0..8).map(|_| lcg(&mut seed)).collect::<Vec<_>>())
            } else {
                distinct[(i - i / 4) % distinct.len()].clone()
            };
            graph.insert(&v);
            data.push(v);
        }
        assert_eq!(
            graph.search(&distinct[0], data.len(), &|_| true).len(),
            data.len(),
            "every node reachable"
        );
        for (i, q) in distinct.iter().enumerate() {
            let found = graph.search(q, 32, &|_| true);
            assert!(found.len() >= 10, "query {i}: {} results", found.len());
            // The copies of the query itself are its nearest: the first results are copies.
            let copies = found.iter().take(10).filter(|s| data[s.node as usize] == *q).count();
            assert_eq!(copies, 10, "query {i}");
        }
    }

    /// Inserts `vectors` in groups of `group`, as the indexer does (search/planning.rs): the
    /// plans of a group all made on the graph before it, then applied in order.
    pub(crate) fn insert_in_groups(graph: &mut Hnsw, vectors: &[Vec<f32>], group: usize) {
        for chunk in vectors.chunks(group) {
            let first = graph.len() as u32;
            let plans: Vec<InsertPlan> = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| graph.plan_insert(v, first + i as u32))
                .collect();
            for plan in plans {
                graph.insert_planned(plan);
            }
        }
    }

    /// Per node, its links on each of its levels.
    type Links = Vec<Vec<Vec<u32>>>;

    /// Every node's links on every level, and the entry point: the whole shape of a graph.
    pub(crate) fn shape(graph: &Hnsw) -> (Links, Option<(u32, usize)>) {
        let links = (0..graph.len() as u32)
            .map(|n| {
                (0..=graph.levels[n as usize] as usize)
                    .map(|l| graph.neighbours(n, l).to_vec())
                    .collect()
            })
            .collect();
        (links, graph.entry)
    }

    /// Clustered vectors (16 centres, noise as large as their spread) with every tenth an
    /// exact copy of an earlier one, as agents store the same text again.
    fn clustered_with_copies(metric: Metric, count: usize, dimension: usize, seed: &mut u64) -> Vec<Vec<f32>> {
        let centres: Vec<Vec<f32>> = (0..16).map(|_| (0..dimension).map(|_| lcg(seed)).collect()).collect();
        let mut data: Vec<Vec<f32>> = Vec::with_capacity(count);
        for i in 0..count {
            let v = if i % 10 == 9 {
                data[(lcg(seed).abs() * i as f32) as usize % i].clone()
            } else {
                let centre = &centres[i % centres.len()];
                metric.prepare(&centre.iter().map(|c| c + lcg(seed)).collect::<Vec<_>>())
            };
            data.push(v);
        }
        data
    }

    /// recall@10 at `ef` over `queries` against the exact top 10, re-scoring the graph's
    /// answer exactly (as the index does).
    fn recall_at(graph: &Hnsw, data: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
        let metric = graph.metric();
        let mut hits = 0;
        for q in queries {
            let mut exact = TopK::new(10);
            for (i, v) in data.iter().enumerate() {
                exact.push(Scored {
                    distance: metric.distance(q, v),
                    node: i as u32,
                });
            }
            let truth: Vec<u32> = exact.into_sorted().iter().map(|s| s.node).collect();
            let mut rescored = TopK::new(10);
            for s in graph.search(q, ef, &|_| true) {
                rescored.push(Scored {
                    distance: metric.distance(q, &data[s.node as usize]),
                    node: s.node,
                });
            }
            hits += rescored.into_sorted().iter().filter(|s| truth.contains(&s.node)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    /// A plan applied at once is an insertion: groups of one build the very graph sequential
    /// insertion builds, link for link, under every metric.
    #[test]
    fn planned_insertions_one_at_a_time_build_the_sequential_graph() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let mut seed = 5;
            let data = clustered_with_copies(metric, 1_500, 12, &mut seed);
            let mut sequential = Hnsw::new(metric, 12);
            data.iter().for_each(|v| {
                sequential.insert(v);
            });
            let mut planned = Hnsw::new(metric, 12);
            insert_in_groups(&mut planned, &data, 1);
            assert!(shape(&planned) == shape(&sequential), "{metric:?}");
        }
    }

    /// Planned in groups of 64 (each vector's search blind to its group), the graph is a
    /// different one but as good: every node reachable, recall at small ef as high as the
    /// sequential graph's (the group's earlier members are offered as candidates, so close
    /// vectors in one group still link to each other), with copies in the data.
    #[test]
    fn a_graph_built_in_planned_groups_is_as_navigable_as_a_sequential_one() {
        for metric in [Metric::Cosine, Metric::L2] {
            let mut seed = 17;
            let data = clustered_with_copies(metric, 4_000, 16, &mut seed);
            let queries: Vec<Vec<f32>> = (0..100)
                .map(|i| {
                    let base = &data[(i * 37) % data.len()];
                    metric.prepare(&base.iter().map(|x| x + lcg(&mut seed) * 0.3).collect::<Vec<_>>())
                })
                .collect();
            let mut sequential = Hnsw::new(metric, 16);
            data.iter().for_each(|v| {
                sequential.insert(v);
            });
            let mut grouped = Hnsw::new(metric, 16);
            insert_in_groups(&mut grouped, &data, 64);
            assert!(shape(&grouped) != shape(&sequential), "groups change the links");
            assert_eq!(
                grouped.search(&queries[0], data.len(), &|_| true).len(),
                data.len(),
                "{metric:?}: every node reachable"
            );
            for ef in [16, 32] {
                let (s, g) = (
                    recall_at(&sequential, &data, &queries, ef),
                    recall_at(&grouped, &data, &queries, ef),
                );
                assert!(g >= s - 0.01 && g >= 0.9, "{metric:?} ef {ef}: grouped {g}, sequential {s}");
            }
        }
    }

    /// A group that is all one embedding (a batch of the same text stored many times) links
    /// its copies to each other and to the graph: each is reachable, and a search finds them.
    #[test]
    fn a_group_of_copies_of_one_vector_is_linked_and_found() {
        let metric = Metric::Cosine;
        let mut seed = 23;
        let data = clustered_with_copies(metric, 3_000, 8, &mut seed);
        let mut graph = Hnsw::new(metric, 8);
        insert_in_groups(&mut graph, &data, 64);
        let copy = metric.prepare(&(0..8).map(|_| lcg(&mut seed)).collect::<Vec<_>>());
        insert_in_groups(&mut graph, &vec![copy.clone(); 64], 64);
        assert_eq!(
            graph.search(&data[0], graph.len(), &|_| true).len(),
            graph.len(),
            "every node reachable"
        );
        let found = graph.search(&copy, 32, &|_| true);
        let copies = found.iter().take(10).filter(|s| s.node as usize >= data.len()).count();
        assert_eq!(copies, 10);
    }

    /// Nodes' codes are what `encode_into` gives for their vectors, through the growth of the
    /// aligned buffer, and with a dimension that is a multiple of the line size each node's
    /// codes start on a cache line (what the buffer is for).
    #[test]
    fn node_codes_are_the_encoded_vectors_and_start_on_cache_lines() {
        for dimension in [64, 384, 5] {
            let mut seed = 3;
            let mut graph = Hnsw::new(Metric::L2, dimension);
            let mut expected = Vec::new();
            let mut vectors = Vec::new();
            for _ in 0..300 {
                let v: Vec<f32> = (0..dimension).map(|_| lcg(&mut seed)).collect();
                encode_into(&v, &mut expected);
                graph.insert(&v);
                vectors.push(v);
            }
            assert_eq!(graph.codes.to_vec(), expected, "dimension {dimension}");
            if dimension.is_multiple_of(CACHE_LINE_BYTES) {
                assert!((0..300).all(|n| (graph.code(n).as_ptr() as usize).is_multiple_of(CACHE_LINE_BYTES)));
            }
            // Codes saved, or recomputed at load from the vectors (index format 3 saves only the
            // codes of superseded versions): the same codes either way.
            let saved = graph.export(graph.len(), |_| true).with_codes(Metric::L2, |_| None).unwrap();
            let loaded = Hnsw::import(Metric::L2, saved).unwrap();
            assert_eq!(loaded.codes.to_vec(), expected);
            let recomputed = graph
                .export(graph.len(), |n| n % 3 == 0)
                .with_codes(Metric::L2, |n| Some(vectors[n].as_slice()))
                .unwrap();
            let loaded = Hnsw::import(Metric::L2, recomputed).unwrap();
            assert_eq!(loaded.codes.to_vec(), expected);
            let missing = graph.export(graph.len(), |n| n != 7).with_codes(Metric::L2, |_| None);
            assert_eq!(
                missing.err().as_deref(),
                Some("node 7: no codes and no embedding to compute them from")
            );
            // The load path computes them straight into the graph: the same codes, links and
            // entry point, and the same refusal.
            let direct = Hnsw::import_recomputing(Metric::L2, flat(graph.export(graph.len(), |n| n % 3 == 0)), |n| {
                Some(vectors[n].as_slice())
            })
            .unwrap();
            assert_eq!(direct.codes.to_vec(), expected);
            assert_eq!(
                (direct.level0.clone(), direct.upper.clone(), direct.entry),
                (graph.level0.clone(), graph.upper.clone(), graph.entry)
            );
            let missing = Hnsw::import_recomputing(Metric::L2, flat(graph.export(graph.len(), |n| n != 7)), |_| None);
            assert_eq!(
                missing.err().as_deref(),
                Some("node 7: no codes and no embedding to compute them from")
            );
            let short = Hnsw::import_recomputing(Metric::L2, flat(graph.export(graph.len(), |n| n != 9)), |n| Some(&vectors[n][1..]));
            assert_eq!(short.err().as_deref(), Some("node 9: bad vector"));
            let infinite = vec![f32::INFINITY; dimension];
            let not_finite = Hnsw::import_recomputing(Metric::L2, flat(graph.export(graph.len(), |n| n != 11)), |_| {
                Some(infinite.as_slice())
            });
            assert_eq!(not_finite.err().as_deref(), Some("node 11: bad vector"));
        }
    }

    /// The packed keys order exactly as the pairs do (so heaps and sorts over them build the
    /// same graph) and unpack to the same bits, across signs, zeros, infinities, NaNs,
    /// subnormals and equal distances with different nodes.
    #[test]
    fn ranked_keys_order_and_unpack_exactly_as_scored_pairs() {
        let mut distances = vec![
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::MAX,
            f32::MIN,
            1.0,
            -1.0,
            0.5,
            2.0,
        ];
        let mut seed = 13;
        distances.extend((0..40).map(|_| lcg(&mut seed) * 4.0));
        let pairs: Vec<Scored> = distances
            .iter()
            .flat_map(|&distance| [0, 1, 7, u32::MAX].map(|node| Scored { distance, node }))
            .collect();
        for a in &pairs {
            let ranked = Ranked::of(*a);
            assert_eq!((ranked.distance().to_bits(), ranked.node()), (a.distance.to_bits(), a.node));
            for b in &pairs {
                assert_eq!(ranked.cmp(&Ranked::of(*b)), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn rejected_nodes_are_waypoints_not_results() {
        let mut graph = Hnsw::new(Metric::L2, 2);
        for i in 0..200 {
            graph.insert(&[i as f32, 0.0]);
        }
        let odd = graph.search(&[100.2, 0.0], 8, &|n| n % 2 == 1);
        assert_eq!(odd.len(), 8);
        assert!(odd.iter().all(|s| s.node % 2 == 1));
        assert_eq!(odd[0].node, 101);
    }

    /// Index files written before the defaults changed (M = 16, ef_construction 64) must load
    /// with the parameters they were built with, answer as before, and keep growing with them.
    #[test]
    fn a_saved_graph_loads_with_the_parameters_it_was_built_with() {
        let mut seed = 5;
        let mut graph = Hnsw::with_parameters(Metric::L2, 8, 16, 64);
        for _ in 0..600 {
            graph.insert(&(0..8).map(|_| lcg(&mut seed)).collect::<Vec<_>>());
        }
        let saved = graph.export(graph.len(), |_| true).with_codes(Metric::L2, |_| None).unwrap();
        assert_eq!((saved.m, saved.ef_construction), (16, 64));
        let mut loaded = Hnsw::import(Metric::L2, saved).unwrap();
        assert_eq!((loaded.m, loaded.ef_construction), (16, 64));
        assert_ne!((loaded.m, loaded.ef_construction), (DEFAULT_M, DEFAULT_EF_CONSTRUCTION));
        let queries: Vec<Vec<f32>> = (0..20).map(|_| (0..8).map(|_| lcg(&mut seed)).collect()).collect();
        for q in &queries {
            assert_eq!(loaded.search(q, 32, &|_| true), graph.search(q, 32, &|_| true));
        }
        let more: Vec<f32> = (0..8).map(|_| lcg(&mut seed)).collect();
        assert_eq!(loaded.insert(&more), graph.insert(&more));
        for node in 0..loaded.len() as u32 {
            assert_eq!(loaded.neighbours(node, 0), graph.neighbours(node, 0), "node {node}");
            assert!(loaded.neighbours(node, 0).len() <= 32);
        }
    }
}
