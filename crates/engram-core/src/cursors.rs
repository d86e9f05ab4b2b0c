//! Named durable cursors: a change-feed consumer records how far it has processed, in the
//! database itself (a committed, logged write), and the log is never truncated past the oldest
//! cursor, like a PostgreSQL replication slot.

use crate::db::Database;
use crate::error::Result;
use crate::model::{Key, KvValue, Space, Value};
use crate::names::validate_label;
use crate::retention::RetainedView;
use crate::txn::{CommitInfo, ReadView, Snapshot};
use engram_wal::Lsn;

/// A namespace no user can name (user namespaces may not start with '.').
pub(crate) const SYSTEM_NAMESPACE: &str = ".engram";
const CURSOR_PREFIX: &[u8] = b"cursor/";

fn cursor_key(name: &str) -> Key {
    Key::new(SYSTEM_NAMESPACE, Space::Meta, [CURSOR_PREFIX, name.as_bytes()].concat())
}

fn decode_position(value: Value) -> Option<Lsn> {
    match value {
        Value::Kv(KvValue::Json(v)) => v.get("lsn").and_then(|l| l.as_u64()),
        _ => None,
    }
}

impl Database {
    /// Records that consumer `name` has processed every change up to and including `lsn`.
    /// Creates the cursor if needed. Durable when this returns (with the default durability).
    pub fn advance_cursor(&self, name: &str, lsn: Lsn) -> Result<CommitInfo> {
        validate_label("cursor name", name)?;
        let (_, info) = self.run(100, |txn| {
            txn.put(cursor_key(name), Value::Kv(KvValue::Json(serde_json::json!({ "lsn": lsn }))));
            Ok(())
        })?;
        Ok(info)
    }

    /// Reads the current state with `read`, on a new snapshot if a prune overtook the first
    /// one (cursors are pruned like any key, and a snapshot may fall below the history horizon
    /// between being taken and being read; a new one is at or above it).
    fn read_current<T>(&self, read: impl Fn(&Snapshot) -> T) -> T {
        loop {
            let snapshot = self.snapshot();
            let value = read(&snapshot);
            if snapshot.check_retained().is_ok() {
                return value;
            }
        }
    }

    /// The last LSN consumer `name` has processed, if the cursor exists.
    pub fn cursor(&self, name: &str) -> Result<Option<Lsn>> {
        validate_label("cursor name", name)?;
        Ok(self.read_current(|s| s.get_value(&cursor_key(name))).and_then(decode_position))
    }

    /// Every cursor and its position, by name.
    pub fn cursors(&self) -> Vec<(String, Lsn)> {
        self.read_current(|s| s.scan_values(SYSTEM_NAMESPACE, Space::Meta, CURSOR_PREFIX))
            .into_iter()
            .filter_map(|(k, v, _)| {
                let name = String::from_utf8_lossy(&k.id[CURSOR_PREFIX.len()..]).into_owned();
                decode_position(v).map(|lsn| (name, lsn))
            })
            .collect()
    }

    /// Removes a cursor; it no longer holds log truncation. Returns whether it existed.
    pub fn delete_cursor(&self, name: &str) -> Result<bool> {
        validate_label("cursor name", name)?;
        let (existed, _) = self.run(100, |txn| {
            let existed = txn.get_value(&cursor_key(name)).is_some();
            txn.remove(cursor_key(name));
            Ok(existed)
        })?;
        Ok(existed)
    }

    /// The oldest LSN some cursor still needs (its position + 1); `None` without cursors.
    pub fn cursor_floor(&self) -> Option<Lsn> {
        self.cursors().into_iter().map(|(_, lsn)| lsn + 1).min()
    }
}
