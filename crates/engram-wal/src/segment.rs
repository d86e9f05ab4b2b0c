//! A segment in memory, and a buffered cursor that walks its records.

use crate::error::Lsn;
use crate::format::{is_zero, record_is_valid, RecordHeader, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::storage::{read_exact_at, StorageFile};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Marks a segment that is still being written: its last LSN is not yet known.
pub(crate) const OPEN_ENDED: Lsn = u64::MAX;

/// A started segment: it has a durable header and holds records from `first_lsn()` on.
#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    pub header: SegmentHeader,
    /// LSN of the last record once the segment is sealed (or cut by a suffix truncation);
    /// `OPEN_ENDED` while it is the active segment.
    last_lsn: AtomicU64,
}

impl Segment {
    pub fn new(path: PathBuf, file: Arc<dyn StorageFile>, header: SegmentHeader, last_lsn: Lsn) -> Self {
        Segment {
            path,
            file,
            header,
            last_lsn: AtomicU64::new(last_lsn),
        }
    }

    pub fn first_lsn(&self) -> Lsn {
        self.header.first_lsn()
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn.load(Ordering::Acquire)
    }

    pub fn seal(&self, last_lsn: Lsn) {
        self.last_lsn.store(last_lsn, Ordering::Release);
    }
}

/// Why a walk over a segment's records stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// A zero record header, or the end of the file: nothing more was written here.
    Clean { offset: u64 },
    /// Bytes that are not the expected record.
    Bad { offset: u64, reason: String },
}

impl End {
    pub fn offset(&self) -> u64 {
        match self {
            End::Clean { offset } | End::Bad { offset, .. } => *offset,
        }
    }
}

pub(crate) enum Step {
    Record(RecordHeader),
    End(End),
}

/// Walks records in order, verifying each one's LSN and checksum. Reads in large chunks.
pub(crate) struct SegmentCursor {
    file: Arc<dyn StorageFile>,
    salt: u32,
    file_bytes: u64,
    max_record_bytes: usize,
    /// Offset of the next record.
    pub offset: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Records with an LSN up to this were durable when the buffer was filled, so the buffered
    /// copy of them is final; later bytes may have been written since and must be read again.
    buf_trusted_lsn: Lsn,
    current: Option<(u64, usize)>,
}

impl SegmentCursor {
    pub fn new(file: Arc<dyn StorageFile>, salt: u32, file_bytes: u64, max_record_bytes: usize) -> Self {
        SegmentCursor {
            file,
            salt,
            file_bytes,
            max_record_bytes,
            offset: SEGMENT_HEADER_BYTES as u64,
            buf: Vec::new(),
            buf_start: 0,
            buf_trusted_lsn: 0,
            current: None,
        }
    }

    /// Makes `[at, at + len)` available in the buffer; false if the file is shorter.
    fn ensure(&mut self, at: u64, len: usize, trusted_lsn: Lsn) -> io::Result<bool> {
        if at + len as u64 > self.file_bytes {
            return Ok(false);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if at >= self.buf_start && at + len as u64 <= buf_end {
            return Ok(true);
        }
        let want = (len.max(READ_CHUNK_BYTES) as u64).min(self.file_bytes - at) as usize;
        self.buf.resize(want, 0);
        read_exact_at(&*self.file, &mut self.buf, at)?;
        self.buf_start = at;
        self.buf_trusted_lsn = trusted_lsn;
        Ok(true)
    }

    fn slice(&self, at: u64, len: usize) -> &[u8] {
        let from = (at - self.buf_start) as usize;
        &self.buf[from..from + len]
    }

    /// Reads the record at `offset`, which must carry `expected_lsn`. `durable_lsn` is how far
    /// the log was durable when the caller decided to read this record.
    pub fn step(&mut self, expected_lsn: Lsn, durable_lsn: Lsn) -> io::Result<Step> {
        if expected_lsn > self.buf_trusted_lsn {
            self.buf.clear();
        }
        let at = self.offset;
        self.current = None;
        if !self.ensure(at, RECORD_HEADER_BYTES, durable_lsn)? {
            return Ok(Step::End(End::Clean { offset: at }));
        }
        let head = self.slice(at, RECORD_HEADER_BYTES);
        if is_zero(head) {
            return Ok(Step::End(End::Clean { offset: at }));
        }
        let bad = |reason: String| Ok(Step::End(End::Bad { offset: at, reason }));
        let Some(header) = RecordHeader::parse(head) else {
            return bad("record header reserved bytes are not zero".into());
        };
        if header.lsn != expected_lsn {
            return bad(format!("record carries LSN {} where {expected_lsn} was expected", header.lsn));
        }
        if header.payload_bytes as usize > self.max_record_bytes {
            return bad(format!(
                "record length {} exceeds the maximum {}",
                header.payload_bytes, self.max_record_bytes
            ));
        }
        let framed = header.framed_bytes();
        if !self.ensure(at, framed, durable_lsn)? {
            return bad(format!("record of {framed} bytes runs past the end of the segment"));
        }
        if !record_is_valid(self.salt, self.slice(at, framed)) {
            return bad("record checksum mismatch".into());
        }
        self.current = Some((at, framed));
        self.offset = at + framed as u64;
        Ok(Step::Record(header))
    }

    /// The payload of the record returned by the last `step`.
    pub fn payload(&self) -> &[u8] {
        let (at, framed) = self.current.expect("payload() follows a record step");
        let h = RecordHeader::parse(self.slice(at, RECORD_HEADER_BYTES)).expect("validated header");
        &self.slice(at, framed)[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_bytes as usize]
    }
}

/// What lies after the end of a segment's records.
pub(crate) struct Remainder {
    /// Offset of a valid record (under this segment's salt) found after the end, if any.
    pub valid_record_at: Option<u64>,
    /// One past the last non-zero byte after the end (equal to `from` if all zero).
    pub nonzero_end: u64,
}

/// Scans `[from, file end)` for records that validate under `salt` and for non-zero bytes.
pub(crate) fn scan_remainder(
    file: &dyn StorageFile,
    salt: u32,
    from: u64,
    file_bytes: u64,
    max_record_bytes: usize,
) -> io::Result<Remainder> {
    let mut result = Remainder {
        valid_record_at: None,
        nonzero_end: from,
    };
    let mut chunk_start = from - from % 8;
    let mut buf = vec![0u8; READ_CHUNK_BYTES + RECORD_HEADER_BYTES];
    while chunk_start < file_bytes {
        let len = ((READ_CHUNK_BYTES + RECORD_HEADER_BYTES) as u64).min(file_bytes - chunk_start) as usize;
        read_exact_at(file, &mut buf[..len], chunk_start)?;
        let scan_len = len.min(READ_CHUNK_BYTES);
        if is_zero(&buf[..len]) {
            chunk_start += scan_len as u64;
            continue;
        }
        if let Some(last) = buf[..scan_len].iter().rposition(|&b| b != 0) {
            result.nonzero_end = result.nonzero_end.max(chunk_start + last as u64 + 1);
        }
        let mut pos = if chunk_start < from { (from - chunk_start) as usize } else { 0 };
        while result.valid_record_at.is_none() && pos < scan_len && pos + RECORD_HEADER_BYTES <= len {
            if let Some(h) = RecordHeader::parse(&buf[pos..pos + RECORD_HEADER_BYTES]) {
                let at = chunk_start + pos as u64;
                let framed = h.framed_bytes();
                if h.kind != 0 && h.lsn != 0 && (h.payload_bytes as usize) <= max_record_bytes && at + framed as u64 <= file_bytes {
                    let mut record = vec![0u8; framed];
                    read_exact_at(file, &mut record, at)?;
                    if record_is_valid(salt, &record) {
                        result.valid_record_at = Some(at);
                    }
                }
            }
            pos += 8;
        }
        chunk_start += scan_len as u64;
    }
    Ok(result)
}
