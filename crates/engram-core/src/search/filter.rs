//! Metadata filters: a JSON object whose every top-level field must equal the memory's field of
//! the same name (JSON equality, so `1` and `1.0` differ, and a nested object must match as a
//! whole). An empty filter admits every memory. The filter is applied inside the search, so a
//! filtered query returns min(k, matching) hits.

use crate::Metadata;
use serde_json::{Map, Value};

pub(crate) fn matches(filter: Option<&Map<String, Value>>, metadata: &Metadata) -> bool {
    filter.is_none_or(|f| f.iter().all(|(field, wanted)| metadata.get(field) == Some(wanted)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_field_must_be_equal() {
        let metadata = Metadata::from(object(json!({"user": "ana", "n": 1, "tags": ["a"]})));
        assert!(matches(None, &metadata));
        assert!(matches(Some(&object(json!({}))), &metadata));
        assert!(matches(Some(&object(json!({"user": "ana", "n": 1}))), &metadata));
        assert!(!matches(Some(&object(json!({"user": "ana", "n": 2}))), &metadata));
        assert!(!matches(Some(&object(json!({"n": 1.0}))), &metadata));
        assert!(!matches(Some(&object(json!({"missing": null}))), &metadata));
        assert!(matches(Some(&object(json!({"tags": ["a"]}))), &metadata));
    }
}
