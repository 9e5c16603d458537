//! This process as PostgreSQL sees it: its signals' flags, its pid, its `ps` title, its exit,
//! and the signals it sends to other processes of the server.
#![allow(unsafe_code)]

use std::ffi::CString;

use pgrx::pg_sys;

use super::versions;

/// SIGTERM: the flag PostgreSQL's own handler sets too; it is never reset, so every wait sees it.
pub fn stop_requested() -> bool {
    // SAFETY: a sig_atomic_t written only by the signal handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// SIGHUP: when a reload was requested, re-reads the configuration files, as every PostgreSQL
/// process does, and says so (once per request).
pub fn reload_if_requested() -> bool {
    // SAFETY: a sig_atomic_t set by the signal handler and cleared here, as PostgreSQL does.
    let pending = unsafe {
        let pending = std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0;
        if pending {
            std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
        }
        pending
    };
    if pending {
        // SAFETY: re-reading the files is safe outside a transaction, as PostgreSQL's own
        // processes do it from their main loops; the worker never opens one.
        unsafe {
            debug_assert!(!pg_sys::IsTransactionState(), "a reload inside a transaction");
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP)
        };
    }
    pending
}

pub fn pid() -> i32 {
    // SAFETY: MyProcPid is set once, when the process starts.
    unsafe { pg_sys::MyProcPid }
}

/// What `ps` shows after `postgres: pg_promoter`.
pub fn set_title(title: &str) {
    let title = CString::new(title.replace('\0', "")).expect("zero bytes removed");
    // SAFETY: set_ps_display copies the string.
    unsafe { pg_sys::set_ps_display(title.as_ptr()) };
}

/// Ends this process the PostgreSQL way, running its exit callbacks. Exit code 1: the
/// postmaster restarts a background worker unless the server is shutting down.
pub fn exit_for_restart() {
    // SAFETY: proc_exit never returns; nothing of ours is live across it.
    unsafe { pg_sys::proc_exit(1) }
}

/// Asks the postmaster to end recovery (SIGUSR1 after the `promote` file, as `pg_ctl promote`).
pub fn signal_postmaster_promote() -> Result<(), String> {
    signal_postmaster(libc::SIGUSR1)
}

/// `pg_ctl stop -m fast`: SIGINT to the postmaster.
pub fn request_fast_shutdown() -> Result<(), String> {
    signal_postmaster(libc::SIGINT)
}

fn signal_postmaster(signal: libc::c_int) -> Result<(), String> {
    // SAFETY: PostmasterPid is set before any extension code runs.
    let pid = unsafe { pg_sys::PostmasterPid };
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        let err = std::io::Error::last_os_error();
        Err(format!(
            "could not send signal to the postmaster (PID {pid}): {err}"
        ))
    }
}

/// Sends SIGTERM (as pg_terminate_backend does) to every client backend but this process and
/// WAL senders; background workers and autovacuum are spared. Returns how many were signalled.
pub fn terminate_client_backends() -> usize {
    let mut ended = 0;
    let walsenders = versions::walsender_pids();
    // SAFETY: ProcGlobal and its PGPROC array live in shared memory for the server's life.
    // The fields are read without ProcArrayLock: a session that ends meanwhile only makes a
    // signal miss, and PostgreSQL's own pg_signal_backend accepts the same pid-reuse window.
    unsafe {
        let global = pg_sys::ProcGlobal;
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

/// Starts a thread that runs `f` with every signal blocked, so that PostgreSQL's handlers only
/// ever run on the process's own thread. The thread must not call into PostgreSQL.
pub fn spawn_without_signals<F: FnOnce() + Send + 'static>(name: &str, f: F) -> std::io::Result<()> {
    // SAFETY: sigfillset fills the set it is given; pthread_sigmask changes this thread's mask
    // only, and the old mask is restored below. The new thread inherits the full mask from its
    // first instruction, so no signal can reach it in between; one arriving meanwhile waits for
    // this thread to unblock it.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(f);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    spawned.map(drop)
}
