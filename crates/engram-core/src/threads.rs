//! Scheduling priority of the database's background threads (the search indexer and the
//! checkpointer).
//!
//! Both do work that can wait: a commit never waits for the indexer (searches cover its lag
//! exactly, docs/search.md) and a checkpoint only bounds recovery time. On a machine with few
//! cores, giving them the same priority as committing and reading threads takes CPU from the
//! acknowledgements users wait for; with a positive nice value the kernel runs them on the CPU
//! the foreground leaves idle, and under sustained overload the indexer's memory bound (commits
//! wait once its queue is full) still makes it progress.

/// Raises the nice value of the calling thread to `nice` (Linux: nice is per thread), unless it
/// is already at least that (a process started with `nice -n 15` keeps 15). Raising it needs no
/// privilege; `0` leaves the thread as it is. Failure is harmless (the thread keeps the
/// process's priority) and only logged.
pub(crate) fn lower_current_thread_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let result = unsafe {
            let thread_id = libc::gettid() as libc::id_t;
            // -1 is also a valid nice value; an error then only means we lower the priority.
            let current = libc::getpriority(libc::PRIO_PROCESS, thread_id);
            if current >= nice {
                return;
            }
            libc::setpriority(libc::PRIO_PROCESS, thread_id, nice.min(19))
        };
        if result != 0 {
            tracing::debug!(nice, error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
        }
    }
}
