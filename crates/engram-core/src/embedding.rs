//! A memory's embedding: floats on the heap, or floats read in place from the checkpoint file
//! the database was opened from.
//!
//! At a million 384-dimension memories the embeddings are 1.5 GB, most of the raw data and
//! more than half of the memory an open database used when every one was copied to the heap.
//! A format 4 checkpoint stores each embedding's floats at a file offset divisible by 4
//! (docs/checkpoint-format.md), so the load maps the file read-only and points the memories at
//! their floats: the kernel pages them in when a search re-scores them or a read copies them,
//! and can drop them again under memory pressure, as it does the page cache. Embeddings
//! written after the open stay on the heap.
//!
//! A mapped file must not change while anything maps it: checkpoint files are never written
//! after their rename, and a retired one is reused for a new checkpoint only when no mapping of
//! it is alive ([`is_mapped`]); otherwise it is deleted, and its blocks are freed when the last
//! embedding in it is dropped.

use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The f32s of one embedding. Dereferences to `[f32]`; compares, prints and serializes as its
/// floats wherever they live.
#[derive(Clone)]
pub struct Embedding(Floats);

#[derive(Clone)]
enum Floats {
    Heap(Box<[f32]>),
    Mapped {
        file: Arc<MappedFile>,
        /// Byte offset in the file, a multiple of 4.
        offset: usize,
        len: usize,
    },
}

impl Embedding {
    /// The floats at byte `offset` of `file`, if they lie inside it at an offset divisible by 4
    /// (the mapping starts on a page, so they are then aligned for f32).
    pub(crate) fn mapped(file: &Arc<MappedFile>, offset: usize, len: usize) -> Option<Embedding> {
        let end = len.checked_mul(4).and_then(|bytes| offset.checked_add(bytes))?;
        (offset.is_multiple_of(4) && end <= file.map.len()).then(|| {
            Embedding(Floats::Mapped {
                file: file.clone(),
                offset,
                len,
            })
        })
    }

    /// The floats from their little-endian bytes (a length divisible by 4).
    pub(crate) fn from_le_bytes(bytes: &[u8]) -> Embedding {
        debug_assert!(bytes.len().is_multiple_of(4));
        Embedding(Floats::Heap(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    /// Whether the floats are read in place from a mapped checkpoint file rather than held on
    /// the heap.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Floats::Mapped { .. })
    }

    /// The checkpoint file the floats are read from, if they are mapped.
    pub(crate) fn mapped_file(&self) -> Option<&Arc<MappedFile>> {
        match &self.0 {
            Floats::Mapped { file, .. } => Some(file),
            Floats::Heap(_) => None,
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.0 {
            Floats::Heap(floats) => floats,
            Floats::Mapped { file, offset, len } => {
                let bytes = &file.map[*offset..*offset + *len * 4];
                // SAFETY: `mapped` checked that the bytes lie in the mapping at an offset
                // divisible by 4 from its page-aligned start, so they are aligned for f32; every
                // bit pattern is a valid f32; mapped files are only created on little-endian
                // targets (the file holds little-endian floats); the mapping lives as long as
                // `file`, which the borrow of `self` keeps, and the file is never written while
                // mapped (module docs).
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
        }
    }
}

impl Deref for Embedding {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl From<Vec<f32>> for Embedding {
    fn from(floats: Vec<f32>) -> Embedding {
        Embedding(Floats::Heap(floats.into_boxed_slice()))
    }
}

impl PartialEq for Embedding {
    fn eq(&self, other: &Embedding) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<[f32]> for Embedding {
    fn eq(&self, other: &[f32]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<f32>> for Embedding {
    fn eq(&self, other: &Vec<f32>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// In binary encodings (log records, checkpoints before format 4) one byte string: the floats'
/// little-endian bytes after the byte count, so that encoding and decoding is one copy rather
/// than a call per element; in human-readable encodings (JSON), an array of numbers. Records
/// before version 3 and checkpoints before format 3 held a sequence of f32s (`crate::legacy`).
impl Serialize for Embedding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.as_slice().serialize(s);
        }
        s.serialize_bytes(&le_bytes(self))
    }
}

/// The floats' little-endian bytes: borrowed where memory already holds them so (little-endian
/// targets), copied otherwise.
pub(crate) fn le_bytes(floats: &[f32]) -> Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: f32 has no padding and every bit pattern of its 4 bytes is a valid u8; the
        // slice covers exactly the floats' memory, which outlives the borrow.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(floats.as_ptr().cast::<u8>(), std::mem::size_of_val(floats)) })
    }
    #[cfg(not(target_endian = "little"))]
    Cow::Owned(floats.iter().flat_map(|f| f.to_le_bytes()).collect())
}

struct BytesVisitor;

impl Visitor<'_> for BytesVisitor {
    type Value = Embedding;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an embedding's bytes (4 per dimension)")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Embedding, E> {
        if !bytes.len().is_multiple_of(4) {
            return Err(E::custom(format!(
                "an embedding of {} bytes is not a whole number of f32s",
                bytes.len()
            )));
        }
        Ok(Embedding::from_le_bytes(bytes))
    }
}

impl<'de> Deserialize<'de> for Embedding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Embedding, D::Error> {
        if d.is_human_readable() {
            Vec::<f32>::deserialize(d).map(Embedding::from)
        } else {
            d.deserialize_bytes(BytesVisitor)
        }
    }
}

/// A checkpoint file mapped read-only, shared by the embeddings read from it.
pub(crate) struct MappedFile {
    map: memmap2::Mmap,
    /// (device, inode): the key of the live-mappings registry.
    identity: (u64, u64),
}

/// Live mappings per (device, inode) of their file.
static LIVE_MAPPINGS: Mutex<BTreeMap<(u64, u64), usize>> = Mutex::new(BTreeMap::new());

fn live_mappings() -> std::sync::MutexGuard<'static, BTreeMap<(u64, u64), usize>> {
    LIVE_MAPPINGS.lock().unwrap_or_else(|p| p.into_inner())
}

impl MappedFile {
    /// Maps `file` read-only. `None` on targets whose floats are not little-endian, or when the
    /// mapping fails (the caller then copies the floats to the heap).
    pub(crate) fn map(file: &std::fs::File) -> Option<Arc<MappedFile>> {
        if cfg!(not(target_endian = "little")) {
            return None;
        }
        use std::os::unix::fs::MetadataExt;
        let metadata = file.metadata().ok()?;
        let identity = (metadata.dev(), metadata.ino());
        // SAFETY: the mapping is read-only and the engine never writes a checkpoint file while
        // it is mapped (module docs); another process writing it would break the one-process-
        // per-directory rule the directory lock enforces.
        let map = match unsafe { memmap2::Mmap::map(file) } {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(error = %e, "cannot map a checkpoint file; its embeddings are copied to the heap");
                return None;
            }
        };
        *live_mappings().entry(identity).or_insert(0) += 1;
        Some(Arc::new(MappedFile { map, identity }))
    }

    /// Takes the mapping's pages out of this process's resident set after a pass that read
    /// every embedding once (the index load recomputing codes, a checkpoint writing them):
    /// otherwise a million 384-dimension embeddings stay mapped, 1.5 GB of resident set, until
    /// the kernel needs the memory. The pages stay in the page cache; the next read of an
    /// embedding maps its page again (a minor fault), with the same bytes, since the file
    /// never changes while mapped. Best effort: a failure only leaves the pages mapped.
    pub(crate) fn release_resident_pages(&self) {
        // SAFETY: MADV_DONTNEED on a read-only MAP_SHARED file mapping (memmap2's `Mmap::map`)
        // only drops page-table entries: a later access, including one racing this call,
        // faults the page in again from the file, whose bytes do not change while it is
        // mapped (module docs). No reference into the mapping sees different bytes.
        let released = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        if let Err(e) = released {
            tracing::debug!(error = %e, "cannot release a checkpoint mapping's resident pages");
        }
    }
}

/// The distinct mapped files of the embeddings one pass read, to release their pages after it.
#[derive(Default)]
pub(crate) struct MappedFilesRead(Vec<Arc<MappedFile>>);

impl MappedFilesRead {
    pub(crate) fn note(&mut self, embedding: &Embedding) {
        if let Some(file) = embedding.mapped_file() {
            // Consecutive embeddings almost always come from the same file.
            if !self.0.iter().rev().any(|seen| Arc::ptr_eq(seen, file)) {
                self.0.push(file.clone());
            }
        }
    }

    pub(crate) fn release_resident_pages(self) {
        for file in self.0 {
            file.release_resident_pages();
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        let mut live = live_mappings();
        if let Some(count) = live.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.identity);
            }
        }
    }
}

/// Whether some embedding in this process still reads the file at `path` in place (false when
/// it cannot be inspected: then it is not there to be reused either).
pub(crate) fn is_mapped(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return false;
    };
    live_mappings().contains_key(&(metadata.dev(), metadata.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mapped_file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, Arc<MappedFile>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.flush().unwrap();
        let mapped = MappedFile::map(file.as_file()).unwrap();
        (file, mapped)
    }

    #[test]
    fn a_mapped_embedding_reads_its_floats_in_place_and_equals_the_same_floats_on_the_heap() {
        let floats = [1.5f32, -2.0, f32::MIN_POSITIVE, 3.25e30];
        let mut bytes = vec![0xAA; 8];
        bytes.extend(floats.iter().flat_map(|f| f.to_le_bytes()));
        let (_file, mapped) = mapped_file_of(&bytes);
        let embedding = Embedding::mapped(&mapped, 8, floats.len()).unwrap();
        assert!(embedding.is_mapped());
        assert_eq!(&*embedding, &floats);
        assert_eq!(embedding, Embedding::from(floats.to_vec()));
        assert_eq!(format!("{embedding:?}"), format!("{:?}", floats));
        assert_eq!(
            postcard::to_stdvec(&embedding).unwrap(),
            postcard::to_stdvec(&Embedding::from(floats.to_vec())).unwrap()
        );
        assert_eq!(serde_json::to_value(&embedding).unwrap(), serde_json::to_value(floats).unwrap());
    }

    #[test]
    fn floats_outside_the_file_or_off_a_four_byte_boundary_are_not_mapped() {
        let (_file, mapped) = mapped_file_of(&[0u8; 64]);
        assert!(Embedding::mapped(&mapped, 2, 4).is_none(), "unaligned");
        assert!(Embedding::mapped(&mapped, 48, 5).is_none(), "past the end");
        assert!(Embedding::mapped(&mapped, 48, usize::MAX).is_none(), "overflowing length");
        assert!(Embedding::mapped(&mapped, 48, 4).is_some());
    }

    /// Resident kilobytes of the mapping that starts at `start` (/proc/self/smaps).
    #[cfg(target_os = "linux")]
    fn resident_kb_of_mapping_at(start: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{:x}-", start as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        assert!(lines.next().is_some(), "no mapping at {start:p}");
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_the_same_floats() {
        let floats: Vec<f32> = (0..262_144).map(|i| i as f32 * 0.5 - 7.0).collect(); // 1 MiB
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        let (_file, mapped) = mapped_file_of(&bytes);
        let embedding = Embedding::mapped(&mapped, 0, floats.len()).unwrap();
        assert_eq!(&*embedding, &floats[..], "reading every float maps every page");
        let start = mapped.map.as_ptr();
        assert!(resident_kb_of_mapping_at(start) >= 1024);

        let mut read = MappedFilesRead::default();
        read.note(&embedding);
        read.note(&embedding.clone());
        read.note(&Embedding::from(vec![1.0, 2.0]));
        assert_eq!(read.0.len(), 1, "one file however many of its embeddings, none for heap floats");
        read.release_resident_pages();
        assert_eq!(resident_kb_of_mapping_at(start), 0);

        assert_eq!(&*embedding, &floats[..], "the pages come back from the file unchanged");
        assert!(resident_kb_of_mapping_at(start) >= 1024);
    }

    #[test]
    fn a_file_counts_as_mapped_while_any_embedding_reads_it() {
        let (file, mapped) = mapped_file_of(&[0u8; 16]);
        let embedding = Embedding::mapped(&mapped, 0, 4).unwrap();
        drop(mapped);
        assert!(is_mapped(file.path()));
        let copy = embedding.clone();
        drop(embedding);
        assert!(is_mapped(file.path()));
        drop(copy);
        assert!(!is_mapped(file.path()));
    }
}
