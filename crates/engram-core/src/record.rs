//! Log records written by the database (payloads of engram-wal records); docs/record-format.md
//! describes every byte.
//!
//! A transaction is logged as one `COMMIT` record holding every operation with its before and
//! after image, so recovery redoes it whole or not at all, and the change feed needs nothing else.
//! A large transaction (its encoding would exceed [`STREAM_RECORD_BYTES`], or the log's record
//! limit if that is smaller) streams its operations
//! first, in `OPS` records, and ends with a `COMMIT` record holding the rest and the LSN of its
//! first `OPS` record. All records of one transaction are submitted under the commit lock, so they
//! are contiguous in the log and end with the `COMMIT`: recovery and the feed buffer the `OPS`
//! records of the transaction being read and use them only when its `COMMIT` arrives. A run of
//! `OPS` records that is not followed by its `COMMIT` (a crash, or a failed submit) belongs to a
//! transaction that never committed and is dropped. No abort record is needed: conflicts are
//! checked before anything is logged, and the absence of a `COMMIT` is the abort.

use crate::error::{CoreError, Result};
use crate::legacy;
use crate::model::{Key, Value};
use engram_wal::{Lsn, WalReader};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// engram-wal record kind of a transaction's commit (the whole transaction, or its last
/// operations after its `OPS` records).
pub const KIND_COMMIT: u8 = 1;

/// engram-wal record kind of operations a large transaction streams before its `COMMIT`.
pub const KIND_OPS: u8 = 2;

/// Version of the record encoding, first byte of every payload written. Version 2 (embeddings
/// as a sequence of f32s) and version 1 (also: commit records without `first_lsn`, no `OPS`
/// records) are still read.
pub const RECORD_VERSION: u8 = 3;
const RECORD_VERSION_2: u8 = 2;
const RECORD_VERSION_1: u8 = 1;

/// A transaction whose encoding is larger than this (or than the log's `max_record_bytes`, if
/// smaller) is streamed in records of about this size. Keeping records well under the 16 MiB
/// default limit bounds what one record costs the log: the copy and checksum made under its
/// append lock (which delays every other committer's acknowledgement), the room a record can
/// leave unused at the end of a segment when it does not fit, and the size of one write.
pub const STREAM_RECORD_BYTES: usize = 1 << 20;

/// Most bytes a record adds around its operations: the version byte and up to four varints
/// (ids, time, first LSN, operation count) of at most 10 bytes each.
const RECORD_OVERHEAD_MAX: usize = 1 + 4 * 10;

/// Capacity a transaction's record buffer starts with (bounded by the record size): one memory
/// with a 384-dimension embedding encodes to about 2 KB, and growing a buffer from empty would
/// reallocate and copy it about ten times.
const INITIAL_RECORD_CAPACITY: usize = 4096;

/// The record size a transaction is streamed at, for a log with this record limit.
pub(crate) fn stream_record_bytes(max_record_bytes: usize) -> usize {
    STREAM_RECORD_BYTES.min(max_record_bytes)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A key takes a new value; `before` is the value it had (None if absent).
    Put { key: Key, before: Option<Value>, after: Value },
    /// A key is removed; `before` is the value it had.
    Delete { key: Key, before: Value },
    /// An application event, published in the change feed iff the transaction commits.
    Event {
        namespace: String,
        topic: String,
        #[serde(with = "json_payload")]
        payload: serde_json::Value,
    },
}

pub(crate) mod json_payload {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(v).map_err(serde::ser::Error::custom)?.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        serde_json::from_str(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Op {
    /// The key an operation writes (events write none).
    pub fn key(&self) -> Option<&Key> {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => Some(key),
            Op::Event { .. } => None,
        }
    }

    /// The namespace an operation belongs to.
    pub fn namespace(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => &key.namespace,
            Op::Event { namespace, .. } => namespace,
        }
    }
}

/// A whole committed transaction: what the store applies and the change feed announces, however
/// many log records it took. Its LSN is the LSN of its `COMMIT` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub txn_id: u64,
    pub commit_ts_ms: u64,
    pub ops: Vec<Op>,
}

/// One log record of the database, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    /// `KIND_OPS`: operations of a large transaction, logged before its `COMMIT`. `first_lsn`
    /// is the LSN of the transaction's first `OPS` record; 0 in that record itself.
    Ops { txn_id: u64, first_lsn: Lsn, ops: Vec<Op> },
    /// `KIND_COMMIT`: the end of a transaction. `first_lsn` is the LSN of its first `OPS`
    /// record, whose operations (in LSN order) come before `ops`; 0 when the transaction is this
    /// one record.
    Commit {
        txn_id: u64,
        commit_ts_ms: u64,
        first_lsn: Lsn,
        ops: Vec<Op>,
    },
}

/// The encodings (postcard after the version byte); `&[Op]` encodes exactly like `Vec<Op>`.
#[derive(Serialize)]
struct CommitOut<'a> {
    txn_id: u64,
    commit_ts_ms: u64,
    first_lsn: Lsn,
    ops: &'a [Op],
}

/// `O` is the operation as encoded by the record's version: [`Op`], or [`legacy::Op`].
#[derive(Deserialize)]
struct CommitIn<O> {
    txn_id: u64,
    commit_ts_ms: u64,
    first_lsn: Lsn,
    ops: Vec<O>,
}

/// A version 1 `COMMIT` record.
#[derive(Deserialize)]
struct CommitInV1 {
    txn_id: u64,
    commit_ts_ms: u64,
    ops: Vec<legacy::Op>,
}

#[derive(Serialize)]
struct OpsOut<'a> {
    txn_id: u64,
    first_lsn: Lsn,
    ops: &'a [Op],
}

#[derive(Deserialize)]
struct OpsIn<O> {
    txn_id: u64,
    first_lsn: Lsn,
    ops: Vec<O>,
}

/// Operations of an older record version, as the current ones.
fn upgraded(ops: Vec<legacy::Op>) -> Vec<Op> {
    ops.into_iter().map(Op::from).collect()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![RECORD_VERSION]).expect("encoding to memory cannot fail")
}

fn encoded_size<T: Serialize>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).expect("sizing an encoding cannot fail")
}

/// Decodes a whole payload: bytes left over are an error too.
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes left over after the record", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// The payload of a `COMMIT` record.
pub(crate) fn encode_commit(txn_id: u64, commit_ts_ms: u64, first_lsn: Lsn, ops: &[Op]) -> Vec<u8> {
    encode(&CommitOut {
        txn_id,
        commit_ts_ms,
        first_lsn,
        ops,
    })
}

/// The payload of an `OPS` record.
pub(crate) fn encode_ops(txn_id: u64, first_lsn: Lsn, ops: &[Op]) -> Vec<u8> {
    encode(&OpsOut { txn_id, first_lsn, ops })
}

impl LogRecord {
    /// Decodes the payload of a record of `kind` at `lsn`. Anything that is not a valid record
    /// is a typed `CorruptRecord` error.
    pub fn decode(lsn: Lsn, kind: u8, bytes: &[u8]) -> Result<LogRecord> {
        let corrupt = |reason: String| CoreError::CorruptRecord { lsn, reason };
        let (version, rest) = bytes.split_first().ok_or_else(|| corrupt("empty record".into()))?;
        let commit = |c: CommitIn<Op>| LogRecord::Commit {
            txn_id: c.txn_id,
            commit_ts_ms: c.commit_ts_ms,
            first_lsn: c.first_lsn,
            ops: c.ops,
        };
        let ops = |o: OpsIn<Op>| LogRecord::Ops {
            txn_id: o.txn_id,
            first_lsn: o.first_lsn,
            ops: o.ops,
        };
        let record = match (kind, *version) {
            (KIND_COMMIT, RECORD_VERSION) => commit(decode_exact(rest).map_err(corrupt)?),
            (KIND_COMMIT, RECORD_VERSION_2) => {
                let c: CommitIn<legacy::Op> = decode_exact(rest).map_err(corrupt)?;
                commit(CommitIn {
                    txn_id: c.txn_id,
                    commit_ts_ms: c.commit_ts_ms,
                    first_lsn: c.first_lsn,
                    ops: upgraded(c.ops),
                })
            }
            (KIND_COMMIT, RECORD_VERSION_1) => {
                let c: CommitInV1 = decode_exact(rest).map_err(corrupt)?;
                commit(CommitIn {
                    txn_id: c.txn_id,
                    commit_ts_ms: c.commit_ts_ms,
                    first_lsn: 0,
                    ops: upgraded(c.ops),
                })
            }
            (KIND_OPS, RECORD_VERSION) => ops(decode_exact(rest).map_err(corrupt)?),
            (KIND_OPS, RECORD_VERSION_2) => {
                let o: OpsIn<legacy::Op> = decode_exact(rest).map_err(corrupt)?;
                ops(OpsIn {
                    txn_id: o.txn_id,
                    first_lsn: o.first_lsn,
                    ops: upgraded(o.ops),
                })
            }
            (KIND_COMMIT | KIND_OPS, v) => return Err(corrupt(format!("unknown record version {v}"))),
            (k, _) => return Err(corrupt(format!("unknown record kind {k}"))),
        };
        let first_lsn = match record {
            LogRecord::Ops { first_lsn, .. } | LogRecord::Commit { first_lsn, .. } => first_lsn,
        };
        if first_lsn >= lsn {
            return Err(corrupt(format!(
                "its transaction cannot start at LSN {first_lsn}, at or after this record"
            )));
        }
        Ok(record)
    }

    /// The record's kind and payload.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            LogRecord::Ops { txn_id, first_lsn, ops } => (KIND_OPS, encode_ops(*txn_id, *first_lsn, ops)),
            LogRecord::Commit {
                txn_id,
                commit_ts_ms,
                first_lsn,
                ops,
            } => (KIND_COMMIT, encode_commit(*txn_id, *commit_ts_ms, *first_lsn, ops)),
        }
    }

    pub fn txn_id(&self) -> u64 {
        match self {
            LogRecord::Ops { txn_id, .. } | LogRecord::Commit { txn_id, .. } => *txn_id,
        }
    }

    /// The LSN of the first record of this record's transaction, if this record is at `lsn`.
    pub fn transaction_start(&self, lsn: Lsn) -> Lsn {
        match self {
            LogRecord::Ops { first_lsn: 0, .. } | LogRecord::Commit { first_lsn: 0, .. } => lsn,
            LogRecord::Ops { first_lsn, .. } | LogRecord::Commit { first_lsn, .. } => *first_lsn,
        }
    }
}

impl CommitRecord {
    /// The payload of the `COMMIT` record of this transaction logged as one record.
    pub fn encode(&self) -> Vec<u8> {
        encode_commit(self.txn_id, self.commit_ts_ms, 0, &self.ops)
    }

    /// Decodes a `COMMIT` payload that holds a whole transaction (version 1, or version 2
    /// without streamed records). The `COMMIT` of a streamed transaction holds only its last
    /// operations: it is a `CorruptRecord` error here; read it with [`LogRecord::decode`].
    pub fn decode(lsn: Lsn, bytes: &[u8]) -> Result<CommitRecord> {
        match LogRecord::decode(lsn, KIND_COMMIT, bytes)? {
            LogRecord::Commit {
                txn_id,
                commit_ts_ms,
                first_lsn: 0,
                ops,
            } => Ok(CommitRecord { txn_id, commit_ts_ms, ops }),
            LogRecord::Commit { first_lsn, .. } => Err(CoreError::CorruptRecord {
                lsn,
                reason: format!("the transaction's first operations are in the records from LSN {first_lsn}"),
            }),
            LogRecord::Ops { .. } => unreachable!("decoded as a commit"),
        }
    }
}

/// How a transaction is laid out in the log, decided before anything is logged.
#[derive(Debug)]
pub(crate) enum Layout {
    /// One `COMMIT` record; its operations are already encoded (a postcard `Vec<Op>`) after
    /// [`RECORD_OVERHEAD_MAX`] bytes of room, where [`encode_single_commit`] writes the header
    /// once the id and time are known, so the record is never copied to prepend it.
    Single { buf: Vec<u8> },
    /// Consecutive ranges of the operations: each but the last is an `OPS` record, the last goes
    /// into the `COMMIT` (which is then the only record if there is one range).
    Streamed { chunks: Vec<Range<usize>> },
}

impl Layout {
    /// Lays out `ops` in records of about `target` bytes, none over `max` (the log's limit).
    /// One operation that does not fit a record of `max` bytes is `TooLarge` (its size, and the
    /// most an operation may take: `max` less the record's own bytes).
    pub fn plan(ops: &[Op], target: usize, max: usize) -> Result<Layout> {
        // Most transactions are small: encode them once, giving up as soon as it is clear that
        // one record of `target` bytes will not do.
        let mut buf = SPARE_RECORD_BUFFER.take();
        if buf.capacity() == 0 {
            buf.reserve(target.min(INITIAL_RECORD_CAPACITY));
        }
        buf.resize(RECORD_OVERHEAD_MAX, 0);
        let capped = Capped { buf, cap: target };
        if let Ok(buf) = postcard::serialize_with_flavor(ops, capped) {
            return Ok(Layout::Single { buf });
        }
        let mut chunks = Vec::new();
        let (mut start, mut bytes) = (0, RECORD_OVERHEAD_MAX);
        for (i, op) in ops.iter().enumerate() {
            let size = encoded_size(op);
            if RECORD_OVERHEAD_MAX + size > max {
                return Err(CoreError::TooLarge {
                    what: "one operation, encoded for the log with its before and after images,",
                    size_bytes: size,
                    max_bytes: max.saturating_sub(RECORD_OVERHEAD_MAX),
                });
            }
            if i > start && bytes + size > target {
                chunks.push(start..i);
                (start, bytes) = (i, RECORD_OVERHEAD_MAX);
            }
            bytes += size;
        }
        chunks.push(start..ops.len());
        Ok(Layout::Streamed { chunks })
    }
}

thread_local! {
    /// The buffer of this thread's last single-record commit, emptied, for its next one: the
    /// log copies a record when it is submitted, and a fresh buffer per commit costs the
    /// allocator more than the encoding (64 writer threads churn glibc's arenas).
    static SPARE_RECORD_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest buffer kept by [`recycle_record_buffer`]; a rare large transaction's buffer is freed.
const SPARE_RECORD_BUFFER_MAX_BYTES: usize = 64 * 1024;

/// Gives a `Layout::Single` buffer back once the log has copied its record.
pub(crate) fn recycle_record_buffer(mut buf: Vec<u8>) {
    if buf.capacity() <= SPARE_RECORD_BUFFER_MAX_BYTES {
        buf.clear();
        SPARE_RECORD_BUFFER.set(buf);
    }
}

/// The payload of a `COMMIT` record of a whole transaction whose operations are encoded already
/// (`Layout::Single`, after [`RECORD_OVERHEAD_MAX`] bytes of room): the encoding of `CommitOut`
/// written field by field, which postcard defines as the concatenation of the fields. The
/// header goes at the end of the room, and the payload is the slice from its start.
pub(crate) fn encode_single_commit(txn_id: u64, commit_ts_ms: u64, buf: &mut [u8]) -> &[u8] {
    let mut header = [0u8; RECORD_OVERHEAD_MAX];
    header[0] = RECORD_VERSION;
    let fields = postcard::to_slice(&(txn_id, commit_ts_ms, 0u64), &mut header[1..]).expect("three varints fit the room");
    let header_bytes = 1 + fields.len();
    let start = RECORD_OVERHEAD_MAX - header_bytes;
    buf[start..RECORD_OVERHEAD_MAX].copy_from_slice(&header[..header_bytes]);
    &buf[start..]
}

/// A postcard output that refuses to grow past `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl postcard::ser_flavors::Flavor for Capped {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.buf.len() + data.len() > self.cap {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.buf)
    }
}

/// Reassembles transactions from records read in LSN order (recovery and the change feed).
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    open: Option<OpenTxn>,
}

/// The `OPS` records read so far of the transaction that is being read.
#[derive(Debug)]
struct OpenTxn {
    txn_id: u64,
    /// The transaction's first record.
    first_lsn: Lsn,
    /// The first of its records read here (after `first_lsn` if reading started inside it).
    seen_from: Lsn,
    next_lsn: Lsn,
    ops: Vec<Op>,
}

impl Assembler {
    /// Takes the next record (at `lsn`, in LSN order) and returns the transaction its `COMMIT`
    /// completes, keeping only the operations `keep` accepts. `OPS` records are held until then.
    /// When the first records of the transaction were not read here (reading started inside
    /// it), `read_back(txn_id, first_lsn, to)` must return the operations of its records from
    /// `first_lsn` up to `to` (excluded); see [`read_streamed`].
    pub fn take(
        &mut self,
        lsn: Lsn,
        record: LogRecord,
        keep: impl Fn(&Op) -> bool,
        read_back: impl FnOnce(u64, Lsn, Lsn) -> Result<Vec<Op>>,
    ) -> Result<Option<CommitRecord>> {
        let start = record.transaction_start(lsn);
        match record {
            LogRecord::Ops { txn_id, ops, .. } => {
                let ops = ops.into_iter().filter(|op| keep(op));
                match &mut self.open {
                    Some(open) if (open.txn_id, open.first_lsn, open.next_lsn) == (txn_id, start, lsn) => {
                        open.ops.extend(ops);
                        open.next_lsn += 1;
                    }
                    // A transaction starts here (or reading starts inside it). One still open
                    // has ended without its commit (a transaction's records are contiguous): it
                    // never committed, and is dropped.
                    _ => {
                        self.open = Some(OpenTxn {
                            txn_id,
                            first_lsn: start,
                            seen_from: lsn,
                            next_lsn: lsn + 1,
                            ops: ops.collect(),
                        })
                    }
                }
                Ok(None)
            }
            LogRecord::Commit {
                txn_id,
                commit_ts_ms,
                first_lsn,
                ops,
            } => {
                let open = self.open.take();
                let mut all = match open {
                    _ if first_lsn == 0 => Vec::new(),
                    Some(open) if (open.txn_id, open.first_lsn, open.next_lsn) == (txn_id, first_lsn, lsn) => {
                        if open.seen_from > first_lsn {
                            let mut head = read_back(txn_id, first_lsn, open.seen_from)?;
                            head.extend(open.ops);
                            head
                        } else {
                            open.ops
                        }
                    }
                    _ => read_back(txn_id, first_lsn, lsn)?,
                };
                all.extend(ops.into_iter().filter(|op| keep(op)));
                Ok(Some(CommitRecord {
                    txn_id,
                    commit_ts_ms,
                    ops: all,
                }))
            }
        }
    }
}

/// Reads operations a transaction streamed: `reader` is at its first `OPS` record
/// (`first_lsn`), and every record before `to` must be an `OPS` record of `txn_id` that starts
/// there.
pub(crate) fn read_streamed(mut reader: WalReader, txn_id: u64, to: Lsn, keep: impl Fn(&Op) -> bool) -> Result<Vec<Op>> {
    let first_lsn = reader.next_lsn();
    let mut ops = Vec::new();
    for lsn in first_lsn..to {
        let missing = || CoreError::CorruptRecord {
            lsn,
            reason: format!("transaction {txn_id} streams its operations from LSN {first_lsn}, but this record is not durable"),
        };
        let record = reader.next_record()?.ok_or_else(missing)?;
        let decoded = LogRecord::decode(record.lsn, record.kind, &record.payload)?;
        let start = decoded.transaction_start(lsn);
        match decoded {
            LogRecord::Ops { txn_id: t, ops: more, .. } if t == txn_id && start == first_lsn => {
                ops.extend(more.into_iter().filter(|op| keep(op)))
            }
            _ => {
                return Err(CoreError::CorruptRecord {
                    lsn,
                    reason: format!("transaction {txn_id} streams its operations from LSN {first_lsn}, but this record is not one of them"),
                })
            }
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvValue, Space};

    fn put(id: &str, bytes: usize) -> Op {
        Op::Put {
            key: Key::new("ns", Space::Kv, id.as_bytes().to_vec()),
            before: None,
            after: Value::Kv(KvValue::Bytes(vec![7; bytes])),
        }
    }

    fn sample() -> CommitRecord {
        CommitRecord {
            txn_id: 7,
            commit_ts_ms: 1_700_000_000_000,
            ops: vec![
                Op::Put {
                    key: Key::new("ns", Space::Kv, b"k".to_vec()),
                    before: None,
                    after: Value::Kv(KvValue::Json(serde_json::json!({"a": [1, 2]}))),
                },
                Op::Event {
                    namespace: "ns".into(),
                    topic: "t".into(),
                    payload: serde_json::json!("hello"),
                },
            ],
        }
    }

    #[test]
    fn commit_records_round_trip_and_garbage_is_a_typed_error() {
        let record = sample();
        let bytes = record.encode();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(CommitRecord::decode(1, &bytes).unwrap(), record);
        for cut in 0..bytes.len() {
            assert!(
                CommitRecord::decode(1, &bytes[..cut]).is_err(),
                "a record cut at {cut} must not decode"
            );
        }
        assert!(matches!(
            CommitRecord::decode(1, &[9, 1, 2]),
            Err(CoreError::CorruptRecord { lsn: 1, .. })
        ));
    }

    #[test]
    fn every_record_kind_round_trips_and_a_cut_or_unknown_one_is_a_typed_error() {
        let ops = sample().ops;
        let records = [
            LogRecord::Ops {
                txn_id: 3,
                first_lsn: 0,
                ops: ops.clone(),
            },
            LogRecord::Ops {
                txn_id: 3,
                first_lsn: 41,
                ops: ops.clone(),
            },
            LogRecord::Commit {
                txn_id: 3,
                commit_ts_ms: 9,
                first_lsn: 40,
                ops: ops.clone(),
            },
            LogRecord::Commit {
                txn_id: 3,
                commit_ts_ms: 9,
                first_lsn: 0,
                ops,
            },
        ];
        for record in records {
            let (kind, bytes) = record.encode();
            assert_eq!(LogRecord::decode(42, kind, &bytes).unwrap(), record);
            for cut in 0..bytes.len() {
                assert!(LogRecord::decode(42, kind, &bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(LogRecord::decode(42, kind, &longer).is_err(), "bytes left over");
        }
        let (_, ops_bytes) = LogRecord::Ops {
            txn_id: 1,
            first_lsn: 0,
            ops: vec![],
        }
        .encode();
        assert!(matches!(
            LogRecord::decode(5, 99, &ops_bytes),
            Err(CoreError::CorruptRecord { lsn: 5, reason }) if reason.contains("kind 99")
        ));
        let mut v1_ops = ops_bytes.clone();
        v1_ops[0] = RECORD_VERSION_1;
        assert!(
            LogRecord::decode(5, KIND_OPS, &v1_ops).is_err(),
            "OPS records exist from version 2 on"
        );
        // A transaction cannot start at or after one of its records.
        let (_, bytes) = LogRecord::Commit {
            txn_id: 1,
            commit_ts_ms: 1,
            first_lsn: 5,
            ops: vec![],
        }
        .encode();
        assert!(LogRecord::decode(5, KIND_COMMIT, &bytes).is_err());
        assert!(LogRecord::decode(6, KIND_COMMIT, &bytes).is_ok());
        let (_, bytes) = LogRecord::Ops {
            txn_id: 1,
            first_lsn: 5,
            ops: vec![],
        }
        .encode();
        assert!(LogRecord::decode(5, KIND_OPS, &bytes).is_err());
        assert_eq!(LogRecord::decode(6, KIND_OPS, &bytes).unwrap().transaction_start(6), 5);
        assert!(
            CommitRecord::decode(6, &bytes).is_err(),
            "the COMMIT of a streamed transaction is not a whole transaction"
        );
    }

    /// `sample()` with a memory that has an embedding (whose encoding changed in version 3).
    fn sample_with_memory() -> CommitRecord {
        let mut record = sample();
        record.ops.push(Op::Put {
            key: Key::new("ns", Space::Memory, b"m".to_vec()),
            before: None,
            after: Value::Memory(crate::model::Memory {
                id: "m".into(),
                text: "text".into(),
                embedding: Some(vec![1.0, -2.5, f32::MAX, f32::MIN_POSITIVE].into()),
                metadata: serde_json::json!({"k": "v"}).as_object().unwrap().clone().into(),
                created_ms: 1,
                updated_ms: 2,
            }),
        });
        record
    }

    #[test]
    fn memories_with_embeddings_round_trip_in_every_record_kind() {
        let ops = sample_with_memory().ops;
        for record in [
            LogRecord::Ops {
                txn_id: 3,
                first_lsn: 0,
                ops: ops.clone(),
            },
            LogRecord::Commit {
                txn_id: 3,
                commit_ts_ms: 9,
                first_lsn: 0,
                ops: ops.clone(),
            },
        ] {
            let (kind, bytes) = record.encode();
            assert_eq!(LogRecord::decode(42, kind, &bytes).unwrap(), record);
        }
    }

    #[test]
    fn an_embedding_whose_bytes_are_not_whole_floats_is_a_corrupt_record() {
        let record = CommitRecord {
            txn_id: 1,
            commit_ts_ms: 1,
            ops: sample_with_memory().ops.split_off(2),
        };
        let bytes = record.encode();
        // The embedding: Some (01), 16 bytes (10), then the floats; claim 15 bytes instead and
        // drop one, so that the record is otherwise well formed.
        let at = bytes.windows(2).position(|w| w == [0x01, 0x10]).expect("the embedding's header");
        let mut damaged = bytes.clone();
        damaged[at + 1] = 0x0f;
        damaged.remove(at + 2);
        let result = CommitRecord::decode(1, &damaged);
        assert!(matches!(result, Err(CoreError::CorruptRecord { lsn: 1, .. })), "{result:?}");
    }

    #[test]
    fn version_1_and_2_records_are_still_read() {
        // Version 1: the version byte, then postcard { txn_id, commit_ts_ms, ops }; version 2
        // added `first_lsn` and `OPS` records. Both encode embeddings as f32 sequences.
        let record = sample_with_memory();
        let legacy_ops: Vec<legacy::Op> = record.ops.iter().cloned().map(legacy::Op::from).collect();
        let mut v1 = vec![RECORD_VERSION_1];
        v1.extend(postcard::to_stdvec(&(record.txn_id, record.commit_ts_ms, &legacy_ops)).unwrap());
        assert_eq!(CommitRecord::decode(3, &v1).unwrap(), record);
        assert_eq!(
            LogRecord::decode(3, KIND_COMMIT, &v1).unwrap(),
            LogRecord::Commit {
                txn_id: record.txn_id,
                commit_ts_ms: record.commit_ts_ms,
                first_lsn: 0,
                ops: record.ops.clone(),
            }
        );
        let mut v2_commit = vec![RECORD_VERSION_2];
        v2_commit.extend(postcard::to_stdvec(&(record.txn_id, record.commit_ts_ms, 2u64, &legacy_ops)).unwrap());
        assert_eq!(
            LogRecord::decode(3, KIND_COMMIT, &v2_commit).unwrap(),
            LogRecord::Commit {
                txn_id: record.txn_id,
                commit_ts_ms: record.commit_ts_ms,
                first_lsn: 2,
                ops: record.ops.clone(),
            }
        );
        let mut v2_ops = vec![RECORD_VERSION_2];
        v2_ops.extend(postcard::to_stdvec(&(record.txn_id, 0u64, &legacy_ops)).unwrap());
        assert_eq!(
            LogRecord::decode(2, KIND_OPS, &v2_ops).unwrap(),
            LogRecord::Ops {
                txn_id: record.txn_id,
                first_lsn: 0,
                ops: record.ops,
            }
        );
        assert_ne!(
            v2_ops[1..],
            encode_ops(7, 0, &sample_with_memory().ops)[1..],
            "the encodings differ"
        );
    }

    #[test]
    fn records_are_encoded_as_documented() {
        // The examples in docs/record-format.md.
        let op = Op::Put {
            key: Key::new("ns", Space::Kv, b"k".to_vec()),
            before: None,
            after: Value::Kv(KvValue::Json(serde_json::json!(1))),
        };
        let (kind, bytes) = LogRecord::Commit {
            txn_id: 5,
            commit_ts_ms: 1000,
            first_lsn: 0,
            ops: vec![op.clone()],
        }
        .encode();
        assert_eq!(kind, KIND_COMMIT);
        assert_eq!(
            bytes,
            [0x03, 0x05, 0xe8, 0x07, 0x00, 0x01, 0x00, 0x02, 0x6e, 0x73, 0x04, 0x01, 0x6b, 0x00, 0x04, 0x01, 0x01, 0x31]
        );
        let (kind, bytes) = LogRecord::Ops {
            txn_id: 5,
            first_lsn: 300,
            ops: vec![op.clone()],
        }
        .encode();
        assert_eq!(kind, KIND_OPS);
        assert_eq!(
            bytes,
            [0x03, 0x05, 0xac, 0x02, 0x01, 0x00, 0x02, 0x6e, 0x73, 0x04, 0x01, 0x6b, 0x00, 0x04, 0x01, 0x01, 0x31]
        );
        let (_, bytes) = LogRecord::Commit {
            txn_id: 5,
            commit_ts_ms: 1000,
            first_lsn: 300,
            ops: vec![],
        }
        .encode();
        assert_eq!(bytes, [0x03, 0x05, 0xe8, 0x07, 0xac, 0x02, 0x00]);
    }

    #[test]
    fn a_small_transaction_is_one_commit_record_encoded_like_any_other() {
        let record = sample();
        let Layout::Single { mut buf } = Layout::plan(&record.ops, 1024, 1024).unwrap() else {
            panic!("a small transaction is one record");
        };
        let bytes = encode_single_commit(record.txn_id, record.commit_ts_ms, &mut buf);
        assert_eq!(bytes, record.encode(), "the field-by-field encoding is the derived one");
        // Ids and times of every varint length fit the room.
        for (txn_id, commit_ts_ms) in [(0, 0), (u64::MAX, u64::MAX), (300, 1 << 40)] {
            let Layout::Single { mut buf } = Layout::plan(&record.ops, 1024, 1024).unwrap() else {
                panic!("a small transaction is one record");
            };
            let expected = CommitRecord {
                txn_id,
                commit_ts_ms,
                ops: record.ops.clone(),
            }
            .encode();
            assert_eq!(encode_single_commit(txn_id, commit_ts_ms, &mut buf), expected);
        }
    }

    #[test]
    fn a_large_transaction_is_laid_out_in_records_within_the_limits() {
        let ops: Vec<Op> = (0..50).map(|i| put(&format!("k{i:02}"), 100 + 37 * i)).collect();
        let (target, max) = (2000, 4000);
        let Layout::Streamed { chunks } = Layout::plan(&ops, target, max).unwrap() else {
            panic!("streamed")
        };
        assert!(chunks.len() > 5);
        let mut next = 0;
        for (i, range) in chunks.iter().enumerate() {
            assert_eq!(range.start, next, "consecutive, none empty");
            assert!(range.end > range.start);
            next = range.end;
            let (_, bytes) = if i + 1 < chunks.len() {
                LogRecord::Ops {
                    txn_id: u64::MAX,
                    first_lsn: u64::MAX - 1,
                    ops: ops[range.clone()].to_vec(),
                }
                .encode()
            } else {
                LogRecord::Commit {
                    txn_id: u64::MAX,
                    commit_ts_ms: u64::MAX,
                    first_lsn: u64::MAX - 1,
                    ops: ops[range.clone()].to_vec(),
                }
                .encode()
            };
            assert!(bytes.len() <= target || range.len() == 1, "chunk {i} of {} bytes", bytes.len());
            assert!(bytes.len() <= max);
        }
        assert_eq!(next, ops.len());
        // One operation between the target and the limit gets a record of its own.
        let ops = vec![put("a", 10), put("b", 3000), put("c", 10)];
        let Layout::Streamed { chunks } = Layout::plan(&ops, target, max).unwrap() else {
            panic!("streamed")
        };
        assert_eq!(chunks, vec![0..1, 1..2, 2..3]);
        // One operation over the limit is refused.
        let ops = vec![put("a", 10), put("b", 5000)];
        assert!(matches!(
            Layout::plan(&ops, target, max),
            Err(CoreError::TooLarge { max_bytes: 3959, size_bytes, .. }) if size_bytes > 5000
        ));
    }

    fn take(a: &mut Assembler, lsn: Lsn, record: LogRecord) -> Option<CommitRecord> {
        a.take(lsn, record, |_| true, |_, from, _| panic!("no read-back expected (from {from})"))
            .unwrap()
    }

    fn ops_record(txn_id: u64, first_lsn: Lsn, id: &str) -> LogRecord {
        LogRecord::Ops {
            txn_id,
            first_lsn,
            ops: vec![put(id, 1)],
        }
    }

    fn commit_record(txn_id: u64, first_lsn: Lsn, id: &str) -> LogRecord {
        LogRecord::Commit {
            txn_id,
            commit_ts_ms: 10,
            first_lsn,
            ops: vec![put(id, 1)],
        }
    }

    fn ids(record: &CommitRecord) -> String {
        record
            .ops
            .iter()
            .map(|op| String::from_utf8_lossy(&op.key().unwrap().id).into_owned())
            .collect()
    }

    #[test]
    fn the_assembler_returns_whole_transactions_and_drops_ops_that_never_committed() {
        let mut a = Assembler::default();
        // An orphan at 1..=2 (transaction 1 never committed), then transaction 2 streamed at
        // 3..=4 and committed at 5, then an orphan at 6 and transaction 3 in one record at 7.
        assert!(take(&mut a, 1, ops_record(1, 0, "x")).is_none());
        assert!(take(&mut a, 2, ops_record(1, 1, "y")).is_none());
        assert!(take(&mut a, 3, ops_record(2, 0, "a")).is_none());
        assert!(take(&mut a, 4, ops_record(2, 3, "b")).is_none());
        assert_eq!(ids(&take(&mut a, 5, commit_record(2, 3, "c")).unwrap()), "abc");
        assert!(take(&mut a, 6, ops_record(4, 0, "z")).is_none());
        assert_eq!(ids(&take(&mut a, 7, commit_record(3, 0, "d")).unwrap()), "d");
        // The same transaction id streaming again (after a crash) starts a new transaction.
        assert!(take(&mut a, 8, ops_record(5, 0, "p")).is_none());
        assert!(take(&mut a, 9, ops_record(5, 0, "q")).is_none());
        assert_eq!(ids(&take(&mut a, 10, commit_record(5, 9, "r")).unwrap()), "qr");
    }

    #[test]
    fn the_assembler_reads_back_the_records_it_did_not_see() {
        let read_back = |expect: (u64, Lsn, Lsn), got: &'static str| {
            move |txn, from, to| {
                assert_eq!((txn, from, to), expect);
                Ok(vec![put(got, 1)])
            }
        };
        // Started inside the transaction (2 at 3..=5): only the first record is read back.
        let mut a = Assembler::default();
        assert!(take(&mut a, 4, ops_record(2, 3, "b")).is_none());
        let whole = a.take(5, commit_record(2, 3, "c"), |_| true, read_back((2, 3, 4), "a")).unwrap();
        assert_eq!(ids(&whole.unwrap()), "abc");
        // Started at its commit: every streamed record is read back.
        let mut a = Assembler::default();
        let whole = a.take(5, commit_record(2, 3, "c"), |_| true, read_back((2, 3, 5), "a")).unwrap();
        assert_eq!(ids(&whole.unwrap()), "ac");
        // The filter applies to the operations read and to those read back alike.
        let mut a = Assembler::default();
        assert!(a
            .take(4, ops_record(2, 3, "b"), |op| op.namespace() == "other", read_back((0, 0, 0), ""))
            .unwrap()
            .is_none());
        let whole = a
            .take(5, commit_record(2, 3, "c"), |op| op.namespace() == "other", |_, _, _| Ok(vec![]))
            .unwrap();
        assert!(whole.unwrap().ops.is_empty());
    }
}
