//! What runs in every backend: ordinary clients can neither connect to nor commit on a fenced
//! server (superusers may still connect to diagnose), and ordinary connections to a starting
//! primary with members wait until the worker has checked the cluster once.
//!
//! Hooks: `ClientAuthentication_hook` (new connections) and a pre-commit transaction callback
//! (the guarantee: no ordinary commit while fenced, or, with leadership, outside the lease,
//! whatever was already connected).
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;
use policy::text::sentence;

use crate::pg::{guc, local, shmem};

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
    // SAFETY: the hook variable was written once, in the postmaster, before any backend existed.
    if let Some(previous) = unsafe { PREVIOUS_AUTH } {
        // SAFETY: chains to the hook installed before ours, with PostgreSQL's own arguments.
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
    // The worker's parsed snapshot; before it has published one, the lists' mere presence.
    let running = shmem::running();
    let (members, limit) = if running.published {
        (
            running.has_members,
            Duration::from_millis(running.startup_hold_ms.max(0) as u64),
        )
    } else {
        (guc::members_configured(), guc::startup_hold_timeout())
    };
    if limit.is_zero() || !members {
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
    if !committing {
        return;
    }
    let fenced = shmem::FENCED.get().load(Ordering::Acquire);
    let lease_out = !fenced && lease_expired();
    // SAFETY: the current role of this backend.
    if !(fenced || lease_out) || is_superuser(unsafe { pg_sys::GetUserId() }) {
        return;
    }
    if lease_out {
        // At commit time, not only when the worker notices: a primary frozen past its lease
        // and then resumed must not commit what was in flight.
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
            "cannot commit: this server holds no valid pg_promoter lease",
            "A primary takes ordinary commits only while a majority of the members grants it the lease.",
        );
    }
    ereport!(
        PgLogLevel::FATAL,
        PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
        "terminating connection: this server is fenced by pg_promoter",
        sentence(&shmem::read_fence().1),
    );
}

/// With leadership, whether this primary's lease has run out on the lease clock, for a
/// transaction that wrote (one with a transaction ID: a read-only one commits nothing).
fn lease_expired() -> bool {
    let until = shmem::LEASE_UNTIL.get().load(Ordering::Acquire);
    // SAFETY: reads this backend's transaction state.
    until != i64::MAX
        && unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId
        && local::lease_clock() >= until
}
