//! The change feed contract: every committed change, and nothing else, in commit order, from any
//! retained LSN, before and after a reopen; followers wait for new commits; consumers resume from
//! durable cursors without losing or repeating a change.

use crate::options::small_log;
use engram_core::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn options() -> DatabaseOptions {
    small_log(64 * 1024, 32 * 1024)
}

fn open(dir: &tempfile::TempDir) -> Database {
    Database::open(dir.path(), options()).unwrap()
}

fn all_events(feed: ChangeFeed) -> Vec<ChangeEvent> {
    feed.collect::<Result<Vec<_>>>().unwrap()
}

fn put_json(db: &Database, namespace: &str, key: &[u8], value: serde_json::Value) -> CommitInfo {
    db.run(1, |t| t.kv_put(namespace, key, KvValue::Json(value.clone()))).unwrap().1
}

fn lsns(events: &[ChangeEvent]) -> Vec<Lsn> {
    events.iter().map(|e| e.lsn).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- random transactions against a model of what they should have done ----

const NAMESPACES: [&str; 2] = ["alpha", "beta"];
const KEYS: [&[u8]; 3] = [b"a", b"b/c", &[0xff, 0x00, 0x7f]];

#[derive(Debug, Clone)]
enum Step {
    Put { ns: usize, key: usize, value: KvValue },
    Delete { ns: usize, key: usize },
    Emit { ns: usize, topic: String, n: i64 },
}

#[derive(Debug, Clone)]
struct RandomTxn {
    steps: Vec<Step>,
    commit: bool,
}

fn kv_value() -> impl Strategy<Value = KvValue> {
    prop_oneof![
        any::<i64>().prop_map(|n| KvValue::Json(json!({ "n": n }))),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(KvValue::Bytes),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let ns = 0..NAMESPACES.len();
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (ns.clone(), key.clone(), kv_value()).prop_map(|(ns, key, value)| Step::Put { ns, key, value }),
        2 => (ns.clone(), key).prop_map(|(ns, key)| Step::Delete { ns, key }),
        1 => (ns, "[a-z]{1,4}", any::<i64>()).prop_map(|(ns, topic, n)| Step::Emit { ns, topic, n }),
    ]
}

fn random_txn() -> impl Strategy<Value = RandomTxn> {
    (proptest::collection::vec(step(), 0..6), proptest::bool::weighted(0.8)).prop_map(|(steps, commit)| RandomTxn { steps, commit })
}

fn kv_json(value: &KvValue) -> serde_json::Value {
    match value {
        KvValue::Json(v) => json!({ "json": v }),
        KvValue::Bytes(b) => json!({ "hex": hex(b) }),
    }
}

fn kv_key(key: &[u8]) -> (Option<String>, KeyEncoding) {
    match std::str::from_utf8(key) {
        Ok(text) => (Some(text.to_string()), KeyEncoding::Utf8),
        Err(_) => (Some(hex(key)), KeyEncoding::Hex),
    }
}

/// Runs the transactions and returns the events they should produce: for each committed
/// transaction, its writes in the order each key was first written (the last value wins; deleting
/// an absent key is no change), then its events in emission order.
fn run_and_predict(db: &Database, txns: &[RandomTxn]) -> Vec<ChangeEvent> {
    let mut state: BTreeMap<(usize, usize), KvValue> = BTreeMap::new();
    let mut expected = Vec::new();
    for txn in txns {
        let mut t = db.begin();
        let mut writes: Vec<((usize, usize), Option<KvValue>)> = Vec::new();
        let mut emitted = Vec::new();
        for step in &txn.steps {
            let (slot, after) = match step {
                Step::Put { ns, key, value } => {
                    t.kv_put(NAMESPACES[*ns], KEYS[*key], value.clone()).unwrap();
                    ((*ns, *key), Some(value.clone()))
                }
                Step::Delete { ns, key } => {
                    t.kv_delete(NAMESPACES[*ns], KEYS[*key]).unwrap();
                    ((*ns, *key), None)
                }
                Step::Emit { ns, topic, n } => {
                    t.emit_event(NAMESPACES[*ns], topic, json!(n)).unwrap();
                    emitted.push((*ns, topic.clone(), *n));
                    continue;
                }
            };
            match writes.iter_mut().find(|(s, _)| *s == slot) {
                Some(write) => write.1 = after,
                None => writes.push((slot, after)),
            }
        }
        if !txn.commit {
            drop(t);
            continue;
        }
        let info = t.commit().unwrap();
        let event = |namespace: &str, op, kind, key: (Option<String>, KeyEncoding), before, after| ChangeEvent {
            lsn: info.lsn,
            txn_id: info.txn_id,
            commit_ts_ms: info.commit_ts_ms,
            namespace: namespace.to_string(),
            op,
            kind,
            key: key.0,
            key_encoding: key.1,
            before,
            after,
        };
        for ((ns, key), after) in writes {
            let before = state.get(&(ns, key)).cloned();
            let (op, after) = match (after, &before) {
                (Some(after), _) => (ChangeOp::Put, Some(after)),
                (None, Some(_)) => (ChangeOp::Delete, None),
                (None, None) => continue,
            };
            expected.push(event(
                NAMESPACES[ns],
                op,
                ChangeKind::Kv,
                kv_key(KEYS[key]),
                before.as_ref().map(kv_json),
                after.as_ref().map(kv_json),
            ));
            match after {
                Some(value) => state.insert((ns, key), value),
                None => state.remove(&(ns, key)),
            };
        }
        for (ns, topic, n) in emitted {
            let after = json!({ "topic": topic, "payload": n });
            expected.push(event(
                NAMESPACES[ns],
                ChangeOp::Event,
                ChangeKind::Event,
                (None, KeyEncoding::Utf8),
                None,
                Some(after),
            ));
        }
    }
    expected
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_feed_after_random_transactions_equals_what_they_did(txns in proptest::collection::vec(random_txn(), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let expected = run_and_predict(&db, &txns);
        let feed = all_events(db.changes(0).unwrap());
        prop_assert_eq!(&feed, &expected);
        prop_assert!(feed.windows(2).all(|w| w[0].lsn <= w[1].lsn), "commit order");
    }
}

// ---- what is in the feed ----

#[test]
fn events_appear_iff_their_transaction_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);

    let mut dropped = db.begin();
    dropped.kv_put("ns", b"k", KvValue::Json(json!("dropped"))).unwrap();
    dropped.emit_event("ns", "dropped", json!(1)).unwrap();
    drop(dropped);

    let mut failed = db.begin();
    failed.kv_put("ns", b"k", KvValue::Json(json!("invalid"))).unwrap();
    failed.emit_event("ns", "failed", json!(2)).unwrap();
    assert!(failed.kv_put("", b"k", KvValue::Json(json!(0))).is_err());
    drop(failed);

    let mut winner = db.begin();
    let mut loser = db.begin();
    winner.kv_put("ns", b"k", KvValue::Json(json!("winner"))).unwrap();
    winner.emit_event("ns", "won", json!(3)).unwrap();
    loser.kv_put("ns", b"k", KvValue::Json(json!("loser"))).unwrap();
    loser.emit_event("ns", "lost", json!(4)).unwrap();
    let won = winner.commit().unwrap();
    assert!(loser.commit().unwrap_err().is_conflict());

    let mut no_change = db.begin();
    no_change.kv_delete("ns", b"never-written").unwrap();
    no_change.commit().unwrap();

    let events = all_events(db.changes(0).unwrap());
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events.iter().all(|e| e.lsn == won.lsn && e.txn_id == won.txn_id));
    assert_eq!(events[0].after, Some(json!({ "json": "winner" })));
    assert_eq!(events[1].after, Some(json!({ "topic": "won", "payload": 3 })));
}

#[test]
fn every_kind_of_change_serialises_to_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let (id, created) = db
        .run(1, |t| {
            let id = t.insert_memory(
                "agent",
                NewMemory {
                    text: "likes tea".into(),
                    embedding: Some(vec![0.5, -1.0]),
                    metadata: json!({ "source": "chat" }),
                },
            )?;
            t.create_entities(
                "agent",
                &[
                    Entity {
                        name: "Ada".into(),
                        entity_type: "person".into(),
                        observations: vec!["likes tea".into()],
                    },
                    Entity {
                        name: "Bob".into(),
                        entity_type: "person".into(),
                        observations: vec![],
                    },
                ],
            )?;
            t.create_relations(
                "agent",
                &[Relation {
                    from: "Ada".into(),
                    to: "Bob".into(),
                    relation_type: "knows".into(),
                }],
            )?;
            t.kv_put("agent", &[0xff, 0x01], KvValue::Bytes(b"hi".to_vec()))?;
            t.emit_event("agent", "memory.added", json!({ "n": 1 }))?;
            Ok(id)
        })
        .unwrap();
    let (_, deleted) = db.run(1, |t| t.delete_entities("agent", &["Bob".to_string()])).unwrap();

    let events = all_events(db.changes(0).unwrap());
    let wire: Vec<serde_json::Value> = events.iter().map(|e| serde_json::to_value(e).unwrap()).collect();
    let memory = events.iter().find(|e| e.kind == ChangeKind::Memory).unwrap();
    let created_ms = memory.after.as_ref().unwrap()["created_ms"].clone();
    let header = |lsn: Lsn, txn_id: u64, commit_ts_ms: u64| json!({ "lsn": lsn, "txn_id": txn_id, "commit_ts_ms": commit_ts_ms });
    let with = |mut base: serde_json::Value, rest: serde_json::Value| {
        base.as_object_mut().unwrap().extend(rest.as_object().unwrap().clone());
        base
    };
    let c = header(created.lsn, created.txn_id, created.commit_ts_ms);
    let d = header(deleted.lsn, deleted.txn_id, deleted.commit_ts_ms);
    let expected = vec![
        // The first embedding fixes the namespace's dimension: a settings change.
        with(
            c.clone(),
            json!({"namespace": "agent", "op": "put", "kind": "meta", "key": "dimension", "key_encoding": "utf8",
            "before": null, "after": {"dimension": 2}}),
        ),
        with(
            c.clone(),
            json!({"namespace": "agent", "op": "put", "kind": "memory", "key": id, "key_encoding": "utf8",
            "before": null, "after": {"id": id, "text": "likes tea", "embedding": [0.5, -1.0], "metadata": {"source": "chat"},
            "created_ms": created_ms, "updated_ms": created_ms}}),
        ),
        with(
            c.clone(),
            json!({"namespace": "agent", "op": "put", "kind": "entity", "key": "Ada", "key_encoding": "utf8",
            "before": null, "after": {"name": "Ada", "entityType": "person", "observations": ["likes tea"]}}),
        ),
        with(
            c.clone(),
            json!({"namespace": "agent", "op": "put", "kind": "entity", "key": "Bob", "key_encoding": "utf8",
            "before": null, "after": {"name": "Bob", "entityType": "person", "observations": []}}),
        ),
        with(
            c.clone(),
            json!({"namespace": "agent", "op": "put", "kind": "relation", "key": "Ada / knows / Bob", "key_encoding": "utf8",
            "before": null, "after": {"from": "Ada", "to": "Bob", "relationType": "knows"}}),
        ),
        with(
            c.clone(),
            json!({"namespace": "agent", "op": "put", "kind": "kv", "key": "ff01", "key_encoding": "hex",
            "before": null, "after": {"hex": "6869"}}),
        ),
        with(
            c,
            json!({"namespace": "agent", "op": "event", "kind": "event", "key": null, "key_encoding": "utf8",
            "before": null, "after": {"topic": "memory.added", "payload": {"n": 1}}}),
        ),
        // Deleting an entity deletes its relations first, in the same transaction.
        with(
            d.clone(),
            json!({"namespace": "agent", "op": "delete", "kind": "relation", "key": "Ada / knows / Bob", "key_encoding": "utf8",
            "before": {"from": "Ada", "to": "Bob", "relationType": "knows"}, "after": null}),
        ),
        with(
            d,
            json!({"namespace": "agent", "op": "delete", "kind": "entity", "key": "Bob", "key_encoding": "utf8",
            "before": {"name": "Bob", "entityType": "person", "observations": []}, "after": null}),
        ),
    ];
    assert_eq!(wire.len(), expected.len(), "{wire:#?}");
    for (got, want) in wire.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    let parsed: Vec<ChangeEvent> = wire.into_iter().map(|w| serde_json::from_value(w).unwrap()).collect();
    assert_eq!(parsed, events, "a client can parse the wire form back");
}

#[test]
fn a_commit_enters_the_feed_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut relaxed = db.begin();
    relaxed.set_durability(SyncPolicy::Never);
    relaxed.kv_put("ns", b"relaxed", KvValue::Json(json!(1))).unwrap();
    let relaxed = relaxed.commit().unwrap();
    assert_eq!(db.visible_lsn(), relaxed.lsn, "visible to snapshots at once");
    let mut feed = db.changes(0).unwrap();
    assert_eq!(feed.next_event().unwrap(), None, "not in the feed before it is durable");
    let synced = put_json(&db, "ns", b"synced", json!(2));
    assert_eq!(
        lsns(&all_events(feed)),
        [relaxed.lsn, synced.lsn],
        "a durable commit makes earlier ones durable too"
    );
}

// ---- where the feed starts ----

#[test]
fn a_feed_from_an_lsn_in_the_middle_starts_exactly_there() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let commits: Vec<CommitInfo> = (0..6).map(|i| put_json(&db, "ns", format!("k{i}").as_bytes(), json!(i))).collect();
    let everything = all_events(db.changes(0).unwrap());
    for (i, commit) in commits.iter().enumerate() {
        let feed = db.changes(commit.lsn).unwrap();
        assert_eq!(feed.position(), commit.lsn - 1);
        assert_eq!(all_events(feed), everything[i..], "from LSN {}", commit.lsn);
    }
    let mut caught_up = db.changes(db.visible_lsn() + 1).unwrap();
    assert_eq!(caught_up.next_event().unwrap(), None);
}

#[test]
fn the_feed_after_reopen_equals_the_feed_before() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let db = open(&dir);
        for i in 0..5 {
            db.run(1, |t| {
                t.kv_put("ns", format!("k{}", i % 2).as_bytes(), KvValue::Json(json!(i)))?;
                if i % 2 == 1 {
                    t.kv_delete("ns", b"k0")?;
                }
                t.emit_event("ns", "tick", json!(i))
            })
            .unwrap();
        }
        all_events(db.changes(0).unwrap())
    };
    assert_eq!(before.len(), 12);
    let db = open(&dir);
    assert_eq!(all_events(db.changes(0).unwrap()), before);
}

// ---- filters ----

#[test]
fn a_namespace_filter_returns_only_that_namespace_and_internal_changes_are_hidden_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let a = put_json(&db, "a", b"k", json!(1));
    let b = put_json(&db, "b", b"k", json!(2));
    let cursor = db.advance_cursor("reader", b.lsn).unwrap();
    let both = db
        .run(1, |t| {
            t.kv_put("a", b"k", KvValue::Json(json!(3)))?;
            t.emit_event("b", "topic", json!(null))
        })
        .unwrap()
        .1;

    let key = |e: &ChangeEvent| (e.lsn, e.namespace.clone());
    let default: Vec<_> = all_events(db.changes(0).unwrap()).iter().map(key).collect();
    assert_eq!(
        default,
        [
            (a.lsn, "a".into()),
            (b.lsn, "b".into()),
            (both.lsn, "a".into()),
            (both.lsn, "b".into())
        ]
    );

    let only_a = db.changes(0).unwrap().only_namespace("a");
    assert_eq!(
        all_events(only_a).iter().map(key).collect::<Vec<_>>(),
        [(a.lsn, "a".into()), (both.lsn, "a".into())]
    );

    let only_b = db.changes(0).unwrap().only_namespace("b");
    assert_eq!(
        all_events(only_b).iter().map(key).collect::<Vec<_>>(),
        [(b.lsn, "b".into()), (both.lsn, "b".into())]
    );

    let system = all_events(db.changes(0).unwrap().only_namespace(".engram"));
    assert_eq!(system.iter().map(key).collect::<Vec<_>>(), [(cursor.lsn, ".engram".into())]);
    assert_eq!(system[0].kind, ChangeKind::Meta);
    assert_eq!(system[0].key.as_deref(), Some("cursor/reader"));

    assert_eq!(all_events(db.changes(0).unwrap().include_system_namespace()).len(), 5);

    let mut filtered = db.changes(0).unwrap().only_namespace("nobody");
    assert_eq!(filtered.next_event().unwrap(), None);
    assert_eq!(filtered.position(), both.lsn, "records filtered out still move the position");
}

// ---- followers ----

#[test]
fn a_follower_blocked_in_next_blocking_wakes_when_another_thread_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    // `Duration::MAX` means "wait as long as it takes" and must not overflow a deadline.
    for timeout in [Duration::from_secs(30), Duration::MAX] {
        let mut feed = db.changes(db.visible_lsn() + 1).unwrap();
        let follower = std::thread::spawn(move || {
            let started = Instant::now();
            let event = feed.next_blocking(timeout).unwrap();
            (event, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        let commit = put_json(&db, "ns", b"k", json!("hello"));
        let (event, waited) = follower.join().unwrap();
        let event = event.expect("the follower received the commit");
        assert_eq!((event.lsn, event.txn_id), (commit.lsn, commit.txn_id));
        assert!(
            waited < Duration::from_secs(10),
            "woken by the commit, not by the timeout: {waited:?}"
        );
    }
}

#[test]
fn next_blocking_returns_none_when_nothing_commits_before_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    put_json(&db, "ns", b"k", json!(1));
    let mut feed = db.changes(0).unwrap().only_namespace("ns");
    assert!(feed.next_blocking(Duration::from_millis(10)).unwrap().is_some());
    // Commits that the filter drops do not end the wait early with nothing.
    put_json(&db, "other", b"k", json!(2));
    let started = Instant::now();
    assert_eq!(feed.next_blocking(Duration::from_millis(150)).unwrap(), None);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn concurrent_commits_come_out_in_lsn_order_each_transaction_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut commits: Vec<CommitInfo> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let db = db.clone();
                s.spawn(move || {
                    (0..20)
                        .map(|i| {
                            db.run(1000, |t| {
                                t.kv_put("ns", b"shared", KvValue::Json(json!([w, i])))?;
                                t.kv_put("ns", format!("own/{w}").as_bytes(), KvValue::Json(json!(i)))?;
                                t.emit_event("ns", "done", json!([w, i]))
                            })
                            .unwrap()
                            .1
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    commits.sort_by_key(|c| c.lsn);
    let events = all_events(db.changes(0).unwrap());
    assert_eq!(events.len(), commits.len() * 3);
    for (group, commit) in events.chunks(3).zip(&commits) {
        assert!(group
            .iter()
            .all(|e| (e.lsn, e.txn_id, e.commit_ts_ms) == (commit.lsn, commit.txn_id, commit.commit_ts_ms)));
        assert_eq!(
            group.iter().map(|e| e.op).collect::<Vec<_>>(),
            [ChangeOp::Put, ChangeOp::Put, ChangeOp::Event]
        );
        assert_eq!(group[0].key.as_deref(), Some("shared"));
    }
    // Each before image is the after image of the previous write to that key: nothing between
    // two commits is missing from the feed.
    let shared: Vec<_> = events.iter().filter(|e| e.key.as_deref() == Some("shared")).collect();
    for pair in shared.windows(2) {
        assert_eq!(
            pair[1].before, pair[0].after,
            "no lost update between LSN {} and {}",
            pair[0].lsn, pair[1].lsn
        );
    }
}

// ---- cursors ----

#[test]
fn a_consumer_resuming_from_its_cursor_after_reopen_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let write_batch = |db: &Database, from: i64| {
        for i in from..from + 4 {
            db.run(1, |t| {
                t.kv_put("ns", b"step", KvValue::Json(json!(i)))?;
                t.emit_event("ns", "step", json!(i))
            })
            .unwrap();
        }
    };
    let mut consumed = Vec::new();
    {
        let db = open(&dir);
        assert!(matches!(db.changes_for_cursor("indexer"), Err(CoreError::NotFound { .. })));
        db.advance_cursor("indexer", 0).unwrap();
        write_batch(&db, 0);
        let mut feed = db.changes_for_cursor("indexer").unwrap();
        // Process three whole transactions (two events each), and record that durably.
        for _ in 0..6 {
            consumed.push(feed.next_event().unwrap().unwrap());
        }
        db.advance_cursor("indexer", feed.position()).unwrap();
        // Events read after the last cursor advance were not processed as far as the database
        // knows: they come again after the restart.
        feed.next_event().unwrap().unwrap();
        write_batch(&db, 4);
    }
    let db = open(&dir);
    assert_eq!(db.cursor("indexer").unwrap(), Some(consumed.last().unwrap().lsn));
    consumed.extend(all_events(db.changes_for_cursor("indexer").unwrap()));
    let everything = all_events(db.changes(0).unwrap());
    assert_eq!(everything.len(), 16);
    assert_eq!(consumed, everything, "every change exactly once, in order");
}

#[test]
fn the_position_counts_a_transaction_only_once_all_its_events_were_returned() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let first = put_json(&db, "ns", b"a", json!(1));
    let second = db
        .run(1, |t| {
            t.kv_put("ns", b"b", KvValue::Json(json!(2)))?;
            t.emit_event("ns", "b", json!(2))
        })
        .unwrap()
        .1;
    let mut feed = db.changes(0).unwrap();
    assert_eq!(feed.position(), 0);
    feed.next_event().unwrap().unwrap();
    assert_eq!(feed.position(), first.lsn);
    feed.next_event().unwrap().unwrap();
    assert_eq!(feed.position(), first.lsn, "half of the second transaction is not processed");
    feed.next_event().unwrap().unwrap();
    assert_eq!(feed.position(), second.lsn);
}
