//! Polling helpers: tests wait on observable state rather than sleeping.

use std::thread;
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it returns true (`Some(elapsed)`) or `timeout`
/// passes (`None`). `f` is always called at least once, and once more at the
/// deadline, so a slow check cannot lose its last chance.
pub fn try_wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return None;
        }
        thread::sleep(POLL.min(timeout - elapsed));
    }
}

/// Like [`try_wait_until`], but panics with `what` when `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) -> Duration {
    try_wait_until(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting until {what}"))
}
