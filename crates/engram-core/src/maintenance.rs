//! What tools around the database need beyond the typed API: a sync point for shutdown, the list
//! of namespaces for an export, and re-inserting an exported memory with its id and timestamps.

use crate::cursors::SYSTEM_NAMESPACE;
use crate::db::Database;
use crate::error::{CoreError, Result};
use crate::memory::MemoryReads as _;
use crate::model::{Key, Memory, Space, Value};
use crate::names::{validate_embedding, validate_label, validate_namespace, validate_size, MAX_TEXT_BYTES, MAX_VALUE_BYTES};
use crate::retention::RetainedView;
use crate::txn::{ReadView, Snapshot, Transaction};
use engram_wal::Lsn;

impl Database {
    /// Makes every commit appended so far durable (one fdatasync unless already durable) and
    /// returns the durable LSN. A server calls it on shutdown, so that commits acknowledged with
    /// a relaxed durability survive a clean stop.
    pub fn sync(&self) -> Result<Lsn> {
        self.shared.check_running()?;
        Ok(self.shared.wal.sync()?)
    }
}

impl Snapshot {
    /// The user namespaces that hold (or held) data at this snapshot, in order; the internal
    /// `.engram` namespace is left out.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        let names = self.db.store.namespaces(self.read_lsn());
        self.check_retained()?;
        Ok(names.into_iter().filter(|n| n != SYSTEM_NAMESPACE).collect())
    }
}

impl Transaction {
    /// Writes `memory` as it is, id and timestamps included (an import of an export). Validated
    /// like an insert; the id must be a non-empty label. Replaces a memory with the same id.
    pub fn restore_memory(&mut self, namespace: &str, memory: Memory) -> Result<()> {
        validate_namespace(namespace)?;
        validate_label("memory id", &memory.id)?;
        validate_size("memory text", memory.text.len(), MAX_TEXT_BYTES)?;
        let metadata_bytes = serde_json::to_vec(&memory.metadata).map(|v| v.len()).unwrap_or(0);
        validate_size("metadata", metadata_bytes, MAX_VALUE_BYTES)?;
        if let Some(e) = &memory.embedding {
            validate_embedding(e)?;
            match self.dimension(namespace) {
                Some(expected) if expected != e.len() => {
                    return Err(CoreError::DimensionMismatch {
                        namespace: namespace.to_string(),
                        expected,
                        got: e.len(),
                    })
                }
                Some(_) => {}
                None => self.declare_dimension(namespace, e.len())?,
            }
        }
        self.check_retained()?;
        let key = Key::new(namespace, Space::Memory, memory.id.as_bytes().to_vec());
        self.put(key, Value::Memory(memory));
        Ok(())
    }
}
