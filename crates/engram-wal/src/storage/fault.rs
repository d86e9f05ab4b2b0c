//! An in-memory file system for tests that models what a power loss does to a real one.
//!
//! Each file keeps the bytes written to it apart from the bytes made durable by `sync_data`, and
//! the directory keeps the names visible now apart from the names made durable by `sync_dir`.
//! A simulated crash rebuilds the file system from the durable side (optionally tearing the last
//! unsynced write at a 512-byte boundary); handles opened before the crash stop working, like the
//! file descriptors of a process that died. Any call can be made to fail once or persistently.

use super::{LockGuard, OpenMode, Storage, StorageFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const SECTOR_BYTES: u64 = 512;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// The kinds of calls that can be counted and failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Open,
    Create,
    Read,
    Write,
    Sync,
    SyncDir,
    Rename,
    Remove,
    List,
    Lock,
}

impl OpKind {
    /// Calls that change what is (or will be) on disk; crash points are counted over these.
    pub fn is_mutation(self) -> bool {
        matches!(
            self,
            OpKind::Create | OpKind::Write | OpKind::Sync | OpKind::SyncDir | OpKind::Rename | OpKind::Remove
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO.
    Io,
    /// ENOSPC (only meaningful for writes and creates, but any call can be made to return it).
    NoSpace,
}

/// What survives a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Power loss: only synced data and synced directory entries survive.
    DropUnsynced,
    /// Power loss during the last write: as `DropUnsynced`, but a prefix of the last unsynced
    /// write, ending at a 512-byte boundary of the file chosen by `seed`, reached the disk.
    TearLastWrite { seed: u64 },
    /// The process died but the machine did not: everything written survives.
    ProcessOnly,
}

#[derive(Debug)]
struct Rule {
    kind: Option<OpKind>,
    path_contains: Option<String>,
    nth: u64,
    persistent: bool,
    fault: FaultKind,
    seen: u64,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    written: Vec<u8>,
    synced: Vec<u8>,
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Debug)]
struct LastWrite {
    inode: InodeRef,
    offset: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, InodeRef>,
    durable_names: BTreeMap<PathBuf, InodeRef>,
    locks: BTreeSet<PathBuf>,
    mutations: u64,
    calls_by_kind: BTreeMap<OpKind, u64>,
    crash_after_mutations: Option<u64>,
    crashed: bool,
    rules: Vec<Rule>,
    last_write: Option<LastWrite>,
}

/// See the module documentation. Cloning gives another handle to the same file system.
#[derive(Debug, Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultStorage,
    path: PathBuf,
    inode: InodeRef,
    epoch: u64,
    writable: bool,
}

#[derive(Debug)]
struct FaultLock {
    fs: FaultStorage,
    path: PathBuf,
    epoch: u64,
}

impl LockGuard for FaultLock {}

impl Drop for FaultLock {
    fn drop(&mut self) {
        let mut s = self.fs.lock();
        if s.epoch == self.epoch {
            s.locks.remove(&self.path);
        }
    }
}

fn lock_inode(inode: &InodeRef) -> MutexGuard<'_, Inode> {
    inode.lock().unwrap_or_else(|p| p.into_inner())
}

fn injected(fault: FaultKind, what: &str) -> io::Error {
    let code = match fault {
        FaultKind::Io => EIO,
        FaultKind::NoSpace => ENOSPC,
    };
    let os = io::Error::from_raw_os_error(code);
    io::Error::new(os.kind(), format!("injected fault in {what}: {os}"))
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated power loss: the machine is down")
}

impl FaultStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Crash (every later call fails) once `n` mutating calls have completed.
    pub fn crash_after_mutations(&self, n: u64) {
        self.lock().crash_after_mutations = Some(n);
    }

    /// Mutating calls (create, write, sync, directory sync, rename, remove) completed so far.
    pub fn mutation_count(&self) -> u64 {
        self.lock().mutations
    }

    /// Calls attempted per kind since creation, for reporting which call sites a test reached.
    pub fn calls_by_kind(&self) -> BTreeMap<OpKind, u64> {
        self.lock().calls_by_kind.clone()
    }

    pub fn has_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Fails the `nth` (1-based) future call of `kind` (any kind when `None`), and every later
    /// one too when `persistent`.
    pub fn fail(&self, kind: Option<OpKind>, nth: u64, persistent: bool, fault: FaultKind) {
        self.lock().rules.push(Rule {
            kind,
            path_contains: None,
            nth,
            persistent,
            fault,
            seen: 0,
        });
    }

    /// As [`fail`](Self::fail), counting only calls on paths that contain `path_part`.
    pub fn fail_on_path(&self, kind: OpKind, path_part: &str, nth: u64, persistent: bool, fault: FaultKind) {
        self.lock().rules.push(Rule {
            kind: Some(kind),
            path_contains: Some(path_part.to_string()),
            nth,
            persistent,
            fault,
            seen: 0,
        });
    }

    pub fn clear_faults(&self) {
        self.lock().rules.clear();
    }

    /// Simulates a crash and reboot: the file system now holds what survives `mode`. Handles and
    /// locks from before the crash are dead. Faults and the crash trigger are cleared.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.lock();
        if mode == CrashMode::ProcessOnly {
            // The machine keeps running: the page cache keeps unsynced data (still unsynced,
            // so a later power loss can take it) and unsynced names. Only the process's
            // handles and locks die.
            s.epoch += 1;
            s.locks.clear();
            s.crashed = false;
            s.crash_after_mutations = None;
            s.rules.clear();
            return;
        }
        let torn = match (mode, s.last_write.take()) {
            (CrashMode::TearLastWrite { seed }, Some(w)) => Some((seed, w)),
            _ => None,
        };
        let source = &s.durable_names;
        let mut rebuilt: BTreeMap<PathBuf, InodeRef> = BTreeMap::new();
        let mut copies: Vec<(InodeRef, InodeRef)> = Vec::new();
        for (path, inode) in source.iter() {
            let copy = match copies.iter().find(|(old, _)| Arc::ptr_eq(old, inode)) {
                Some((_, new)) => new.clone(),
                None => {
                    let old = lock_inode(inode);
                    let mut bytes = old.synced.clone();
                    if let Some((seed, w)) = &torn {
                        if Arc::ptr_eq(&w.inode, inode) {
                            apply_torn_write(&mut bytes, w, *seed);
                        }
                    }
                    let new = Arc::new(Mutex::new(Inode {
                        written: bytes.clone(),
                        synced: bytes,
                    }));
                    copies.push((inode.clone(), new.clone()));
                    new
                }
            };
            rebuilt.insert(path.clone(), copy);
        }
        s.names = rebuilt.clone();
        s.durable_names = rebuilt;
        s.epoch += 1;
        s.locks.clear();
        s.crashed = false;
        s.crash_after_mutations = None;
        s.rules.clear();
    }

    /// A copy of a file's current (not necessarily durable) bytes, for tests that inspect or
    /// damage files.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.names.get(path).map(|i| lock_inode(i).written.clone())
    }

    /// Replaces a file's bytes as if they had always been on disk (for corruption tests).
    pub fn overwrite_file(&self, path: &Path, bytes: Vec<u8>) {
        let s = self.lock();
        if let Some(i) = s.names.get(path) {
            let mut inode = lock_inode(i);
            inode.written = bytes.clone();
            inode.synced = bytes;
        }
    }

    /// Paths of all files, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// Every file with its current bytes, sorted by path: a reference image that tests copy,
    /// damage or crash again and again (see [`with_files`](Self::with_files)).
    pub fn image(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let s = self.lock();
        s.names.iter().map(|(p, i)| (p.clone(), lock_inode(i).written.clone())).collect()
    }

    /// A new file system holding `files` in directory `dir`, all durable. It is built through
    /// the ordinary calls (create, write, sync, directory sync), which its counters include.
    pub fn with_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> FaultStorage {
        let fs = FaultStorage::new();
        fs.create_dir_all(dir).expect("a fresh file system accepts a directory");
        for (path, bytes) in files {
            let f = fs.open(path, OpenMode::CreateNew).expect("a fresh file system accepts a file");
            f.write_all_at(bytes, 0).expect("no faults are set");
            f.sync_data().expect("no faults are set");
        }
        fs.sync_dir(dir).expect("no faults are set");
        fs
    }

    /// Accounts for one call; fails it when a fault rule or the crash trigger says so.
    fn begin(&self, kind: OpKind, path: &Path, epoch: Option<u64>) -> io::Result<MutexGuard<'_, State>> {
        let mut s = self.lock();
        if s.crashed || epoch.is_some_and(|e| e != s.epoch) {
            return Err(crashed_error());
        }
        *s.calls_by_kind.entry(kind).or_default() += 1;
        if kind.is_mutation() && s.crash_after_mutations.is_some_and(|n| s.mutations >= n) {
            s.crashed = true;
            return Err(crashed_error());
        }
        let path_text = path.to_string_lossy();
        for rule in s.rules.iter_mut() {
            let kind_matches = rule.kind.is_none_or(|k| k == kind);
            let path_matches = rule.path_contains.as_ref().is_none_or(|p| path_text.contains(p.as_str()));
            if kind_matches && path_matches {
                rule.seen += 1;
                if rule.seen == rule.nth || (rule.persistent && rule.seen > rule.nth) {
                    return Err(injected(rule.fault, &format!("{kind:?} {}", path.display())));
                }
            }
        }
        if kind.is_mutation() {
            s.mutations += 1;
        }
        Ok(s)
    }
}

fn apply_torn_write(bytes: &mut Vec<u8>, w: &LastWrite, seed: u64) {
    let start = w.offset;
    let end = w.offset + w.data.len() as u64;
    let first_boundary = start.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    let boundaries: Vec<u64> = (first_boundary..end).step_by(SECTOR_BYTES as usize).collect();
    if boundaries.is_empty() {
        return;
    }
    let keep_end = boundaries[(splitmix(seed) % boundaries.len() as u64) as usize];
    let kept = &w.data[..(keep_end - start) as usize];
    let needed = start as usize + kept.len();
    if bytes.len() < needed {
        bytes.resize(needed, 0);
    }
    bytes[start as usize..needed].copy_from_slice(kept);
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Storage for FaultStorage {
    fn kind_of(&self, path: &Path) -> io::Result<Option<bool>> {
        let s = self.begin(OpKind::List, path, None)?;
        if s.dirs.contains(path) {
            Ok(Some(true))
        } else if s.names.contains_key(path) {
            Ok(Some(false))
        } else {
            Ok(None)
        }
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.begin(OpKind::Create, dir, None)?;
        for ancestor in dir.ancestors() {
            if s.names.contains_key(ancestor) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"));
            }
        }
        // Directories are modelled as durable once created: the log's directory is created once.
        for ancestor in dir.ancestors() {
            s.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.begin(OpKind::List, dir, None)?;
        if !s.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let kind = if mode == OpenMode::CreateNew {
            OpKind::Create
        } else {
            OpKind::Open
        };
        let mut s = self.begin(kind, path, None)?;
        let inode = match (mode, s.names.get(path)) {
            (OpenMode::CreateNew, Some(_)) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists")),
            (OpenMode::CreateNew, None) => {
                if !s.dirs.contains(&parent(path)) {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
                }
                let inode = InodeRef::default();
                s.names.insert(path.to_path_buf(), inode.clone());
                inode
            }
            (_, Some(inode)) => inode.clone(),
            (_, None) => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        };
        let epoch = s.epoch;
        drop(s);
        Ok(Arc::new(FaultFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode,
            epoch,
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.begin(OpKind::Rename, from, None)?;
        let inode = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        s.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.begin(OpKind::Remove, path, None)?;
        s.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.begin(OpKind::SyncDir, dir, None)?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !in_dir(p));
        let now: Vec<(PathBuf, InodeRef)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        s.durable_names.extend(now);
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut s = self.begin(OpKind::Lock, path, None)?;
        if !s.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        let epoch = s.epoch;
        Ok(Some(Box::new(FaultLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            epoch,
        })))
    }
}

impl StorageFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let _s = self.fs.begin(OpKind::Read, &self.path, Some(self.epoch))?;
        let inode = lock_inode(&self.inode);
        let start = (offset as usize).min(inode.written.len());
        let n = buf.len().min(inode.written.len() - start);
        buf[..n].copy_from_slice(&inode.written[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.begin(OpKind::Write, &self.path, Some(self.epoch))?;
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"));
        }
        let mut inode = lock_inode(&self.inode);
        let end = offset as usize + buf.len();
        if inode.written.len() < end {
            inode.written.resize(end, 0);
        }
        inode.written[offset as usize..end].copy_from_slice(buf);
        s.last_write = Some(LastWrite {
            inode: self.inode.clone(),
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.begin(OpKind::Sync, &self.path, Some(self.epoch))?;
        let mut inode = lock_inode(&self.inode);
        inode.synced = inode.written.clone();
        if s.last_write.as_ref().is_some_and(|w| Arc::ptr_eq(&w.inode, &self.inode)) {
            s.last_write = None;
        }
        Ok(())
    }

    fn size_bytes(&self) -> io::Result<u64> {
        let _s = self.fs.begin(OpKind::Read, &self.path, Some(self.epoch))?;
        Ok(lock_inode(&self.inode).written.len() as u64)
    }

    /// A size change is a write: it can fail like one and is durable only after `sync_data`.
    fn set_len(&self, bytes: u64) -> io::Result<()> {
        let _s = self.fs.begin(OpKind::Write, &self.path, Some(self.epoch))?;
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"));
        }
        lock_inode(&self.inode).written.resize(bytes as usize, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (FaultStorage, PathBuf) {
        let fs = FaultStorage::new();
        let dir = PathBuf::from("/db");
        fs.create_dir_all(&dir).unwrap();
        (fs, dir)
    }

    #[test]
    fn unsynced_data_and_names_are_lost_on_power_loss() {
        let (fs, dir) = setup();
        let a = dir.join("a");
        let f = fs.open(&a, OpenMode::CreateNew).unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_all_at(b"-lost", 7).unwrap();
        let b = dir.join("b");
        fs.open(&b, OpenMode::CreateNew).unwrap().sync_data().unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(fs.read_file(&a).unwrap(), b"durable");
        assert!(fs.read_file(&b).is_none(), "a name whose directory was never synced is lost");
        assert!(f.write_all_at(b"x", 0).is_err(), "handles die with the crash");
    }

    #[test]
    fn a_torn_write_keeps_a_sector_aligned_prefix() {
        let (fs, dir) = setup();
        let a = dir.join("a");
        let f = fs.open(&a, OpenMode::CreateNew).unwrap();
        f.write_all_at(&vec![0u8; 4096], 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_all_at(&vec![7u8; 3000], 100).unwrap();
        fs.crash(CrashMode::TearLastWrite { seed: 3 });
        let bytes = fs.read_file(&a).unwrap();
        let kept = bytes.iter().filter(|&&b| b == 7).count() as u64;
        assert!(kept > 0 && kept < 3000);
        assert_eq!((100 + kept) % SECTOR_BYTES, 0, "the tear falls on a sector boundary");
    }

    #[test]
    fn the_nth_call_fails_once_or_persistently() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.fail(Some(OpKind::Sync), 2, false, FaultKind::Io);
        f.sync_data().unwrap();
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        fs.fail(Some(OpKind::Write), 1, true, FaultKind::NoSpace);
        let e = f.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(f.write_all_at(b"x", 0).is_err());
    }
}
