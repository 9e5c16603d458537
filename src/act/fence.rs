//! What a fence does to this server: end ordinary sessions, shut down, or leave the marker that
//! keeps a permanent fence across restarts. `gate` enforces it in every backend.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use pgrx::prelude::*;
use policy::primary::{Marker, MARKER};
use policy::FenceMode;

use crate::pg::{local, shmem, this_process};

/// The marker a permanent fence leaves in the data directory: a restart stays fenced until the
/// DBA rejoins the server (pg_rewind or a new base backup replace the directory) or removes it.
fn marker_path() -> PathBuf {
    PathBuf::from(local::data_dir()).join(MARKER)
}

/// The text of a permanent fence's marker left by an earlier run, if any.
pub fn read_marker() -> Option<String> {
    std::fs::read_to_string(marker_path()).ok()
}

/// Writes the marker, bound to this cluster, the timeline this server writes on and the term
/// it knows (see [`Marker`]).
pub fn write_marker(reason: &str) {
    let marker = Marker {
        system_id: local::system_id(),
        timeline: local::insert_timeline().unwrap_or(0),
        term: shmem::MEMBER.share().term,
        reason: reason.to_string(),
    };
    if let Err(e) = write_durably(&marker_path(), &marker.render()) {
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
            let superusers = shmem::SUPERUSER_SESSIONS.get().load(Ordering::Acquire);
            let ended = this_process::terminate_client_backends();
            let mut done = format!("ordinary connections refused, {ended} session(s) ended");
            if superusers > 0 {
                let warning = format!(
                    "{superusers} superuser session(s) were connected: superusers are not held by the fence, \
                     and an application connecting as one may reconnect and commit"
                );
                warning!("pg_promoter: {warning}");
                done.push_str(&format!("; {warning}"));
            }
            done
        }
        FenceMode::Shutdown => "fence_action is shutdown: fast shutdown requested".to_string(),
    }
}

/// Writes `text` to `path` and fsyncs it and its directory: the fence outlives a power loss.
fn write_durably(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Removes a marker that no longer applies (its event says why).
pub fn forget_marker() {
    if let Err(e) = std::fs::remove_file(marker_path()) {
        warning!(
            "pg_promoter: could not remove file \"{}\": {e}",
            marker_path().display()
        );
    }
}

/// The permanent fence an earlier run left, in force again: published, nothing else done.
pub fn restore(reason: &str) {
    shmem::set_fence(true, true, reason);
}

pub fn unfence() {
    shmem::set_fence(false, false, "");
}
