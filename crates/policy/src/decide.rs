//! The decision: given the last check's verdict and the local facts, what the worker's state
//! becomes, what it must do, and what it records.

use crate::classify::Verdict;
use crate::event::{Event, EventKind};
use crate::schedule::silence_window;
use crate::time::{to_ms, Micros, SEC};

/// The settings a decision depends on (a snapshot of the GUCs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub keep_alive_ms: i32,
    pub keepalives_count: i32,
    pub enabled: bool,
}

/// What the shell read of this server when the check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub now: Micros,
    pub in_recovery: bool,
    pub paused: bool,
    /// When the WAL receiver last heard from the primary (WAL or keepalive), if ever.
    pub walrcv_last_msg: Option<Micros>,
}

/// Where the worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No check has finished yet.
    Starting,
    /// The last check reached the primary.
    Watching,
    /// The primary answers but refuses the check (authentication, too many clients, …).
    Misconfigured,
    /// Some checks failed, fewer than `keepalives_count`.
    Suspecting,
    /// The primary is down by the count, but a guard holds the promotion back.
    Refusing,
    /// Promotion requested, waiting for recovery to end.
    Promoting,
    /// This server is a primary.
    Primary,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Watching => "watching",
            Phase::Misconfigured => "misconfigured",
            Phase::Suspecting => "suspecting",
            Phase::Refusing => "refusing",
            Phase::Promoting => "promoting",
            Phase::Primary => "primary",
        }
    }
}

/// What can hold a promotion back. Automatic promotion needs none of them to hold; a manual
/// `pg_promoter_promote()` checks only `NotInRecovery` and (without force) `NeverReached`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guard {
    Disabled,
    Paused,
    NotInRecovery,
    WalReceiverAlive,
    NeverReached,
}

impl Guard {
    /// Why the guard refuses, in a sentence fragment for events and errors.
    pub fn reason(self, facts: &Facts) -> String {
        match self {
            Guard::Disabled => "pg_promoter.enabled is off".into(),
            Guard::Paused => "paused by pg_promoter_pause()".into(),
            Guard::NotInRecovery => "this server is not in recovery".into(),
            Guard::WalReceiverAlive => match facts.walrcv_last_msg {
                Some(at) => format!(
                    "the WAL receiver heard from the primary {} ms ago",
                    to_ms(facts.now - at)
                ),
                None => "the WAL receiver heard from the primary recently".into(),
            },
            Guard::NeverReached => "the primary has not been reached since the worker started".into(),
        }
    }
}

/// The worker's memory between checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub phase: Phase,
    /// Consecutive failed checks; one success (or a live but refusing server) resets it.
    pub failures: u32,
    pub first_failure_at: Option<Micros>,
    pub last_error: Option<String>,
    /// Whether the primary was reached since the worker started (guard against conninfo typos).
    pub ever_reached: bool,
    pub started_at: Micros,
    /// The guards of the last refusal, so a refusal is recorded when its reasons change, not at
    /// every check.
    pub refused_by: Vec<Guard>,
    /// When a misconfigured primary was last warned about in the log.
    pub warned_at: Option<Micros>,
}

impl State {
    pub fn new(started_at: Micros, ever_reached: bool) -> State {
        State {
            phase: Phase::Starting,
            failures: 0,
            first_failure_at: None,
            last_error: None,
            ever_reached,
            started_at,
            refused_by: Vec::new(),
            warned_at: None,
        }
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    /// A WARNING for the log, rate-limited here.
    Warn(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub state: State,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

/// How often a primary that keeps refusing the check is warned about.
pub const WARN_EVERY: Micros = 60 * SEC;

/// The guards that hold an automatic promotion back now, in a fixed order.
pub fn guards(state: &State, facts: &Facts, settings: &Settings) -> Vec<Guard> {
    let window = silence_window(settings.keep_alive_ms, settings.keepalives_count);
    let walrcv_alive = facts.walrcv_last_msg.is_some_and(|at| facts.now - at < window);
    [
        (!settings.enabled, Guard::Disabled),
        (facts.paused, Guard::Paused),
        (!facts.in_recovery, Guard::NotInRecovery),
        (walrcv_alive, Guard::WalReceiverAlive),
        (!state.ever_reached, Guard::NeverReached),
    ]
    .into_iter()
    .filter_map(|(holds, guard)| holds.then_some(guard))
    .collect()
}

/// The guards a manual `pg_promoter_promote(force)` respects.
pub fn manual_guards(force: bool, in_recovery: bool, ever_reached: bool) -> Vec<Guard> {
    let mut held = Vec::new();
    if !in_recovery {
        held.push(Guard::NotInRecovery);
    }
    if !force && !ever_reached {
        held.push(Guard::NeverReached);
    }
    held
}

/// Joins guard reasons into one detail line.
pub fn reasons(held: &[Guard], facts: &Facts) -> String {
    held.iter()
        .map(|g| g.reason(facts))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One step: the verdict of the check that just ended (`None` when none ran) and the facts.
pub fn decide(state: &State, verdict: Option<&Verdict>, facts: &Facts, settings: &Settings) -> Decision {
    let mut s = state.clone();
    let mut events = Vec::new();
    let mut actions = Vec::new();
    let now = facts.now;
    let mut event = |kind, detail: String| events.push(Event::new(now, kind, detail));

    if !facts.in_recovery {
        if s.phase != Phase::Primary {
            let detail = if s.phase == Phase::Promoting {
                "recovery has ended: this server is now a primary"
            } else if s.phase == Phase::Starting {
                "this server is a primary: nothing to watch"
            } else {
                "recovery has ended without pg_promoter: this server is now a primary"
            };
            event(EventKind::RoleChanged, detail.into());
            s.phase = Phase::Primary;
        }
        return Decision {
            state: s,
            actions,
            events,
        };
    }

    if !s.ever_reached && facts.walrcv_last_msg.is_some_and(|at| at >= s.started_at) {
        s.ever_reached = true;
        event(
            EventKind::FirstContact,
            "the WAL receiver heard from the primary".into(),
        );
    }

    match verdict {
        None => {}
        Some(Verdict::Alive) => {
            if !s.ever_reached {
                s.ever_reached = true;
                event(EventKind::FirstContact, "the check reached the primary".into());
            }
            if s.failures > 0 {
                let detail = format!("the primary answered again after {} failed check(s)", s.failures);
                event(EventKind::PrimaryBack, detail);
            } else if s.phase == Phase::Misconfigured {
                event(
                    EventKind::PrimaryBack,
                    "the primary accepts the check again".into(),
                );
            }
            s.failures = 0;
            s.first_failure_at = None;
            s.refused_by.clear();
            s.warned_at = None;
            s.phase = Phase::Watching;
        }
        Some(Verdict::Misconfigured(reason)) => {
            if s.phase != Phase::Misconfigured || s.last_error.as_deref() != Some(reason) {
                event(
                    EventKind::Misconfigured,
                    format!("the primary is alive but refuses the check: {reason}"),
                );
            }
            if s.warned_at.is_none_or(|at| now - at >= WARN_EVERY) || s.last_error.as_deref() != Some(reason)
            {
                actions.push(Action::Warn(reason.clone()));
                s.warned_at = Some(now);
            }
            s.failures = 0;
            s.first_failure_at = None;
            s.refused_by.clear();
            s.last_error = Some(reason.clone());
            s.phase = Phase::Misconfigured;
        }
        Some(Verdict::Down(reason)) => {
            s.failures += 1;
            let since = *s.first_failure_at.get_or_insert(now);
            let count = settings.keepalives_count.max(1) as u32;
            if s.failures == 1 || s.last_error.as_deref() != Some(reason) {
                event(
                    EventKind::CheckFailed,
                    format!("check {} of {count} failed: {reason}", s.failures),
                );
            }
            s.last_error = Some(reason.clone());
            if s.failures < count {
                s.phase = Phase::Suspecting;
            } else {
                let held = guards(&s, facts, settings);
                if held.is_empty() {
                    let detail = format!(
                        "primary down: {} consecutive failed checks over {} ms (last: {reason})",
                        s.failures,
                        to_ms(now - since)
                    );
                    event(EventKind::Decided, detail);
                    actions.push(Action::Promote);
                    s.phase = Phase::Promoting;
                    s.refused_by.clear();
                } else {
                    if held != s.refused_by {
                        event(
                            EventKind::Refused,
                            format!("not promoting: {}", reasons(&held, facts)),
                        );
                    }
                    s.refused_by = held;
                    s.phase = Phase::Refusing;
                }
            }
        }
    }
    Decision {
        state: s,
        actions,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MS;

    const SETTINGS: Settings = Settings {
        keep_alive_ms: 1000,
        keepalives_count: 3,
        enabled: true,
    };
    const T0: Micros = 1_000 * SEC;

    fn facts(now: Micros) -> Facts {
        Facts {
            now,
            in_recovery: true,
            paused: false,
            walrcv_last_msg: None,
        }
    }

    fn down() -> Verdict {
        Verdict::Down("Connection refused".into())
    }

    /// Replays a timeline of verdicts, one per second, and returns every decision.
    fn replay(start: State, steps: &[(Option<Verdict>, Facts)]) -> Vec<Decision> {
        let mut state = start;
        let mut out = Vec::new();
        for (verdict, facts) in steps {
            let d = decide(&state, verdict.as_ref(), facts, &SETTINGS);
            state = d.state.clone();
            out.push(d);
        }
        out
    }

    fn kinds(d: &Decision) -> Vec<EventKind> {
        d.events.iter().map(|e| e.kind).collect()
    }

    fn reached() -> State {
        let mut s = State::new(T0 - 10 * SEC, true);
        s.phase = Phase::Watching;
        s
    }

    /// A reached primary that has failed `n` checks, the last with `down()`'s reason.
    fn failing(n: u32) -> State {
        State {
            failures: n,
            phase: Phase::Suspecting,
            last_error: Some("Connection refused".into()),
            ..reached()
        }
    }

    #[test]
    fn promotes_after_exactly_count_consecutive_failures() {
        let steps: Vec<_> = (0..3).map(|i| (Some(down()), facts(T0 + i * SEC))).collect();
        let ds = replay(reached(), &steps);
        assert_eq!(ds[0].state.phase, Phase::Suspecting);
        assert_eq!(kinds(&ds[0]), vec![EventKind::CheckFailed]);
        assert_eq!(ds[1].state.phase, Phase::Suspecting);
        assert!(ds[1].events.is_empty(), "same reason: no new event");
        assert!(ds[..2].iter().all(|d| d.actions.is_empty()));
        assert_eq!(ds[2].state.phase, Phase::Promoting);
        assert_eq!(ds[2].actions, vec![Action::Promote]);
        assert_eq!(kinds(&ds[2]), vec![EventKind::Decided]);
        assert!(ds[2].events[0]
            .detail
            .contains("3 consecutive failed checks over 2000 ms"));
    }

    #[test]
    fn one_success_resets_the_count() {
        let ds = replay(
            reached(),
            &[
                (Some(down()), facts(T0)),
                (Some(down()), facts(T0 + SEC)),
                (Some(Verdict::Alive), facts(T0 + 2 * SEC)),
                (Some(down()), facts(T0 + 3 * SEC)),
                (Some(down()), facts(T0 + 4 * SEC)),
            ],
        );
        assert_eq!(kinds(&ds[2]), vec![EventKind::PrimaryBack]);
        assert_eq!(ds[2].state.failures, 0);
        assert_eq!(ds[4].state.failures, 2);
        assert!(ds.iter().all(|d| d.actions.is_empty()));
    }

    #[test]
    fn a_live_but_refusing_primary_never_counts_and_is_warned_about_at_a_bounded_rate() {
        let mis = Verdict::Misconfigured("FATAL:  password authentication failed".into());
        let mut steps = vec![(Some(down()), facts(T0)), (Some(down()), facts(T0 + SEC))];
        steps.extend((2..200).map(|i| (Some(mis.clone()), facts(T0 + i * SEC))));
        let ds = replay(reached(), &steps);
        assert!(ds.iter().all(|d| !d.actions.contains(&Action::Promote)));
        assert_eq!(ds[2].state.failures, 0);
        assert_eq!(ds[199].state.phase, Phase::Misconfigured);
        let warnings = ds
            .iter()
            .flat_map(|d| &d.actions)
            .filter(|a| matches!(a, Action::Warn(_)))
            .count();
        // 198 s of refusals: a warning at once, then one a minute.
        assert_eq!(warnings, 4);
        let misconfigured_events = ds
            .iter()
            .flat_map(kinds)
            .filter(|k| *k == EventKind::Misconfigured)
            .count();
        assert_eq!(misconfigured_events, 1);
    }

    #[test]
    fn every_guard_holds_the_promotion_back_and_says_why() {
        type Setup = fn(&mut State, &mut Facts, &mut Settings);
        let cases: [(Guard, Setup, &str); 4] = [
            (Guard::Disabled, |_, _, s| s.enabled = false, "enabled is off"),
            (Guard::Paused, |_, f, _| f.paused = true, "paused"),
            (
                Guard::WalReceiverAlive,
                |_, f, _| f.walrcv_last_msg = Some(f.now - 200 * MS),
                "200 ms ago",
            ),
            (
                Guard::NeverReached,
                |st, _, _| st.ever_reached = false,
                "not been reached",
            ),
        ];
        for (guard, setup, words) in cases {
            let mut state = failing(2);
            let mut f = facts(T0);
            let mut settings = SETTINGS;
            setup(&mut state, &mut f, &mut settings);
            let d = decide(&state, Some(&down()), &f, &settings);
            assert!(d.actions.is_empty(), "{guard:?}");
            assert_eq!(d.state.phase, Phase::Refusing, "{guard:?}");
            assert_eq!(d.state.refused_by, vec![guard]);
            assert_eq!(kinds(&d), vec![EventKind::Refused], "{guard:?}");
            assert!(
                d.events[0].detail.contains(words),
                "{guard:?}: {}",
                d.events[0].detail
            );
        }
    }

    #[test]
    fn a_refusal_is_recorded_when_its_reasons_change_and_promotion_follows_when_they_clear() {
        let state = failing(2);
        let paused = Facts {
            paused: true,
            ..facts(T0)
        };
        let ds = replay(
            state,
            &[
                (Some(down()), paused),
                (
                    Some(down()),
                    Facts {
                        now: T0 + SEC,
                        ..paused
                    },
                ),
                (
                    Some(down()),
                    Facts {
                        walrcv_last_msg: Some(T0 + SEC),
                        now: T0 + 2 * SEC,
                        ..paused
                    },
                ),
                (Some(down()), facts(T0 + 3 * SEC)),
            ],
        );
        assert_eq!(kinds(&ds[0]), vec![EventKind::Refused]);
        assert!(ds[1].events.is_empty());
        assert_eq!(kinds(&ds[2]), vec![EventKind::Refused]);
        assert_eq!(
            ds[2].state.refused_by,
            vec![Guard::Paused, Guard::WalReceiverAlive]
        );
        assert_eq!(ds[3].actions, vec![Action::Promote]);
    }

    #[test]
    fn the_wal_receiver_counts_as_alive_only_within_the_window() {
        let state = failing(2);
        // Window: 1 s x 3 = 3 s.
        for (age, held) in [(0, true), (2_999 * MS, true), (3 * SEC, false), (60 * SEC, false)] {
            let f = Facts {
                walrcv_last_msg: Some(T0 - age),
                ..facts(T0)
            };
            let g = guards(&state, &f, &SETTINGS);
            assert_eq!(g.contains(&Guard::WalReceiverAlive), held, "age {age}");
        }
    }

    #[test]
    fn first_contact_comes_from_the_check_or_the_wal_receiver_since_start() {
        let fresh = State::new(T0, false);
        let d = decide(&fresh, Some(&Verdict::Alive), &facts(T0 + SEC), &SETTINGS);
        assert!(d.state.ever_reached);
        assert_eq!(kinds(&d), vec![EventKind::FirstContact]);

        // A WAL message from before the worker started proves nothing about the present.
        let old = Facts {
            walrcv_last_msg: Some(T0 - SEC),
            ..facts(T0 + SEC)
        };
        assert!(!decide(&fresh, None, &old, &SETTINGS).state.ever_reached);
        let new = Facts {
            walrcv_last_msg: Some(T0 + SEC),
            ..facts(T0 + SEC)
        };
        let d = decide(&fresh, None, &new, &SETTINGS);
        assert!(d.state.ever_reached);
        assert_eq!(kinds(&d), vec![EventKind::FirstContact]);
    }

    #[test]
    fn a_standby_that_never_reached_its_primary_never_promotes() {
        let steps: Vec<_> = (0..100).map(|i| (Some(down()), facts(T0 + i * SEC))).collect();
        let ds = replay(State::new(T0, false), &steps);
        assert!(ds.iter().all(|d| d.actions.is_empty()));
        let refusals: Vec<_> = ds
            .iter()
            .flat_map(|d| &d.events)
            .filter(|e| e.kind == EventKind::Refused)
            .collect();
        assert_eq!(refusals.len(), 1);
        assert!(refusals[0].detail.contains("not been reached"));
    }

    #[test]
    fn end_of_recovery_makes_a_primary_whoever_caused_it() {
        let not_rec = Facts {
            in_recovery: false,
            ..facts(T0)
        };
        for (phase, words) in [
            (Phase::Starting, "nothing to watch"),
            (Phase::Promoting, "now a primary"),
            (Phase::Watching, "without pg_promoter"),
        ] {
            let mut s = reached();
            s.phase = phase;
            let d = decide(&s, Some(&down()), &not_rec, &SETTINGS);
            assert_eq!(d.state.phase, Phase::Primary);
            assert!(d.actions.is_empty());
            assert_eq!(kinds(&d), vec![EventKind::RoleChanged]);
            assert!(d.events[0].detail.contains(words));
            let again = decide(&d.state, None, &not_rec, &SETTINGS);
            assert!(again.events.is_empty());
        }
    }

    #[test]
    fn a_new_failure_reason_is_recorded() {
        let ds = replay(
            reached(),
            &[
                (Some(down()), facts(T0)),
                (
                    Some(Verdict::Down("timed out while connecting".into())),
                    facts(T0 + SEC),
                ),
            ],
        );
        assert_eq!(kinds(&ds[1]), vec![EventKind::CheckFailed]);
        assert!(ds[1].events[0]
            .detail
            .starts_with("check 2 of 3 failed: timed out"));
    }

    #[test]
    fn manual_promotion_guards() {
        assert_eq!(manual_guards(false, true, true), vec![]);
        assert_eq!(manual_guards(false, true, false), vec![Guard::NeverReached]);
        assert_eq!(manual_guards(true, true, false), vec![]);
        assert_eq!(manual_guards(true, false, true), vec![Guard::NotInRecovery]);
        assert_eq!(
            manual_guards(false, false, false),
            vec![Guard::NotInRecovery, Guard::NeverReached]
        );
    }

    #[test]
    fn a_count_of_one_promotes_on_the_first_failure() {
        let settings = Settings {
            keepalives_count: 1,
            ..SETTINGS
        };
        let d = decide(&reached(), Some(&down()), &facts(T0), &settings);
        assert_eq!(d.actions, vec![Action::Promote]);
    }
}
