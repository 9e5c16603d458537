//! The server's mechanisms: settings, shared memory, local facts, the state file, timeline
//! history files, the differences between majors, the log mask, the one wait, and libpq's
//! descriptor accounting. Nothing here decides.

pub mod guc;
pub mod history;
pub mod latch;
pub mod libpq;
pub mod local;
pub mod logmask;
pub mod shmem;
pub mod state_file;
pub mod this_process;
pub mod versions;
