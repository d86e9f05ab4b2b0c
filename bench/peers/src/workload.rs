//! The one-memory transaction every peer commits: about 300 B of text, small JSON metadata and,
//! in the vector variant, a 384-dim f32 embedding.

use serde::Serialize;

pub const TEXT_BYTES: usize = 300;
pub const DIMENSION: usize = 384;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Text and metadata only.
    Text,
    /// Text, metadata and a 384-dim embedding.
    Vector,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Text => "text",
            Variant::Vector => "vector",
        }
    }
}

pub struct Memory {
    /// Unique per run: writer and sequence number, so no peer sees a key conflict.
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Value,
    pub embedding: Option<Vec<f32>>,
}

/// The memory writer `writer` writes as its `seq`-th, in every workload: in the vector variant
/// its embedding is its own, drawn around one of [`CLUSTERS`] centres ([`clustered_embedding`]),
/// as embeddings of an agent's related notes are. (Until 2026-11-27 the embedding was one of 97
/// fixed vectors, which a search index inserts far more cheaply: the nearest nodes are exact
/// copies.)
pub fn memory(variant: Variant, writer: usize, seq: u64) -> Memory {
    let mut text = format!("writer {writer} memory {seq}: ");
    while text.len() < TEXT_BYTES {
        text.push_str("the agent noted something worth remembering. ");
    }
    text.truncate(TEXT_BYTES);
    let embedding = match variant {
        Variant::Text => None,
        Variant::Vector => Some(clustered_embedding(writer, seq)),
    };
    Memory {
        id: format!("w{writer:03}-{seq:012}"),
        text,
        metadata: serde_json::json!({"writer": writer, "kind": "note", "seq": seq}),
        embedding,
    }
}

/// Centres of the commit workload's embeddings (as bench/vectors.py's set has).
pub const CLUSTERS: usize = 100;
/// Noise around a centre, relative to the spread of the centres (bench/vectors.py's 0.5).
const SPREAD: f32 = 0.5;

/// splitmix64: a deterministic, seedable stream (the embeddings depend only on writer and seq).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A value with mean 0 and variance 1 (a sum of four uniforms, rescaled: close enough to normal
/// for clustered test data, and cheap).
fn roughly_normal(state: &mut u64) -> f32 {
    let sum: f32 = (0..4).map(|_| (splitmix(state) >> 40) as f32 / (1u64 << 24) as f32).sum();
    (sum - 2.0) * 3f32.sqrt()
}

/// Writer `writer`'s `seq`-th embedding: centre `hash(writer, seq) % CLUSTERS` plus noise of
/// [`SPREAD`] per dimension. Distinct for every (writer, seq); the centres are fixed.
pub fn clustered_embedding(writer: usize, seq: u64) -> Vec<f32> {
    static CENTRES: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    let centres = CENTRES.get_or_init(|| {
        let mut state = 20_261_127;
        (0..CLUSTERS)
            .map(|_| (0..DIMENSION).map(|_| roughly_normal(&mut state)).collect())
            .collect()
    });
    let mut state = (writer as u64) << 40 ^ seq;
    let centre = &centres[(splitmix(&mut state) % CLUSTERS as u64) as usize];
    centre.iter().map(|c| c + SPREAD * roughly_normal(&mut state)).collect()
}

impl Memory {
    /// The value key/value peers store: length-prefixed text and metadata JSON, then the
    /// embedding as little-endian f32 (the same bytes a vector column would hold).
    pub fn encode_value(&self) -> Vec<u8> {
        let metadata = self.metadata.to_string();
        let vector_bytes = self.embedding.as_ref().map_or(0, |e| e.len() * 4);
        let mut out = Vec::with_capacity(8 + self.text.len() + metadata.len() + vector_bytes);
        out.extend_from_slice(&(self.text.len() as u32).to_le_bytes());
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(metadata.as_bytes());
        for x in self.embedding.iter().flatten() {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    pub fn into_engram(self) -> engram_core::NewMemory {
        engram_core::NewMemory {
            text: self.text,
            embedding: self.embedding,
            metadata: self.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is pinned: bench/chroma_commit.py computes the same embeddings (bit for
    /// bit, in numpy float32) so that Chroma stores what the Rust peers store. These values were
    /// printed by the Python port; if either side changes, both must.
    #[test]
    fn clustered_embeddings_match_the_python_port_bit_for_bit() {
        let cases: [((usize, u64), [u32; 3]); 3] = [
            ((0, 0), [0x3f81_7750, 0xbf1f_7021, 0x3f8a_e20d]),
            ((3, 17), [0x3e29_c83e, 0x4004_86b2, 0xbf72_e630]),
            ((63, 123_456), [0x3f89_5c8a, 0xbf39_004c, 0x3fb6_6dd0]),
        ];
        for ((writer, seq), bits) in cases {
            let e = clustered_embedding(writer, seq);
            assert_eq!(e.len(), DIMENSION);
            assert_eq!(
                [e[0].to_bits(), e[1].to_bits(), e[383].to_bits()],
                bits,
                "writer {writer} seq {seq}"
            );
        }
    }

    #[test]
    fn every_memory_gets_its_own_embedding() {
        let a = clustered_embedding(1, 1);
        assert_ne!(a, clustered_embedding(1, 2));
        assert_ne!(a, clustered_embedding(2, 1));
        assert_eq!(a, clustered_embedding(1, 1));
    }
}
