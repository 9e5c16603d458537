//! What a fence does to this server: end ordinary sessions, shut down, or leave the marker that
//! keeps a permanent fence across restarts. `gate` enforces it in every backend.

use std::path::PathBuf;

use pgrx::prelude::*;
use policy::primary::MARKER;
use policy::FenceMode;

use crate::pg::{local, shmem, this_process};

/// The marker a permanent fence leaves in the data directory: a restart stays fenced until the
/// DBA rejoins the server (pg_rewind or a new base backup replace the directory) or removes it.
fn marker_path() -> PathBuf {
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

/// `pg_promoter.fence_action = shutdown`: a fast shutdown, as `pg_ctl stop -m fast`.
pub fn shut_down() {
    if let Err(e) = this_process::request_fast_shutdown() {
        warning!("pg_promoter: {e}");
    }
}

/// Puts a fence in force and returns what was done, for the `fenced` event. A shutdown is only
/// announced here: the caller requests it once the event is recorded (`shut_down`).
pub fn fence(permanent: bool, reason: &str, mode: FenceMode) -> String {
    shmem::set_fence(true, permanent, reason);
    if permanent {
        write_marker(reason);
    }
    match mode {
        FenceMode::RefuseConnections => {
            // Superusers' sessions too: they may reconnect.
            let ended = this_process::terminate_client_backends();
            format!("ordinary connections refused, {ended} session(s) ended")
        }
        FenceMode::Shutdown => "fence_action is shutdown: fast shutdown requested".to_string(),
    }
}

/// The permanent fence an earlier run left, in force again: published, nothing else done.
pub fn restore(reason: &str) {
    shmem::set_fence(true, true, reason);
}

pub fn unfence() {
    shmem::set_fence(false, false, "");
}
