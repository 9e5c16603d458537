//! Fencing on a primary that may be stale: ordinary clients can neither connect nor commit,
//! their sessions are ended, superusers may still connect to diagnose. Also holds ordinary
//! connections after a restart until the worker has checked the cluster once.
//!
//! Hooks: `ClientAuthentication_hook` (new connections) and a pre-commit transaction callback
//! (the guarantee: no ordinary commit while fenced, whatever was already connected).
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;
use policy::text::sentence;

use crate::{guc, local, shmem, versions};

/// The marker a permanent fence leaves in the data directory: a restart stays fenced until the
/// DBA rejoins the server (pg_rewind or a new base backup replace the directory) or removes it.
pub const MARKER: &str = "pg_promoter.fenced";

pub fn marker_path() -> PathBuf {
    PathBuf::from(local::data_dir()).join(MARKER)
}

/// The reason of a permanent fence left by an earlier run, if any.
pub fn read_marker() -> Option<String> {
    std::fs::read_to_string(marker_path())
        .ok()
        .map(|r| r.trim().to_string())
}

pub fn write_marker(reason: &str) {
    if let Err(e) = std::fs::write(marker_path(), format!("{reason}\n")) {
        warning!(
            "pg_promoter: could not write file \"{}\": {e}",
            marker_path().display()
        );
    }
}

// `libpq/auth.h` is not among pgrx's headers; the server exports the hook variable.
type ClientAuthHook = Option<unsafe extern "C-unwind" fn(*mut pg_sys::libpq::be::Port, c_int)>;
unsafe extern "C" {
    static mut ClientAuthentication_hook: ClientAuthHook;
}

static mut PREVIOUS_AUTH: ClientAuthHook = None;

pub fn init() {
    // SAFETY: runs once in the postmaster while it loads preloaded libraries; the previous hook
    // is kept and chained, and the callback is inherited by every backend.
    unsafe {
        PREVIOUS_AUTH = ClientAuthentication_hook;
        ClientAuthentication_hook = Some(on_authenticated);
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
    }
}

fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup; callers run inside a transaction (InitPostgres starts one before
    // authentication; commits run in one).
    unsafe { pg_sys::superuser_arg(role) }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_authenticated(port: *mut pg_sys::libpq::be::Port, status: c_int) {
    // SAFETY: chains to the hook installed before ours, with PostgreSQL's own arguments.
    if let Some(previous) = unsafe { PREVIOUS_AUTH } {
        unsafe { previous(port, status) };
    }
    if status != pg_sys::STATUS_OK as c_int || local::in_recovery() {
        return;
    }
    // SAFETY: PostgreSQL passes the connection's Port, whose user name is set by now.
    let user = unsafe { (*port).user_name };
    // SAFETY: a NUL-terminated name; the lookup runs in InitPostgres's transaction.
    let role = unsafe { pg_sys::get_role_oid(user, true) };
    if is_superuser(role) {
        return;
    }
    hold_until_checked();
    if shmem::FENCED.get().load(Ordering::Acquire) {
        let reason = shmem::read_fence().1;
        ereport!(
            PgLogLevel::FATAL,
            PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
            "this server is fenced by pg_promoter",
            sentence(&reason),
        );
    }
}

/// After a restart of a primary with members, ordinary connections wait for the worker's first
/// round of checks (a newer primary may exist), at most `pg_promoter.startup_hold_timeout`.
fn hold_until_checked() {
    let limit = Duration::from_millis(guc::startup_hold_timeout_ms().max(0) as u64);
    if limit.is_zero() || !guc::has_members() {
        return;
    }
    let start = Instant::now();
    while !shmem::CHECKED.get().load(Ordering::Acquire) {
        if start.elapsed() >= limit {
            ereport!(
                PgLogLevel::FATAL,
                PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
                "pg_promoter has not yet checked that this server is still the primary",
                "Ordinary connections wait for the first check of the cluster after a start.",
            );
        }
        pgrx::check_for_interrupts!();
        // SAFETY: sleeps this backend; interrupts are checked above at every turn.
        unsafe { pg_sys::pg_usleep(20_000) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    let committing = event == pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
        || event == pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE;
    if !committing || !shmem::FENCED.get().load(Ordering::Acquire) {
        return;
    }
    // SAFETY: the current role of this backend.
    if is_superuser(unsafe { pg_sys::GetUserId() }) {
        return;
    }
    ereport!(
        PgLogLevel::FATAL,
        PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
        "terminating connection: this server is fenced by pg_promoter",
        sentence(&shmem::read_fence().1),
    );
}

/// Ends every client session (superusers' too: they may reconnect), as pg_terminate_backend
/// would. Background workers, autovacuum and WAL senders are spared.
pub fn terminate_sessions() -> usize {
    let mut ended = 0;
    // SAFETY: ProcGlobal and its PGPROC array live in shared memory for the server's life.
    // The fields are read without ProcArrayLock: a session that ends meanwhile only makes a
    // signal miss, and PostgreSQL's own pg_signal_backend accepts the same pid-reuse window.
    unsafe {
        let global = pg_sys::ProcGlobal;
        let walsenders = versions::walsender_pids();
        for i in 0..(*global).allProcCount as usize {
            let proc = &*(*global).allProcs.add(i);
            let pid = proc.pid;
            let client = pid != 0
                && pid != pg_sys::MyProcPid
                && proc.databaseId != pg_sys::InvalidOid
                && versions::is_regular_backend(proc)
                && !walsenders.contains(&pid);
            if client && libc::kill(pid, libc::SIGTERM) == 0 {
                ended += 1;
            }
        }
    }
    ended
}

/// `pg_promoter.fence_action = shutdown`: a fast shutdown, as `pg_ctl stop -m fast`.
pub fn shut_down() {
    // SAFETY: signals the postmaster; no memory is touched.
    unsafe { libc::kill(pg_sys::PostmasterPid, libc::SIGINT) };
}
