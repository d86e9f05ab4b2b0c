//! The knowledge graph behaves exactly like the MCP reference memory server.

use engram_core::*;

fn db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), crate::options::small_log(64 * 1024, 32 * 1024)).unwrap();
    (dir, db)
}

fn entity(name: &str, kind: &str, observations: &[&str]) -> Entity {
    Entity {
        name: name.into(),
        entity_type: kind.into(),
        observations: observations.iter().map(|s| s.to_string()).collect(),
    }
}

fn relation(from: &str, kind: &str, to: &str) -> Relation {
    Relation {
        from: from.into(),
        to: to.into(),
        relation_type: kind.into(),
    }
}

#[test]
fn existing_entities_and_identical_relations_are_skipped() {
    let (_dir, db) = db();
    let (created, _) = db
        .run(1, |t| {
            t.create_entities("ns", &[entity("A", "person", &["x"]), entity("B", "person", &[])])
        })
        .unwrap();
    assert_eq!(created.len(), 2);
    let (created, _) = db
        .run(1, |t| {
            t.create_entities("ns", &[entity("A", "robot", &["y"]), entity("C", "place", &[])])
        })
        .unwrap();
    assert_eq!(created, vec![entity("C", "place", &[])], "A exists and is skipped, unchanged");
    let (rels, _) = db
        .run(1, |t| {
            t.create_relations("ns", &[relation("A", "knows", "B"), relation("A", "knows", "B")])
        })
        .unwrap();
    assert_eq!(rels.len(), 1);
    let (rels, _) = db.run(1, |t| t.create_relations("ns", &[relation("A", "knows", "B")])).unwrap();
    assert!(rels.is_empty());
    let graph = db.snapshot().read_graph("ns").unwrap();
    assert_eq!(
        graph.entities.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["A", "B", "C"],
        "insertion order"
    );
    assert_eq!(graph.entities[0], entity("A", "person", &["x"]));
    assert_eq!(graph.relations, vec![relation("A", "knows", "B")]);
}

#[test]
fn adding_observations_to_a_missing_entity_fails_the_whole_call() {
    let (_dir, db) = db();
    db.run(1, |t| t.create_entities("ns", &[entity("A", "person", &["x"])])).unwrap();
    let before = db.snapshot().read_graph("ns").unwrap();
    let err = db
        .run(1, |t| {
            t.add_observations("ns", &[("A".into(), vec!["y".into()]), ("Nobody".into(), vec!["z".into()])])
        })
        .unwrap_err();
    assert!(matches!(err, CoreError::NotFound { what: "entity", .. }));
    assert_eq!(db.snapshot().read_graph("ns").unwrap(), before, "nothing changed");
    let (added, _) = db
        .run(1, |t| {
            t.add_observations("ns", &[("A".into(), vec!["x".into(), "y".into(), "y".into()])])
        })
        .unwrap();
    assert_eq!(
        added,
        vec![AddedObservations {
            entity_name: "A".into(),
            added_observations: vec!["y".into()]
        }],
        "duplicates skipped"
    );
}

#[test]
fn deleting_an_entity_deletes_its_relations_and_missing_things_are_ignored() {
    let (_dir, db) = db();
    db.run(1, |t| {
        t.create_entities(
            "ns",
            &[entity("A", "p", &["o1", "o2"]), entity("B", "p", &[]), entity("C", "p", &[])],
        )?;
        t.create_relations(
            "ns",
            &[
                relation("A", "knows", "B"),
                relation("B", "knows", "C"),
                relation("C", "likes", "A"),
            ],
        )
    })
    .unwrap();
    db.run(1, |t| {
        t.delete_entities("ns", &["A".into(), "Ghost".into()])?;
        t.delete_observations("ns", &[("B".into(), vec!["none".into()]), ("Ghost".into(), vec!["o".into()])])?;
        t.delete_relations("ns", &[relation("X", "y", "Z")])
    })
    .unwrap();
    let graph = db.snapshot().read_graph("ns").unwrap();
    assert_eq!(graph.entities.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["B", "C"]);
    assert_eq!(graph.relations, vec![relation("B", "knows", "C")]);
}

#[test]
fn search_nodes_is_a_case_insensitive_substring_match_with_the_relations_touching_hits() {
    let (_dir, db) = db();
    db.run(1, |t| {
        t.create_entities(
            "ns",
            &[
                entity("Alice", "Person", &["Likes TEA"]),
                entity("Bob", "person", &[]),
                entity("Paris", "city", &["capital"]),
            ],
        )?;
        t.create_relations("ns", &[relation("Alice", "knows", "Bob"), relation("Alice", "visited", "Paris")])
    })
    .unwrap();
    let snap = db.snapshot();
    let hits = snap.search_nodes("ns", "PERSON").unwrap();
    assert_eq!(hits.entities.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["Alice", "Bob"]);
    assert_eq!(
        hits.relations,
        vec![relation("Alice", "knows", "Bob"), relation("Alice", "visited", "Paris")],
        "relations with at least one end found, as the reference server lists them"
    );
    let city = snap.search_nodes("ns", "capital").unwrap();
    assert_eq!(
        city.relations,
        vec![relation("Alice", "visited", "Paris")],
        "incoming relations too"
    );
    assert_eq!(snap.search_nodes("ns", "tea").unwrap().entities.len(), 1);
    assert_eq!(
        snap.search_nodes("ns", "").unwrap().entities.len(),
        3,
        "the empty string matches everything"
    );
    let opened = snap.open_nodes("ns", &["Paris".into(), "Alice".into(), "Nobody".into()]).unwrap();
    assert_eq!(
        opened.entities.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["Alice", "Paris"]
    );
    assert_eq!(
        opened.relations,
        vec![relation("Alice", "knows", "Bob"), relation("Alice", "visited", "Paris")]
    );
    let bob = snap.open_nodes("ns", &["Bob".into()]).unwrap();
    assert_eq!(bob.relations, vec![relation("Alice", "knows", "Bob")]);
    assert!(snap.open_nodes("ns", &[]).unwrap().relations.is_empty());
}

#[test]
fn graph_reads_can_be_as_of_and_entities_have_history() {
    let (_dir, db) = db();
    let (_, first) = db.run(1, |t| t.create_entities("ns", &[entity("A", "p", &[])])).unwrap();
    db.run(1, |t| t.add_observations("ns", &[("A".into(), vec!["later".into()])]))
        .unwrap();
    assert!(db.as_of(first.lsn).unwrap().read_graph("ns").unwrap().entities[0]
        .observations
        .is_empty());
    assert_eq!(db.snapshot().entity_history("ns", "A").unwrap().len(), 2);
}
