//! Vector similarity: the three metrics, the distances the index orders by, and exact k-NN.

use serde::{Deserialize, Serialize};

/// How a namespace compares embeddings. Fixed per namespace (cosine unless declared otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalised once when indexed.
    #[default]
    Cosine,
    /// Inner product (for embeddings that are already normalised, or where magnitude matters).
    Dot,
    /// Euclidean distance.
    L2,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Metric> {
        match name {
            "cosine" => Some(Metric::Cosine),
            "dot" => Some(Metric::Dot),
            "l2" => Some(Metric::L2),
            _ => None,
        }
    }

    /// The vector as the index stores it: unit length for cosine (a zero vector stays zero, and
    /// is then at similarity 0 from everything), unchanged otherwise.
    pub(crate) fn prepare(self, vector: &[f32]) -> Vec<f32> {
        match self {
            Metric::Cosine => {
                let norm = dot(vector, vector).sqrt();
                if norm > 0.0 {
                    vector.iter().map(|x| x / norm).collect()
                } else {
                    vector.to_vec()
                }
            }
            Metric::Dot | Metric::L2 => vector.to_vec(),
        }
    }

    /// A distance between two prepared vectors: smaller is closer. Cosine: 1 - cos; dot: -dot;
    /// L2: the squared Euclidean distance (same order as the distance, without the root).
    #[inline]
    pub(crate) fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => 1.0 - dot(a, b),
            Metric::Dot => -dot(a, b),
            Metric::L2 => squared_l2(a, b),
        }
    }

    /// The score reported to callers, larger is better: the cosine similarity, the inner
    /// product, or the negated Euclidean distance.
    pub(crate) fn score(self, distance: f32) -> f32 {
        match self {
            Metric::Cosine => 1.0 - distance,
            Metric::Dot => -distance,
            Metric::L2 => -distance.max(0.0).sqrt(),
        }
    }
}

/// Eight independent accumulators over exact 8-lane chunks (no bounds checks in the loop), so
/// that the compiler vectorises it without reordering a single float sum, which it may not do
/// on its own.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline]
pub(crate) fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    let mut acc = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A (distance, node) pair ordered by distance, then node, so that ties break the same way on
/// every run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored {
    pub distance: f32,
    pub node: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.distance.total_cmp(&other.distance).then(self.node.cmp(&other.node))
    }
}

/// Keeps the `k` smallest of the pairs pushed into it (a bounded max-heap).
pub(crate) struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<Scored>,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    pub fn push(&mut self, item: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(worst) = self.heap.peek() {
            if item < *worst {
                self.heap.pop();
                self.heap.push(item);
            }
        }
    }

    /// Nearest first.
    pub fn into_sorted(self) -> Vec<Scored> {
        self.heap.into_sorted_vec()
    }
}
