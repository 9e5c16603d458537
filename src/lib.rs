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
        // Before the startup process reads them (docs/leadership.md, "Timelines").
        match pg::history::remove_stale() {
            Ok(removed) if !removed.is_empty() => pgrx::log!(
                "pg_promoter: removed the placeholder history files of timelines {removed:?}, left by a \
                 promotion that did not happen"
            ),
            Ok(_) => {}
            Err(why) => pgrx::warning!("pg_promoter: could not look for placeholder history files: {why}"),
        }
        pg::logmask::init();
        gate::init();
        pg::shmem::init();
        worker::register();
    }
}
