//! Keeps passwords out of the server log. PostgreSQL logs a reloaded setting's new value as
//! written (`parameter "pg_promoter.peers" changed to "…password=…"`), for its own
//! primary_conninfo too; this `emit_log_hook` masks the passwords in those messages, found by
//! their untranslated format (`message_id`) and the setting's name, so a translated
//! `lc_messages` is masked as well.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use policy::conninfo::mask_reload;

static mut PREVIOUS: pg_sys::emit_log_hook_type = None;

pub fn init() {
    // SAFETY: runs once in the postmaster while it loads preloaded libraries, before any other
    // process exists; the previous hook is kept and chained.
    unsafe {
        PREVIOUS = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(mask);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn mask(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the error being emitted; its message lives in ErrorContext, where
    // the replacement is allocated too.
    unsafe {
        let (message, id) = ((*edata).message, (*edata).message_id);
        if !message.is_null() && !id.is_null() {
            let text = CStr::from_ptr(message).to_string_lossy();
            let id = CStr::from_ptr(id).to_string_lossy();
            if let Some(masked) = mask_reload(&id, &text).and_then(|m| CString::new(m).ok()) {
                (*edata).message = pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, masked.as_ptr());
            }
        }
        if let Some(previous) = PREVIOUS {
            previous(edata);
        }
    }
}
