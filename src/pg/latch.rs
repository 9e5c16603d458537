//! The one way this extension waits: on the process latch, with a deadline, optionally for a
//! socket. Signals set the latch, so a SIGTERM or a query cancel is seen within one wake-up,
//! whatever the other end of a socket is doing.
#![allow(unsafe_code)]

use std::ptr::null_mut;
use std::time::{Duration, Instant};

use pgrx::pg_sys;

use super::versions;

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
    Ok(wait_any(&[socket], deadline, stop)?.is_some())
}

/// Waits until one of the sockets is ready (`Ok(Some(its index))`), the deadline passes
/// (`Ok(None)`), or `stop` says so after a latch wake-up (`Err`). Exits the process if the
/// postmaster dies.
pub fn wait_any(
    sockets: &[Socket],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<Option<usize>, Interrupted> {
    // The latch and postmaster death come first in the set, then the sockets in order.
    const FIRST_SOCKET: i32 = 2;
    const NO_SOCKET: pg_sys::pgsocket = -1;
    loop {
        if stop() {
            return Err(Interrupted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // SAFETY: the set is freed below before anything can fail in between but PostgreSQL's own
        // calls (which clean up as for WaitLatchOrSocket); MyLatch is this process's latch and the
        // sockets stay open for the call.
        let occurred = unsafe {
            let set = versions::wait_event_set(FIRST_SOCKET + sockets.len() as i32);
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_LATCH_SET, NO_SOCKET, pg_sys::MyLatch, null_mut());
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_EXIT_ON_PM_DEATH,
                NO_SOCKET,
                null_mut(),
                null_mut(),
            );
            for socket in sockets {
                let (events, fd) = match *socket {
                    Socket::Readable(fd) => (pg_sys::WL_SOCKET_READABLE, fd),
                    Socket::Writable(fd) => (pg_sys::WL_SOCKET_WRITEABLE, fd),
                };
                pg_sys::AddWaitEventToSet(set, events, fd, null_mut(), null_mut());
            }
            let mut event: pg_sys::WaitEvent = std::mem::zeroed();
            let n = pg_sys::WaitEventSetWait(set, timeout_ms(left), &mut event, 1, pg_sys::PG_WAIT_EXTENSION);
            pg_sys::FreeWaitEventSet(set);
            (n > 0).then_some(event)
        };
        let Some(event) = occurred else { continue };
        if event.events & pg_sys::WL_LATCH_SET != 0 {
            // Reset before looking at the flags, so a signal arriving now sets it again.
            // SAFETY: resetting our own latch.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        }
        if event.events & (pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE) != 0 {
            return Ok(Some((event.pos - FIRST_SOCKET) as usize));
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
