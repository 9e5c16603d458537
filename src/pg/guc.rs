//! Every `pg_promoter.*` setting: registration, the check and show hooks, and the one snapshot
//! the worker takes of them. All are reloadable (`SELECT pg_reload_conf()`); the worker applies
//! them at its next check.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use pgrx::pg_sys;
use policy::members::{self, Naming};
use policy::{conninfo, schedule, FenceMode, Settings};

use super::{libpq, versions};

static PRIMARY_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static KEEP_ALIVE: GucSetting<i32> = GucSetting::<i32>::new(1000);
static KEEPALIVES_COUNT: GucSetting<i32> = GucSetting::<i32>::new(5);
static CHECK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(0);
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static MAX_LAG_ON_FAILOVER: GucSetting<i32> = GucSetting::<i32>::new(16 << 20);
static PEERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static FENCE_ACTION: GucSetting<GucFenceMode> =
    GucSetting::<GucFenceMode>::new(GucFenceMode::RefuseConnections);
static STARTUP_HOLD_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static WITNESS_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static PRE_PROMOTE_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static POST_PROMOTE_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static COMMAND_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30_000);
static PRIORITY: GucSetting<i32> = GucSetting::<i32>::new(1);
/// Never set: its show hook reads the fence from shared memory.
static FENCED: GucSetting<bool> = GucSetting::<bool>::new(false);

/// A setting that holds conninfos: readable by superusers (and pg_read_all_settings) only, as
/// primary_conninfo is, and out of `SHOW ALL` and `pg_settings`, whose `reset_val` and
/// `boot_val` would show the file's value, password included, past the show hook.
const CONNINFO_FLAGS: GucFlags = GucFlags::SUPERUSER_ONLY.union(GucFlags::NO_SHOW_ALL);

pub fn init() {
    // SAFETY: the hooks below follow PostgreSQL's GUC hook contracts.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_promoter.primary_conninfo",
            c"Connection string the worker checks the primary with.",
            c"Empty means the server's own primary_conninfo, so a standby made by pg_basebackup -R needs \
              nothing more. The check runs SQL, so the role needs an ordinary (non-replication) login; \
              dbname defaults to postgres.",
            &PRIMARY_CONNINFO,
            GucContext::Sighup,
            CONNINFO_FLAGS,
            Some(check_conninfo),
            None,
            Some(show_conninfo),
        );
    }
    GucRegistry::define_int_guc(
        c"pg_promoter.keep_alive",
        c"Interval between two checks of the primary.",
        c"Checks start at this fixed rate, whatever each one took.",
        &KEEP_ALIVE,
        100,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_promoter.keepalives_count",
        c"Consecutive failed checks after which the primary is considered dead.",
        c"The primary is declared dead after about keep_alive * keepalives_count of silence.",
        &KEEPALIVES_COUNT,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"pg_promoter.check_timeout",
        c"Deadline of one check, connection and query included.",
        c"0 means keep_alive; a value above keep_alive is treated as keep_alive.",
        &CHECK_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"pg_promoter.enabled",
        c"Whether the worker may promote this standby.",
        c"When off, the worker keeps checking and reporting but never promotes.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"pg_promoter.max_lag_on_failover",
        c"Largest estimated data loss a promotion may cause; -1 turns the bound off.",
        c"The estimate is the primary's WAL position at the last successful check minus what this \
          standby has received.",
        &MAX_LAG_ON_FAILOVER,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_BYTE,
    );
    // SAFETY: the hooks below follow PostgreSQL's GUC hook contracts.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_promoter.peers",
            c"The other nodes of the cluster, as \"name: conninfo; name: conninfo\".",
            c"A primary checks them (and the witnesses) at every tick: it fences itself when it reaches \
              no majority, and for good when a peer is a primary on a newer timeline. The same list may \
              be used on every node: a node recognises and skips its own entry.",
            &PEERS,
            GucContext::Sighup,
            CONNINFO_FLAGS,
            Some(check_peers),
            None,
            Some(show_peers),
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pg_promoter.witness_conninfo",
            c"Witnesses, as \"conninfo; conninfo\" (optionally \"name: conninfo\").",
            c"With witnesses, a standby promotes only when a majority of the primary, itself and the \
              witnesses says the primary is gone. A witness needs the extension created, nothing else.",
            &WITNESS_CONNINFO,
            GucContext::Sighup,
            CONNINFO_FLAGS,
            Some(check_witnesses),
            None,
            Some(show_witnesses),
        );
    }
    GucRegistry::define_enum_guc(
        c"pg_promoter.fence_action",
        c"What a fenced primary does: refuse ordinary connections, or shut down.",
        c"refuse_connections keeps superusers able to connect and diagnose; shutdown stops the server \
          (fast mode).",
        &FENCE_ACTION,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"pg_promoter.startup_hold_timeout",
        c"Longest an ordinary connection to a starting primary waits for the first check of the cluster.",
        c"Only with peers or witnesses: a restarted old primary must not accept a write before it has \
          seen whether a newer primary exists. 0 disables the wait.",
        &STARTUP_HOLD_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"pg_promoter.pre_promote_command",
        c"Shell command run before promoting; a failure or a timeout aborts the promotion.",
        c"Placeholders: %d data directory, %t timeline, %h and %p old primary host and port, \
          %n cluster_name, %% a percent sign.",
        &PRE_PROMOTE_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_promoter.post_promote_command",
        c"Shell command run once the promoted server accepts writes.",
        c"Same placeholders as pre_promote_command; %t is the new timeline.",
        &POST_PROMOTE_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_promoter.command_timeout",
        c"Longest a pre- or post-promote command may run before it is killed.",
        c"",
        &COMMAND_TIMEOUT,
        100,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_promoter.priority",
        c"This node's priority between equally advanced standbys in an election; 0 never stands.",
        c"The most advanced standby wins; among equals, the highest priority, then the name that \
          sorts first.",
        &PRIORITY,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    // SAFETY: the show hook below follows PostgreSQL's contract; the value cannot be set.
    unsafe {
        GucRegistry::define_bool_guc_with_hooks(
            c"pg_promoter.fenced",
            c"Shows whether pg_promoter has fenced this server.",
            c"Read-only. Other nodes' checks read it: a primary that answers fenced counts as down.",
            &FENCED,
            GucContext::Internal,
            GucFlags::DISALLOW_IN_FILE,
            None,
            None,
            Some(show_fenced),
        );
    }
    versions::reserve_guc_prefix(c"pg_promoter");
}

/// Every `pg_promoter.*` value as this process sees it now, member lists parsed (the check hooks
/// validated them), durations typed: taken by the worker at start and at each reload only.
pub fn snapshot() -> Settings {
    let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
    let keep_alive = ms(KEEP_ALIVE.get());
    Settings {
        primary_conninfo: primary_conninfo(),
        keep_alive,
        keepalives_count: KEEPALIVES_COUNT.get().max(1) as u32,
        check_timeout: schedule::check_timeout(keep_alive, ms(CHECK_TIMEOUT.get())),
        enabled: ENABLED.get(),
        max_lag_bytes: u64::try_from(MAX_LAG_ON_FAILOVER.get()).ok(),
        peers: members::parse(&text(&PEERS), Naming::Required).unwrap_or_default(),
        witnesses: members::parse(&text(&WITNESS_CONNINFO), WITNESS_NAMING).unwrap_or_default(),
        fence_mode: match FENCE_ACTION.get() {
            GucFenceMode::RefuseConnections => FenceMode::RefuseConnections,
            GucFenceMode::Shutdown => FenceMode::Shutdown,
        },
        startup_hold_timeout: ms(STARTUP_HOLD_TIMEOUT.get()),
        pre_promote_command: text(&PRE_PROMOTE_COMMAND),
        post_promote_command: text(&POST_PROMOTE_COMMAND),
        command_timeout: ms(COMMAND_TIMEOUT.get()),
        priority: PRIORITY.get().max(0) as u32,
    }
}

/// Whether any member is configured, without parsing the lists: what a backend falls back on
/// before the worker has published its snapshot.
pub fn members_configured() -> bool {
    !text(&PEERS).trim().is_empty() || !text(&WITNESS_CONNINFO).trim().is_empty()
}

/// The startup hold, for a backend before the worker has published its snapshot.
pub fn startup_hold_timeout() -> Duration {
    Duration::from_millis(STARTUP_HOLD_TIMEOUT.get().max(0) as u64)
}

fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
enum GucFenceMode {
    #[name = c"refuse_connections"]
    RefuseConnections,
    #[name = c"shutdown"]
    Shutdown,
}

const WITNESS_NAMING: Naming = Naming::Optional { prefix: "witness" };

/// Whether `pg_promoter.primary_conninfo` is set (then it, not `primary_conninfo`, names the
/// server the check targets).
pub fn own_primary_conninfo_set() -> bool {
    PRIMARY_CONNINFO
        .get()
        .is_some_and(|own| !own.as_bytes().is_empty())
}

/// The conninfo the check uses: ours, or else the server's `primary_conninfo`.
fn primary_conninfo() -> String {
    match PRIMARY_CONNINFO.get() {
        Some(own) if !own.as_bytes().is_empty() => own.to_string_lossy().into_owned(),
        // SAFETY: PrimaryConnInfo is the server's own GUC variable: NULL or a valid string.
        _ => unsafe {
            let p = pg_sys::PrimaryConnInfo;
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        },
    }
}

/// The candidate value of a string GUC in a check hook.
///
/// # Safety
/// `newval` must be the pointer PostgreSQL passes to a string check hook.
unsafe fn candidate(newval: *mut *mut c_char) -> Option<String> {
    // SAFETY: per the contract, a valid pointer to NULL or a NUL-terminated string.
    unsafe {
        (*newval)
            .as_ref()
            .map(|p| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Sets the error a failed check hook reports: our own primary message (so the rejected value,
/// which may hold a password, is shown masked), the reason as detail, and a hint.
fn reject(name: &str, shown: &str, reason: &str, hint: &str) -> bool {
    let msg = format!("invalid value for parameter \"{name}\": \"{shown}\"");
    // SAFETY: PostgreSQL reports these strings right after the hook returns; pstrdup copies
    // them into the current memory context.
    unsafe {
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
        pg_sys::GUC_check_errmsg_string = pstrdup(&msg);
        pg_sys::GUC_check_errdetail_string = pstrdup(reason);
        pg_sys::GUC_check_errhint_string = pstrdup(hint);
    }
    false
}

/// Rejects what libpq would reject, with libpq's reason, and never echoes a password.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_conninfo(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: called by PostgreSQL as a string check hook.
    let Some(value) = (unsafe { candidate(newval) }) else {
        return true;
    };
    match parse_one(&value) {
        Ok(()) => true,
        Err(reason) => reject(
            "pg_promoter.primary_conninfo",
            &conninfo::mask_password(&value),
            &format!("{reason}."),
            "Use libpq's key=value or URI syntax, as in primary_conninfo.",
        ),
    }
}

fn parse_one(conninfo: &str) -> Result<(), String> {
    let c = CString::new(conninfo).map_err(|_| "the value contains a zero byte".to_string())?;
    libpq::parse_conninfo(&c).map(|_| ())
}

/// Checks a member list: its syntax, then each conninfo as libpq parses it.
fn check_members(name: &str, value: &str, naming: Naming) -> bool {
    let hint = "Write \"name: conninfo; name: conninfo\" (names are optional for witnesses), each conninfo \
                in libpq's syntax.";
    let result = members::parse(value, naming).and_then(|list| {
        list.iter().try_for_each(|m| {
            parse_one(&m.conninfo)
                .map_err(|e| format!("The conninfo of member \"{}\" is invalid: {e}.", m.name))
        })
    });
    match result {
        Ok(()) => true,
        Err(reason) => reject(name, &members::mask(value), &reason, hint),
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_peers(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: called by PostgreSQL as a string check hook.
    let value = unsafe { candidate(newval) }.unwrap_or_default();
    check_members("pg_promoter.peers", &value, Naming::Required)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_witnesses(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: called by PostgreSQL as a string check hook.
    let value = unsafe { candidate(newval) }.unwrap_or_default();
    check_members("pg_promoter.witness_conninfo", &value, WITNESS_NAMING)
}

fn pstrdup(s: &str) -> *mut c_char {
    let c = CString::new(s.replace('\0', "")).expect("zero bytes removed");
    // SAFETY: copies a NUL-terminated string into palloc'd memory.
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

thread_local! {
    /// SHOW's text lives until the next show hook call; PostgreSQL copies it at once.
    static SHOWN: RefCell<CString> = RefCell::new(CString::default());
}

fn show(masked: String) -> *const c_char {
    SHOWN.with(|shown| {
        *shown.borrow_mut() = CString::new(masked).unwrap_or_default();
        shown.borrow().as_ptr()
    })
}

/// SHOW displays conninfos with their passwords masked.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn show_conninfo() -> *const c_char {
    show(conninfo::mask_password(&text(&PRIMARY_CONNINFO)))
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn show_peers() -> *const c_char {
    show(members::mask(&text(&PEERS)))
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn show_witnesses() -> *const c_char {
    show(members::mask(&text(&WITNESS_CONNINFO)))
}

/// The fence as shared memory holds it now, not as the GUC was set (it never is).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn show_fenced() -> *const c_char {
    if super::shmem::fenced() {
        c"on".as_ptr()
    } else {
        c"off".as_ptr()
    }
}
