//! Reading the log from any retained LSN, and following it as it grows.

use crate::error::{Error, IoContext, Lsn, Result};
use crate::segment::{Segment, SegmentCursor, Step};
use crate::wal::Inner;
use std::sync::Arc;
use std::time::Duration;

/// One record as appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Reads records in LSN order. Only durable records are returned; checksums are verified again
/// on every read, so damage that happened after open is reported rather than served.
pub struct WalReader {
    inner: Arc<Inner>,
    next_lsn: Lsn,
    position: Option<(Arc<Segment>, SegmentCursor)>,
    /// Set once the iterator has returned an error: it then ends.
    failed: bool,
}

impl WalReader {
    pub(crate) fn new(inner: Arc<Inner>, from: Lsn) -> Result<Self> {
        let from = from.max(1);
        let first = inner.first_lsn();
        if from < first {
            let last = inner.durable_lsn();
            return Err(Error::LsnOutOfRange { lsn: from, first, last });
        }
        Ok(WalReader {
            inner,
            next_lsn: from,
            position: None,
            failed: false,
        })
    }

    /// Another reader of the same log, positioned at `from`; this one does not move. (The
    /// database reads a large transaction's first records again with it when a change feed
    /// started in the middle of them.)
    pub fn reader_at(&self, from: Lsn) -> Result<WalReader> {
        WalReader::new(self.inner.clone(), from)
    }

    /// The LSN the next record will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The next durable record, or `None` when the reader has caught up with the durable end.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        let durable = self.inner.durable_lsn();
        if self.next_lsn > durable {
            return Ok(None);
        }
        let stale = match &self.position {
            None => true,
            Some((segment, _)) => self.next_lsn > segment.last_lsn(),
        };
        if stale {
            self.position = Some(self.seek(self.next_lsn, durable)?);
        }
        let (segment, cursor) = self.position.as_mut().expect("positioned above");
        let lsn = self.next_lsn;
        match cursor
            .step(lsn, durable)
            .context(|| format!("reading {}", segment.path.display()))?
        {
            Step::Record(h) => {
                self.next_lsn += 1;
                Ok(Some(Record {
                    lsn,
                    kind: h.kind,
                    payload: cursor.payload().to_vec(),
                }))
            }
            Step::End(end) => {
                let reason = match end {
                    crate::segment::End::Bad { reason, .. } => reason,
                    crate::segment::End::Clean { .. } => "a durable record is missing".to_string(),
                };
                Err(Error::Corruption {
                    file: segment.path.clone(),
                    offset: end_offset(&self.position),
                    lsn,
                    reason,
                })
            }
        }
    }

    /// Like `next_record`, but waits up to `timeout` for a new durable record.
    pub fn next_blocking(&mut self, timeout: Duration) -> Result<Option<Record>> {
        if let Some(r) = self.next_record()? {
            return Ok(Some(r));
        }
        if self.inner.wait_durable(self.next_lsn, timeout)? {
            self.next_record()
        } else {
            Ok(None)
        }
    }

    fn seek(&self, lsn: Lsn, durable: Lsn) -> Result<(Arc<Segment>, SegmentCursor)> {
        let segment = {
            let table = self.inner.segments.read().unwrap_or_else(|p| p.into_inner());
            let first = table[0].first_lsn();
            match table.iter().rposition(|s| s.first_lsn() <= lsn) {
                Some(i) => table[i].clone(),
                None => return Err(Error::LsnOutOfRange { lsn, first, last: durable }),
            }
        };
        let file_bytes = segment
            .file
            .size_bytes()
            .context(|| format!("reading the size of {}", segment.path.display()))?;
        let mut cursor = SegmentCursor::new(
            segment.file.clone(),
            segment.header.salt,
            file_bytes,
            self.inner.options.max_record_bytes,
        );
        for skip in segment.first_lsn()..lsn {
            if let Step::End(end) = cursor
                .step(skip, durable)
                .context(|| format!("reading {}", segment.path.display()))?
            {
                return Err(Error::Corruption {
                    file: segment.path.clone(),
                    offset: end.offset(),
                    lsn: skip,
                    reason: "record missing while seeking".into(),
                });
            }
        }
        Ok((segment, cursor))
    }
}

fn end_offset(position: &Option<(Arc<Segment>, SegmentCursor)>) -> u64 {
    position.as_ref().map_or(0, |(_, c)| c.offset)
}

impl Iterator for WalReader {
    type Item = Result<Record>;

    /// Yields durable records until the reader catches up; stops after an error.
    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        let item = self.next_record().transpose();
        self.failed = matches!(item, Some(Err(_)));
        item
    }
}
