//! The PostgreSQL majors this extension builds for (13 to 18) differ in a few internals it
//! touches. Each difference lives here, behind one function, so the rest of the code reads the
//! same on every major. (Promotion needs nothing here: writing the promote signal file and
//! sending SIGUSR1 to the postmaster is what `pg_promote()` does on every supported major, even
//! though 16 moved the postmaster's handling of the signal onto its latch.)
#![allow(unsafe_code)]

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Reserves the `pg_promoter.` prefix so a misspelt setting is reported. On 15 and later
/// PostgreSQL also drops the unknown placeholder; 13 and 14 can only warn about it.
pub fn reserve_guc_prefix(prefix: &CStr) {
    // SAFETY: called from _PG_init with a NUL-terminated string that outlives the call.
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    unsafe {
        pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr())
    };
    // SAFETY: as above.
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pg_sys::MarkGUCPrefixReserved(prefix.as_ptr())
    };
}

/// The timeline new WAL is written on, once recovery has ended (0 if unknown).
pub fn insertion_timeline() -> u32 {
    // SAFETY: before 15 the timeline is the process-local ThisTimeLineID, which
    // RecoveryInProgress() sets (through InitXLOGAccess) the first time it sees recovery over.
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    unsafe {
        if pg_sys::RecoveryInProgress() {
            return 0;
        }
        pg_sys::ThisTimeLineID
    }
    // SAFETY: only meaningful once recovery has ended, which the caller ensures.
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pg_sys::GetWALInsertionTimeLine()
    }
}

/// A new WaitEventSet for `nevents` events, made the way `WaitLatchOrSocket` makes its own: in
/// the current memory context before 17, tracked by the current resource owner from 17.
///
/// # Safety
/// The caller must free it with `FreeWaitEventSet` (an ERROR meanwhile leaves it to the context
/// or the resource owner, as for `WaitLatchOrSocket`).
pub unsafe fn wait_event_set(nevents: i32) -> *mut pg_sys::WaitEventSet {
    // SAFETY: the current memory context is valid in any running process; the caller frees
    // the set as this function's contract says.
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
    unsafe {
        pg_sys::CreateWaitEventSet(pg_sys::CurrentMemoryContext, nevents)
    }
    // SAFETY: as above, with the current resource owner (NULL is allowed: then it is untracked).
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    unsafe {
        pg_sys::CreateWaitEventSet(pg_sys::CurrentResourceOwner, nevents)
    }
}

/// Whether `proc` is a regular backend serving a client: not a background worker and not an
/// autovacuum worker. (WAL senders are regular backends before 18; callers spare them apart.)
///
/// # Safety
/// `proc` must be an entry of `ProcGlobal->allProcs`.
pub unsafe fn is_regular_backend(proc: &pg_sys::PGPROC) -> bool {
    #[cfg(feature = "pg18")]
    {
        proc.isRegularBackend
    }
    #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16", feature = "pg17"))]
    {
        !proc.isBackgroundWorker && u32::from(proc.statusFlags) & pg_sys::PROC_IS_AUTOVACUUM == 0
    }
    // Before 14 the autovacuum flag lives in the PGXACT array, at the entry's pgprocno.
    #[cfg(feature = "pg13")]
    // SAFETY: allPgXact has one entry for every PGPROC, indexed by pgprocno.
    unsafe {
        let xact = &*(*pg_sys::ProcGlobal).allPgXact.add(proc.pgprocno as usize);
        !proc.isBackgroundWorker && u32::from(xact.vacuumFlags) & pg_sys::PROC_IS_AUTOVACUUM == 0
    }
}

/// A LOG line in the server log. pgrx's `log!` first asks whether LOG is wanted, and its answer on
/// 13 forgets that LOG ranks above ERROR for the server log, so every line was dropped there;
/// PostgreSQL's own errstart() decides right on every major.
pub fn log(message: String) {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "pg_promoter",
    )
    .report(PgLogLevel::LOG);
}

/// The OID of the `pg_lsn` type.
#[cfg(feature = "pg13")]
pub const LSN_OID: pg_sys::Oid = pg_sys::LSNOID;
#[cfg(not(feature = "pg13"))]
pub const LSN_OID: pg_sys::Oid = pg_sys::PG_LSNOID;

// The WAL receiver's shared state (`WalRcv`), its "streaming" state, and the position it has
// flushed. pgrx has no bindings of walreceiver.h for 13: see `pg13`.
#[cfg(feature = "pg13")]
pub use pg13::WalRcvData;
#[cfg(not(feature = "pg13"))]
pub use pg_sys::WalRcvData;

#[cfg(not(feature = "pg13"))]
pub const WALRCV_STREAMING: pg_sys::WalRcvState::Type = pg_sys::WalRcvState::WALRCV_STREAMING;
#[cfg(feature = "pg13")]
pub const WALRCV_STREAMING: u32 = pg13::WALRCV_STREAMING;

/// NULL until the startup process has set up shared memory.
pub fn walrcv() -> *mut WalRcvData {
    // SAFETY: reads a pointer set once at startup.
    #[cfg(not(feature = "pg13"))]
    unsafe {
        pg_sys::WalRcv
    }
    // SAFETY: as above.
    #[cfg(feature = "pg13")]
    unsafe {
        pg13::WalRcv
    }
}

/// How far the WAL receiver has flushed, and on which timeline.
pub fn walrcv_flush() -> (u64, u32) {
    let mut tli = 0;
    // SAFETY: takes the WAL receiver's spinlock itself; a NULL out-parameter is allowed, the
    // other points to a local.
    #[cfg(not(feature = "pg13"))]
    let lsn = unsafe { pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), &mut tli) };
    // SAFETY: as above.
    #[cfg(feature = "pg13")]
    let lsn = unsafe { pg13::GetWalRcvFlushRecPtr(std::ptr::null_mut(), &mut tli) };
    (lsn, tli)
}

/// The pids of the WAL senders, so that fencing spares them.
pub fn walsender_pids() -> Vec<i32> {
    // SAFETY: WalSndCtl lives in shared memory; max_wal_senders slots follow it.
    #[cfg(not(feature = "pg13"))]
    unsafe {
        let ctl = pg_sys::WalSndCtl;
        if ctl.is_null() {
            return Vec::new();
        }
        (0..pg_sys::max_wal_senders as usize)
            .map(|i| (*(*ctl).walsnds.as_ptr().add(i)).pid)
            .collect()
    }
    // pgrx has no walsender bindings for 13. Physical WAL senders have no database, so the
    // caller spares them anyway; logical ones are ended like any client session.
    #[cfg(feature = "pg13")]
    Vec::new()
}

/// What pgrx does not bind for 13, declared from 13's replication/walreceiver.h.
#[cfg(feature = "pg13")]
#[allow(non_snake_case)]
mod pg13 {
    use std::ffi::c_char;

    use pgrx::pg_sys;

    pub const WALRCV_STREAMING: u32 = 2;

    /// The leading fields of 13's WalRcvData, up to the spinlock: all this extension reads.
    #[repr(C)]
    pub struct WalRcvData {
        pid: i32,
        pub walRcvState: u32,
        startTime: i64,
        receiveStart: u64,
        receiveStartTLI: u32,
        flushedUpto: u64,
        receivedTLI: u32,
        latestChunkStart: u64,
        lastMsgSendTime: i64,
        pub lastMsgReceiptTime: i64,
        latestWalEnd: u64,
        latestWalEndTime: i64,
        conninfo: [c_char; 1024],
        sender_host: [c_char; 1025],
        sender_port: i32,
        slotname: [c_char; 64],
        is_temp_slot: bool,
        pub ready_to_display: bool,
        latch: *mut pg_sys::Latch,
        pub mutex: pg_sys::slock_t,
    }

    // The offsets that offsetof() gives with 13's headers (x86_64): a wrong field here fails
    // the build instead of reading the wrong bytes.
    const _: () = assert!(std::mem::offset_of!(WalRcvData, walRcvState) == 4);
    const _: () = assert!(std::mem::offset_of!(WalRcvData, lastMsgReceiptTime) == 64);
    const _: () = assert!(std::mem::offset_of!(WalRcvData, ready_to_display) == 2209);
    const _: () = assert!(std::mem::offset_of!(WalRcvData, mutex) == 2224);

    unsafe extern "C" {
        pub static mut WalRcv: *mut WalRcvData;
        pub fn GetWalRcvFlushRecPtr(latest_chunk_start: *mut u64, receive_tli: *mut u32) -> u64;
    }
}
