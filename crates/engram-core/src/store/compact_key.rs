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

/// An encoded key held by the store: inline when it fits (a 26-character memory id in a
/// namespace of up to 17 bytes does), so that the B-tree's searches compare bytes held in its
/// nodes instead of following a pointer per comparison (a cache miss each, most of the time of a
/// get-by-id in a large store), and the key costs no allocation (48 bytes inline instead of 16
/// plus a 48-byte heap chunk). Longer keys go to the heap.
#[derive(Clone)]
pub(crate) enum StoredKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Heap(Box<[u8]>),
}

/// The longest key held inline: what fits beside the length and the enum's tag in 48 bytes.
pub(crate) const INLINE_KEY_BYTES: usize = 46;
const _: () = assert!(std::mem::size_of::<StoredKey>() == 48);

impl StoredKey {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            StoredKey::Inline { len, bytes } => &bytes[..*len as usize],
            StoredKey::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for StoredKey {
    fn from(encoded: &[u8]) -> StoredKey {
        if encoded.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..encoded.len()].copy_from_slice(encoded);
            StoredKey::Inline {
                len: encoded.len() as u8,
                bytes,
            }
        } else {
            StoredKey::Heap(encoded.into())
        }
    }
}

impl std::ops::Deref for StoredKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// The B-tree is searched with encodings built on the stack (`&[u8]`): so equality and order
/// must be those of the bytes, whichever way the key is held.
impl std::borrow::Borrow<[u8]> for StoredKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

/// As the bytes hash, so that a map of `StoredKey`s is searched with encodings on the stack.
impl std::hash::Hash for StoredKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &StoredKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for StoredKey {}

impl PartialOrd for StoredKey {
    fn partial_cmp(&self, other: &StoredKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoredKey {
    fn cmp(&self, other: &StoredKey) -> std::cmp::Ordering {
        compare_key_bytes(self.as_slice(), other.as_slice())
    }
}

/// The byte order of two encoded keys (what `<[u8]>::cmp` gives), compared eight bytes at a
/// time in registers: a B-tree search makes a few dozen comparisons of keys that share their
/// namespace and the time part of their ids, and a `memcmp` call per comparison was a seventh
/// of a get-by-id's time (docs/benchmarks.md).
#[inline]
pub(crate) fn compare_key_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    let (mut a_words, mut b_words) = (a[..common].chunks_exact(8), b[..common].chunks_exact(8));
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        let x = u64::from_be_bytes(x.try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(y.try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
    }
    a_words.remainder().cmp(b_words.remainder()).then(a.len().cmp(&b.len()))
}

/// An encoded key to look up, ordered by [`compare_key_bytes`] (the order of its bytes): what
/// the store's point reads search the B-tree with.
#[repr(transparent)]
pub(crate) struct KeyBytes([u8]);

impl KeyBytes {
    pub(crate) fn new(encoded: &[u8]) -> &KeyBytes {
        // SAFETY: `KeyBytes` is a `repr(transparent)` wrapper of `[u8]`, so the two references
        // have the same layout and metadata (the length).
        unsafe { &*(encoded as *const [u8] as *const KeyBytes) }
    }
}

impl PartialEq for KeyBytes {
    fn eq(&self, other: &KeyBytes) -> bool {
        self.0 == other.0
    }
}

impl Eq for KeyBytes {}

impl PartialOrd for KeyBytes {
    fn partial_cmp(&self, other: &KeyBytes) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyBytes {
    fn cmp(&self, other: &KeyBytes) -> std::cmp::Ordering {
        compare_key_bytes(&self.0, &other.0)
    }
}

impl std::borrow::Borrow<KeyBytes> for StoredKey {
    fn borrow(&self) -> &KeyBytes {
        KeyBytes::new(self.as_slice())
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

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
    StoredKey::from(encode(key).as_slice())
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
        fn stored_keys_hold_their_bytes_and_compare_as_them_inline_or_not(
            a in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xFF]), 40..52),
            b in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xFF]), 40..52),
        ) {
            let (sa, sb) = (StoredKey::from(a.as_slice()), StoredKey::from(b.as_slice()));
            prop_assert_eq!(sa.as_slice(), a.as_slice());
            prop_assert_eq!(matches!(sa, StoredKey::Inline { .. }), a.len() <= INLINE_KEY_BYTES);
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            prop_assert_eq!(sa == sb, a == b);
            // A map of stored keys (the commit lock's pending writes) is searched with the
            // bytes: found exactly when they are equal, inline or on the heap.
            let map: crate::search::FastHashMap<StoredKey, u8> = [(sa, 7)].into_iter().collect();
            prop_assert_eq!(map.contains_key(b.as_slice()), a == b);
            prop_assert_eq!(map.get(a.as_slice()), Some(&7));
        }

        /// The word-at-a-time comparison is the byte order: across every length up to and past
        /// a few words, with shared prefixes (a small alphabet), one key a prefix of the other,
        /// and bytes whose high bit is set (compared unsigned).
        #[test]
        fn key_bytes_compare_as_their_bytes(
            a in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0x7F, 0x80, 0xFF]), 0..40),
            b in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0x7F, 0x80, 0xFF]), 0..40),
            cut in 0usize..40,
        ) {
            let prefix = &a[..cut.min(a.len())];
            for (x, y) in [(&a[..], &b[..]), (&a[..], prefix), (prefix, &a[..])] {
                prop_assert_eq!(compare_key_bytes(x, y), x.cmp(y));
                prop_assert_eq!(KeyBytes::new(x).cmp(KeyBytes::new(y)), x.cmp(y));
                prop_assert_eq!(KeyBytes::new(x) == KeyBytes::new(y), x == y);
            }
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
