//! Export and import (JSON Lines): a round trip reproduces the data; the reference memory
//! server's format is read; imports stream in bounded batches; a checked import of a bad file
//! imports nothing, an unchecked one says which batches it committed.

use engram_core::{Database, DatabaseOptions, GraphReads, KvReads, KvValue, MemoryReads, NewMemory};
use engram_server::jsonl::{export, import, import_file, Committed, ImportOptions, ImportPhase, JsonlError};
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
    let imported = import(&target, out.as_slice(), "default", &ImportOptions::default(), |_| {}).unwrap();
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
    import(&db, reference.as_bytes(), "agent-1", &ImportOptions::default(), |_| {}).unwrap();
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

/// Batches small enough that the files below need several.
fn small_batches() -> ImportOptions {
    ImportOptions {
        batch_lines: 100,
        batch_bytes: 1 << 20,
        max_line_bytes: 4096,
    }
}

fn memory_line(i: usize) -> String {
    json!({"type": "memory", "namespace": "m", "id": format!("mem-{i:05}"), "text": format!("memory number {i}"),
           "embedding": [i as f32, 1.0], "metadata": {"i": i}, "created_ms": 1000 + i, "updated_ms": 1000 + i})
    .to_string()
}

/// `lines` memory lines, then a key and an entity, with blank lines scattered in.
fn big_file(lines: usize) -> String {
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&memory_line(i));
        text.push('\n');
        if i % 37 == 0 {
            text.push('\n');
        }
    }
    text.push_str("{\"type\":\"kv\",\"namespace\":\"m\",\"key\":\"k\",\"value\":{\"json\":1}}\n");
    text.push_str("{\"type\":\"entity\",\"name\":\"E\",\"entityType\":\"t\",\"observations\":[]}\n");
    text
}

#[test]
fn a_large_file_is_committed_in_bounded_batches_and_reimporting_it_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(&tmp.path().join("db"));
    let file = tmp.path().join("in.jsonl");
    let content = big_file(1_050);
    std::fs::write(&file, &content).unwrap();
    let mut phases = Vec::new();
    let report = import_file(&db, &file, "default", &small_batches(), |phase, bytes| phases.push((phase, bytes))).unwrap();
    // 1,052 non-blank lines in batches of at most 100 lines.
    assert_eq!(report.batches, 11);
    assert_eq!(report.counts.memories, 1_050);
    assert_eq!((report.counts.kv, report.counts.entities), (1, 1));
    assert_eq!(report.lsn, db.visible_lsn());
    // Progress: the check reads the whole file, then the import reads it again, never backwards.
    let total = content.len() as u64;
    for phase in [ImportPhase::Checking, ImportPhase::Committing] {
        let seen: Vec<u64> = phases.iter().filter(|(p, _)| *p == phase).map(|(_, b)| *b).collect();
        assert!(seen.len() > 1, "{phase:?} reports progress as it goes: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&total));
    }
    let snapshot = db.snapshot();
    let memories = snapshot.list_memories("m").unwrap();
    assert_eq!(memories.len(), 1_050);
    assert_eq!(memories[7].text, "memory number 7");
    assert_eq!(memories[7].embedding.as_deref(), Some(&[7.0, 1.0][..]));
    assert_eq!(snapshot.dimension("m"), Some(2));

    // Every kind of line is idempotent: importing the file again leaves the same state.
    let again = import_file(&db, &file, "default", &small_batches(), |_, _| {}).unwrap();
    assert_eq!(again.counts, report.counts);
    let after = db.snapshot();
    assert_eq!(after.list_memories("m").unwrap(), memories);
    assert_eq!(after.read_graph("default").unwrap(), snapshot.read_graph("default").unwrap());
}

#[test]
fn batches_are_bounded_by_bytes_as_well_as_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    let content = big_file(300);
    let options = ImportOptions {
        batch_lines: 10_000,
        batch_bytes: 4096,
        max_line_bytes: 4096,
    };
    let report = import(&db, content.as_bytes(), "default", &options, |_| {}).unwrap();
    // A batch closes at the line that takes it to 4 KiB or more.
    let line_bytes = memory_line(150).len() + 1;
    let (fewest, most) = (content.len() / (4096 + line_bytes), content.len().div_ceil(4096));
    assert!(
        (fewest as u64..=most as u64).contains(&report.batches),
        "{} batches for {} bytes in batches of ~4 KiB of ~{line_bytes} B lines",
        report.batches,
        content.len()
    );
    assert_eq!(db.snapshot().list_memories("m").unwrap().len(), 300);
}

#[test]
fn a_bad_line_imports_nothing_and_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(&tmp.path().join("db"));
    let file = tmp.path().join("in.jsonl");
    let entity = "{\"type\":\"entity\",\"name\":\"A\",\"entityType\":\"t\",\"observations\":[]}";
    let good = big_file(250);
    let good_lines = good.lines().count() as u64;
    for (bad, what) in [
        ("{\"type\":\"entity\"".to_string(), "malformed JSON"),
        ("{\"type\":\"table\"}".to_string(), "an unknown line type"),
        (
            "{\"type\":\"entity\",\"name\":\"\",\"entityType\":\"t\",\"observations\":[]}".to_string(),
            "an empty name",
        ),
        (
            "{\"type\":\"kv\",\"key\":\"zz\",\"key_encoding\":\"hex\",\"value\":{\"json\":1}}".to_string(),
            "a bad hex key",
        ),
        (
            "{\"type\":\"namespace\",\"namespace\":\"m\",\"dimension\":3}".to_string(),
            "a dimension unlike the earlier batches'",
        ),
        (
            memory_line(1).replace("[1.0,1.0]", "[1.0,1.0,2.0]"),
            "an embedding unlike the earlier batches'",
        ),
        (
            format!("{{\"type\":\"kv\",\"key\":\"k\",\"value\":{{\"json\":\"{}\"}}}}", "x".repeat(5000)),
            "a line too long",
        ),
    ] {
        // The bad line comes after several batches' worth of good lines.
        std::fs::write(&file, format!("{good}{bad}\n{entity}\n")).unwrap();
        let e = import_file(&db, &file, "ns", &small_batches(), |_, _| {}).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("line {}", good_lines + 1)), "{what}: {text}");
        assert!(text.contains("nothing was imported"), "{what}: {text}");
        assert_eq!(e.committed, None, "{what}");
        match e.error {
            JsonlError::BadLine { line, .. } | JsonlError::LineTooLong { line, .. } => assert_eq!(line, good_lines + 1, "{what}"),
            other => panic!("{what}: {other}"),
        }
        assert_eq!(db.visible_lsn(), 0, "{what}: nothing imported");
    }
    let e = import_file(&db, &file, "bad/namespace", &small_batches(), |_, _| {}).unwrap_err();
    assert!(
        matches!(e.error, JsonlError::Core(engram_core::CoreError::InvalidName { .. })),
        "{e}"
    );
    // The database's own state is checked too: a namespace already fixed at another dimension.
    db.run(1, |t| t.declare_dimension("m", 5)).unwrap();
    let lsn = db.visible_lsn();
    std::fs::write(&file, &good).unwrap();
    let e = import_file(&db, &file, "ns", &small_batches(), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("line 1:"), "{e}");
    assert_eq!(db.visible_lsn(), lsn);
}

#[test]
fn an_unchecked_import_stopped_by_a_bad_line_says_which_batches_it_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    // 250 good lines (batches of 100), then a bad one: two batches commit, the third fails.
    let mut content: String = (0..250).map(|i| memory_line(i) + "\n").collect();
    content.push_str("{\"type\":\"entity\",\"name\":\"\",\"entityType\":\"t\",\"observations\":[]}\n");
    let e = import(&db, content.as_bytes(), "ns", &small_batches(), |_| {}).unwrap_err();
    let committed = e.committed.expect("two batches were committed");
    assert_eq!(
        committed,
        Committed {
            through_line: 200,
            lsn: db.visible_lsn(),
            batches: 2
        }
    );
    assert!(matches!(e.error, JsonlError::BadLine { line: 251, .. }), "{}", e.error);
    let text = e.to_string();
    assert!(text.contains("line 251") && text.contains("lines 1 to 200 were imported"), "{text}");
    let memories = db.snapshot().list_memories("m").unwrap();
    assert_eq!(memories.len(), 200, "the failed batch left nothing");
    assert_eq!(memories.last().unwrap().id, "mem-00199");
}
