//! Every `pg_promoter.*` setting: registration, the conninfo check hook, and typed accessors.
//! All are reloadable (`SELECT pg_reload_conf()`); the worker applies them at its next check.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use policy::{conninfo, schedule, Settings};

use crate::libpq;

static PRIMARY_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static KEEP_ALIVE: GucSetting<i32> = GucSetting::<i32>::new(1000);
static KEEPALIVES_COUNT: GucSetting<i32> = GucSetting::<i32>::new(5);
static CHECK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(0);
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

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
            GucFlags::SUPERUSER_ONLY,
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
    // SAFETY: reserves our prefix so a misspelt pg_promoter.* setting is reported.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pg_promoter".as_ptr()) };
}

pub fn keep_alive_ms() -> i32 {
    KEEP_ALIVE.get()
}

pub fn keepalives_count() -> i32 {
    KEEPALIVES_COUNT.get()
}

/// The effective deadline of one check (never more than `keep_alive`).
pub fn check_timeout_ms() -> i32 {
    schedule::check_timeout_ms(KEEP_ALIVE.get(), CHECK_TIMEOUT.get())
}

pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn settings() -> Settings {
    Settings {
        keep_alive_ms: keep_alive_ms(),
        keepalives_count: keepalives_count(),
        enabled: enabled(),
    }
}

/// The conninfo the check uses: ours, or else the server's `primary_conninfo`.
pub fn primary_conninfo() -> String {
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

/// Rejects what libpq would reject, with libpq's reason, and never echoes a password.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_conninfo(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the candidate value (which may be NULL).
    let value = unsafe { *newval };
    if value.is_null() {
        return true;
    }
    // SAFETY: a non-NULL GUC string value is NUL-terminated.
    let value = unsafe { CStr::from_ptr(value) };
    let Err(reason) = libpq::parse_conninfo(value) else {
        return true;
    };
    let shown = conninfo::mask_password(&value.to_string_lossy());
    let msg = format!("invalid value for parameter \"pg_promoter.primary_conninfo\": \"{shown}\"");
    let hint = "Use libpq's key=value or URI syntax, as in primary_conninfo.";
    // SAFETY: PostgreSQL reports these strings right after the hook returns; pstrdup copies
    // them into the current memory context.
    unsafe {
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
        pg_sys::GUC_check_errmsg_string = pstrdup(&msg);
        pg_sys::GUC_check_errdetail_string = pstrdup(&format!("{reason}."));
        pg_sys::GUC_check_errhint_string = pstrdup(hint);
    }
    false
}

fn pstrdup(s: &str) -> *mut c_char {
    let c = CString::new(s.replace('\0', "")).expect("zero bytes removed");
    // SAFETY: copies a NUL-terminated string into palloc'd memory.
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

thread_local! {
    /// SHOW's text lives until the next SHOW of this setting, as PostgreSQL's show hooks expect.
    static SHOWN: RefCell<CString> = RefCell::new(CString::default());
}

/// SHOW and pg_settings display the conninfo with its password masked.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn show_conninfo() -> *const c_char {
    let raw = PRIMARY_CONNINFO
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let masked = CString::new(conninfo::mask_password(&raw)).unwrap_or_default();
    SHOWN.with(|shown| {
        *shown.borrow_mut() = masked;
        shown.borrow().as_ptr()
    })
}
