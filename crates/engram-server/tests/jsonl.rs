//! Export and import (JSON Lines): a round trip reproduces the data; the reference memory
//! server's format is read; a bad line imports nothing.

use engram_core::{Database, DatabaseOptions, GraphReads, KvReads, KvValue, MemoryReads, NewMemory};
use engram_server::jsonl::{export, import, JsonlError};
use serde_json::json;

fn open(dir: &std::path::Path) -> Database {
    Database::open(dir, DatabaseOptions::default()).unwrap()
}

#[test]
fn export_then_import_reproduces_every_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let source = open(&tmp.path().join("source"));
    source
        .run(1, |txn| {
            txn.insert_memory(
                "a",
                NewMemory {
                    text: "with vector".into(),
                    embedding: Some(vec![0.5, 1.5]),
                    metadata: json!({"k": [1, 2]}),
                },
            )?;
            txn.insert_memory(
                "a",
                NewMemory {
                    text: "text only".into(),
                    ..Default::default()
                },
            )?;
            txn.create_entities(
                "b",
                &[engram_core::Entity {
                    name: "E".into(),
                    entity_type: "t".into(),
                    observations: vec!["o".into()],
                }],
            )?;
            txn.create_entities(
                "b",
                &[engram_core::Entity {
                    name: "F".into(),
                    entity_type: "t".into(),
                    observations: vec![],
                }],
            )?;
            txn.create_relations(
                "b",
                &[engram_core::Relation {
                    from: "F".into(),
                    to: "E".into(),
                    relation_type: "r".into(),
                }],
            )?;
            txn.kv_put("c", b"text key", KvValue::Json(json!({"deep": {"x": null}})))?;
            txn.kv_put("c", &[0xff, 0x00], KvValue::Bytes(vec![1, 2, 3]))?;
            Ok(())
        })
        .unwrap();
    let mut out = Vec::new();
    let report = export(&source, &mut out, |_| {}).unwrap();
    assert_eq!(report.counts.memories, 2);
    assert_eq!(report.counts.entities, 2);
    assert_eq!(report.counts.relations, 1);
    assert_eq!(report.counts.kv, 2);

    let target = open(&tmp.path().join("target"));
    let imported = import(&target, out.as_slice(), "default", |_| {}).unwrap();
    assert_eq!(imported.counts, report.counts);
    let (s, t) = (source.snapshot(), target.snapshot());
    assert_eq!(t.namespaces().unwrap(), ["a", "b", "c"]);
    assert_eq!(
        t.list_memories("a").unwrap(),
        s.list_memories("a").unwrap(),
        "ids, timestamps, vectors and metadata kept"
    );
    assert_eq!(t.dimension("a"), Some(2));
    assert_eq!(t.read_graph("b").unwrap(), s.read_graph("b").unwrap());
    assert_eq!(t.kv_scan_prefix("c", b"").unwrap(), s.kv_scan_prefix("c", b"").unwrap());
    // And exporting the copy gives the same lines.
    let mut again = Vec::new();
    export(&target, &mut again, |_| {}).unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), String::from_utf8(out).unwrap());
}

#[test]
fn the_reference_servers_memory_jsonl_is_read_into_the_default_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    let reference = r#"{"type":"entity","name":"John_Smith","entityType":"person","observations":["Speaks fluent Spanish","Graduated in 2019"]}
{"type":"entity","name":"Anthropic","entityType":"organization","observations":[]}
{"type":"relation","from":"John_Smith","to":"Anthropic","relationType":"works_at"}
"#;
    import(&db, reference.as_bytes(), "agent-1", |_| {}).unwrap();
    let graph = serde_json::to_value(db.snapshot().read_graph("agent-1").unwrap()).unwrap();
    assert_eq!(
        graph,
        json!({
            "entities": [
                {"name": "John_Smith", "entityType": "person", "observations": ["Speaks fluent Spanish", "Graduated in 2019"]},
                {"name": "Anthropic", "entityType": "organization", "observations": []}
            ],
            "relations": [{"from": "John_Smith", "to": "Anthropic", "relationType": "works_at"}]
        })
    );
}

#[test]
fn a_bad_line_imports_nothing_and_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    for (input, bad_line) in [
        ("{\"type\":\"entity\",\"name\":\"A\",\"entityType\":\"t\",\"observations\":[]}\n{\"type\":\"entity\"\n", 2),
        ("{\"type\":\"entity\",\"name\":\"A\",\"entityType\":\"t\",\"observations\":[]}\n\n{\"type\":\"table\"}\n", 3),
        ("{\"type\":\"kv\",\"key\":\"k\",\"value\":{\"json\":1}}\n{\"type\":\"entity\",\"name\":\"\",\"entityType\":\"t\",\"observations\":[]}\n", 2),
    ] {
        let e = import(&db, input.as_bytes(), "ns", |_| {}).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&bad_line.to_string()), "{text}");
        if let JsonlError::BadLine { line, .. } = e {
            assert_eq!(line, bad_line);
        }
        assert_eq!(db.visible_lsn(), 0, "nothing imported");
    }
    assert!(import(&db, "".as_bytes(), "bad/namespace", |_| {}).is_err());
}
