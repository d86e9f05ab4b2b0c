//! The knowledge graph, with the semantics of the MCP reference memory server:
//! - creating an entity whose name exists skips it; identical relation triples are stored once;
//! - adding observations to a missing entity fails the whole call and changes nothing;
//!   duplicate observation strings are skipped;
//! - deleting an entity deletes every relation that touches it; deleting what is missing is a
//!   no-op;
//! - reads list entities and relations in insertion order;
//! - `search_nodes` matches a case-insensitive substring of name, type or any observation;
//!   `search_nodes` and `open_nodes` return the relations with at least one end in the result
//!   (the published reference since 2026: a node's connections to nodes outside the result are
//!   listed; older releases required both ends).
//!
//! One difference, on purpose: names are keys here, so duplicates *within one call* are also
//! stored once (the reference server would store both copies).

use crate::error::{CoreError, Result};
use crate::model::{Entity, Key, Relation, Space, Value};
use crate::names::{validate_label, validate_namespace, validate_size, MAX_TEXT_BYTES};
use crate::retention::RetainedView;
use crate::store::{CreationOrder, VersionInfo};
use crate::txn::{ReadView, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The whole graph (or a part of it), in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnowledgeGraph {
    pub entities: Vec<Entity>,
    pub relations: Vec<Relation>,
}

/// Result of `add_observations` for one entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddedObservations {
    pub entity_name: String,
    pub added_observations: Vec<String>,
}

fn entity_key(namespace: &str, name: &str) -> Key {
    Key::new(namespace, Space::Entity, name.as_bytes().to_vec())
}

fn validate_entity(e: &Entity) -> Result<()> {
    validate_label("entity name", &e.name)?;
    validate_label("entity type", &e.entity_type)?;
    e.observations.iter().try_for_each(|o| validate_observation(o))
}

fn validate_observation(o: &str) -> Result<()> {
    validate_size("observation", o.len(), MAX_TEXT_BYTES)
}

fn validate_relation(r: &Relation) -> Result<()> {
    validate_label("relation source", &r.from)?;
    validate_label("relation target", &r.to)?;
    validate_label("relation type", &r.relation_type)
}

fn dedupe_observations(observations: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    observations.iter().filter(|o| seen.insert(o.as_str())).cloned().collect()
}

impl Transaction {
    /// Creates the entities whose names do not exist yet; returns those it created.
    pub fn create_entities(&mut self, namespace: &str, entities: &[Entity]) -> Result<Vec<Entity>> {
        validate_namespace(namespace)?;
        entities.iter().try_for_each(validate_entity)?;
        let mut created: Vec<Entity> = Vec::new();
        for e in entities {
            let key = entity_key(namespace, &e.name);
            if self.get_value(&key).is_some() || created.iter().any(|c| c.name == e.name) {
                continue;
            }
            created.push(Entity {
                name: e.name.clone(),
                entity_type: e.entity_type.clone(),
                observations: dedupe_observations(&e.observations),
            });
        }
        // Reads first, writes after the check, so that a refused call buffers nothing.
        self.check_retained()?;
        for entity in &created {
            self.put(entity_key(namespace, &entity.name), Value::Entity(entity.clone()));
        }
        Ok(created)
    }

    /// Creates the relations not stored yet; returns those it created. Like the reference
    /// server, the ends need not exist as entities.
    pub fn create_relations(&mut self, namespace: &str, relations: &[Relation]) -> Result<Vec<Relation>> {
        validate_namespace(namespace)?;
        relations.iter().try_for_each(validate_relation)?;
        let mut created: Vec<Relation> = Vec::new();
        for r in relations {
            if self.get_value(&Key::relation(namespace, r)).is_some() || created.contains(r) {
                continue;
            }
            created.push(r.clone());
        }
        self.check_retained()?;
        for r in &created {
            self.put(Key::relation(namespace, r), Value::Relation(r.clone()));
        }
        Ok(created)
    }

    /// Adds observations; fails as a whole (changing nothing) if any entity is missing.
    pub fn add_observations(&mut self, namespace: &str, additions: &[(String, Vec<String>)]) -> Result<Vec<AddedObservations>> {
        validate_namespace(namespace)?;
        let mut updated: Vec<(Key, Entity, Vec<String>)> = Vec::new();
        for (name, contents) in additions {
            contents.iter().try_for_each(|o| validate_observation(o))?;
            let key = entity_key(namespace, name);
            // A name may appear twice in one call: build on the copy already updated.
            let current = match updated.iter().position(|(k, _, _)| *k == key) {
                Some(i) => Some(updated[i].1.clone()),
                None => match self.get_value(&key) {
                    Some(Value::Entity(e)) => Some(e),
                    _ => None,
                },
            };
            let Some(mut entity) = current else {
                // Absent, or pruned from under an old snapshot: only the first is `NotFound`.
                self.check_retained()?;
                return Err(CoreError::NotFound {
                    what: "entity",
                    namespace: namespace.to_string(),
                    id: name.clone(),
                });
            };
            let mut added = Vec::new();
            for c in contents {
                if !entity.observations.contains(c) {
                    entity.observations.push(c.clone());
                    added.push(c.clone());
                }
            }
            match updated.iter_mut().find(|(k, _, _)| *k == key) {
                Some(slot) => {
                    slot.1 = entity;
                    slot.2.extend(added);
                }
                None => updated.push((key, entity, added)),
            }
        }
        self.check_retained()?;
        let mut results = Vec::new();
        for (key, entity, added) in updated {
            results.push(AddedObservations {
                entity_name: entity.name.clone(),
                added_observations: added,
            });
            self.put(key, Value::Entity(entity));
        }
        Ok(results)
    }

    /// Deletes entities and every relation from or to them. Missing names are ignored.
    pub fn delete_entities(&mut self, namespace: &str, names: &[String]) -> Result<()> {
        validate_namespace(namespace)?;
        let doomed: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for (key, value, _) in self.scan_values(namespace, Space::Relation, b"") {
            if let Value::Relation(r) = value {
                if doomed.contains(r.from.as_str()) || doomed.contains(r.to.as_str()) {
                    removed.push(key);
                }
            }
        }
        for name in names {
            let key = entity_key(namespace, name);
            if self.get_value(&key).is_some() && !removed.contains(&key) {
                removed.push(key);
            }
        }
        self.check_retained()?;
        for key in removed {
            self.remove(key);
        }
        Ok(())
    }

    /// Removes the given observation strings from entities; missing entities are ignored.
    pub fn delete_observations(&mut self, namespace: &str, deletions: &[(String, Vec<String>)]) -> Result<()> {
        validate_namespace(namespace)?;
        // (key, entity, changed) in first-seen order; a name may appear twice in one call.
        let mut updated: Vec<(Key, Entity, bool)> = Vec::new();
        for (name, observations) in deletions {
            let key = entity_key(namespace, name);
            let slot = match updated.iter().position(|(k, _, _)| *k == key) {
                Some(i) => i,
                None => match self.get_value(&key) {
                    Some(Value::Entity(e)) => {
                        updated.push((key, e, false));
                        updated.len() - 1
                    }
                    _ => continue,
                },
            };
            let (_, entity, changed) = &mut updated[slot];
            let before = entity.observations.len();
            entity.observations.retain(|o| !observations.contains(o));
            *changed |= entity.observations.len() != before;
        }
        self.check_retained()?;
        for (key, entity, changed) in updated {
            if changed {
                self.put(key, Value::Entity(entity));
            }
        }
        Ok(())
    }

    /// Deletes the given relation triples; missing ones are ignored.
    pub fn delete_relations(&mut self, namespace: &str, relations: &[Relation]) -> Result<()> {
        validate_namespace(namespace)?;
        let mut removed = Vec::new();
        for r in relations {
            let key = Key::relation(namespace, r);
            if self.get_value(&key).is_some() && !removed.contains(&key) {
                removed.push(key);
            }
        }
        self.check_retained()?;
        for key in removed {
            self.remove(key);
        }
        Ok(())
    }
}

fn in_insertion_order<T>(mut items: Vec<(CreationOrder, T)>) -> Vec<T> {
    items.sort_by_key(|(order, _)| *order);
    items.into_iter().map(|(_, item)| item).collect()
}

/// Reads of the graph, available on snapshots and transactions. Each fails with
/// `HistoryNotRetained` if the view reads below the history horizon.
pub trait GraphReads: RetainedView {
    fn read_graph(&self, namespace: &str) -> Result<KnowledgeGraph> {
        validate_namespace(namespace)?;
        let entity_items = self.scan_values(namespace, Space::Entity, b"");
        let relation_items = self.scan_values(namespace, Space::Relation, b"");
        self.check_retained()?;
        let entities = entity_items
            .into_iter()
            .filter_map(|(_, v, o)| if let Value::Entity(e) = v { Some((o, e)) } else { None })
            .collect();
        let relations = relation_items
            .into_iter()
            .filter_map(|(_, v, o)| if let Value::Relation(r) = v { Some((o, r)) } else { None })
            .collect();
        Ok(KnowledgeGraph {
            entities: in_insertion_order(entities),
            relations: in_insertion_order(relations),
        })
    }

    /// Entities whose name, type or an observation contains `query` (case-insensitive), and
    /// the relations that touch them.
    fn search_nodes(&self, namespace: &str, query: &str) -> Result<KnowledgeGraph> {
        let needle = query.to_lowercase();
        let graph = self.read_graph(namespace)?;
        Ok(subgraph(graph, |e| {
            e.name.to_lowercase().contains(&needle)
                || e.entity_type.to_lowercase().contains(&needle)
                || e.observations.iter().any(|o| o.to_lowercase().contains(&needle))
        }))
    }

    /// The named entities and the relations that touch them.
    fn open_nodes(&self, namespace: &str, names: &[String]) -> Result<KnowledgeGraph> {
        let graph = self.read_graph(namespace)?;
        Ok(subgraph(graph, |e| names.contains(&e.name)))
    }

    /// The retained versions of an entity up to this view, oldest first (a `None` value is a
    /// deletion): every version unless the retention policy pruned older ones.
    fn entity_history(&self, namespace: &str, name: &str) -> Result<Vec<VersionInfo>> {
        validate_namespace(namespace)?;
        let history = self.key_history(&entity_key(namespace, name));
        self.check_retained()?;
        Ok(history)
    }

    /// The retained versions of a relation up to this view, oldest first.
    fn relation_history(&self, namespace: &str, relation: &Relation) -> Result<Vec<VersionInfo>> {
        validate_namespace(namespace)?;
        let history = self.key_history(&Key::relation(namespace, relation));
        self.check_retained()?;
        Ok(history)
    }
}

fn subgraph(graph: KnowledgeGraph, keep: impl Fn(&Entity) -> bool) -> KnowledgeGraph {
    let entities: Vec<Entity> = graph.entities.into_iter().filter(|e| keep(e)).collect();
    let names: HashSet<&str> = entities.iter().map(|e| e.name.as_str()).collect();
    let relations = graph
        .relations
        .into_iter()
        .filter(|r| names.contains(r.from.as_str()) || names.contains(r.to.as_str()))
        .collect();
    KnowledgeGraph { entities, relations }
}

impl<T: RetainedView + ?Sized> GraphReads for T {}
