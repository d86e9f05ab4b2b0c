//! Log records written by the database (payloads of engram-wal records).
//!
//! A transaction is one `COMMIT` record holding every operation with its before and after image,
//! so recovery redoes it whole or not at all, and the change feed needs nothing else.

use crate::error::{CoreError, Result};
use crate::model::{Key, Value};
use engram_wal::Lsn;
use serde::{Deserialize, Serialize};

/// engram-wal record kind of a committed transaction.
pub const KIND_COMMIT: u8 = 1;

/// Version of the record encoding, first byte of every payload.
const RECORD_VERSION: u8 = 1;

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

mod json_payload {
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub txn_id: u64,
    pub commit_ts_ms: u64,
    pub ops: Vec<Op>,
}

impl CommitRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_stdvec(self).expect("encoding to memory cannot fail"));
        out
    }

    pub fn decode(lsn: Lsn, bytes: &[u8]) -> Result<CommitRecord> {
        let corrupt = |reason: String| CoreError::CorruptRecord { lsn, reason };
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
            Some((v, _)) => Err(corrupt(format!("unknown record version {v}"))),
            None => Err(corrupt("empty record".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvValue, Space};

    #[test]
    fn commit_records_round_trip_and_garbage_is_a_typed_error() {
        let record = CommitRecord {
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
        };
        let bytes = record.encode();
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
}
