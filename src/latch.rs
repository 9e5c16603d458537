//! The one way this extension waits: on the process latch, with a deadline, optionally for a
//! socket. Signals set the latch, so a SIGTERM or a query cancel is seen within one wake-up,
//! whatever the other end of a socket is doing.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use pgrx::pg_sys;

/// The caller asked to stop (SIGTERM in the worker); in a backend, interrupts raise an ERROR
/// from the `stop` callback instead.
#[derive(Debug)]
pub struct Interrupted;

/// What to wait for besides the latch and the deadline.
#[derive(Clone, Copy)]
pub enum Socket {
    Readable(i32),
    Writable(i32),
}

/// Waits until the socket is ready (`Ok(true)`), the deadline passes (`Ok(false)`), or `stop`
/// says so after a latch wake-up (`Err`). Exits the process if the postmaster dies.
pub fn wait(socket: Socket, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<bool, Interrupted> {
    loop {
        if stop() {
            return Err(Interrupted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let (events, sock) = match socket {
            Socket::Readable(fd) => (pg_sys::WL_SOCKET_READABLE, fd),
            Socket::Writable(fd) => (pg_sys::WL_SOCKET_WRITEABLE, fd),
        };
        let events = events | pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
        // SAFETY: MyLatch is this process's latch; the socket, if any, is open for the duration.
        let rc = unsafe {
            pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                events as i32,
                sock,
                timeout_ms(left),
                pg_sys::PG_WAIT_EXTENSION,
            )
        } as u32;
        if rc & pg_sys::WL_LATCH_SET != 0 {
            // Reset before looking at the flags, so a signal arriving now sets it again.
            // SAFETY: resetting our own latch.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        }
        if rc & (pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE) != 0 {
            return Ok(true);
        }
    }
}

/// Sleeps until the deadline unless `stop` or a latch wake-up ends it first; `true` when the
/// deadline was reached.
pub fn sleep_until(deadline: Instant, stop: &dyn Fn() -> bool) -> Result<bool, Interrupted> {
    if stop() {
        return Err(Interrupted);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(true);
    }
    let events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
    // SAFETY: MyLatch is this process's latch.
    let rc = unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            events as i32,
            timeout_ms(left),
            pg_sys::PG_WAIT_EXTENSION,
        )
    } as u32;
    if rc & pg_sys::WL_LATCH_SET != 0 {
        // SAFETY: resetting our own latch.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    }
    if stop() {
        return Err(Interrupted);
    }
    Ok(rc & pg_sys::WL_TIMEOUT != 0)
}

/// Rounds up, so a wait never ends just short of its deadline and spins.
fn timeout_ms(d: Duration) -> std::ffi::c_long {
    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as std::ffi::c_long
}
