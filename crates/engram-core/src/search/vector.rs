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
        let mut prepared = Vec::with_capacity(vector.len());
        self.prepare_into(vector, &mut prepared);
        prepared
    }

    /// [`Metric::prepare`] into a reused buffer.
    pub(crate) fn prepare_into(self, vector: &[f32], prepared: &mut Vec<f32>) {
        prepared.clear();
        match self {
            Metric::Cosine => {
                let norm = dot(vector, vector).sqrt();
                if norm > 0.0 {
                    prepared.extend(vector.iter().map(|x| x / norm));
                } else {
                    prepared.extend_from_slice(vector);
                }
            }
            Metric::Dot | Metric::L2 => prepared.extend_from_slice(vector),
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

    /// [`Metric::distance`] from a prepared query to a vector that was not prepared, without
    /// preparing it: for cosine, the inner product and the vector's norm in one pass (equal to
    /// the distance to the normalised vector up to rounding). What every exact score uses: the
    /// scan of the queued tail, where each vector is seen once per search, and the index's
    /// re-scoring, so that both give a memory the same bits.
    #[inline]
    pub(crate) fn distance_to_unprepared(self, prepared_query: &[f32], vector: &[f32]) -> f32 {
        match self {
            Metric::Cosine => {
                let (inner, squared_norm) = dot_and_squared_norm(prepared_query, vector);
                if squared_norm > 0.0 {
                    1.0 - inner / squared_norm.sqrt()
                } else {
                    1.0 - inner
                }
            }
            // Dot and L2 prepare a vector as it is stored.
            Metric::Dot | Metric::L2 => self.distance(prepared_query, vector),
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

/// The inner product, with the kernel chosen once for the host CPU: AVX2 + FMA where the CPU has
/// them (x86-64), the portable kernel otherwise. Results may differ in the last bits between the
/// two (fused multiply-add rounds once), never between two calls on one machine.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    (KERNELS.dot)(a, b)
}

#[inline]
pub(crate) fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    (KERNELS.squared_l2)(a, b)
}

/// The inner product of `a` and `b` and that of `b` with itself, in one pass over both.
#[inline]
pub(crate) fn dot_and_squared_norm(a: &[f32], b: &[f32]) -> (f32, f32) {
    (KERNELS.dot_and_squared_norm)(a, b)
}

struct Kernels {
    dot: fn(&[f32], &[f32]) -> f32,
    squared_l2: fn(&[f32], &[f32]) -> f32,
    dot_and_squared_norm: fn(&[f32], &[f32]) -> (f32, f32),
}

static KERNELS: std::sync::LazyLock<Kernels> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernels) = x86::kernels() {
        return kernels;
    }
    Kernels {
        dot: portable::dot,
        squared_l2: portable::squared_l2,
        dot_and_squared_norm: portable::dot_and_squared_norm,
    }
});

/// Independent accumulators over exact chunks of `LANES` floats (no bounds checks in the loop),
/// so that the compiler vectorises the loop without reordering a single float sum, which it may
/// not do on its own. Compiled twice: for the baseline target and, on x86-64, with AVX2 + FMA.
macro_rules! kernels {
    ($lanes:literal, $multiply_add:path) => {
        #[inline(always)]
        pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
            let (ca, cb) = (a.chunks_exact($lanes), b.chunks_exact($lanes));
            let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
            let mut acc = [0f32; $lanes];
            for (x, y) in ca.zip(cb) {
                for i in 0..$lanes {
                    acc[i] = $multiply_add(x[i], y[i], acc[i]);
                }
            }
            acc.iter().sum::<f32>() + tail
        }

        #[inline(always)]
        pub(super) fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
            let (ca, cb) = (a.chunks_exact($lanes), b.chunks_exact($lanes));
            let tail: f32 = ca
                .remainder()
                .iter()
                .zip(cb.remainder())
                .map(|(x, y)| (x - y) * (x - y))
                .sum();
            let mut acc = [0f32; $lanes];
            for (x, y) in ca.zip(cb) {
                for i in 0..$lanes {
                    let d = x[i] - y[i];
                    acc[i] = $multiply_add(d, d, acc[i]);
                }
            }
            acc.iter().sum::<f32>() + tail
        }

        #[inline(always)]
        pub(super) fn dot_and_squared_norm(a: &[f32], b: &[f32]) -> (f32, f32) {
            let (ca, cb) = (a.chunks_exact($lanes), b.chunks_exact($lanes));
            let (mut tail_dot, mut tail_norm) = (0f32, 0f32);
            for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
                tail_dot += x * y;
                tail_norm += y * y;
            }
            let mut acc_dot = [0f32; $lanes];
            let mut acc_norm = [0f32; $lanes];
            for (x, y) in ca.zip(cb) {
                for i in 0..$lanes {
                    acc_dot[i] = $multiply_add(x[i], y[i], acc_dot[i]);
                    acc_norm[i] = $multiply_add(y[i], y[i], acc_norm[i]);
                }
            }
            (
                acc_dot.iter().sum::<f32>() + tail_dot,
                acc_norm.iter().sum::<f32>() + tail_norm,
            )
        }
    };
}

/// Separate multiply and add: without FMA in the target, `mul_add` would be a library call.
#[inline(always)]
fn multiply_then_add(x: f32, y: f32, acc: f32) -> f32 {
    acc + x * y
}

mod portable {
    kernels!(8, super::multiply_then_add);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // 16 lanes (two 8-float accumulators). Tried and not kept (docs/search.md): 32 lanes
    // measured the same per search, and a 64-lane AVX-512 kernel slower.
    mod fused {
        kernels!(16, f32::mul_add);
    }

    /// The AVX2 + FMA kernels, if the CPU has both.
    pub(super) fn kernels() -> Option<super::Kernels> {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Some(super::Kernels {
                dot: |a, b| {
                    // SAFETY: only reachable when the CPU reported AVX2 and FMA (just above).
                    unsafe { dot_avx2_fma(a, b) }
                },
                squared_l2: |a, b| {
                    // SAFETY: as above.
                    unsafe { squared_l2_avx2_fma(a, b) }
                },
                dot_and_squared_norm: |a, b| {
                    // SAFETY: as above.
                    unsafe { dot_and_squared_norm_avx2_fma(a, b) }
                },
            })
        } else {
            None
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        fused::dot(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn squared_l2_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        fused::squared_l2(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_and_squared_norm_avx2_fma(a: &[f32], b: &[f32]) -> (f32, f32) {
        fused::dot_and_squared_norm(a, b)
    }
}

#[cfg(test)]
mod kernel_tests {
    /// The selected kernels agree with a plain f64 sum on lengths around every chunk boundary.
    #[test]
    fn kernels_match_a_double_precision_sum() {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 384, 385] {
            let a: Vec<f32> = (0..len).map(|_| next()).collect();
            let b: Vec<f32> = (0..len).map(|_| next()).collect();
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let l2: f64 = a.iter().zip(&b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
            assert!((f64::from(super::dot(&a, &b)) - dot).abs() < 1e-4, "dot, length {len}");
            assert!((f64::from(super::squared_l2(&a, &b)) - l2).abs() < 1e-4, "l2, length {len}");
            assert!(
                (f64::from(super::portable::dot(&a, &b)) - dot).abs() < 1e-4,
                "portable dot, length {len}"
            );
            let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
            for (kernel, (fused_dot, fused_norm)) in [
                ("selected", super::dot_and_squared_norm(&a, &b)),
                ("portable", super::portable::dot_and_squared_norm(&a, &b)),
            ] {
                assert!((f64::from(fused_dot) - dot).abs() < 1e-4, "{kernel} fused dot, length {len}");
                assert!((f64::from(fused_norm) - norm).abs() < 1e-4, "{kernel} fused norm, length {len}");
            }
        }
    }

    /// The distance to a vector that is not prepared (every exact score) is, up to rounding,
    /// the distance to the prepared vector, for every metric, including the zero vector (which
    /// cosine leaves as it is).
    #[test]
    fn distance_to_an_unprepared_vector_is_the_distance_to_the_prepared_one() {
        use super::Metric;
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        };
        for len in [1, 3, 16, 17, 384] {
            let query: Vec<f32> = (0..len).map(|_| next()).collect();
            let vectors = [(0..len).map(|_| next()).collect::<Vec<f32>>(), vec![0.0; len]];
            for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
                let prepared_query = metric.prepare(&query);
                for vector in &vectors {
                    let expected = metric.distance(&prepared_query, &metric.prepare(vector));
                    let got = metric.distance_to_unprepared(&prepared_query, vector);
                    let tolerance = 1e-5 * expected.abs().max(1.0);
                    assert!((got - expected).abs() <= tolerance, "{metric:?}, length {len}: {got} vs {expected}");
                }
            }
        }
    }
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

/// Asks the CPU to start loading the cache line holding `value` (a hint: it never faults and
/// changes nothing), so that a load that follows soon does not stall on memory.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch only hints (the address is
        // that of a live reference anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
