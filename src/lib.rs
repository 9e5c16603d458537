//! pg_promoter: a background worker inside every server of a replicated cluster that watches the
//! primary and promotes a standby when the primary is really gone. Decisions live in the pure
//! `policy` crate; this crate is the PostgreSQL shell around it: `check` observes, `worker`
//! feeds the policy, `act` carries out, `gate` enforces in every backend, `pg` holds the
//! server's mechanisms.

use pgrx::prelude::*;

mod act;
mod check;
mod gate;
mod pg;
mod sql;
mod worker;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::guc::init();
    // Without shared_preload_libraries there is no worker and no shared memory; the SQL
    // functions then say so (shmem::require) instead of failing here, so that
    // CREATE EXTENSION works on any node.
    if pg::local::preloading() {
        pg::logmask::init();
        gate::init();
        pg::shmem::init();
        worker::register();
    }
}
