//! A transaction's buffered writes, by key.
//!
//! Most transactions write one or two keys (one memory; a memory and its namespace's
//! dimension). A `BTreeMap` would allocate its first node, room for 11 keys and values (about
//! 2 KB with a memory value), for every such transaction; here up to [`INLINE_WRITES`] writes
//! live inside the transaction and a few more in a vector searched linearly. Past
//! [`LINEAR_WRITES_MAX`] keys the writes move into a `BTreeMap`, so a large transaction's
//! lookups stay logarithmic.

use crate::model::{Key, Space};
use smallvec::SmallVec;
use std::collections::BTreeMap;

const INLINE_WRITES: usize = 2;
const LINEAR_WRITES_MAX: usize = 16;

#[derive(Debug)]
pub(crate) enum WriteSet<W> {
    Few(SmallVec<[(Key, W); INLINE_WRITES]>),
    Many(BTreeMap<Key, W>),
}

impl<W> Default for WriteSet<W> {
    fn default() -> Self {
        WriteSet::Few(SmallVec::new())
    }
}

impl<W> WriteSet<W> {
    pub fn is_empty(&self) -> bool {
        match self {
            WriteSet::Few(v) => v.is_empty(),
            WriteSet::Many(m) => m.is_empty(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            WriteSet::Few(v) => v.len(),
            WriteSet::Many(m) => m.len(),
        }
    }

    pub fn get(&self, key: &Key) -> Option<&W> {
        match self {
            WriteSet::Few(v) => v.iter().find(|(k, _)| k == key).map(|(_, w)| w),
            WriteSet::Many(m) => m.get(key),
        }
    }

    /// [`WriteSet::get`] of the key (namespace, space, id), without building a `Key` unless the
    /// writes are many.
    pub fn get_parts(&self, namespace: &str, space: Space, id: &[u8]) -> Option<&W> {
        match self {
            WriteSet::Few(v) => v
                .iter()
                .find(|(k, _)| k.namespace == namespace && k.space == space && k.id == id)
                .map(|(_, w)| w),
            WriteSet::Many(m) => m.get(&Key::new(namespace, space, id)),
        }
    }

    /// Sets the write of `key`, replacing an earlier one.
    pub fn insert(&mut self, key: Key, write: W) {
        match self {
            WriteSet::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = write;
                } else if v.len() < LINEAR_WRITES_MAX {
                    v.push((key, write));
                } else {
                    let mut map: BTreeMap<Key, W> = std::mem::take(v).into_iter().collect();
                    map.insert(key, write);
                    *self = WriteSet::Many(map);
                }
            }
            WriteSet::Many(m) => {
                m.insert(key, write);
            }
        }
    }

    /// Every write, in no particular order.
    pub fn iter(&self) -> Iter<'_, W> {
        match self {
            WriteSet::Few(v) => Iter::Few(v.iter()),
            WriteSet::Many(m) => Iter::Many(m.iter()),
        }
    }
}

impl<W> IntoIterator for WriteSet<W> {
    type Item = (Key, W);
    type IntoIter = IntoIter<W>;

    /// Every write, in no particular order.
    fn into_iter(self) -> IntoIter<W> {
        match self {
            WriteSet::Few(v) => IntoIter::Few(v.into_iter()),
            WriteSet::Many(m) => IntoIter::Many(m.into_iter()),
        }
    }
}

pub(crate) enum IntoIter<W> {
    Few(smallvec::IntoIter<[(Key, W); INLINE_WRITES]>),
    Many(std::collections::btree_map::IntoIter<Key, W>),
}

impl<W> Iterator for IntoIter<W> {
    type Item = (Key, W);

    fn next(&mut self) -> Option<(Key, W)> {
        match self {
            IntoIter::Few(i) => i.next(),
            IntoIter::Many(i) => i.next(),
        }
    }
}

pub(crate) enum Iter<'a, W> {
    Few(std::slice::Iter<'a, (Key, W)>),
    Many(std::collections::btree_map::Iter<'a, Key, W>),
}

impl<'a, W> Iterator for Iter<'a, W> {
    type Item = (&'a Key, &'a W);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(i) => i.next().map(|(k, w)| (k, w)),
            Iter::Many(i) => i.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> Key {
        Key::new("ns", Space::Kv, vec![i])
    }

    proptest! {
        /// Whatever the number of keys, the set answers like a map: the last write of each key
        /// wins, every key is listed once.
        #[test]
        fn a_write_set_behaves_like_a_map(writes in proptest::collection::vec((0u8..40, any::<u32>()), 0..120)) {
            let mut set = WriteSet::default();
            let mut model = BTreeMap::new();
            for (k, w) in writes {
                set.insert(key(k), w);
                model.insert(key(k), w);
                prop_assert_eq!(set.len(), model.len());
                prop_assert_eq!(set.is_empty(), model.is_empty());
                for probe in 0..40 {
                    prop_assert_eq!(set.get(&key(probe)), model.get(&key(probe)));
                    prop_assert_eq!(set.get_parts("ns", Space::Kv, &[probe]), model.get(&key(probe)));
                }
                // Same id, another namespace or space: another key.
                for probe in 0..40 {
                    prop_assert_eq!(set.get_parts("ns2", Space::Kv, &[probe]), None);
                    prop_assert_eq!(set.get_parts("ns", Space::Memory, &[probe]), None);
                }
            }
            let mut listed: Vec<(Key, u32)> = set.iter().map(|(k, w)| (k.clone(), *w)).collect();
            listed.sort();
            let expected: Vec<(Key, u32)> = model.into_iter().collect();
            prop_assert_eq!(&listed, &expected);
            let mut owned: Vec<(Key, u32)> = set.into_iter().collect();
            owned.sort();
            prop_assert_eq!(owned, expected);
        }
    }
}
