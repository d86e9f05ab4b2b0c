//! A saved graph in the layout [`Hnsw`](super::hnsw::Hnsw) keeps, and the decoding of index
//! format 3's graph straight into it.
//!
//! Decoded the derived way, as a [`SavedGraph<SavedLinks>`], a graph of a million nodes is a
//! million small `Vec`s of links (with their outer `Vec`s and the allocator's headers, about 230
//! bytes a node) that live next to the graph being built from them, then are copied and freed:
//! the peak of an open of 1M memories stood 220 MB above what the open keeps. Here each node's
//! level-0 links are written where the graph will keep them (one flat array), which the graph
//! then takes over without a copy; only the upper levels (one node in `m`) and the few saved
//! codes are separate. The bytes read are exactly the derived form's (tests below), so the
//! file format does not change.

use super::hnsw::{SavedCodes, SavedGraph, SavedNodeParts, MAX_LEVEL};
use serde::de::{DeserializeSeed, Deserializer, Error, SeqAccess, Visitor};
use std::fmt;

/// The largest `m` a saved graph may have (links per node on the upper levels).
pub(crate) const MAX_M: u32 = 1024;

/// A saved graph, its links in [`Hnsw`](super::hnsw::Hnsw)'s layout. Not yet checked:
/// [`Hnsw::import_flat`](super::hnsw::Hnsw) checks every invariant searches rely on.
#[derive(Debug, PartialEq)]
pub(crate) struct FlatGraph {
    pub dimension: u32,
    pub m: u32,
    pub ef_construction: u32,
    /// Entry point and its top level (absent when the graph is empty).
    pub entry: Option<(u32, u32)>,
    /// Node `n`'s level-0 links at `n * (2m + 1)`: their count, then up to `2m` links, then
    /// zeros.
    pub level0: Vec<u32>,
    /// Node `n`'s links on levels 1 and up (none for a node only on level 0): also its number
    /// of levels, less one.
    pub upper: Vec<Vec<Vec<u32>>>,
    /// The nodes whose codes were saved, in node order, with them.
    pub coded: Vec<(u32, SavedCodes)>,
}

impl FlatGraph {
    /// How many nodes the graph has.
    pub fn len(&self) -> usize {
        self.upper.len()
    }

    /// The `u32`s a node takes in `level0`: its count and `2m` links.
    pub fn level0_stride(m: u32) -> usize {
        2 * m as usize + 1
    }

    /// A graph decoded whole (index formats 1 and 2, and tests) in this layout. Refuses what
    /// does not fit it: `m` out of range, a node without levels or with more than
    /// [`MAX_LEVEL`] above 0, more than `2m` links on level 0.
    pub fn from_saved<N: SavedNodeParts>(saved: SavedGraph<N>) -> std::result::Result<FlatGraph, String> {
        check_m(saved.m)?;
        let mut nodes = NodesBuilder::new(saved.m, saved.nodes.len());
        for node in saved.nodes {
            let (links, coded) = node.into_parts();
            let mut levels = links.into_iter();
            let level0 = levels.next().ok_or_else(|| format!("node {}: 0 levels", nodes.len()))?;
            nodes.begin_node();
            for link in level0 {
                nodes.push_level0_link(link)?;
            }
            for level in levels {
                nodes.push_upper_level(level)?;
            }
            nodes.end_node(coded);
        }
        Ok(nodes.finish(saved.dimension, saved.m, saved.ef_construction, saved.entry))
    }
}

fn check_m(m: u32) -> std::result::Result<(), String> {
    if !(2..=MAX_M).contains(&m) {
        return Err(format!("graph parameter m {m}"));
    }
    Ok(())
}

/// Appends nodes to the flat layout, refusing a node that does not fit it.
struct NodesBuilder {
    stride: usize,
    level0: Vec<u32>,
    upper: Vec<Vec<Vec<u32>>>,
    coded: Vec<(u32, SavedCodes)>,
    /// The current node's level-0 block and its upper levels so far.
    block: usize,
    node_upper: Vec<Vec<u32>>,
    /// Why the decoding stopped, if it was refused here (postcard's errors carry no message).
    rejection: Option<String>,
}

impl NodesBuilder {
    /// A builder for `m`, with room for `nodes` nodes (no more than are in memory already, or
    /// than the caller has checked the input holds: the level-0 array is reserved whole).
    fn new(m: u32, nodes: usize) -> NodesBuilder {
        let mut builder = NodesBuilder {
            stride: FlatGraph::level0_stride(m),
            level0: Vec::new(),
            upper: Vec::new(),
            coded: Vec::new(),
            block: 0,
            node_upper: Vec::new(),
            rejection: None,
        };
        builder.reserve(nodes);
        builder
    }

    fn reserve(&mut self, nodes: usize) {
        self.level0.reserve(nodes * self.stride);
        self.upper.reserve(nodes);
    }

    /// The decoding error for `refused`, whose reason is kept.
    fn reject<E: Error>(&mut self, refused: std::result::Result<(), String>) -> Result<(), E> {
        refused.map_err(|reason| {
            let error = E::custom(&reason);
            self.rejection = Some(reason);
            error
        })
    }

    fn len(&self) -> usize {
        self.upper.len()
    }

    fn begin_node(&mut self) {
        self.block = self.level0.len();
        self.level0.resize(self.block + self.stride, 0);
    }

    fn push_level0_link(&mut self, link: u32) -> std::result::Result<(), String> {
        let count = self.level0[self.block] as usize;
        if count + 1 >= self.stride {
            return Err(format!("node {}: more than {} links on level 0", self.len(), self.stride - 1));
        }
        self.level0[self.block + 1 + count] = link;
        self.level0[self.block] += 1;
        Ok(())
    }

    fn push_upper_level(&mut self, links: Vec<u32>) -> std::result::Result<(), String> {
        if self.node_upper.len() == MAX_LEVEL {
            return Err(format!("node {}: more than {} levels", self.len(), MAX_LEVEL + 1));
        }
        self.node_upper.push(links);
        Ok(())
    }

    fn end_node(&mut self, coded: Option<SavedCodes>) {
        if let Some(codes) = coded {
            self.coded.push((self.len() as u32, codes));
        }
        let upper = std::mem::take(&mut self.node_upper);
        self.upper.push(upper);
    }

    fn finish(self, dimension: u32, m: u32, ef_construction: u32, entry: Option<(u32, u32)>) -> FlatGraph {
        FlatGraph {
            dimension,
            m,
            ef_construction,
            entry,
            level0: self.level0,
            upper: self.upper,
            coded: self.coded,
        }
    }
}

/// Decodes a [`SavedGraph<SavedLinks>`]'s bytes as a [`FlatGraph`] of exactly `nodes` nodes
/// (the section's node slots, decoded before it). The level-0 array is reserved whole once the
/// graph's own node count is read and found equal to them, so neither count alone can make it
/// reserve more than the bytes left could hold. A graph refused for what it holds (not for the
/// bytes' encoding) leaves the reason in `rejection`.
pub(crate) struct FlatGraphSeed<'r> {
    pub nodes: usize,
    pub rejection: &'r mut Option<String>,
}

const GRAPH_FIELDS: &[&str] = &["dimension", "m", "ef_construction", "entry", "nodes"];

impl<'de> DeserializeSeed<'de> for FlatGraphSeed<'_> {
    type Value = FlatGraph;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FlatGraph, D::Error> {
        d.deserialize_struct("SavedGraph", GRAPH_FIELDS, self)
    }
}

/// The next element of a struct's sequence, or an error naming the missing field.
pub(crate) fn field<'de, T: serde::Deserialize<'de>, A: SeqAccess<'de>>(seq: &mut A, index: usize, name: &str) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| A::Error::custom(format!("field {index} ({name}) is missing")))
}

impl<'de> Visitor<'de> for FlatGraphSeed<'_> {
    type Value = FlatGraph;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a saved graph")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlatGraph, A::Error> {
        let dimension = field(&mut seq, 0, "dimension")?;
        let m = field(&mut seq, 1, "m")?;
        let ef_construction = field(&mut seq, 2, "ef_construction")?;
        let entry = field(&mut seq, 3, "entry")?;
        if let Err(reason) = check_m(m) {
            let error = A::Error::custom(&reason);
            *self.rejection = Some(reason);
            return Err(error);
        }
        // Reserved once the graph's node count is read and found equal to the slots' (below).
        let mut nodes = NodesBuilder::new(m, 0);
        let decoded = seq.next_element_seed(NodesSeed {
            nodes: &mut nodes,
            expected: self.nodes,
        });
        if nodes.rejection.is_some() {
            *self.rejection = nodes.rejection.take();
        }
        decoded?.ok_or_else(|| A::Error::custom("field 4 (nodes) is missing"))?;
        Ok(nodes.finish(dimension, m, ef_construction, entry))
    }
}

/// The graph's nodes, appended to the builder; there must be `expected` of them.
struct NodesSeed<'b> {
    nodes: &'b mut NodesBuilder,
    expected: usize,
}

impl<'de> DeserializeSeed<'de> for NodesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} graph nodes", self.expected)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // postcard gives the count only when at least as many bytes remain (none when they do
        // not: the decoding then fails on the way, having reserved nothing).
        if let Some(count) = seq.size_hint() {
            if count != self.expected {
                return self
                    .nodes
                    .reject(Err(format!("{count} graph nodes for {} node slots", self.expected)));
            }
            self.nodes.reserve(count);
        }
        while self.nodes.len() < self.expected {
            if seq.next_element_seed(NodeSeed { nodes: self.nodes })?.is_none() {
                break;
            }
        }
        if self.nodes.len() != self.expected || seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            let count = self.nodes.len();
            return self
                .nodes
                .reject(Err(format!("{count} or more graph nodes for {} node slots", self.expected)));
        }
        Ok(())
    }
}

/// One node (a [`SavedLinks`](super::hnsw::SavedLinks): its levels' links, then its codes if
/// saved), appended to the builder.
struct NodeSeed<'b> {
    nodes: &'b mut NodesBuilder,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("SavedLinks", &["links", "coded"], self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a graph node")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.nodes.begin_node();
        seq.next_element_seed(LevelsSeed { nodes: self.nodes })?
            .ok_or_else(|| A::Error::custom("a node's links are missing"))?;
        let coded: Option<SavedCodes> = field(&mut seq, 1, "coded")?;
        self.nodes.end_node(coded);
        Ok(())
    }
}

/// A node's levels, level 0 first: level 0's links go straight into the flat array.
struct LevelsSeed<'b> {
    nodes: &'b mut NodesBuilder,
}

impl<'de> DeserializeSeed<'de> for LevelsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LevelsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a node's levels")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if seq.next_element_seed(Level0Seed { nodes: self.nodes })?.is_none() {
            let node = self.nodes.len();
            return self.nodes.reject(Err(format!("node {node}: 0 levels")));
        }
        while let Some(links) = seq.next_element::<Vec<u32>>()? {
            let pushed = self.nodes.push_upper_level(links);
            self.nodes.reject(pushed)?;
        }
        Ok(())
    }
}

/// A node's level-0 links, written into its block of the flat array.
struct Level0Seed<'b> {
    nodes: &'b mut NodesBuilder,
}

impl<'de> DeserializeSeed<'de> for Level0Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Level0Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a node's level-0 links")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(link) = seq.next_element::<u32>()? {
            let pushed = self.nodes.push_level0_link(link);
            self.nodes.reject(pushed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::hnsw::{Hnsw, SavedLinks};
    use super::super::vector::Metric;
    use super::*;

    /// The graph decoded from `bytes`, or why not.
    fn decode(bytes: &[u8], nodes: usize) -> Result<FlatGraph, String> {
        let mut rejection = None;
        let seed = FlatGraphSeed {
            nodes,
            rejection: &mut rejection,
        };
        let decoded = seed.deserialize(&mut postcard::Deserializer::from_bytes(bytes));
        decoded.map_err(|e| rejection.unwrap_or_else(|| e.to_string()))
    }

    fn graph(nodes: usize, dimension: usize, seed: u64) -> Hnsw {
        let mut state = seed;
        let mut graph = Hnsw::with_parameters(Metric::L2, dimension, 4, 16);
        for _ in 0..nodes {
            let v: Vec<f32> = (0..dimension)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            graph.insert(&v);
        }
        graph
    }

    /// The seeded decoding reads the derived form's bytes into the same graph as the derived
    /// decoding followed by the conversion: links, levels, entry point, and which nodes kept
    /// their codes (a third of them here).
    #[test]
    fn decoding_into_the_flat_layout_equals_decoding_whole_then_converting() {
        for nodes in [0, 1, 2, 40, 700] {
            let saved = graph(nodes, 6, nodes as u64).export(nodes, |n| n % 3 == 0);
            let bytes = postcard::to_stdvec(&saved).unwrap();
            let flat = decode(&bytes, nodes).unwrap();
            let whole: SavedGraph<SavedLinks> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(flat, FlatGraph::from_saved(whole).unwrap(), "{nodes} nodes");
            assert_eq!(flat.len(), nodes);
            assert_eq!(
                flat.coded.iter().map(|(n, _)| *n as usize).collect::<Vec<_>>(),
                (0..nodes).step_by(3).collect::<Vec<_>>()
            );
        }
    }

    /// A node count other than the node slots', a node without levels, too many links on level
    /// 0, too many levels, `m` out of range, or bytes that end early: each is an error, never a
    /// panic or an allocation the file's counts chose.
    #[test]
    fn a_graph_that_does_not_fit_the_layout_is_refused() {
        let saved = graph(50, 3, 1).export(50, |_| false);
        let bytes = postcard::to_stdvec(&saved).unwrap();
        for slots in [0, 49, 51, 5000] {
            let error = decode(&bytes, slots).map(|_| ()).unwrap_err();
            assert!(error.ends_with(&format!("graph nodes for {slots} node slots")), "{slots}: {error}");
        }
        let refused = |edit: &dyn Fn(&mut SavedGraph<SavedLinks>), expected: &str| {
            let mut forged = graph(50, 3, 1).export(50, |_| false);
            edit(&mut forged);
            let error = decode(&postcard::to_stdvec(&forged).unwrap(), 50).map(|_| ()).unwrap_err();
            assert_eq!(error, expected);
            assert_eq!(FlatGraph::from_saved(forged).map(|_| ()).unwrap_err(), expected);
        };
        refused(&|g| g.nodes[7].links.clear(), "node 7: 0 levels");
        refused(&|g| g.nodes[8].links[0] = vec![1; 9], "node 8: more than 8 links on level 0");
        refused(&|g| g.nodes[9].links = vec![vec![]; MAX_LEVEL + 2], "node 9: more than 17 levels");
        refused(&|g| g.m = 1, "graph parameter m 1");
        refused(&|g| g.m = MAX_M + 1, "graph parameter m 1025");
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end], 50).is_err(), "cut at {end}");
        }
    }
}
