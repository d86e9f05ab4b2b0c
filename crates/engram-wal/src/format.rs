//! The on-disk format, byte by byte (docs/wal-format.md is the prose version of this file).
//!
//! Segment file `wal-<id, 20 decimal digits>.seg`, `segment_bytes` long, zero-filled ahead of use:
//!   [0, 64)   segment header
//!   [64, ..)  records, each 8-byte aligned, then zeros to the end of the file
//!
//! All integers are little-endian.

use crate::error::Lsn;

pub const SEGMENT_MAGIC: [u8; 8] = *b"ENGRMWAL";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_HEADER_BYTES: usize = 24;
pub const RECORD_ALIGN_BYTES: usize = 8;

/// The header at offset 0 of every segment.
///
/// ```text
/// 0..8    magic "ENGRMWAL"
/// 8..12   format version (1)
/// 12..16  salt: random per segment, seeds every record checksum in the segment
/// 16..24  segment id (also in the file name)
/// 24..32  LSN of the previous segment's last record (0 when the log starts here)
/// 32..36  checksum field of that record (0 when none)
/// 36..40  zero
/// 40..48  segment size in bytes
/// 48..60  zero
/// 60..64  CRC-32C of bytes 0..60
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub salt: u32,
    pub segment_id: u64,
    pub prev_last_lsn: Lsn,
    pub prev_last_crc: u32,
    pub segment_bytes: u64,
}

/// What the first 64 bytes of a segment file hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderState {
    /// All zero: a prepared segment that was never started.
    Zero,
    Valid(SegmentHeader),
    /// Our magic, but a format version this build does not read.
    OtherVersion(u32),
    /// Anything else: torn or corrupt.
    Invalid(&'static str),
}

impl SegmentHeader {
    pub fn first_lsn(&self) -> Lsn {
        self.prev_last_lsn + 1
    }

    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_last_lsn.to_le_bytes());
        b[32..36].copy_from_slice(&self.prev_last_crc.to_le_bytes());
        b[40..48].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; SEGMENT_HEADER_BYTES]) -> HeaderState {
        if b.iter().all(|&x| x == 0) {
            return HeaderState::Zero;
        }
        if b[0..8] != SEGMENT_MAGIC {
            return HeaderState::Invalid("bad segment magic");
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return HeaderState::OtherVersion(version);
        }
        if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
            return HeaderState::Invalid("segment header checksum mismatch");
        }
        if b[36..40].iter().chain(&b[48..60]).any(|&x| x != 0) {
            return HeaderState::Invalid("segment header reserved bytes are not zero");
        }
        HeaderState::Valid(SegmentHeader {
            salt: u32_at(b, 12),
            segment_id: u64_at(b, 16),
            prev_last_lsn: u64_at(b, 24),
            prev_last_crc: u32_at(b, 32),
            segment_bytes: u64_at(b, 40),
        })
    }
}

/// The 24-byte header in front of every record.
///
/// ```text
/// 0..4    CRC-32C, seeded with the segment salt, over header bytes 4..24 then the payload
/// 4..8    payload length in bytes
/// 8..16   LSN
/// 16      kind (1..=255; 0 never occurs, so a zero header marks the end of written data)
/// 17..24  zero
/// ```
/// The payload follows, then zero padding to the next multiple of 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub payload_bytes: u32,
    pub lsn: Lsn,
    pub kind: u8,
}

impl RecordHeader {
    pub fn parse(b: &[u8]) -> Option<RecordHeader> {
        let b: &[u8; RECORD_HEADER_BYTES] = b.get(..RECORD_HEADER_BYTES)?.try_into().ok()?;
        if b[17..24].iter().any(|&x| x != 0) {
            return None;
        }
        Some(RecordHeader {
            crc: u32_at(b, 0),
            payload_bytes: u32_at(b, 4),
            lsn: u64_at(b, 8),
            kind: b[16],
        })
    }

    /// Bytes the record occupies on disk: header, payload and padding.
    pub fn framed_bytes(&self) -> usize {
        framed_bytes(self.payload_bytes as usize)
    }
}

pub fn framed_bytes(payload_bytes: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_bytes).div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// True if every byte is zero. Checks 64-byte blocks with a branch-free OR so that scanning
/// the zero-filled rest of a segment at open runs at memory speed.
pub fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| x == 0)
}

fn record_crc(salt: u32, header_tail: &[u8], payload: &[u8]) -> u32 {
    let seeded = crc32c::crc32c(&salt.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(seeded, header_tail), payload)
}

/// Appends one framed record to `out`; returns its checksum field.
pub fn encode_record(out: &mut Vec<u8>, salt: u32, lsn: Lsn, kind: u8, payload: &[u8]) -> u32 {
    let start = out.len();
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16] = kind;
    let crc = record_crc(salt, &header[4..], payload);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.resize(start + framed_bytes(payload.len()), 0);
    crc
}

/// Checks a framed record (header, payload and padding) against the segment salt.
pub fn record_is_valid(salt: u32, framed: &[u8]) -> bool {
    let Some(h) = RecordHeader::parse(framed) else { return false };
    if h.kind == 0 || framed.len() != h.framed_bytes() {
        return false;
    }
    let payload_end = RECORD_HEADER_BYTES + h.payload_bytes as usize;
    is_zero(&framed[payload_end..]) && record_crc(salt, &framed[4..RECORD_HEADER_BYTES], &framed[RECORD_HEADER_BYTES..payload_end]) == h.crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn segment_file_name(segment_id: u64) -> String {
    format!("wal-{segment_id:020}.seg")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 0xdead_beef, 42, 7, b"hello, log");
        assert_eq!(buf.len() % RECORD_ALIGN_BYTES, 0);
        assert!(record_is_valid(0xdead_beef, &buf));
        assert!(!record_is_valid(0xdead_beef ^ 1, &buf), "another segment's salt must not validate");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let h = RecordHeader::parse(&bad);
            let whole = h.map(|h| h.framed_bytes() == bad.len()).unwrap_or(false);
            assert!(!(whole && record_is_valid(0xdead_beef, &bad)), "bit {bit} flip went unnoticed");
        }
    }

    #[test]
    fn segment_header_round_trip_and_states() {
        let h = SegmentHeader {
            salt: 9,
            segment_id: 3,
            prev_last_lsn: 100,
            prev_last_crc: 77,
            segment_bytes: 1 << 20,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), HeaderState::Valid(h));
        assert_eq!(SegmentHeader::decode(&[0; 64]), HeaderState::Zero);
        let mut b = h.encode();
        b[20] ^= 1;
        assert!(matches!(SegmentHeader::decode(&b), HeaderState::Invalid(_)));
        let mut v2 = h.encode();
        v2[8] = 2;
        assert_eq!(SegmentHeader::decode(&v2), HeaderState::OtherVersion(2));
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("wal-1.seg"), None);
        assert_eq!(parse_segment_file_name("wal-0000000000000000001x.seg"), None);
    }
}
