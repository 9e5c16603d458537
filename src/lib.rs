//! pg_promoter: a background worker inside a standby that watches the primary and promotes the
//! standby when the primary is really gone. Decisions live in the pure `policy` crate; this
//! crate is the PostgreSQL shell around it.

use pgrx::prelude::*;

mod command;
mod fence;
mod guc;
mod latch;
mod libpq;
mod local;
mod logmask;
mod probe;
mod promote;
mod shmem;
mod sql;
mod versions;
mod witness;
mod worker;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    // Without shared_preload_libraries there is no worker and no shared memory; the SQL
    // functions then say so (shmem::require) instead of failing here, so that
    // CREATE EXTENSION works on any node.
    // SAFETY: a plain flag set by the postmaster while it loads preloaded libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        logmask::init();
        fence::init();
        shmem::init();
        worker::register();
    }
}
