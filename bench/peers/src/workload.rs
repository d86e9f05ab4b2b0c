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

pub fn memory(variant: Variant, writer: usize, seq: u64) -> Memory {
    let mut text = format!("writer {writer} memory {seq}: ");
    while text.len() < TEXT_BYTES {
        text.push_str("the agent noted something worth remembering. ");
    }
    text.truncate(TEXT_BYTES);
    let embedding = match variant {
        Variant::Text => None,
        Variant::Vector => Some((0..DIMENSION).map(|d| ((d as u64 * 31 + seq) % 97) as f32 / 97.0).collect()),
    };
    Memory {
        id: format!("w{writer:03}-{seq:012}"),
        text,
        metadata: serde_json::json!({"writer": writer, "kind": "note", "seq": seq}),
        embedding,
    }
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

    pub fn to_engram(&self) -> engram_core::NewMemory {
        engram_core::NewMemory {
            text: self.text.clone(),
            embedding: self.embedding.clone(),
            metadata: self.metadata.clone(),
        }
    }
}
