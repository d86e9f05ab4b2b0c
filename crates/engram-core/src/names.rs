//! Validation of names and sizes at the API boundary.

use crate::error::{CoreError, Result};

pub const MAX_NAMESPACE_BYTES: usize = 128;
pub const MAX_NAME_BYTES: usize = 1024;
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
pub const MAX_DIMENSION: usize = 4096;
pub const MAX_KEY_BYTES: usize = 4096;
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// A namespace is an agent, a user or a tenant: 1..=128 bytes of letters, digits, '-', '_', '.',
/// ':' and '@', not starting with '.', so that it is safe in paths and URLs.
pub fn validate_namespace(ns: &str) -> Result<()> {
    let bad = |reason| {
        Err(CoreError::InvalidName {
            what: "namespace",
            value: ns.to_string(),
            reason,
        })
    };
    if ns.is_empty() {
        return bad("is empty");
    }
    if ns.len() > MAX_NAMESPACE_BYTES {
        return bad("is longer than 128 bytes");
    }
    if ns.starts_with('.') {
        return bad("starts with '.'");
    }
    if !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b)) {
        return bad("may only hold ASCII letters, digits and - _ . : @");
    }
    Ok(())
}

/// Entity names, entity types, relation types and event topics: non-empty, bounded, no NUL or
/// other control characters.
pub fn validate_label(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(CoreError::InvalidName {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("is empty");
    }
    if value.len() > MAX_NAME_BYTES {
        return bad("is longer than 1024 bytes");
    }
    if value.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

pub fn validate_size(what: &'static str, size_bytes: usize, max_bytes: usize) -> Result<()> {
    if size_bytes > max_bytes {
        return Err(CoreError::TooLarge {
            what,
            size_bytes,
            max_bytes,
        });
    }
    Ok(())
}

pub fn validate_embedding(values: &[f32]) -> Result<()> {
    if values.is_empty() || values.len() > MAX_DIMENSION {
        return Err(CoreError::BadDimension {
            got: values.len(),
            max: MAX_DIMENSION,
        });
    }
    // Checked whole first (a loop without an early exit, which the compiler vectorizes), and
    // searched for the culprit only when there is one.
    if !values.iter().fold(true, |finite, v| finite & v.is_finite()) {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CoreError::NonFiniteValue { index, value });
        }
    }
    Ok(())
}

pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first value that is not finite is the one named, wherever it is and whatever it is;
    /// every finite value passes, however large or small.
    #[test]
    fn an_embedding_names_its_first_value_that_is_not_finite() {
        let finite = [0.0, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, f32::from_bits(1), 1.5];
        for len in [1, 7, 8, 9, 384, 4096] {
            let base: Vec<f32> = (0..len).map(|i| finite[i % finite.len()]).collect();
            assert!(validate_embedding(&base).is_ok(), "{len}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for first in [0, len / 2, len - 1] {
                    let mut values = base.clone();
                    values[first] = bad;
                    values[len - 1] = f32::NAN;
                    match validate_embedding(&values) {
                        Err(CoreError::NonFiniteValue { index, value }) => {
                            assert_eq!(index, first);
                            assert_eq!(value.to_bits(), values[first].to_bits());
                        }
                        other => panic!("{len} {first}: {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn namespaces_are_path_and_url_safe() {
        for good in ["agent-1", "user@example.com", "tenant:42", "a.b_c"] {
            validate_namespace(good).unwrap();
        }
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "nul\0", "tab\t", "space here", &"x".repeat(129)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn embeddings_must_be_finite_and_bounded() {
        validate_embedding(&[0.5, -1.0]).unwrap();
        assert!(matches!(validate_embedding(&[]), Err(CoreError::BadDimension { .. })));
        assert!(matches!(
            validate_embedding(&[1.0, f32::NAN]),
            Err(CoreError::NonFiniteValue { index: 1, .. })
        ));
        assert!(matches!(
            validate_embedding(&[f32::INFINITY]),
            Err(CoreError::NonFiniteValue { index: 0, .. })
        ));
    }
}

/// Bytes of the compact JSON text of `value`, counted without building the text.
pub(crate) fn json_bytes<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serialising JSON values and maps cannot fail, and the counter never does.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod json_bytes_tests {
    #[test]
    fn counts_exactly_the_bytes_of_the_compact_text() {
        for value in [
            serde_json::json!({}),
            serde_json::json!({"writer": 3, "kind": "note", "nested": {"a": [1, 2.5, null, "é\u{1F600}\"\\"]}}),
            serde_json::json!("text"),
        ] {
            assert_eq!(super::json_bytes(&value), serde_json::to_vec(&value).unwrap().len());
        }
    }
}
