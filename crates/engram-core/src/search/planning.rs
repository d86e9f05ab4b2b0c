//! Graph insertions of a group of vectors, their searches run on several threads.
//!
//! An HNSW insertion is a search of the graph for the new vector's nearest nodes (about three
//! quarters of its CPU at 100k x 384), then the linking of the node to some of them. The search
//! only reads the graph, so the indexer runs the searches of a group of queued vectors at once,
//! each on the graph as it was before the group ([`Hnsw::plan_insert`]), on its own thread and
//! on short-lived helpers, and then links the vectors one by one in LSN order
//! ([`Hnsw::insert_planned`], which also offers each vector the group's earlier members as
//! candidates, since its search could not see them). On two cores this built a 50,000-vector
//! graph 1.2 to 1.6x faster when the second core was otherwise idle (docs/search.md, *Parallel
//! insertion*); when committing threads keep both cores busy it only moves the same work.
//!
//! The graph then depends on how the insertions were grouped, which depends on how many commits
//! were queued when the indexer woke: the same vectors indexed live and rebuilt at open give
//! graphs of the same quality, not the same links. A group of fewer than
//! [`MIN_PLANNED_INSERTIONS`] is inserted one by one, as before.

use super::hnsw::{Hnsw, InsertPlan};
use std::sync::OnceLock;

/// Changes applied as one group: the most insertions whose searches run together.
pub(crate) const PLANNED_GROUP_CHANGES: usize = 64;

/// Fewer insertions than this are not worth starting a thread for (a thread costs tens of
/// microseconds to start; one insertion at 100k x 384 about 200).
pub(crate) const MIN_PLANNED_INSERTIONS: usize = 8;

/// At most this many threads search at once (the indexer's and its helpers).
const MAX_PLANNING_THREADS: usize = 4;

/// One vector to insert: its position in the group, its prepared vector and the node number it
/// will get.
pub(crate) struct PlannedInsertion {
    pub position: usize,
    pub prepared: Vec<f32>,
    pub node: u32,
}

/// Threads used to search: the machine's available parallelism (cgroup quotas included), at
/// most [`MAX_PLANNING_THREADS`].
fn planning_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_PLANNING_THREADS)
    })
}

/// The plans of `insertions`, each with its position, computed on the calling thread and on
/// helper threads (which inherit its scheduling priority: the indexer's lowered one). A helper
/// that cannot be started leaves its share to the calling thread.
pub(crate) fn plan_insertions(graph: &Hnsw, insertions: &[PlannedInsertion]) -> Vec<(usize, InsertPlan)> {
    let plan = |part: &[PlannedInsertion]| -> Vec<(usize, InsertPlan)> {
        part.iter().map(|i| (i.position, graph.plan_insert(&i.prepared, i.node))).collect()
    };
    let threads = planning_threads();
    if threads == 1 || insertions.len() < MIN_PLANNED_INSERTIONS {
        return plan(insertions);
    }
    let share = insertions.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = insertions.chunks(share);
        let own = parts.next().unwrap_or(&[]);
        let helpers: Vec<_> = parts
            .map(|part| {
                let started = std::thread::Builder::new()
                    .name("engram-indexer".into())
                    .spawn_scoped(scope, move || plan(part));
                (part, started)
            })
            .collect();
        let mut plans = plan(own);
        for (part, started) in helpers {
            match started.map(|handle| handle.join()) {
                Ok(Ok(part_plans)) => plans.extend(part_plans),
                // Not started (or, impossibly, panicked): plan its part here.
                _ => plans.extend(plan(part)),
            }
        }
        plans
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::hnsw::tests::{insert_in_groups, shape};
    use crate::search::vector::Metric;

    /// A plan depends only on the graph it was made on, so the threads that made a group's
    /// plans cannot change the graph: planned on helpers or on one thread, the same links.
    #[test]
    fn plans_made_on_helper_threads_build_the_graph_one_thread_builds() {
        let metric = Metric::L2;
        let mut state = 99u64;
        let data: Vec<Vec<f32>> = (0..3_000)
            .map(|_| {
                (0..24)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                    })
                    .collect()
            })
            .collect();
        for group in [MIN_PLANNED_INSERTIONS, 37, PLANNED_GROUP_CHANGES] {
            let mut one_thread = Hnsw::new(metric, 24);
            insert_in_groups(&mut one_thread, &data, group);
            let mut helpers = Hnsw::new(metric, 24);
            for chunk in data.chunks(group) {
                let first = helpers.len() as u32;
                let insertions: Vec<PlannedInsertion> = chunk
                    .iter()
                    .enumerate()
                    .map(|(position, v)| PlannedInsertion {
                        position,
                        prepared: v.clone(),
                        node: first + position as u32,
                    })
                    .collect();
                let mut plans = plan_insertions(&helpers, &insertions);
                assert_eq!(plans.len(), chunk.len());
                plans.sort_by_key(|(position, _)| *position);
                for (_, plan) in plans {
                    helpers.insert_planned(plan);
                }
            }
            assert!(shape(&helpers) == shape(&one_thread), "groups of {group}");
        }
    }
}
