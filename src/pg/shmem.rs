//! The state the worker shares with backends: one `Copy` struct behind a named LWLock, plus the
//! ring of recent events. Backends read it for the SQL functions; pause/resume write one flag.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use policy::fixed::FixedText;
use policy::ring::Ring;
use policy::{Event, Phase, Settings};

/// Events kept in shared memory.
pub const EVENTS: usize = 256;

/// What the worker last published. Times are `TimestampTz` microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    pub worker_pid: i32,
    pub started_at: Option<i64>,
    pub phase: Phase,
    pub failures: u32,
    pub ever_reached: bool,
    pub last_check_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_check_us: Option<i64>,
    /// The longest check since the worker started.
    pub longest_check_us: Option<i64>,
    pub last_error: FixedText<256>,
    /// Since when the primary has answered the check only with refusals.
    pub refusing_since: Option<i64>,
    pub primary_in_recovery: Option<bool>,
    /// The last answer came from a primary fenced by pg_promoter.
    pub primary_fenced: bool,
    pub primary_lsn: Option<u64>,
    /// When `primary_lsn` was seen (it outlives a worker restart, as `ever_reached` does).
    pub primary_lsn_at: Option<i64>,
    pub promoted_at: Option<i64>,
    /// The conninfo the worker checks with, password masked.
    pub conninfo: FixedText<512>,
    /// This standby cannot follow its primary's timeline without pg_rewind.
    pub needs_rewind: bool,
}

/// The settings the worker runs with, as it last published them: what the status reports, and
/// what backends' hooks read instead of parsing the member lists at each login.
#[derive(Clone, Copy, Debug)]
pub struct Running {
    /// False until a worker has published once since the server started.
    pub published: bool,
    pub keep_alive_ms: i64,
    pub keepalives_count: i64,
    pub enabled: bool,
    /// -1 when off.
    pub max_lag_bytes: i64,
    pub has_members: bool,
    pub startup_hold_ms: i64,
}

impl Running {
    const fn new() -> Running {
        Running {
            published: false,
            keep_alive_ms: 0,
            keepalives_count: 0,
            enabled: false,
            max_lag_bytes: -1,
            has_members: false,
            startup_hold_ms: 0,
        }
    }

    pub fn of(settings: &Settings) -> Running {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Running {
            published: true,
            keep_alive_ms: ms(settings.keep_alive),
            keepalives_count: settings.keepalives_count.into(),
            enabled: settings.enabled,
            max_lag_bytes: settings
                .max_lag_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            has_members: settings.has_members(),
            startup_hold_ms: ms(settings.startup_hold_timeout),
        }
    }
}

#[derive(Clone, Copy)]
pub struct Shared {
    pub status: Status,
    pub running: Running,
    /// A promotion sequence is being carried out (by the worker or a request); one at a time.
    pub promoting: bool,
    /// `pg_promoter_promote()` promoted this server.
    pub promoted_by_request: bool,
    /// The postmaster was asked to end recovery and the post-promote command has not run yet
    /// (see [`take_post_promote`]).
    pub promotion_pending: bool,
    pub paused: bool,
    /// Why this server is fenced (`FENCED` says whether), and whether for good.
    pub fence_reason: FixedText<256>,
    pub fence_permanent: bool,
    pub events: Ring<EVENTS>,
}

// SAFETY: plain data with no pointers, identical in every process of the server.
unsafe impl PGRXSharedMemory for Shared {}

impl Status {
    pub const fn new() -> Status {
        Status {
            worker_pid: 0,
            started_at: None,
            phase: Phase::Starting,
            failures: 0,
            ever_reached: false,
            last_check_at: None,
            last_success_at: None,
            last_check_us: None,
            longest_check_us: None,
            last_error: FixedText::empty(),
            refusing_since: None,
            primary_in_recovery: None,
            primary_fenced: false,
            primary_lsn: None,
            primary_lsn_at: None,
            promoted_at: None,
            conninfo: FixedText::empty(),
            needs_rewind: false,
        }
    }
}

impl Shared {
    const fn new() -> Shared {
        Shared {
            status: Status::new(),
            running: Running::new(),
            promoting: false,
            promoted_by_request: false,
            promotion_pending: false,
            paused: false,
            fence_reason: FixedText::empty(),
            fence_permanent: false,
            events: Ring::new(),
        }
    }
}

// SAFETY: the name is ours alone (it is the extension's name).
static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"pg_promoter") };

/// This server as a member of the leadership protocol: what its state file says (loaded once)
/// and what it keeps in memory only. Its own lock: answers take it across the state file's fsync.
#[derive(Clone, Copy, Debug)]
pub struct MemberShared {
    /// The state file was read since the server started.
    pub loaded: bool,
    /// This node's name in the member list, once known.
    pub name: FixedText<64>,
    pub term: u64,
    pub voted_for: FixedText<64>,
    pub leader: FixedText<64>,
    /// The longest lease ever granted, in microseconds (kept in the state file).
    pub longest_grant: i64,
    /// The highest timeline claimed by a candidate this member voted for (kept in the state file).
    pub timeline: u32,
    /// The lease granted: leader (empty when none), term, until (lease clock).
    pub grant_leader: FixedText<64>,
    pub grant_term: u64,
    pub grant_until: i64,
    /// No vote before this (lease clock).
    pub quiet_until: i64,
}

impl MemberShared {
    const fn new() -> MemberShared {
        MemberShared {
            loaded: false,
            name: FixedText::empty(),
            term: 0,
            voted_for: FixedText::empty(),
            leader: FixedText::empty(),
            longest_grant: 0,
            timeline: 0,
            grant_leader: FixedText::empty(),
            grant_term: 0,
            grant_until: 0,
            quiet_until: 0,
        }
    }
}

// SAFETY: plain data with no pointers, identical in every process of the server.
unsafe impl PGRXSharedMemory for MemberShared {}

// SAFETY: the name is ours alone.
pub static MEMBER: PgLwLock<MemberShared> = unsafe { PgLwLock::new(c"pg_promoter_member") };

/// Whether this server is fenced: read by every commit, so kept apart from the lock.
// SAFETY: the name is ours alone.
pub static FENCED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_promoter_fenced") };

/// Whether the worker has checked the cluster once since the server started (ordinary
/// connections to a primary with members wait for it).
// SAFETY: the name is ours alone.
pub static CHECKED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_promoter_checked") };

/// Until when (the lease clock) this primary's lease lets it take ordinary commits, with
/// leadership: read by every commit, written by the worker at each step; `i64::MAX` without
/// leadership or on a standby. It starts closed when the configuration read at start has
/// leadership.
// SAFETY: the name is ours alone.
pub static LEASE_UNTIL: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_promoter_lease_until") };

/// How many client sessions of superusers are connected (counted at login, uncounted at exit):
/// a fence ends them, but they may come back, and commit.
// SAFETY: the name is ours alone.
pub static SUPERUSER_SESSIONS: PgAtomic<AtomicI64> =
    unsafe { PgAtomic::new(c"pg_promoter_superuser_sessions") };

/// Set in `_PG_init` when loaded by `shared_preload_libraries`, and inherited by every process
/// the postmaster forks; without it the lock above points nowhere.
static AVAILABLE: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: the postmaster loads preloaded libraries alone, before any other process runs.
    unsafe {
        PREVIOUS_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
    pg_shmem_init!(SHARED = Shared::new());
    pg_shmem_init!(MEMBER = MemberShared::new());
    pg_shmem_init!(FENCED = AtomicBool::new(false));
    pg_shmem_init!(CHECKED = AtomicBool::new(false));
    pg_shmem_init!(LEASE_UNTIL = AtomicI64::new(first_lease_until()));
    pg_shmem_init!(SUPERUSER_SESSIONS = AtomicI64::new(0));
    AVAILABLE.store(true, Ordering::Relaxed);
}

static mut PREVIOUS_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Each time the postmaster makes shared memory (at its start, and after a crash), before the
/// startup process recovers: undoes a promotion that did not happen (`history`).
#[pg_guard]
extern "C-unwind" fn shmem_startup() {
    // SAFETY: set once in `init`, before the postmaster calls this hook; the previous hook is
    // another library's, called as PostgreSQL would.
    unsafe {
        if let Some(previous) = PREVIOUS_SHMEM_STARTUP {
            previous();
        }
    }
    match super::history::undo_unfinished_promotion() {
        Ok((removed, signal)) if !removed.is_empty() => {
            let names: Vec<String> = removed.iter().map(|t| format!("{t:08X}.history")).collect();
            pgrx::log!(
                "pg_promoter: removed the placeholder history files {}{}, left by a promotion that did \
                 not happen",
                names.join(", "),
                if signal {
                    " and the promote signal file"
                } else {
                    ""
                }
            );
        }
        Ok(_) => {}
        Err(why) => pgrx::warning!("pg_promoter: could not look for placeholder history files: {why}"),
    }
}

/// With leadership configured (as the postmaster reads it when shared memory is made, after a
/// crash too), no ordinary commit before the worker holds a lease.
fn first_lease_until() -> i64 {
    if policy::leading::active(&super::guc::snapshot()) {
        i64::MIN
    } else {
        i64::MAX
    }
}

/// Raises the error every SQL function gives when the library was not preloaded.
pub fn require() {
    if !AVAILABLE.load(Ordering::Relaxed) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_promoter is not loaded",
            "The pg_promoter library must be loaded through shared_preload_libraries.",
        );
    }
}

/// The worker's settings, for the status and backends' hooks.
pub fn publish_settings(settings: &Settings) {
    let running = Running::of(settings);
    update(|s| s.running = running);
}

/// What a step needs to know of the other processes' doing.
pub struct Flags {
    pub paused: bool,
    pub promoting: bool,
    pub promoted_by_request: bool,
    pub promotion_pending: bool,
}

pub fn flags() -> Flags {
    let s = SHARED.share();
    Flags {
        paused: s.paused,
        promoting: s.promoting,
        promoted_by_request: s.promoted_by_request,
        promotion_pending: s.promotion_pending,
    }
}

/// Whether the post-promote command is owed, saying it is no longer: true for one caller only,
/// whichever process sees recovery end first (a request's wait, or the worker after it).
pub fn take_post_promote() -> bool {
    update(|s| std::mem::replace(&mut s.promotion_pending, false))
}

/// The right to carry out a promotion sequence, held by one process at a time and given back on
/// drop (an ERROR unwinding a backend included).
pub struct PromotionClaim(());

impl PromotionClaim {
    /// `None` while another process holds it.
    pub fn take() -> Option<PromotionClaim> {
        update(|s| !std::mem::replace(&mut s.promoting, true)).then_some(PromotionClaim(()))
    }
}

impl Drop for PromotionClaim {
    fn drop(&mut self) {
        update(|s| s.promoting = false);
    }
}

/// The worker's published settings alone (every login reads them: no copy of the event ring).
pub fn running() -> Running {
    SHARED.share().running
}

/// The worker's published status alone.
pub fn read_status() -> Status {
    SHARED.share().status
}

/// A copy of the shared state, taken under a shared lock.
pub fn read() -> Shared {
    *SHARED.share()
}

pub fn update<R>(f: impl FnOnce(&mut Shared) -> R) -> R {
    f(&mut SHARED.exclusive())
}

/// Publishes the fence: the reason first, then the flag every commit reads.
pub fn set_fence(fenced: bool, permanent: bool, reason: &str) {
    update(|s| {
        s.fence_reason = FixedText::new(reason);
        s.fence_permanent = permanent;
    });
    FENCED.get().store(fenced, Ordering::Release);
}

/// Whether this server is fenced; false where the library was not preloaded (no shared memory).
pub fn fenced() -> bool {
    AVAILABLE.load(Ordering::Relaxed) && FENCED.get().load(Ordering::Acquire)
}

/// Whether the fence is permanent, and its reason.
pub fn read_fence() -> (bool, String) {
    let s = SHARED.share();
    (s.fence_permanent, s.fence_reason.as_str().to_string())
}

/// Records events in the ring and in the server log.
pub fn record(events: &[Event]) {
    if events.is_empty() {
        return;
    }
    update(|s| events.iter().for_each(|e| s.events.push(e)));
    for e in events {
        super::versions::log(format!("pg_promoter: {}: {}", e.kind.as_str(), e.detail));
    }
}
