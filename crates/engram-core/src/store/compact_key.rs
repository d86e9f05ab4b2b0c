//! The store's in-memory form of a [`Key`]: one boxed byte string per key instead of a `Key`
//! (56 bytes inline plus two allocations, its namespace and its id). Byte order of the encoding
//! is the order of `Key` (namespace, then space, then id), so the store's B-tree iterates keys
//! exactly as before and ranges over a namespace, a space or an id prefix are byte ranges.
//!
//! Layout: the namespace with every 0x00 written as 0x00 0xFF, the terminator 0x00 0x01, one
//! byte for the space, then the id as is. The escape keeps the order for any namespace (a
//! validated one holds no NUL, but keys also come from checkpoint files): the terminator sorts
//! below every continuation of the namespace, and an escaped NUL below every other byte after it.

use crate::model::{Key, Space};
use smallvec::SmallVec;

/// An encoded key held by the store.
pub(crate) type StoredKey = Box<[u8]>;

/// An encoded key built for one lookup: on the stack for keys up to this many bytes.
pub(crate) type KeyBuf = SmallVec<[u8; 96]>;

const ESCAPE: u8 = 0x00;
const ESCAPED_NUL: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;
/// Sorts after the terminator and before an escaped NUL: the bound just past every key of a
/// namespace.
const PAST_NAMESPACE: u8 = 0x02;

fn space_code(space: Space) -> u8 {
    match space {
        Space::Meta => 0,
        Space::Memory => 1,
        Space::Entity => 2,
        Space::Relation => 3,
        Space::Kv => 4,
    }
}

fn space_of_code(code: u8) -> Space {
    match code {
        0 => Space::Meta,
        1 => Space::Memory,
        2 => Space::Entity,
        3 => Space::Relation,
        4 => Space::Kv,
        // Store keys are only ever written by `encode_prefix`.
        _ => unreachable!("space code {code} in a store key"),
    }
}

fn push_namespace(namespace: &str, out: &mut KeyBuf) {
    for &b in namespace.as_bytes() {
        out.push(b);
        if b == ESCAPE {
            out.push(ESCAPED_NUL);
        }
    }
    out.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

/// The encoding of every key of `space` in `namespace` whose id starts with `id_prefix`, up to
/// the end of that prefix (so the full key when `id_prefix` is the whole id).
pub(crate) fn encode_prefix(namespace: &str, space: Space, id_prefix: &[u8]) -> KeyBuf {
    let mut out = KeyBuf::new();
    out.reserve(namespace.len() + 3 + id_prefix.len());
    push_namespace(namespace, &mut out);
    out.push(space_code(space));
    out.extend_from_slice(id_prefix);
    out
}

pub(crate) fn encode(key: &Key) -> KeyBuf {
    encode_prefix(&key.namespace, key.space, &key.id)
}

pub(crate) fn stored(key: &Key) -> StoredKey {
    encode(key).as_slice().into()
}

/// A bound above every key of `namespace` and below every key of the namespaces after it.
pub(crate) fn past_namespace(namespace: &str) -> KeyBuf {
    let mut out = KeyBuf::new();
    push_namespace(namespace, &mut out);
    *out.last_mut().expect("push_namespace writes the terminator") = PAST_NAMESPACE;
    out
}

/// Where the namespace's terminator ends (the index of the space byte).
fn namespace_end(encoded: &[u8]) -> usize {
    let mut i = 0;
    while i + 1 < encoded.len() {
        if encoded[i] == ESCAPE {
            if encoded[i + 1] == TERMINATOR {
                return i + 2;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    unreachable!("a store key without a namespace terminator")
}

pub(crate) fn space_of(encoded: &[u8]) -> Space {
    space_of_code(encoded[namespace_end(encoded)])
}

pub(crate) fn namespace_of(encoded: &[u8]) -> String {
    let end = namespace_end(encoded) - 2;
    let mut bytes = Vec::with_capacity(end);
    let mut i = 0;
    while i < end {
        bytes.push(encoded[i]);
        i += if encoded[i] == ESCAPE { 2 } else { 1 };
    }
    String::from_utf8(bytes).expect("store keys hold the namespace of a Key, which is UTF-8")
}

pub(crate) fn decode(encoded: &[u8]) -> Key {
    let space_at = namespace_end(encoded);
    Key {
        namespace: namespace_of(encoded),
        space: space_of_code(encoded[space_at]),
        id: encoded[space_at + 1..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn space() -> impl Strategy<Value = Space> {
        prop_oneof![
            Just(Space::Meta),
            Just(Space::Memory),
            Just(Space::Entity),
            Just(Space::Relation),
            Just(Space::Kv)
        ]
    }

    /// Namespaces and ids from a small alphabet with NUL, 0x01, 0x02 and 0xFF-adjacent text, so
    /// that the escape and terminator cases collide often.
    fn key() -> impl Strategy<Value = Key> {
        let namespace = prop::collection::vec(prop::sample::select(vec!['\0', '\u{1}', '\u{2}', 'a', 'b', 'ÿ']), 0..5)
            .prop_map(|cs| cs.into_iter().collect::<String>());
        let id = prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0x61, 0xFF]), 0..5);
        (namespace, space(), id).prop_map(|(namespace, space, id)| Key { namespace, space, id })
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_keeps_the_key_order(a in key(), b in key()) {
            let (ea, eb) = (encode(&a), encode(&b));
            prop_assert_eq!(decode(&ea), a.clone());
            prop_assert_eq!(space_of(&ea), a.space);
            prop_assert_eq!(ea.as_slice().cmp(eb.as_slice()), a.cmp(&b));
        }

        #[test]
        fn past_namespace_bounds_exactly_the_namespace(a in key(), b in key()) {
            let bound = past_namespace(&a.namespace);
            let eb = encode(&b);
            // Keys of a's namespace sort below the bound; keys of later namespaces above it.
            prop_assert_eq!(eb.as_slice() < bound.as_slice(), b.namespace <= a.namespace);
        }

        #[test]
        fn id_prefixes_are_byte_prefixes(a in key(), cut in 0usize..6) {
            let prefix = &a.id[..cut.min(a.id.len())];
            prop_assert!(encode(&a).starts_with(&encode_prefix(&a.namespace, a.space, prefix)));
        }
    }
}
