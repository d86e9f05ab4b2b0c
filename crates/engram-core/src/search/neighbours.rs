//! Graph neighbours: the entities reachable from one entity in at most `depth` hops over
//! relations of the chosen types, following them in the chosen direction, at the view's
//! snapshot (so `Database::as_of(..)` gives the neighbourhood as it was).

use super::{Direction, MAX_NEIGHBOUR_DEPTH};
use crate::error::{CoreError, Result};
use crate::graph::{GraphReads, KnowledgeGraph};
use crate::names::{validate_label, validate_namespace};
use std::collections::HashSet;

/// The entity itself, every entity reached in 1..=depth hops, and the relations walked, each list
/// in insertion order. A relation end that is not an entity (the reference server allows them)
/// is walked through but not listed as an entity. `relation_types` empty means every type.
pub(crate) fn neighbours<V: GraphReads + ?Sized>(
    view: &V,
    namespace: &str,
    entity: &str,
    depth: usize,
    relation_types: &[String],
    direction: Direction,
) -> Result<KnowledgeGraph> {
    validate_namespace(namespace)?;
    validate_label("entity name", entity)?;
    if depth > MAX_NEIGHBOUR_DEPTH {
        return Err(CoreError::OutOfRange {
            what: "neighbour depth",
            got: depth,
            min: 0,
            max: MAX_NEIGHBOUR_DEPTH,
        });
    }
    let graph = view.read_graph(namespace)?;
    if !graph.entities.iter().any(|e| e.name == entity) {
        return Err(CoreError::NotFound {
            what: "entity",
            namespace: namespace.to_string(),
            id: entity.to_string(),
        });
    }
    let type_allowed = |t: &str| relation_types.is_empty() || relation_types.iter().any(|r| r == t);
    let outgoing = matches!(direction, Direction::Outgoing | Direction::Both);
    let incoming = matches!(direction, Direction::Incoming | Direction::Both);
    let mut reached: HashSet<&str> = HashSet::from([entity]);
    let mut frontier: HashSet<&str> = HashSet::from([entity]);
    let mut walked: HashSet<usize> = HashSet::new();
    for _ in 0..depth {
        let mut next: HashSet<&str> = HashSet::new();
        for (i, r) in graph.relations.iter().enumerate() {
            if !type_allowed(&r.relation_type) {
                continue;
            }
            let (from, to) = (r.from.as_str(), r.to.as_str());
            if outgoing && frontier.contains(from) {
                walked.insert(i);
                if !reached.contains(to) {
                    next.insert(to);
                }
            }
            if incoming && frontier.contains(to) {
                walked.insert(i);
                if !reached.contains(from) {
                    next.insert(from);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        reached.extend(next.iter().copied());
        frontier = next;
    }
    let entities = graph
        .entities
        .iter()
        .filter(|e| reached.contains(e.name.as_str()))
        .cloned()
        .collect();
    let relations = graph
        .relations
        .iter()
        .enumerate()
        .filter(|(i, _)| walked.contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    Ok(KnowledgeGraph { entities, relations })
}
