//! What runs in every backend: ordinary clients can neither connect to nor commit on a fenced
//! server (superusers may still connect to diagnose), and ordinary connections to a starting
//! primary with members wait until the worker has checked the cluster once.
//!
//! Hooks: `ClientAuthentication_hook` (new connections), a pre-commit transaction callback
//! (the guarantee: no ordinary commit while fenced, or, with leadership, outside the lease,
//! whatever was already connected; logical replication workers count as ordinary whatever
//! their role), and `ProcessUtility_hook` for `COMMIT PREPARED`, which
//! writes its commit record while the statement runs, before any pre-commit callback.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;
use policy::text::sentence;

use crate::pg::{guc, local, shmem, versions};

// `libpq/auth.h` is not among pgrx's headers; the server exports the hook variable.
type ClientAuthHook = Option<unsafe extern "C-unwind" fn(*mut pg_sys::libpq::be::Port, c_int)>;
unsafe extern "C" {
    static mut ClientAuthentication_hook: ClientAuthHook;
}

static mut PREVIOUS_AUTH: ClientAuthHook = None;
static mut PREVIOUS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// This backend is a session named pg_promoter let in without the startup hold.
static UNHELD: AtomicBool = AtomicBool::new(false);

/// Set at pre-commit when an ordinary role's transaction that wrote passed the check: between
/// that check and the end of the commit (its record flushed, a synchronous standby waited for)
/// the server may have been frozen, or the wait cancelled, past the lease.
static ORDINARY_COMMIT: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: runs once in the postmaster while it loads preloaded libraries; the previous hook
    // is kept and chained, and the callback is inherited by every backend.
    unsafe {
        PREVIOUS_AUTH = ClientAuthentication_hook;
        ClientAuthentication_hook = Some(on_authenticated);
        PREVIOUS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(on_utility);
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
    if status != pg_sys::STATUS_OK as c_int {
        return;
    }
    // SAFETY: PostgreSQL passes the connection's Port, whose user name is set by now.
    let user = unsafe { (*port).user_name };
    // SAFETY: a NUL-terminated name; the lookup runs in InitPostgres's transaction.
    let role = unsafe { pg_sys::get_role_oid(user, true) };
    // SAFETY: the Port's application name is NULL or a NUL-terminated string.
    let app = unsafe {
        (*port)
            .application_name
            .as_ref()
            .map(|p| std::ffi::CStr::from_ptr(p))
    };
    let ours = app.is_some_and(|a| a.to_bytes() == policy::conninfo::APPLICATION_NAME.as_bytes());
    if is_superuser(role) {
        // Counted while connected, so a fence can say that superusers are not held; not the
        // members' workers, which name themselves.
        // SAFETY: a plain value of this process, set before authentication.
        let walsender = unsafe { pg_sys::MyBackendType } == pg_sys::BackendType::B_WAL_SENDER;
        if !ours && !walsender {
            // The callback first: its registration may fail, and then nothing was counted.
            // SAFETY: registers a callback of this backend's exit, with no argument.
            unsafe { pg_sys::before_shmem_exit(Some(superuser_left), pg_sys::Datum::from(0)) };
            shmem::SUPERUSER_SESSIONS.get().fetch_add(1, Ordering::AcqRel);
        }
        return;
    }
    if local::in_recovery() {
        return;
    }
    if ours {
        // A check of pg_promoter's (a standby's, a member's) with an ordinary login is not held:
        // held, it would fail, and a restarting primary would look dead. Anyone can take this
        // name, so such a session commits no write until the worker has checked the cluster.
        UNHELD.store(true, Ordering::Relaxed);
    } else {
        hold_until_checked();
    }
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

#[pg_guard]
unsafe extern "C-unwind" fn superuser_left(_code: c_int, _arg: pg_sys::Datum) {
    shmem::SUPERUSER_SESSIONS.get().fetch_sub(1, Ordering::AcqRel);
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
    if event == pg_sys::XactEvent::XACT_EVENT_COMMIT {
        if ORDINARY_COMMIT.swap(false, Ordering::Relaxed) {
            withhold_if_out_of_lease();
        }
        return;
    }
    let committing = event == pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
        || event == pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE;
    ORDINARY_COMMIT.store(false, Ordering::Relaxed);
    if !committing {
        return;
    }
    let fenced = shmem::FENCED.get().load(Ordering::Acquire);
    let lease_out = !fenced && lease_expired();
    if UNHELD.load(Ordering::Relaxed) && !shmem::CHECKED.get().load(Ordering::Acquire) && wrote() {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
            "cannot commit: pg_promoter has not yet checked that this server is still the primary",
            "A session named pg_promoter is let in before the first check of the cluster after a start, for reading only.",
        );
    }
    // SAFETY: the current role of this backend (autovacuum's launcher has none: not asked).
    let exempt = || is_autovacuum() || (is_superuser(unsafe { pg_sys::GetUserId() }) && !is_logical_apply());
    if !(fenced || lease_out) {
        // Remembered for the end of the commit (`withhold_if_out_of_lease`).
        let ordinary = event == pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT && wrote() && !exempt();
        ORDINARY_COMMIT.store(ordinary, Ordering::Relaxed);
        return;
    }
    if exempt() {
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

/// After an ordinary commit that passed the pre-commit check: if the lease ran out (or the server
/// was fenced) before the commit ended, the client must not hear that it committed, for another
/// primary may be taking commits by now. The commit is done and cannot be undone; its
/// acknowledgement can be withheld: the client's socket is shut, so the command's completion is
/// never delivered and the session ends (the client sees a lost connection: an outcome unknown,
/// as on any crash).
fn withhold_if_out_of_lease() {
    let until = shmem::LEASE_UNTIL.get().load(Ordering::Acquire);
    let fenced = shmem::FENCED.get().load(Ordering::Acquire);
    let lease_out = until != i64::MAX && local::lease_clock() >= until;
    if !(fenced || lease_out) {
        return;
    }
    // SAFETY: MyProcPort is this backend's client connection, or NULL in a process that has
    // none (a logical apply worker); shutdown() only changes the socket's state, and every later
    // send on it fails, which PostgreSQL handles as a lost client.
    let shut = unsafe {
        let port = pg_sys::libpq::be::MyProcPort;
        !port.is_null() && libc::shutdown((*port).sock, libc::SHUT_RDWR) == 0
    };
    if shut {
        let why = if fenced {
            "this server was fenced"
        } else {
            "the lease ran out"
        };
        versions::log(format!(
            "pg_promoter: {why} while an ordinary transaction committed: the commit is done here, \
             but its acknowledgement is withheld and the session ends"
        ));
    }
}

/// Whether this process is autovacuum's launcher or one of its workers: maintenance, run as no
/// role (the launcher reads the database list in transactions of its own) or as the bootstrap
/// superuser, never an ordinary commit. Ending the launcher would take the whole server down:
/// the postmaster treats its exit with an error as a crash.
fn is_autovacuum() -> bool {
    // SAFETY: a plain value of this process, set when it started.
    let kind = unsafe { pg_sys::MyBackendType };
    kind == pg_sys::BackendType::B_AUTOVAC_LAUNCHER || kind == pg_sys::BackendType::B_AUTOVAC_WORKER
}

/// Whether this process is a logical replication worker (apply, table sync, parallel apply):
/// it writes what a publisher sends, as its subscription's owner, often a superuser, so the
/// superuser exemption does not cover it. Refused, it exits, and its launcher retries later.
fn is_logical_apply() -> bool {
    // SAFETY: MyBgworkerEntry is NULL outside background workers, else this process's entry,
    // whose names are NUL-terminated arrays.
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        !entry.is_null()
            && std::ffi::CStr::from_ptr((*entry).bgw_library_name.as_ptr()) == c"postgres"
            && matches!(
                std::ffi::CStr::from_ptr((*entry).bgw_function_name.as_ptr()).to_bytes(),
                b"ApplyWorkerMain" | b"ParallelApplyWorkerMain" | b"TablesyncWorkerMain"
            )
    }
}

/// `COMMIT PREPARED` by an ordinary role on a fenced server, or outside the lease: refused
/// before it writes its commit record.
fn refuse_commit_prepared(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: PostgreSQL passes the statement being run; its utility node is valid or NULL.
    let stmt = unsafe { (*pstmt).utilityStmt };
    // SAFETY: is_a reads the node's tag; a TransactionStmt's fields are then valid.
    let commit_prepared = unsafe {
        pgrx::is_a(stmt, pg_sys::NodeTag::T_TransactionStmt)
            && (*stmt.cast::<pg_sys::TransactionStmt>()).kind
                == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED
    };
    if !commit_prepared {
        return;
    }
    let fenced = shmem::FENCED.get().load(Ordering::Acquire);
    let until = shmem::LEASE_UNTIL.get().load(Ordering::Acquire);
    // A session let in during the startup hold counts as outside the lease until the first round.
    let unheld = UNHELD.load(Ordering::Relaxed) && !shmem::CHECKED.get().load(Ordering::Acquire);
    let lease_out = unheld || (until != i64::MAX && local::lease_clock() >= until);
    // SAFETY: the current role of this backend, inside the statement's transaction.
    if !(fenced || lease_out) || is_superuser(unsafe { pg_sys::GetUserId() }) {
        return;
    }
    let (message, detail) = if fenced {
        (
            "cannot commit a prepared transaction: this server is fenced by pg_promoter",
            sentence(&shmem::read_fence().1),
        )
    } else {
        (
            "cannot commit a prepared transaction: this server holds no valid pg_promoter lease",
            "A primary takes ordinary commits only while a majority of the members grants it the lease."
                .to_string(),
        )
    };
    ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
        message,
        detail,
    );
}

#[cfg(not(feature = "pg13"))]
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn on_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    refuse_commit_prepared(pstmt);
    // SAFETY: chains to the previous hook, or PostgreSQL's own, with PostgreSQL's arguments;
    // the hook variable was written once, in the postmaster.
    unsafe {
        match PREVIOUS_UTILITY {
            Some(previous) => previous(pstmt, query, read_only_tree, context, params, env, dest, qc),
            None => {
                pg_sys::standard_ProcessUtility(pstmt, query, read_only_tree, context, params, env, dest, qc)
            }
        }
    }
}

// 13's hook has no `readOnlyTree`.
#[cfg(feature = "pg13")]
#[pg_guard]
unsafe extern "C-unwind" fn on_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    refuse_commit_prepared(pstmt);
    // SAFETY: as above.
    unsafe {
        match PREVIOUS_UTILITY {
            Some(previous) => previous(pstmt, query, context, params, env, dest, qc),
            None => pg_sys::standard_ProcessUtility(pstmt, query, context, params, env, dest, qc),
        }
    }
}

/// With leadership, whether this primary's lease has run out on the lease clock, for a
/// transaction that wrote.
fn lease_expired() -> bool {
    let until = shmem::LEASE_UNTIL.get().load(Ordering::Acquire);
    until != i64::MAX && wrote() && local::lease_clock() >= until
}

/// Whether the committing transaction wrote (it has a transaction ID: a read-only one commits
/// nothing).
fn wrote() -> bool {
    // SAFETY: reads this backend's transaction state.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    xid != pg_sys::InvalidTransactionId
}
