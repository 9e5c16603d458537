//! Facts about this server: recovery, WAL positions and the WAL receiver's last sign of life.
#![allow(unsafe_code)]

use pgrx::pg_sys;

use super::versions;

#[derive(Clone, Copy, Debug)]
pub struct Local {
    pub in_recovery: bool,
    pub receive_lsn: Option<u64>,
    /// The timeline of the WAL received last.
    pub receive_timeline: Option<u32>,
    pub replay_lsn: Option<u64>,
    /// The WAL receiver is connected to the primary.
    pub walrcv_streaming: bool,
    /// When the connected WAL receiver last got a message (WAL or keepalive) from the primary.
    pub walrcv_last_msg: Option<i64>,
}

/// This server's facts as the policy takes them; `promotion_under_way` when another process
/// holds the promotion claim.
pub fn facts(flags: &super::shmem::Flags, promotion_under_way: bool) -> policy::Local {
    let local = read();
    policy::Local {
        now: now(),
        in_recovery: local.in_recovery,
        paused: flags.paused,
        walrcv_last_msg: local.walrcv_last_msg,
        receive_lsn: local.receive_lsn,
        timeline: if local.in_recovery {
            None
        } else {
            insert_timeline()
        },
        started_unix_us: started_unix_us(),
        promoted_by_request: flags.promoted_by_request,
        promotion_under_way,
        promotion_pending: flags.promotion_pending,
        lease_clock: lease_clock(),
        term: super::shmem::MEMBER.share().term,
        random: random(),
        uses_slots: uses_slots(),
        replay_timeline: if local.in_recovery {
            replay_timeline()
        } else {
            None
        },
        replay_lsn: local.replay_lsn,
        receive_timeline: local.receive_timeline,
        system_id: system_id(),
    }
}

/// A random number (std's per-instance random hash keys).
fn random() -> u32 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(lease_clock()) as u32
}

/// Whether the postmaster is loading this library through `shared_preload_libraries`.
pub fn preloading() -> bool {
    // SAFETY: a plain flag set by the postmaster while it loads preloaded libraries.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

pub fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable in any process attached to shared memory.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// A clock for leases, in microseconds: monotonic, and counting time a suspended machine slept
/// (`CLOCK_BOOTTIME`), so a lease never outlives real time on a resumed VM. Comparable between
/// the processes of this server only.
pub fn lease_clock() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_BOOTTIME exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is readable");
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
}

pub fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub fn read() -> Local {
    let in_recovery = in_recovery();
    let nonzero = |lsn: u64| (lsn != 0).then_some(lsn);
    let ((receive_lsn, receive_timeline), replay_lsn) = if in_recovery {
        let (lsn, tli) = versions::walrcv_flush();
        // SAFETY: takes its spinlock itself; a NULL out-parameter is allowed.
        let replay = unsafe { pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()) };
        ((nonzero(lsn), (tli != 0).then_some(tli)), nonzero(replay))
    } else {
        ((None, None), None)
    };
    let (walrcv_streaming, walrcv_last_msg) = walreceiver();
    Local {
        in_recovery,
        receive_lsn,
        receive_timeline,
        replay_lsn,
        walrcv_streaming,
        walrcv_last_msg,
    }
}

/// Whether the WAL receiver is connected, and when it last heard from the primary, read under
/// its spinlock as `pg_stat_get_wal_receiver` does.
///
/// A starting WAL receiver sets its state to streaming and its last message time to "now"
/// *before* it connects, and it restarts every `wal_retrieve_retry_interval` while the primary is
/// gone: taken alone, those fields would fake a sign of life. Only `ready_to_display`, set once
/// the connection is made and cleared when the receiver exits, proves contact.
fn walreceiver() -> (bool, Option<i64>) {
    // SAFETY: WalRcv points into shared memory for the server's life (or is NULL before it is
    // set up); the fields are read under the structure's own spinlock, held for two loads.
    unsafe {
        let w = versions::walrcv();
        if w.is_null() {
            return (false, None);
        }
        pg_sys::SpinLockAcquire(&raw mut (*w).mutex);
        let connected = (*w).ready_to_display && (*w).walRcvState == versions::WALRCV_STREAMING;
        let last = (*w).lastMsgReceiptTime;
        pg_sys::SpinLockRelease(&raw mut (*w).mutex);
        (connected, (connected && last != 0).then_some(last))
    }
}

/// Whether this server streams through a replication slot (`primary_slot_name` is set).
pub fn uses_slots() -> bool {
    primary_slot_name().is_some()
}

/// This server's `primary_slot_name`, when set.
pub fn primary_slot_name() -> Option<String> {
    // SAFETY: the server's own GUC variable: NULL or a valid NUL-terminated string.
    let name = unsafe {
        pg_sys::PrimarySlotName
            .as_ref()
            .map(|p| std::ffi::CStr::from_ptr(p))
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
}

/// This cluster's system identifier, from `pg_control`.
pub fn system_id() -> u64 {
    // SAFETY: reads a value of the control file loaded into shared memory at start.
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// The timeline recovery is replaying (the one a promotion leaves).
pub fn replay_timeline() -> Option<u32> {
    let mut tli = 0;
    // SAFETY: takes its own spinlock; writes the timeline through the pointer.
    unsafe { pg_sys::GetXLogReplayRecPtr(&mut tli) };
    (tli != 0).then_some(tli)
}

/// The timeline new WAL is written on (after promotion, the new one).
pub fn insert_timeline() -> Option<u32> {
    let tli = versions::insertion_timeline();
    (tli != 0).then_some(tli)
}

/// Where new WAL is being inserted (a primary's position as a candidate).
pub fn insert_lsn() -> u64 {
    // SAFETY: takes the insertion lock's spinlock itself; valid in any process attached to
    // shared memory once the server runs.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

pub fn data_dir() -> String {
    // SAFETY: DataDir is set before any extension code runs and never changes.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned()
}

/// This server's `cluster_name`, empty when unset.
pub fn cluster_name() -> String {
    // SAFETY: the server's own GUC variable: NULL or a valid string.
    unsafe {
        pg_sys::cluster_name
            .as_ref()
            .map(|p| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
    .unwrap_or_default()
}

/// When this server started, in Unix microseconds (as `pg_promoter_probe` reports it).
pub fn started_unix_us() -> i64 {
    // SAFETY: set once by the postmaster at start.
    unsafe { pg_sys::PgStartTime + 946_684_800_000_000 }
}
