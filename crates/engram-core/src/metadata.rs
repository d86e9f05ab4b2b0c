//! A memory's metadata: a JSON object, kept compact.
//!
//! A `serde_json::Map` is a `BTreeMap`, whose first node has room for eleven entries whatever
//! the object holds: 672 bytes of heap for `{"i": 12345}` (glibc's chunks, headers included:
//! the `store_heap` example), twice the 300 bytes of text of a typical memory. At a million
//! memories that was about 600 MB of the store's 1.3 GB after an open (docs/benchmarks.md,
//! *Metadata*), and each commit wrote those bytes to freshly faulted pages. [`Metadata`] holds
//! the entries sorted by key in one allocation of exactly their number (96 bytes for that
//! object, with its key): lookups are binary searches, iteration is in key order, and the JSON
//! text is the `Map`'s, byte for byte, so the log and checkpoint formats do not change.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// A memory's metadata: a JSON object's entries, sorted by key, each key once.
#[derive(Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Box<[(Box<str>, Value)]>,
}

impl Metadata {
    /// The empty object.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if the object has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let at = self.entries.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.entries[at].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + DoubleEndedIterator {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator {
        self.entries.iter().map(|(k, _)| &**k)
    }

    /// The object as a `serde_json::Map` (a copy).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// The object as a JSON value (a copy).
    pub fn to_value(&self) -> Value {
        Value::Object(self.to_map())
    }

    /// From entries in any order; of two entries with the same key, the later one is kept (as
    /// a JSON object with a repeated key reads in serde_json).
    fn from_entries(mut entries: Vec<(Box<str>, Value)>) -> Metadata {
        // Stable: entries with equal keys stay in input order. Of a run of equal keys `dedup_by`
        // keeps the first slot: each later entry's value is moved into it before the later one
        // is dropped, so the last value wins, in place (an object without repeated keys, the
        // usual case, is boxed without another allocation).
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let repeated = later.0 == kept.0;
            if repeated {
                std::mem::swap(later, kept);
            }
            repeated
        });
        Metadata {
            entries: entries.into_boxed_slice(),
        }
    }
}

impl From<Map<String, Value>> for Metadata {
    fn from(map: Map<String, Value>) -> Metadata {
        // A `Map` without serde_json's `preserve_order` iterates in key order already, each key
        // once; with it (another crate may enable it), in insertion order: sorted here.
        Metadata::from_entries(map.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect())
    }
}

impl From<Metadata> for Map<String, Value> {
    fn from(metadata: Metadata) -> Map<String, Value> {
        metadata.entries.into_vec().into_iter().map(|(k, v)| (k.into_string(), v)).collect()
    }
}

impl<K: Into<String>> FromIterator<(K, Value)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(entries: I) -> Metadata {
        Metadata::from_entries(entries.into_iter().map(|(k, v)| (k.into().into_boxed_str(), v)).collect())
    }
}

impl PartialEq<Map<String, Value>> for Metadata {
    fn eq(&self, map: &Map<String, Value>) -> bool {
        self.len() == map.len() && map.iter().all(|(k, v)| self.get(k) == Some(v))
    }
}

/// `metadata["key"]`: the value, or `null` when absent (as `serde_json::Value` indexes).
impl std::ops::Index<&str> for Metadata {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(key).unwrap_or(&NULL)
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                // Not the hint: it comes from the input.
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k.into_boxed_str(), v));
                }
                Ok(Metadata::from_entries(entries))
            }
        }

        d.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// The JSON text, the lookups and the iteration order are a `serde_json::Map`'s, for
    /// objects of every size, nested values and keys that sort bytewise (capitals first).
    #[test]
    fn reads_and_writes_exactly_as_a_serde_json_map() {
        let objects = [
            json!({}),
            json!({"i": 1}),
            json!({"writer": 3, "kind": "note", "seq": 9}),
            json!({"b": [1, 2, {"z": null, "a": true}], "B": {"y": 1.5, "x": "é"}, "a": "", "ä": -1}),
            Value::Object((0..40).map(|i| (format!("key{}", 39 - i), json!(i))).collect()),
        ];
        for value in objects {
            let map = object(value.clone());
            let metadata = Metadata::from(map.clone());
            assert_eq!(serde_json::to_string(&metadata).unwrap(), serde_json::to_string(&map).unwrap());
            assert_eq!(serde_json::from_str::<Metadata>(&value.to_string()).unwrap(), metadata);
            assert_eq!(metadata.len(), map.len());
            assert!(map.iter().map(|(k, v)| (k.as_str(), v)).eq(metadata.iter()));
            for (k, v) in &map {
                assert_eq!(metadata.get(k), Some(v));
                assert_eq!(&metadata[k.as_str()], v);
            }
            assert_eq!(metadata.get("absent"), None);
            assert_eq!(metadata["absent"], Value::Null);
            assert_eq!(metadata, map);
            assert_eq!(metadata.to_map(), map);
            assert_eq!(Map::from(metadata.clone()), map);
            assert_eq!(format!("{metadata:?}"), format!("{map:?}"));
        }
    }

    /// A JSON value of up to three levels: scalars (including floats and escaped strings), arrays
    /// and objects.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e12f64..1e12).prop_map(|x| json!(x)),
            "[a-z\\\\\"é\u{1F600}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..4).prop_map(|e| Value::Object(e.into_iter().collect())),
            ]
        })
    }

    /// Keys from a small alphabet (so that objects repeat keys), with capitals, a multi-byte
    /// letter and the empty key, which sort bytewise.
    fn key() -> impl Strategy<Value = String> {
        "[abAB\u{e9}]{0,3}"
    }

    proptest! {
        /// For any object, written as JSON text with its keys in any order and repeated: the
        /// `Metadata` read from the text is the `Map` read from it (same entries, the same
        /// iteration order, the same lookups), and both write the same text.
        #[test]
        fn any_object_reads_and_writes_as_a_map_does(entries in prop::collection::vec((key(), json_value()), 0..12)) {
            let text = format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let map: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let metadata: Metadata = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&metadata, &map);
            prop_assert!(map.iter().map(|(k, v)| (k.as_str(), v)).eq(metadata.iter()));
            prop_assert_eq!(serde_json::to_string(&metadata).unwrap(), serde_json::to_string(&map).unwrap());
            for (k, _) in &entries {
                prop_assert_eq!(metadata.get(k), map.get(k));
            }
            prop_assert_eq!(Metadata::from(map.clone()), metadata.clone());
            prop_assert_eq!(Map::from(metadata), map);
        }
    }

    /// A repeated key keeps its last value, as serde_json reads it; entries built in any order
    /// come out sorted.
    #[test]
    fn a_repeated_key_keeps_its_last_value_and_entries_are_sorted() {
        let read: Metadata = serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3, "a": 4, "c": 5}"#).unwrap();
        let map: Map<String, Value> = serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3, "a": 4, "c": 5}"#).unwrap();
        assert_eq!(read, map);
        assert_eq!(read.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        let built: Metadata = [("z", json!(1)), ("y", json!(2)), ("z", json!(3))].into_iter().collect();
        assert_eq!(serde_json::to_string(&built).unwrap(), r#"{"y":2,"z":3}"#);
        assert!(serde_json::from_str::<Metadata>("[1]").is_err());
    }
}
