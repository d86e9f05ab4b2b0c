//! Process-wide tuning of the C allocator for many committing threads.
//!
//! glibc's malloc gives threads their own arenas, and grows an arena's heap by about what the
//! allocation at hand needs, making the new pages accessible with one `mprotect` call per growth.
//! A database grows its store and indexes with every commit, from every committing thread: in
//! `commit_cpu engine 4 64` (64 writers, 4 s, ~160,000 one-memory commits) the process made
//! 57,513 `mprotect` calls, about one per three commits, each changing the page tables of a
//! process with ~70 threads. Growing heaps by [`ARENA_GROWTH_BYTES`] at a time made 157.
//!
//! The setting is the process's, not one database's, so the library never changes it by itself:
//! an application that embeds Engram with glibc's malloc as its allocator may call
//! [`tune_allocator`] first thing. The `engram` binary and the benchmarks allocate with mimalloc
//! instead (docs/architecture.md, *Allocator*); the peer suite calls it for its C peers. The
//! cost: glibc also keeps that much free memory at the top of a heap instead of returning it to
//! the kernel, so after a burst each arena (up to 8 per core) may keep up to 64 MiB it no longer
//! uses. Address space is reserved, not memory: pages are only resident once written.

/// How much glibc grows (and keeps at the top of) a heap at a time: `M_TOP_PAD`. 64 MiB, the
/// size of a per-thread arena's whole heap on 64-bit glibc, so that a heap grows in one step.
pub const ARENA_GROWTH_BYTES: usize = 64 << 20;

/// Sets glibc's `M_TOP_PAD` to [`ARENA_GROWTH_BYTES`]. Returns whether the setting took effect
/// (always false on other C libraries and systems, where it does nothing). Call it before the
/// threads that commit start; calling it again is harmless.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers; M_TOP_PAD only changes how much glibc asks the
        // kernel for at a time and is safe to set while other threads allocate.
        unsafe { libc::mallopt(libc::M_TOP_PAD, ARENA_GROWTH_BYTES as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On glibc the setting is accepted, and allocation works as before after it.
    #[test]
    fn glibc_accepts_the_setting_and_allocation_goes_on() {
        let applied = tune_allocator();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        let grown: Vec<Vec<u8>> = (0..1_000).map(|i| vec![i as u8; 4_096]).collect();
        assert!(grown.iter().enumerate().all(|(i, v)| v.len() == 4_096 && v[4_095] == i as u8));
        assert!(tune_allocator() == applied, "calling it again is harmless");
    }
}
