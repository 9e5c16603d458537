//! When checks run, and how long each may take.
//!
//! Checks start at a fixed rate, one every `keep_alive` whatever each took, and each is bounded by
//! `check_timeout <= keep_alive`, so `keepalives_count` failures always span about
//! `keep_alive * keepalives_count`, whether the primary refuses at once or never answers.

use std::time::Duration;

use crate::time::{micros, Micros};

/// The deadline of one check: `check_timeout`, where 0 or anything above `keep_alive` means
/// `keep_alive` (a longer check would break the fixed rate).
pub fn check_timeout(keep_alive: Duration, check_timeout: Duration) -> Duration {
    if check_timeout.is_zero() || check_timeout > keep_alive {
        keep_alive
    } else {
        check_timeout
    }
}

/// When the next check is due, given when the last one started. A check that could not start on
/// time (the worker was busy promoting, or the machine stalled) starts now, without a burst of
/// catch-up checks.
pub fn next_check(last_start: Option<Micros>, keep_alive: Duration, now: Micros) -> Micros {
    match last_start {
        Some(start) => start.saturating_add(micros(keep_alive)).max(now),
        None => now,
    }
}

/// How many connection attempts one check may make at most: the first, and more only while the
/// network loses what the others sent.
pub const ATTEMPTS_PER_CHECK: usize = 4;

/// How far the request of one attempt (its SYN, or the check's query) has got, as this host's TCP
/// stack sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The primary's host acknowledged it: the host has the request, only its server can be slow.
    Delivered,
    /// Not acknowledged yet; `rtt_us` is the kernel's smoothed round trip, once known.
    Unacked { rtt_us: Option<u32> },
    /// Not TCP (a Unix socket): nothing is lost on the way.
    Local,
}

/// When a check starts another connection attempt: `Some(0)` now, `Some(d)` in `d` if nothing
/// changes meanwhile, `None` not in this check. A request lost in the network is resent by TCP
/// only after 200 ms (data) or 1 s (SYN), beyond a short deadline, so one lost packet would fail
/// the check however short the outage; a fresh attempt, started while every attempt in flight is
/// still unacknowledged, samples the path again. A check therefore fails only when the path lost
/// everything for its whole deadline (to within `check_timeout / ATTEMPTS_PER_CHECK`), and
/// `keepalives_count` failures need an outage of about `keep_alive * keepalives_count`. A slow or
/// frozen server gets no more connections than before: its host acknowledges what is sent.
///
/// `paths` are the attempts in flight, `newest_age` the time since the newest one started.
pub fn next_attempt(check_timeout: Duration, paths: &[Path], newest_age: Micros) -> Option<Micros> {
    if paths.is_empty() {
        return Some(0);
    }
    if paths.len() >= ATTEMPTS_PER_CHECK {
        return None;
    }
    let mut slowest_rtt: Micros = 0;
    for path in paths {
        match *path {
            Path::Delivered | Path::Local => return None,
            Path::Unacked { rtt_us } => slowest_rtt = slowest_rtt.max(rtt_us.unwrap_or(0).into()),
        }
    }
    // Twice the round trip: an ACK the peer delays (40 ms or more on Linux) is not a loss.
    let every = (micros(check_timeout) / ATTEMPTS_PER_CHECK as Micros).max(2 * slowest_rtt);
    Some((every - newest_age).max(0))
}

/// How long the primary must have been silent, to the check and to the WAL receiver, before it
/// can be declared dead: `keep_alive * keepalives_count`.
pub fn silence_window(keep_alive: Duration, keepalives_count: u32) -> Micros {
    micros(keep_alive).saturating_mul(keepalives_count.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SEC;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn check_timeout_never_exceeds_keep_alive() {
        assert_eq!(check_timeout(ms(1000), ms(0)), ms(1000));
        assert_eq!(check_timeout(ms(1000), ms(300)), ms(300));
        assert_eq!(check_timeout(ms(1000), ms(1000)), ms(1000));
        assert_eq!(check_timeout(ms(1000), ms(5000)), ms(1000));
    }

    #[test]
    fn checks_keep_a_fixed_rate_without_catch_up_bursts() {
        assert_eq!(next_check(None, ms(1000), 5 * SEC), 5 * SEC);
        // A fast check: the next starts one interval after the last start.
        assert_eq!(next_check(Some(10 * SEC), ms(1000), 10 * SEC + 3_000), 11 * SEC);
        // A check that used its whole deadline: the next starts at once.
        assert_eq!(next_check(Some(10 * SEC), ms(1000), 11 * SEC), 11 * SEC);
        // Far behind: start now, once.
        assert_eq!(next_check(Some(10 * SEC), ms(1000), 60 * SEC), 60 * SEC);
    }

    #[test]
    fn a_check_always_makes_its_first_attempt_at_once() {
        assert_eq!(next_attempt(ms(200), &[], 0), Some(0));
    }

    #[test]
    fn attempts_are_added_only_while_everything_in_flight_is_lost() {
        let lost = Path::Unacked { rtt_us: None };
        // 200 ms deadline: a new attempt every 50 ms while nothing is acknowledged.
        assert_eq!(next_attempt(ms(200), &[lost], 0), Some(50_000));
        assert_eq!(next_attempt(ms(200), &[lost], 49_999), Some(1));
        assert_eq!(next_attempt(ms(200), &[lost], 50_000), Some(0));
        assert_eq!(next_attempt(ms(200), &[lost, lost], 70_000), Some(0));
        assert_eq!(next_attempt(ms(200), &[lost, lost, lost], 10_000), Some(40_000));
        assert_eq!(
            next_attempt(ms(200), &[lost; ATTEMPTS_PER_CHECK], SEC),
            None,
            "capped"
        );
        // The host has one request: the server is slow or frozen, more connections would not help.
        for reached in [Path::Delivered, Path::Local] {
            assert_eq!(next_attempt(ms(200), &[lost, reached], SEC), None);
            assert_eq!(next_attempt(ms(200), &[reached], SEC), None);
        }
    }

    #[test]
    fn a_slow_round_trip_is_not_taken_for_a_loss() {
        // 80 ms round trip: not before 160 ms, although a quarter of the deadline is 50 ms.
        let far = Path::Unacked { rtt_us: Some(80_000) };
        assert_eq!(next_attempt(ms(200), &[far], 100_000), Some(60_000));
        assert_eq!(next_attempt(ms(200), &[far], 160_000), Some(0));
        // A quarter of a 1 s deadline already covers a short round trip.
        let near = Path::Unacked { rtt_us: Some(300) };
        assert_eq!(next_attempt(ms(1000), &[near], 0), Some(250_000));
    }

    #[test]
    fn detection_time_follows_from_the_settings() {
        // Refused at once: failure n arrives at (n-1) intervals; never answering: at n intervals.
        // Either way the window covers `count` intervals.
        assert_eq!(silence_window(ms(1000), 5), 5 * SEC);
        assert_eq!(silence_window(ms(200), 3), 600_000);
        assert_eq!(silence_window(Duration::MAX, u32::MAX), i64::MAX, "saturates");
    }
}
