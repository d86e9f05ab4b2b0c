//! Compact vectors for the HNSW graph: per-vector symmetric int8 scalar quantisation.
//!
//! A prepared vector `v` (see [`Metric::prepare`]) is kept as `d` codes `c` in -127..=127 and one
//! scale `s = max|v_i| / 127`, with `v ≈ s·c` (each coordinate off by at most `s / 2`): 1 byte
//! per dimension instead of 4. Every metric's distance then comes from one integer dot product
//! `c_a·c_b` (i8 x i8 -> i32, which the compiler vectorises: sign-extend to i16, then
//! multiply-add pairs into i32, `vpmovsxbw` + `vpmaddwd` under AVX2):
//! cosine `1 - s_a s_b (c_a·c_b)`, dot `-s_a s_b (c_a·c_b)`, squared L2
//! `|a|² + |b|² - 2 s_a s_b (c_a·c_b)` with `|x|² = s_x² (c_x·c_x)` kept per vector.
//!
//! Why one scale per vector rather than one range per dimension (docs/search.md, *Compact
//! vectors*): the graph is built one insert at a time from the first vector on, so per-dimension
//! ranges would have to be guessed from the first vectors and every code re-encoded when later
//! data falls outside them; a per-vector scale needs nothing but the vector itself, cannot clip,
//! and gives the same integer kernel for all three metrics. Measured on the peer suite's set, the
//! two choices recall the same after the exact re-rank (docs/search.md).
//!
//! The codes only steer the graph (insertion and traversal); the final candidates of a search
//! are re-scored with the exact f32 distance from the memory's own embedding (search/index.rs).

use super::vector::Metric;

/// Largest code magnitude: codes are symmetric (-128 is never produced), so the error bound is
/// the same on both sides and a code's negation is a code.
pub(crate) const CODE_MAX: i8 = 127;

/// The per-vector numbers that go with its codes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CodeParams {
    /// `v ≈ scale · codes`.
    pub scale: f32,
    /// `scale² · (codes·codes)`: the squared length of the decoded vector (L2 needs it).
    pub squared_norm: f32,
}

impl CodeParams {
    /// The parameters of `codes` with `scale` (the squared norm is derived, never stored).
    pub fn of(codes: &[i8], scale: f32) -> CodeParams {
        CodeParams {
            scale,
            squared_norm: scale * scale * dot(codes, codes) as f32,
        }
    }
}

/// Appends the codes of `vector` to `codes` and returns their parameters. A zero vector gets
/// zero codes and scale 0 (it is then at distance 0 from everything under dot and cosine, as
/// the exact distance says too).
pub(crate) fn encode_into(vector: &[f32], codes: &mut Vec<i8>) -> CodeParams {
    let start = codes.len();
    codes.resize(start + vector.len(), 0);
    encode_to(vector, &mut codes[start..])
}

/// [`encode_into`] writing the codes into `codes`, which must be as long as `vector`.
pub(crate) fn encode_to(vector: &[f32], codes: &mut [i8]) -> CodeParams {
    debug_assert_eq!(codes.len(), vector.len());
    let scale = max_abs(vector) / f32::from(CODE_MAX);
    if scale > 0.0 && scale.is_finite() {
        for (code, x) in codes.iter_mut().zip(vector) {
            *code = round_to_code(x / scale);
        }
        CodeParams::of(codes, scale)
    } else {
        codes.fill(0);
        CodeParams {
            scale: 0.0,
            squared_norm: 0.0,
        }
    }
}

/// The largest magnitude in `vector` (NaN ignored, as `f32::max` does), over eight lanes so the
/// loop vectorises; `max` is exact whatever the order, so this equals the plain fold.
fn max_abs(vector: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let chunks = vector.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(0f32, |m, x| m.max(x.abs()));
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x.abs());
        }
    }
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// `scaled.round().clamp(-127.0, 127.0) as i8` (round half away from zero; NaN gives 0) without
/// the `roundf` library call per dimension, which does not vectorise: truncation (one
/// instruction, vectorisable), then a step away from zero when the dropped fraction is at least
/// one half. The fraction `q - trunc(q)` is exact for every float below 2^23 in magnitude, so
/// the result equals `round`'s bit for bit (the codes of a vector do not depend on the build).
#[inline]
fn round_to_code(scaled: f32) -> i8 {
    let limit = f32::from(CODE_MAX);
    // Clamping first changes nothing (every value past ±127 rounds to at least ±127, which the
    // clamp after rounding would give) and bounds the truncation; NaN becomes 0, as `as` makes it.
    let q = if scaled.is_nan() { 0.0 } else { scaled.clamp(-limit, limit) };
    // SAFETY: `q` is finite and within ±127, so its truncation fits an i32. (`as` would be
    // safe too, but its saturation and NaN handling keep the loop from vectorising.)
    let truncated: i32 = unsafe { q.to_int_unchecked() };
    let fraction = q - truncated as f32;
    let rounded = truncated + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5);
    rounded as i8
}

/// A query (or a node being inserted) encoded once for a whole traversal.
pub(crate) struct EncodedQuery {
    pub codes: Vec<i8>,
    pub params: CodeParams,
}

impl EncodedQuery {
    pub fn new(prepared: &[f32]) -> EncodedQuery {
        let mut codes = Vec::with_capacity(prepared.len());
        let params = encode_into(prepared, &mut codes);
        EncodedQuery { codes, params }
    }
}

impl Metric {
    /// The distance between two encoded vectors, as [`Metric::distance`] would give for their
    /// decoded forms (smaller is closer).
    #[inline]
    pub(crate) fn code_distance(self, a: &[i8], pa: CodeParams, b: &[i8], pb: CodeParams) -> f32 {
        let dot = pa.scale * pb.scale * dot(a, b) as f32;
        match self {
            Metric::Cosine => 1.0 - dot,
            Metric::Dot => -dot,
            Metric::L2 => pa.squared_norm + pb.squared_norm - 2.0 * dot,
        }
    }
}

/// The integer inner product of two code vectors (each code in -127..=127), with the kernel
/// chosen once for the host CPU (AVX2 where present). Exact: integer sums do not depend on the
/// order of the additions, so both kernels give the same result. At most 4096 x 127² =
/// 66,064,384 in magnitude: no overflow.
#[inline]
pub(crate) fn dot(a: &[i8], b: &[i8]) -> i32 {
    (*KERNEL)(a, b)
}

/// An integer inner product of two code vectors.
type DotKernel = fn(&[i8], &[i8]) -> i32;

static KERNEL: std::sync::LazyLock<DotKernel> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        return |a, b| {
            // SAFETY: only reachable when the CPU reported AVX2 (just above).
            unsafe { x86::dot_avx2(a, b) }
        };
    }
    portable_dot
});

/// The plain loop; the compiler vectorises it (integer sums may be reordered freely). Under
/// AVX2 it becomes `vpmovsxbw` + `vpmaddwd` on 128-bit halves (read in the assembly), which
/// measured 33 ns per 384-code product against 13.5 ns for the kernel below, so AVX2 CPUs get
/// that one and this is the fallback.
fn portable_dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 32 codes per step: `vpmaddubsw` multiplies unsigned by signed bytes and adds adjacent
    /// pairs into i16, so the signs are moved onto one side first (|a| and b·sign(a), both
    /// with `vpsignb`); with codes in -127..=127 a pair sums to at most 2·127² = 32,258, so
    /// the i16 never saturates. `vpmaddwd` by ones then widens the pairs into i32 lanes.
    /// A code of -128 would break this (its negation wraps): codes never hold it (encode
    /// never produces it and an index file holding it is refused).
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        let (a, b) = (&a[..length], &b[..length]);
        let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
        let tail: i32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for (x, y) in ca.zip(cb) {
            // SAFETY: each chunk is exactly 32 bytes, and the loads are unaligned ones.
            let (x, y) = unsafe { (_mm256_loadu_si256(x.as_ptr().cast()), _mm256_loadu_si256(y.as_ptr().cast())) };
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        }
        let half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let quarter = _mm_add_epi32(half, _mm_shuffle_epi32::<0b01_00_11_10>(half));
        let lane = _mm_add_epi32(quarter, _mm_shuffle_epi32::<0b10_11_00_01>(quarter));
        _mm_cvtsi128_si32(lane) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn exact_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
    }

    #[test]
    fn both_kernels_equal_a_plain_integer_sum_around_every_chunk_boundary() {
        let mut seed = 3u64;
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 383, 384, 385, 4096] {
            let a: Vec<i8> = (0..len).map(|_| (lcg(&mut seed) * 254.0) as i8).collect();
            let b: Vec<i8> = (0..len).map(|_| (lcg(&mut seed) * 254.0) as i8).collect();
            let plain: i32 = a.iter().zip(&b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            assert_eq!(portable_dot(&a, &b), plain, "length {len}");
            assert_eq!(dot(&a, &b), plain, "length {len}");
        }
        // The extremes: no overflow at the largest dimension.
        let max = vec![CODE_MAX; 4096];
        let min = vec![-CODE_MAX; 4096];
        assert_eq!(dot(&max, &max), 4096 * 127 * 127);
        assert_eq!(dot(&max, &min), -4096 * 127 * 127);
    }

    /// Each decoded coordinate is within half a step of the original, and the code distance of
    /// every metric is within the bound that follows from it: with `e = v̂ - v`, `|e_i| <= s/2`,
    /// `|â·b̂ - a·b| <= |a|₁ s_b/2 + |b|₁ s_a/2 + d s_a s_b/4`.
    #[test]
    fn code_distances_are_within_the_quantisation_error_bound() {
        let mut seed = 9u64;
        for dimension in [1, 2, 7, 64, 384] {
            for round in 0..50 {
                let magnitude = [1e-3f32, 1.0, 40.0][round % 3];
                let a: Vec<f32> = (0..dimension).map(|_| lcg(&mut seed) * magnitude).collect();
                let b: Vec<f32> = (0..dimension).map(|_| lcg(&mut seed) * magnitude * 3.0).collect();
                let (mut ca, mut cb) = (Vec::new(), Vec::new());
                let (pa, pb) = (encode_into(&a, &mut ca), encode_into(&b, &mut cb));
                assert!(ca.iter().chain(&cb).all(|&c| c >= -CODE_MAX));
                for (v, c, p) in [(&a, &ca, pa), (&b, &cb, pb)] {
                    for (x, &code) in v.iter().zip(c) {
                        assert!((f64::from(p.scale) * f64::from(code) - f64::from(*x)).abs() <= f64::from(p.scale) * 0.5 * 1.0001);
                    }
                }
                let l1 = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
                let (sa, sb) = (f64::from(pa.scale), f64::from(pb.scale));
                let dot_bound = l1(&a) * sb / 2.0 + l1(&b) * sa / 2.0 + dimension as f64 * sa * sb / 4.0;
                // f32 rounding of the scaled integer result, on top of the quantisation bound.
                let slack = |x: f64| x * 1e-5 + 1e-6;
                let exact = exact_dot(&a, &b);
                let got = f64::from(Metric::Dot.code_distance(&ca, pa, &cb, pb));
                assert!(
                    (-got - exact).abs() <= dot_bound + slack(exact.abs() + dot_bound),
                    "dot, dimension {dimension}"
                );
                let norm_bound = |v: &[f32], s: f64| 2.0 * l1(v) * s / 2.0 + dimension as f64 * s * s / 4.0;
                let l2_bound = norm_bound(&a, sa) + norm_bound(&b, sb) + 2.0 * dot_bound;
                let exact_l2 = exact_dot(&a, &a) + exact_dot(&b, &b) - 2.0 * exact;
                let got_l2 = f64::from(Metric::L2.code_distance(&ca, pa, &cb, pb));
                let scale = exact_dot(&a, &a) + exact_dot(&b, &b);
                assert!(
                    (got_l2 - exact_l2).abs() <= l2_bound + slack(scale + l2_bound),
                    "l2, dimension {dimension}"
                );
            }
        }
    }

    /// The reference the fast rounding replaces.
    fn reference_code(scaled: f32) -> i8 {
        let limit = f32::from(CODE_MAX);
        scaled.round().clamp(-limit, limit) as i8
    }

    /// Bit-for-bit the same codes as `round` then clamp: on every half-step tie and its float
    /// neighbours (where a rounding shortcut such as adding 0.5 goes wrong), past the clamp,
    /// on NaN and infinities, and on random vectors through `encode_into`.
    #[test]
    fn fast_rounding_equals_round_then_clamp_everywhere_it_can_differ() {
        let mut probes = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            1e-30,
            -1e-30,
        ];
        for half_steps in -300i32..=300 {
            let tie = half_steps as f32 * 0.5;
            for x in [tie, tie.next_up(), tie.next_down()] {
                probes.extend([x, -x]);
            }
        }
        probes.extend([127.49999, 127.5, 128.0, 1e9, -1e9, f32::MAX, f32::MIN]);
        for &x in &probes {
            assert_eq!(round_to_code(x), reference_code(x), "{x:e} ({:#010x})", x.to_bits());
        }
        let mut seed = 21u64;
        for dimension in [1, 3, 8, 9, 384, 385] {
            for magnitude in [1e-20f32, 1e-3, 1.0, 3e4] {
                let v: Vec<f32> = (0..dimension).map(|_| lcg(&mut seed) * magnitude).collect();
                let max_abs = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                let scale = max_abs / f32::from(CODE_MAX);
                let mut codes = vec![5i8];
                let params = encode_into(&v, &mut codes);
                assert_eq!(codes[0], 5, "appends after what is there");
                let expected: Vec<i8> = v.iter().map(|x| reference_code(x / scale)).collect();
                assert_eq!(&codes[1..], expected.as_slice(), "dimension {dimension}, magnitude {magnitude}");
                assert_eq!(params.scale.to_bits(), scale.to_bits());
            }
        }
    }

    #[test]
    fn zero_and_one_hot_vectors_encode_exactly() {
        let mut codes = Vec::new();
        let zero = encode_into(&[0.0; 5], &mut codes);
        assert_eq!((zero.scale, zero.squared_norm), (0.0, 0.0));
        assert_eq!(codes, vec![0; 5]);
        codes.clear();
        let hot = encode_into(&[0.0, -2.5, 0.0], &mut codes);
        assert_eq!(codes, vec![0, -127, 0]);
        assert!((hot.squared_norm - 6.25).abs() < 1e-5);
        // A vector whose scale underflows to zero encodes as the zero vector instead of dividing by it.
        codes.clear();
        let tiny = encode_into(&[f32::from_bits(1), 0.0], &mut codes);
        assert_eq!((tiny.scale, codes.as_slice()), (0.0, &[0i8, 0][..]));
    }
}
