//! How appenders wait for a round of the log, and how a finished round wakes them.
//!
//! A thread that waits sleeps on one of a few *round gates*, chosen by the number of the round
//! expected to satisfy it: the round in flight if that round already holds its records, else
//! the next one. A finished round opens its gate, which wakes all of its sleepers with one
//! system call. One wake-up per waiter, each a futex call of its own, cost the leader about 3.3
//! µs of CPU per appender on the 2-vCPU machine of docs/benchmarks.md, against about 1.2 µs
//! when one call woke them all (*Group commit: one wake-up call per round*): at 64 appenders
//! a round satisfies about 20 of them, and the waking was an eighth of the appenders' CPU.
//!
//! Each waiter still learns its own outcome from its [`ThreadSignal`], set before the gate
//! opens, so a thread that wakes need not take the state lock to know it may return. A gate
//! opened by a round that did not reach a sleeper's target (a round cut short by the group size
//! limit, or one that wrote without syncing) wakes it for nothing: it looks again under the
//! state lock and waits for a later round.
//!
//! The exception is the next leader: the first thread to wait for the next round parks on its
//! own instead, so that the finishing leader can wake it alone, first, to start that round's
//! write while the rest of the finished round is being woken.

use crate::error::Lsn;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Waker;

pub(crate) struct Waiter {
    pub target: Lsn,
    pub durable: bool,
    pub wake: Wake,
}

/// How a waiter sleeps, and so how it is woken.
pub(crate) enum Wake {
    /// A thread blocked in `drive`; a parked one may be asked to lead the next round.
    Thread { signal: Arc<ThreadSignal>, sleep: Sleep },
    /// A task awaiting a [`Completion`](crate::Completion). It never leads (a leader blocks in
    /// write and fdatasync, which an executor thread must not): the syncer thread leads rounds
    /// on its behalf.
    Task { id: u64, waker: Waker },
}

/// Where a waiting thread sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sleep {
    /// On the round gate with this index ([`RoundGates::for_round`]).
    Gate(usize),
    /// Parked on its own, as the next leader.
    Parked,
}

impl Wake {
    /// Decides the waiter's wake-up, to be delivered by `wakeups` once the state lock is
    /// released. A thread learns `outcome` now; whoever wakes a thread also removes its entry
    /// from the waiters, so that the thread need not take the state lock to leave.
    pub fn wake(&self, outcome: u8, wakeups: &mut Wakeups) {
        match self {
            Wake::Thread { signal, sleep } => {
                signal.outcome.store(outcome, Ordering::Release);
                match sleep {
                    Sleep::Gate(gate) => wakeups.gates_to_open[*gate] = true,
                    Sleep::Parked => wakeups.satisfied.push(Wakeup::Thread(signal.clone())),
                }
            }
            Wake::Task { waker, .. } => wakeups.satisfied.push(Wakeup::Task(waker.clone())),
        }
    }

    pub fn is_task(&self, task_id: u64) -> bool {
        matches!(self, Wake::Task { id, .. } if *id == task_id)
    }

    pub fn is_thread(&self) -> bool {
        matches!(self, Wake::Thread { .. })
    }

    pub fn is_thread_of(&self, signal: &Arc<ThreadSignal>) -> bool {
        matches!(self, Wake::Thread { signal: s, .. } if Arc::ptr_eq(s, signal))
    }

    /// The sleep of a waiting thread (`None` for a task).
    pub fn sleep(&self) -> Option<Sleep> {
        match self {
            Wake::Thread { sleep, .. } => Some(*sleep),
            Wake::Task { .. } => None,
        }
    }
}

/// The thread is still waiting.
pub(crate) const SIGNAL_WAITING: u8 = 0;
/// The round reached the thread's target: it returns without taking the state lock.
pub(crate) const SIGNAL_REACHED: u8 = 1;
/// The thread takes the state lock and looks again: it is asked to lead the next round, or the
/// log stopped.
pub(crate) const SIGNAL_RECHECK: u8 = 2;

/// How a round tells a thread blocked in `drive` what it decided. A woken thread that had to
/// take the state lock again only to read an outcome the leader already knew made every round
/// end with all its waiters queueing on that mutex: with 64 appenders on 2 cores that queue
/// cost more CPU than the wake-up itself.
pub(crate) struct ThreadSignal {
    thread: std::thread::Thread,
    pub outcome: AtomicU8,
}

thread_local! {
    /// One signal per thread, reused for every wait (a thread waits in one `drive` at a time).
    pub(crate) static THREAD_SIGNAL: Arc<ThreadSignal> = Arc::new(ThreadSignal {
        thread: std::thread::current(),
        outcome: AtomicU8::new(SIGNAL_WAITING),
    });
}

impl ThreadSignal {
    /// Parks until signalled (`park` may return early, and an unpark meant for an earlier wait
    /// may be pending: only the outcome counts).
    pub fn wait_parked(&self) -> u8 {
        loop {
            let outcome = self.outcome.load(Ordering::Acquire);
            if outcome != SIGNAL_WAITING {
                return outcome;
            }
            std::thread::park();
        }
    }
}

/// How many round gates there are. Two rounds at most are awaited at once (the one in flight,
/// the one collecting records), but a round's gate opens only after its leader has released the
/// state lock and run the durable hook, by which time the round after next may already be
/// collecting sleepers. With two gates those sleepers shared the late opening's gate and woke
/// for nothing: about 2 % of waits at 64 appenders. Four keep them apart.
const GATES: usize = 4;

/// The round gates: futex words that count their openings, each on its own cache line (every
/// waiter reads its gate's word; a leader increments it).
#[derive(Default)]
pub(crate) struct RoundGates([Gate; GATES]);

#[derive(Default)]
#[repr(align(64))]
struct Gate(AtomicU32);

impl RoundGates {
    /// The gate of round number `round`.
    pub fn for_round(round: u64) -> usize {
        (round % GATES as u64) as usize
    }

    /// Sleeps on `gate` until `signal` holds an outcome, or until the gate opens without one
    /// (then returns [`SIGNAL_WAITING`]: the round that opened it did not reach this thread).
    pub fn wait(&self, gate: usize, signal: &ThreadSignal) -> u8 {
        let word = &self.0[gate].0;
        loop {
            // The epoch is read before the outcome: a round stores the outcome, then opens the
            // gate, so either the outcome is seen here or the epoch moves before the sleep
            // (which then returns at once).
            let epoch = word.load(Ordering::Acquire);
            let outcome = signal.outcome.load(Ordering::Acquire);
            if outcome != SIGNAL_WAITING {
                return outcome;
            }
            atomic_wait::wait(word, epoch);
            // The futex may also return without a wake-up: only an opening counts.
            if word.load(Ordering::Acquire) != epoch {
                return signal.outcome.load(Ordering::Acquire);
            }
        }
    }

    fn open(&self, gate: usize) {
        let word = &self.0[gate].0;
        word.fetch_add(1, Ordering::Release);
        atomic_wait::wake_all(word);
    }
}

/// Wake-ups a round decided under the state lock, delivered after the lock is released: on a
/// machine with fewer cores than appenders a woken thread preempts the one waking it, and a
/// leader preempted while it held the lock made every appender queue on the lock behind it
/// (with 64 appenders on 2 cores, most context switches were sleeps on the contended state lock).
#[derive(Default)]
pub(crate) struct Wakeups {
    /// The thread asked to lead the next round: woken first, since the next fdatasync waits for it.
    pub successor: Option<Wakeup>,
    /// Parked threads and tasks, each woken on its own.
    pub satisfied: Vec<Wakeup>,
    gates_to_open: [bool; GATES],
}

pub(crate) enum Wakeup {
    Thread(Arc<ThreadSignal>),
    Task(Waker),
}

impl Wakeup {
    fn deliver(self) {
        match self {
            Wakeup::Thread(signal) => signal.thread.unpark(),
            Wakeup::Task(waker) => waker.wake(),
        }
    }
}

impl Wakeups {
    /// Opens `gate` when these wake-ups are delivered, waking its sleepers whatever their
    /// outcome (those without one look again).
    pub fn open_gate(&mut self, gate: usize) {
        self.gates_to_open[gate] = true;
    }

    pub fn deliver_successor(&mut self) {
        if let Some(successor) = self.successor.take() {
            successor.deliver();
        }
    }

    pub fn deliver(mut self, gates: &RoundGates) {
        self.deliver_successor();
        for (gate, open) in self.gates_to_open.into_iter().enumerate() {
            if open {
                gates.open(gate);
            }
        }
        self.satisfied.into_iter().for_each(Wakeup::deliver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn signal() -> Arc<ThreadSignal> {
        Arc::new(ThreadSignal {
            thread: std::thread::current(),
            outcome: AtomicU8::new(SIGNAL_WAITING),
        })
    }

    /// Threads on one gate all wake when it opens: those given an outcome return it, the others
    /// return WAITING (they look again); threads on the other gate sleep on.
    #[test]
    fn opening_a_gate_wakes_every_sleeper_on_it_and_no_other() {
        let gates = Arc::new(RoundGates::default());
        let reached = signal();
        let not_reached = signal();
        let other_round = signal();
        let sleepers: Vec<_> = [(0, reached.clone()), (0, not_reached.clone()), (1, other_round.clone())]
            .into_iter()
            .map(|(gate, s)| {
                let gates = gates.clone();
                std::thread::spawn(move || gates.wait(gate, &s))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let mut wakeups = Wakeups::default();
        Wake::Thread {
            signal: reached.clone(),
            sleep: Sleep::Gate(0),
        }
        .wake(SIGNAL_REACHED, &mut wakeups);
        assert!(wakeups.satisfied.is_empty(), "a gated thread is woken by its gate, not on its own");
        wakeups.deliver(&gates);
        let mut sleepers = sleepers.into_iter();
        assert_eq!(sleepers.next().unwrap().join().unwrap(), SIGNAL_REACHED);
        assert_eq!(sleepers.next().unwrap().join().unwrap(), SIGNAL_WAITING);
        let on_other_gate = sleepers.next().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!on_other_gate.is_finished(), "the other round's gate stayed shut");
        other_round.outcome.store(SIGNAL_RECHECK, Ordering::Release);
        gates.open(1);
        assert_eq!(on_other_gate.join().unwrap(), SIGNAL_RECHECK);
    }

    /// An outcome stored (and its gate opened) before the thread goes to sleep is not missed.
    #[test]
    fn an_outcome_set_before_the_wait_returns_at_once() {
        let gates = RoundGates::default();
        let s = signal();
        s.outcome.store(SIGNAL_REACHED, Ordering::Release);
        gates.open(1);
        assert_eq!(gates.wait(1, &s), SIGNAL_REACHED);
    }
}
