//! Building blocks of the structure-aware request fuzzers (`http`, `mcp`): strings, numbers and
//! JSON values drawn from the fuzzer's bytes through `arbitrary::Unstructured`, biased towards
//! the names the seeded database holds (so requests reach existing items as often as missing
//! ones) and towards the edges validators care about (empty, too long, control characters,
//! numbers outside f32 or u64, wrong types).

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// Longest fuzzed string, in characters: long enough to pass the name limits, short enough to
/// keep inputs fast.
const MAX_FUZZED_CHARS: usize = 600;

/// A string: mostly one of `words`, otherwise an edge case or arbitrary text.
pub fn text(u: &mut Unstructured, words: &[&str]) -> Result<String> {
    Ok(match u.int_in_range(0u8..=15)? {
        0..=8 => u.choose(words)?.to_string(),
        9 => String::new(),
        10 => {
            let s: String = u.arbitrary()?;
            s.chars().take(MAX_FUZZED_CHARS).collect()
        }
        11 => {
            let edge = u.choose(&["/", "\\", "..", "\0", "\u{7f}", "\n", " ", "é", "%2F", "\u{feff}"])?;
            format!("{}{edge}", u.choose(words)?)
        }
        12 => {
            // Around the 256-byte name limit and beyond.
            let len = u.int_in_range(250usize..=300)?;
            "n".repeat(len)
        }
        13 => u.int_in_range(0u64..=64)?.to_string(),
        14 => u
            .choose(&[
                "1970-01-01T00:00:00Z",
                "2026-11-25T14:00:00Z",
                "1969-12-31T23:59:59Z",
                "2999-01-01T00:00:00+01:00",
            ])?
            .to_string(),
        _ => format!("{}-{}", u.choose(words)?, u.int_in_range(0u8..=3)?),
    })
}

/// A JSON number: small integers, LSN-like values near `lsn_hint`, the edges of u64, negatives,
/// fractions, and magnitudes that overflow f32.
pub fn number(u: &mut Unstructured, lsn_hint: u64) -> Result<Value> {
    Ok(match u.int_in_range(0u8..=9)? {
        0..=2 => Value::from(u.int_in_range(0u64..=12)?),
        3 => Value::from(lsn_hint.saturating_sub(u.int_in_range(0u64..=8)?)),
        4 => Value::from(lsn_hint + u.int_in_range(1u64..=4)?),
        5 => Value::from(*u.choose(&[u64::MAX, u64::MAX - 1, u32::MAX as u64 + 1, 1 << 53])?),
        6 => Value::from(-(u.int_in_range(1i64..=1000)?)),
        7 => float(*u.choose(&[1e39, -1e39, 3.4e38, 1e-50, -0.0, 0.5, 1e300])?),
        8 => float(f64::from(u.arbitrary::<f32>()?)),
        _ => float(u.arbitrary::<f64>()?),
    })
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// An embedding: usually `dimension` finite floats (the seeded namespaces' dimension), else
/// another length, values f32 cannot hold, or the wrong types.
pub fn vector(u: &mut Unstructured, dimension: usize) -> Result<Value> {
    let len = match u.int_in_range(0u8..=7)? {
        0..=4 => dimension,
        5 => 0,
        _ => u.int_in_range(1usize..=12)?,
    };
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(match u.int_in_range(0u8..=15)? {
            0..=12 => float(f64::from(u.int_in_range(-100i16..=100)?) / 10.0),
            13 => number(u, 0)?,
            14 => Value::String("x".into()),
            _ => Value::Null,
        });
    }
    Ok(Value::Array(items))
}

/// Any JSON value, nested at most `depth` levels.
pub fn any_value(u: &mut Unstructured, words: &[&str], depth: u8) -> Result<Value> {
    let kinds = if depth == 0 { 4 } else { 6 };
    Ok(match u.int_in_range(0u8..=kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u, 0)?,
        3 | 4 => Value::String(text(u, words)?),
        5 => {
            let len = u.int_in_range(0usize..=3)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(any_value(u, words, depth - 1)?);
            }
            Value::Array(items)
        }
        _ => Value::Object(any_object(u, words, depth - 1)?),
    })
}

/// A JSON object of a few entries with keys from `words` (or fuzzed).
pub fn any_object(u: &mut Unstructured, words: &[&str], depth: u8) -> Result<Map<String, Value>> {
    let len = u.int_in_range(0usize..=3)?;
    let mut map = Map::new();
    for _ in 0..len {
        map.insert(text(u, words)?, any_value(u, words, depth)?);
    }
    Ok(map)
}

/// A list of `0..=max` items made by `item`.
pub fn list(u: &mut Unstructured, max: usize, mut item: impl FnMut(&mut Unstructured) -> Result<Value>) -> Result<Value> {
    let len = u.int_in_range(0..=max)?;
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(item(u)?);
    }
    Ok(Value::Array(items))
}

/// An object shaped like a request type: each field (`None` for an optional field the draw left
/// out) is usually kept as given, sometimes dropped or replaced by a value of any type, and now
/// and then an unknown field is added, so the fuzzer reaches both the handler behind the
/// decoder and the decoder's refusals.
pub fn shaped(u: &mut Unstructured, words: &[&str], fields: Vec<(&str, Option<Value>)>) -> Result<Value> {
    let mut map = Map::new();
    for (name, value) in fields {
        let Some(value) = value else { continue };
        match u.int_in_range(0u8..=19)? {
            0 => {}
            1 => {
                map.insert(name.to_string(), any_value(u, words, 1)?);
            }
            _ => {
                map.insert(name.to_string(), value);
            }
        }
    }
    if u.ratio(1u8, 24)? {
        map.insert(text(u, words)?, any_value(u, words, 1)?);
    }
    Ok(Value::Object(map))
}

/// `Some(value)` half of the time (an optional field).
pub fn optional(u: &mut Unstructured, value: impl FnOnce(&mut Unstructured) -> Result<Value>) -> Result<Option<Value>> {
    Ok(if u.arbitrary()? { Some(value(u)?) } else { None })
}

/// An `as_of` value: an LSN near `lsn_hint` (number or digits), a time, or garbage.
pub fn as_of(u: &mut Unstructured, words: &[&str], lsn_hint: u64) -> Result<Value> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 | 1 => number(u, lsn_hint)?,
        2 => Value::String(lsn_hint.saturating_sub(u.int_in_range(0u64..=6)?).to_string()),
        _ => Value::String(text(u, words)?),
    })
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
