//! Promotion through PostgreSQL's own path, as `pg_ctl promote` does it: the `promote` signal
//! file in the data directory, then SIGUSR1 to the postmaster, which wakes the startup process.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgrx::pg_sys;

use crate::latch::{sleep_until, Interrupted};
use crate::local;

/// How long to wait for recovery to end (`pg_promote()`'s default wait).
pub const WAIT: Duration = Duration::from_secs(60);

/// Asks the postmaster to end recovery.
pub fn signal() -> Result<(), String> {
    // SAFETY: DataDir is set before any extension code runs and never changes.
    let dir = unsafe { CStr::from_ptr(pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned();
    let path = PathBuf::from(dir).join("promote");
    std::fs::write(&path, b"").map_err(|e| format!("could not write file \"{}\": {e}", path.display()))?;
    // SAFETY: PostmasterPid is set before any extension code runs; kill has no memory effects.
    let pid = unsafe { pg_sys::PostmasterPid };
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        let err = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(&path);
        return Err(format!(
            "could not send signal to the postmaster (PID {pid}): {err}"
        ));
    }
    Ok(())
}

/// Waits on the latch until recovery has ended; `Ok(None)` if it had not within `WAIT`.
pub fn wait_until_writable(stop: &dyn Fn() -> bool) -> Result<Option<Duration>, Interrupted> {
    let start = Instant::now();
    while local::in_recovery() {
        if start.elapsed() >= WAIT {
            return Ok(None);
        }
        // Recovery ends in the startup process, which does not set our latch: poll often.
        sleep_until(Instant::now() + Duration::from_millis(5), stop)?;
    }
    Ok(Some(start.elapsed()))
}
