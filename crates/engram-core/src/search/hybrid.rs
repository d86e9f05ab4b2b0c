//! Hybrid ranking: reciprocal rank fusion (Cormack, Clarke & Büttcher, 2009) of the vector and
//! keyword rankings. A document's fused score is the sum over the rankings it appears in of
//! `1 / (RRF_K + rank)` (rank 1-based); scores of different signals never need calibrating.

use super::SignalScore;

/// The constant of the RRF paper (and of most engines' defaults).
pub const RRF_K: f32 = 60.0;

/// One fused result: the item, its fused score, and its place in each ranking.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fused<T> {
    pub item: T,
    pub score: f32,
    pub vector: Option<SignalScore>,
    pub keyword: Option<SignalScore>,
}

/// Fuses two rankings (best first, `(item, signal score)`) into one, best first; ties go to the
/// item with the better single rank, then to the smaller item.
pub(crate) fn fuse<T: Copy + Eq + Ord + std::hash::Hash>(vector: &[(T, f32)], keyword: &[(T, f32)]) -> Vec<Fused<T>> {
    let mut fused: std::collections::HashMap<T, Fused<T>> = std::collections::HashMap::new();
    for (signal, ranking) in [(0, vector), (1, keyword)] {
        for (i, &(item, score)) in ranking.iter().enumerate() {
            let rank = i + 1;
            let entry = fused.entry(item).or_insert(Fused {
                item,
                score: 0.0,
                vector: None,
                keyword: None,
            });
            entry.score += 1.0 / (RRF_K + rank as f32);
            let place = Some(SignalScore { rank, score });
            if signal == 0 {
                entry.vector = place;
            } else {
                entry.keyword = place;
            }
        }
    }
    let best_rank = |f: &Fused<T>| {
        f.vector
            .map_or(usize::MAX, |s| s.rank)
            .min(f.keyword.map_or(usize::MAX, |s| s.rank))
    };
    let mut out: Vec<Fused<T>> = fused.into_values().collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| best_rank(a).cmp(&best_rank(b)))
            .then_with(|| a.item.cmp(&b.item))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_in_both_rankings_beats_items_in_one() {
        let fused = fuse(&[(1u32, 0.9), (2, 0.8)], &[(3u32, 7.0), (2, 5.0)]);
        let order: Vec<u32> = fused.iter().map(|f| f.item).collect();
        assert_eq!(order, vec![2, 1, 3]);
        assert!((fused[0].score - (1.0 / 62.0 + 1.0 / 62.0)).abs() < 1e-7);
        assert_eq!(fused[0].vector, Some(SignalScore { rank: 2, score: 0.8 }));
        assert_eq!(fused[0].keyword, Some(SignalScore { rank: 2, score: 5.0 }));
        assert_eq!(fused[2].vector, None);
    }
}
