//! Ordered key/value state (agent state, checkpoints) and outbox events.

use crate::error::Result;
use crate::model::{Key, KvValue, Space, Value};
use crate::names::{validate_label, validate_namespace, validate_size, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::record::Op;
use crate::retention::RetainedView;
use crate::store::VersionInfo;
use crate::txn::{ReadView, Transaction};

fn kv_key(namespace: &str, key: &[u8]) -> Result<Key> {
    validate_namespace(namespace)?;
    validate_size("key", key.len(), MAX_KEY_BYTES)?;
    if key.is_empty() {
        return Err(crate::error::CoreError::InvalidName {
            what: "key",
            value: String::new(),
            reason: "is empty",
        });
    }
    Ok(Key::new(namespace, Space::Kv, key.to_vec()))
}

fn value_size(value: &KvValue) -> usize {
    match value {
        KvValue::Bytes(b) => b.len(),
        KvValue::Json(j) => crate::names::json_bytes(j),
    }
}

impl Transaction {
    pub fn kv_put(&mut self, namespace: &str, key: &[u8], value: KvValue) -> Result<()> {
        let key = kv_key(namespace, key)?;
        validate_size("value", value_size(&value), MAX_VALUE_BYTES)?;
        self.put(key, Value::Kv(value));
        Ok(())
    }

    /// Removes a key; returns whether it existed.
    pub fn kv_delete(&mut self, namespace: &str, key: &[u8]) -> Result<bool> {
        let key = kv_key(namespace, key)?;
        let existed = self.get_value(&key).is_some();
        self.check_retained()?;
        self.remove(key);
        Ok(existed)
    }

    /// Emits an application event: it appears in the change feed if and only if this
    /// transaction commits (the transactional outbox).
    pub fn emit_event(&mut self, namespace: &str, topic: &str, payload: serde_json::Value) -> Result<()> {
        validate_namespace(namespace)?;
        validate_label("event topic", topic)?;
        let size = crate::names::json_bytes(&payload);
        validate_size("event payload", size, MAX_VALUE_BYTES)?;
        self.push_event(Op::Event {
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            payload,
        });
        Ok(())
    }
}

/// Reads of key/value state, available on snapshots and transactions. Each fails with
/// `HistoryNotRetained` if the view reads below the history horizon.
pub trait KvReads: RetainedView {
    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<KvValue>> {
        let value = self.get_value(&kv_key(namespace, key)?);
        self.check_retained()?;
        Ok(match value {
            Some(Value::Kv(v)) => Some(v),
            _ => None,
        })
    }

    /// Keys starting with `prefix`, in byte order.
    fn kv_scan_prefix(&self, namespace: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, KvValue)>> {
        validate_namespace(namespace)?;
        let items = self.scan_values(namespace, Space::Kv, prefix);
        self.check_retained()?;
        Ok(collect_kv(items))
    }

    /// Keys in `[from, to)`, in byte order (`to = None`: to the end).
    fn kv_scan_range(&self, namespace: &str, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, KvValue)>> {
        validate_namespace(namespace)?;
        let items = self.scan_value_range(namespace, Space::Kv, from, to);
        self.check_retained()?;
        Ok(collect_kv(items))
    }

    /// The retained versions of a key up to this view, oldest first (a `None` value is a
    /// deletion): every version unless the retention policy pruned older ones.
    fn kv_history(&self, namespace: &str, key: &[u8]) -> Result<Vec<VersionInfo>> {
        let history = self.key_history(&kv_key(namespace, key)?);
        self.check_retained()?;
        Ok(history)
    }
}

fn collect_kv(items: Vec<(Key, Value, crate::store::CreationOrder)>) -> Vec<(Vec<u8>, KvValue)> {
    items
        .into_iter()
        .filter_map(|(k, v, _)| if let Value::Kv(v) = v { Some((k.id, v)) } else { None })
        .collect()
}

impl<T: RetainedView + ?Sized> KvReads for T {}
