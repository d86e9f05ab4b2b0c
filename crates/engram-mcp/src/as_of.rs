//! `as_of` on read tools: read the database as it was at a log position (LSN) or a wall-clock
//! time. Accepted forms: a JSON integer (an LSN), a string of digits (an LSN), or an RFC 3339
//! time such as `2026-11-25T14:50:00Z` (every commit at or before it).

use chrono::DateTime;
use engram_core::{CoreError, Database, Lsn, Snapshot};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// A point in the database's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Every commit at or below this LSN.
    Lsn(Lsn),
    /// Every commit whose commit time is at or before this many milliseconds since the Unix epoch.
    TimeMs(u64),
}

impl AsOf {
    /// Parses the string form: digits are an LSN, anything else must be an RFC 3339 time at or
    /// after the Unix epoch.
    pub fn parse(text: &str) -> Result<AsOf, String> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<Lsn>()
                .map(AsOf::Lsn)
                .map_err(|e| format!("as_of LSN {text:?} is not valid: {e}"));
        }
        let time = DateTime::parse_from_rfc3339(text).map_err(|e| format!("as_of {text:?} is neither an LSN nor an RFC 3339 time: {e}"))?;
        u64::try_from(time.timestamp_millis())
            .map(AsOf::TimeMs)
            .map_err(|_| format!("as_of {text:?} is before 1970-01-01T00:00:00Z"))
    }

    /// A read-only view of the database at this point (`HistoryNotRetained` below the history
    /// horizon; a point past the newest commit reads the newest commit).
    pub fn snapshot(self, db: &Database) -> Result<Snapshot, CoreError> {
        match self {
            AsOf::Lsn(lsn) => db.as_of(lsn),
            AsOf::TimeMs(ms) => db.as_of_time(ms),
        }
    }
}

/// The current state, or the state at `as_of`.
pub(crate) fn snapshot_at(db: &Database, as_of: Option<AsOf>) -> Result<Snapshot, CoreError> {
    match as_of {
        None => Ok(db.snapshot()),
        Some(point) => point.snapshot(db),
    }
}

impl<'de> Deserialize<'de> for AsOf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Lsn(u64),
            Text(String),
        }
        match Wire::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("as_of must be an LSN (a non-negative integer) or an RFC 3339 time (a string)"))?
        {
            Wire::Lsn(lsn) => Ok(AsOf::Lsn(lsn)),
            Wire::Text(text) => AsOf::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// The JSON Schema of the `as_of` property, shared by the hand-written schemas of the reference
/// tools and the derived schemas of ours.
pub(crate) fn as_of_property() -> serde_json::Value {
    serde_json::json!({
        "type": ["integer", "string"],
        "minimum": 0,
        "description": "Read the database as it was at this point: an LSN (an integer, or a string of digits; every commit at or below it) or an RFC 3339 time such as \"2026-11-25T14:50:00Z\" (every commit at or before it). Omit for the current state."
    })
}

impl JsonSchema for AsOf {
    fn schema_name() -> Cow<'static, str> {
        "AsOf".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        let serde_json::Value::Object(map) = as_of_property() else {
            unreachable!("as_of_property is an object literal")
        };
        Schema::from(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_lsns_and_other_strings_are_rfc3339_times() {
        assert_eq!(AsOf::parse("42"), Ok(AsOf::Lsn(42)));
        assert_eq!(AsOf::parse("1970-01-01T00:00:01.5Z"), Ok(AsOf::TimeMs(1500)));
        assert_eq!(AsOf::parse("1970-01-01T02:00:00+02:00"), Ok(AsOf::TimeMs(0)));
        for bad in [
            "",
            "-1",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "99999999999999999999999",
        ] {
            assert!(AsOf::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn json_integers_and_strings_deserialize() {
        let lsn: AsOf = serde_json::from_value(serde_json::json!(7)).unwrap();
        assert_eq!(lsn, AsOf::Lsn(7));
        let time: AsOf = serde_json::from_value(serde_json::json!("1970-01-01T00:00:00Z")).unwrap();
        assert_eq!(time, AsOf::TimeMs(0));
        for bad in [
            serde_json::json!(-3),
            serde_json::json!(1.5),
            serde_json::json!(true),
            serde_json::json!("soon"),
        ] {
            assert!(serde_json::from_value::<AsOf>(bad.clone()).is_err(), "{bad} must be refused");
        }
    }
}
