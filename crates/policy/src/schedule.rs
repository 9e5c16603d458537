//! When checks run, and how long each may take.
//!
//! Checks start at a fixed rate, one every `keep_alive` whatever each took, and each is bounded by
//! `check_timeout <= keep_alive`, so `keepalives_count` failures always span about
//! `keep_alive * keepalives_count`, whether the primary refuses at once or never answers.

use crate::time::{ms, Micros};

/// The deadline of one check in ms: `check_timeout`, where 0 or anything above `keep_alive`
/// means `keep_alive` (a longer check would break the fixed rate).
pub fn check_timeout_ms(keep_alive_ms: i32, check_timeout_ms: i32) -> i32 {
    if check_timeout_ms <= 0 || check_timeout_ms > keep_alive_ms {
        keep_alive_ms
    } else {
        check_timeout_ms
    }
}

/// When the next check is due, given when the last one started. A check that could not start on
/// time (the worker was busy promoting, or the machine stalled) starts now, without a burst of
/// catch-up checks.
pub fn next_check(last_start: Option<Micros>, keep_alive_ms: i32, now: Micros) -> Micros {
    match last_start {
        Some(start) => (start + ms(keep_alive_ms.into())).max(now),
        None => now,
    }
}

/// How long the primary must have been silent, to the check and to the WAL receiver, before it
/// can be declared dead: `keep_alive * keepalives_count`.
pub fn silence_window(keep_alive_ms: i32, keepalives_count: i32) -> Micros {
    ms(i64::from(keep_alive_ms) * i64::from(keepalives_count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SEC;

    #[test]
    fn check_timeout_never_exceeds_keep_alive() {
        assert_eq!(check_timeout_ms(1000, 0), 1000);
        assert_eq!(check_timeout_ms(1000, 300), 300);
        assert_eq!(check_timeout_ms(1000, 1000), 1000);
        assert_eq!(check_timeout_ms(1000, 5000), 1000);
        assert_eq!(check_timeout_ms(100, -1), 100);
    }

    #[test]
    fn checks_keep_a_fixed_rate_without_catch_up_bursts() {
        assert_eq!(next_check(None, 1000, 5 * SEC), 5 * SEC);
        // A fast check: the next starts one interval after the last start.
        assert_eq!(next_check(Some(10 * SEC), 1000, 10 * SEC + 3_000), 11 * SEC);
        // A check that used its whole deadline: the next starts at once.
        assert_eq!(next_check(Some(10 * SEC), 1000, 11 * SEC), 11 * SEC);
        // Far behind: start now, once.
        assert_eq!(next_check(Some(10 * SEC), 1000, 60 * SEC), 60 * SEC);
    }

    #[test]
    fn detection_time_follows_from_the_settings() {
        // Refused at once: failure n arrives at (n-1) intervals; never answering: at n intervals.
        // Either way the window covers `count` intervals.
        assert_eq!(silence_window(1000, 5), 5 * SEC);
        assert_eq!(silence_window(200, 3), 600_000);
        assert_eq!(silence_window(i32::MAX, i32::MAX), i64::MAX, "saturates");
    }
}
