//! All file I/O of the log goes through [`Storage`], so that tests can swap the real file system
//! for [`FaultStorage`], which loses unsynced data on a simulated crash and fails chosen calls.

mod fault;
mod std_fs;

pub use fault::{CrashMode, FaultKind, FaultStorage, OpKind};
pub use std_fs::StdStorage;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    ReadWrite,
    /// Create the file; fail if it exists.
    CreateNew,
}

/// The file system operations the log needs, and no more.
pub trait Storage: Send + Sync + Debug + 'static {
    /// `Ok(None)` when nothing exists at `path`, `Ok(Some(is_dir))` otherwise.
    fn kind_of(&self, path: &Path) -> io::Result<Option<bool>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing). `Ok(None)` when it is held by
    /// another process or handle. The lock lasts as long as the returned guard.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>>;
}

/// An open file, addressed by offset so that readers and the writer share it without a cursor.
pub trait StorageFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the file's data (and size, if it changed) is durable when this returns Ok.
    fn sync_data(&self) -> io::Result<()>;
    fn size_bytes(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file to `bytes`; durable with the next `sync_data`.
    fn set_len(&self, bytes: u64) -> io::Result<()>;
    /// The operating system's file behind this one, for callers that map it into memory; `None`
    /// (the default) for storage that is not the real file system, whose callers then read.
    fn std_file(&self) -> Option<&std::fs::File> {
        None
    }
}

pub trait LockGuard: Send + Sync + Debug {}

/// Reads exactly `buf.len()` bytes or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn StorageFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ends before the expected bytes"));
        }
        done += n;
    }
    Ok(())
}
