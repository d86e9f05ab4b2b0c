//! Durability campaigns for Engram (issue 6; docs/reliability.md): the process-kill campaign
//! (`kill`), shared by its test and its command line, and the workload and state comparison
//! shared with the fault-storage campaigns under `tests/`.

pub mod fuzzing;
pub mod kill;
pub mod rng;
pub mod simulated;
pub mod state;
pub mod workload;
