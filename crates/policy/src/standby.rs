//! The standby's state machine: given the last check's verdict and the local facts, what the
//! worker's state becomes, what it must do, and what it records; then how a promotion went.

use std::time::Duration;

use crate::classify::Verdict;
use crate::event::{Event, EventKind};
use crate::machine::{Action, Transition};
use crate::schedule::silence_window;
use crate::settings::Settings;
use crate::time::{micros, to_ms, Micros, SEC};

/// What a standby decision sees: this server's facts when the check ended, and what the worker
/// knows of the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub now: Micros,
    pub in_recovery: bool,
    pub paused: bool,
    /// When the WAL receiver last heard from the primary (WAL or keepalive), if ever.
    pub walrcv_last_msg: Option<Micros>,
    /// The primary's WAL position at the last successful check, and when it was seen.
    pub primary_lsn: Option<u64>,
    pub primary_lsn_at: Option<Micros>,
    /// How far this standby has WAL, received or replayed (a standby fed by
    /// `restore_command` has no WAL receiver position).
    pub receive_lsn: Option<u64>,
    /// What the witnesses said this round, when they were asked.
    pub votes: Option<Votes>,
    /// `pg_promoter_promote()` promoted this server (recovery did not end behind our back).
    pub promoted_by_request: bool,
    /// A promotion is being carried out, by the worker or by `pg_promoter_promote()`.
    pub promotion_under_way: bool,
    /// The postmaster was asked to end recovery (by either) and the post-promote command has
    /// not run yet: it is owed for when recovery ends, and no new promotion starts meanwhile.
    pub promotion_pending: bool,
    /// With leadership, how long an election lost a moment ago still holds standing back.
    pub stand_wait: Option<Micros>,
}

/// The witnesses' answers: whether each could reach the primary itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Votes {
    /// Witnesses that answered and could not reach the primary either.
    pub gone: usize,
    /// Witnesses that answered and still reach the primary.
    pub alive: usize,
    /// Witnesses this standby could not ask.
    pub unreachable: usize,
}

/// WAL the primary had (at the last check that reached it) and this standby has not received:
/// what a promotion now would lose, at least.
pub fn estimated_loss(primary_lsn: Option<u64>, receive_lsn: Option<u64>) -> Option<u64> {
    Some(primary_lsn?.saturating_sub(receive_lsn.unwrap_or(0)))
}

/// With witnesses, the members are the primary, this standby and the witnesses; the primary is
/// gone only when a strict majority of them says so (this standby and the witnesses that could
/// not reach it either).
pub fn has_quorum(witnesses: usize, votes: &Votes) -> bool {
    let members = 2 + witnesses;
    2 * (1 + votes.gone) > members
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
    /// Standing for election (leadership): asking the members for their votes, then the lease.
    Electing,
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
            Phase::Electing => "electing",
            Phase::Promoting => "promoting",
            Phase::Primary => "primary",
        }
    }
}

/// What can hold a promotion back. Automatic promotion needs none of them to hold; a manual
/// `pg_promoter_promote()` checks only `NotInRecovery` and (without force) `NeverReached`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guard {
    /// Another promotion is being carried out (the worker's, or a request's).
    PromotionUnderWay,
    Disabled,
    Paused,
    NotInRecovery,
    WalReceiverAlive,
    NeverReached,
    /// The checked server is a standby: this one cascades from it, and the primary may live.
    UpstreamIsStandby,
    TooMuchLag,
    NoQuorum,
    /// An election was lost a moment ago: another candidate goes first.
    StandLater,
    /// This standby went past the point where the primary's timeline forked off its own.
    NeedsRewind,
    /// The primary is on a newer timeline whose history could not be read: whether this
    /// standby went past its fork is not known.
    RewindUnknown,
    /// `pg_promoter.priority` is 0: it never promotes on its own (Patroni's `nofailover`).
    NeverStands,
    /// The primary was reached, but its WAL position is not known: the data-loss bound
    /// cannot be checked.
    LagUnknown,
    /// A promotion was requested and recovery has not ended yet.
    PromotionPending,
}

impl Guard {
    /// Why the guard refuses, in a sentence fragment for events and errors.
    pub fn reason(self, facts: &Facts, settings: &Settings) -> String {
        match self {
            Guard::PromotionUnderWay => "a promotion of this server is already under way".into(),
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
            Guard::UpstreamIsStandby => "the checked server was a standby, not the primary: this standby cascades \
                                         from it, and the primary may still live (promote by hand if it is gone)"
                .into(),
            Guard::TooMuchLag => format!(
                "estimated data loss {} bytes exceeds pg_promoter.max_lag_on_failover ({} bytes)",
                estimated_loss(facts.primary_lsn, facts.receive_lsn).unwrap_or(0),
                settings.max_lag_bytes.unwrap_or(0)
            ),
            Guard::NeverStands => "pg_promoter.priority is 0: this standby never promotes on its own".into(),
            Guard::PromotionPending => "a promotion was requested, and recovery has not ended yet: it is not \
                                        requested again (nor is pre_promote_command run again)"
                .into(),
            Guard::LagUnknown => "the primary's WAL position is not known, so pg_promoter.max_lag_on_failover \
                                  cannot be checked"
                .into(),
            Guard::NeedsRewind => "this standby must be rewound: its WAL went past the primary's timeline".into(),
            Guard::RewindUnknown => "the primary is on a newer timeline whose history could not be read: whether \
                                     this standby must be rewound is not known"
                .into(),
            Guard::StandLater => format!(
                "an election was lost: standing again in {} ms",
                to_ms(facts.stand_wait.unwrap_or(0))
            ),
            Guard::NoQuorum => {
                let votes = facts.votes.unwrap_or(Votes {
                    unreachable: settings.witnesses.len(),
                    ..Votes::default()
                });
                format!(
                    "no majority says the primary is gone: {} of {} members (witnesses: {} cannot reach it, \
                     {} still reach it, {} unreachable)",
                    1 + votes.gone,
                    2 + settings.witnesses.len(),
                    votes.gone,
                    votes.alive,
                    votes.unreachable
                )
            }
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
    /// Since when the primary has answered the check only with refusals.
    pub refusing_since: Option<Micros>,
    /// After a failed attempt (the pre-promote command refused), no new one before this.
    pub retry_at: Option<Micros>,
    /// The primary's WAL position at the last check that reached it, and when (both outlive a
    /// worker restart).
    pub primary_lsn: Option<u64>,
    pub primary_lsn_at: Option<Micros>,
    /// The promotion under way was asked for by `pg_promoter_promote()`.
    pub manual: bool,
    /// The last answer of the checked server said it is in recovery: it is a standby this one
    /// cascades from, not the primary.
    pub upstream_is_standby: bool,
    /// The last answer of the checked server said it is a primary (with leadership, one that is
    /// not the leader is an old primary: a standby streaming from it follows the leader).
    pub upstream_is_primary: bool,
    /// The last answer of the checked server said it is a primary fenced by pg_promoter (as the
    /// flags above, it holds through failed checks): hearing its WAL proves it alive, not that
    /// it takes writes.
    pub upstream_fenced: bool,
    /// Why this standby cannot follow its primary's timeline, when it cannot.
    pub needs_rewind: Option<String>,
    /// Why that is not known while the primary is on a newer timeline (its history unread).
    pub rewind_unknown: Option<String>,
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
            refusing_since: None,
            retry_at: None,
            primary_lsn: None,
            primary_lsn_at: None,
            manual: false,
            upstream_is_standby: false,
            upstream_is_primary: false,
            upstream_fenced: false,
            needs_rewind: None,
            rewind_unknown: None,
        }
    }
}

pub type Decision = Transition<State>;

/// How often a primary that keeps refusing the check is warned about.
pub const WARN_EVERY: Micros = 60 * SEC;

/// The guards that hold an automatic promotion back now, in a fixed order.
pub fn guards(state: &State, facts: &Facts, settings: &Settings) -> Vec<Guard> {
    let window = silence_window(settings.keep_alive, settings.keepalives_count);
    // With leadership, a fenced primary that still streams is no reason to wait: the election
    // keeps two primaries apart (no majority votes while the old leader's lease holds, and a
    // vote refuses its renewal). Without leadership its fence may lift at any moment, so a
    // primary that streams is alive.
    let fenced_upstream = state.upstream_fenced && crate::leading::active(settings);
    let walrcv_alive = !fenced_upstream && facts.walrcv_last_msg.is_some_and(|at| facts.now - at < window);
    [
        (facts.promotion_under_way, Guard::PromotionUnderWay),
        (facts.promotion_pending, Guard::PromotionPending),
        (!settings.enabled, Guard::Disabled),
        (settings.priority == 0, Guard::NeverStands),
        (facts.paused, Guard::Paused),
        (!facts.in_recovery, Guard::NotInRecovery),
        (walrcv_alive, Guard::WalReceiverAlive),
        (!state.ever_reached, Guard::NeverReached),
        (state.upstream_is_standby, Guard::UpstreamIsStandby),
        (too_much_lag(facts, settings), Guard::TooMuchLag),
        (
            settings.max_lag_bytes.is_some() && state.ever_reached && facts.primary_lsn.is_none(),
            Guard::LagUnknown,
        ),
        (facts.stand_wait.is_some(), Guard::StandLater),
        (state.needs_rewind.is_some(), Guard::NeedsRewind),
        (state.rewind_unknown.is_some(), Guard::RewindUnknown),
        (
            !settings.witnesses.is_empty()
                && !crate::leading::active(settings)
                && !facts
                    .votes
                    .is_some_and(|v| has_quorum(settings.witnesses.len(), &v)),
            Guard::NoQuorum,
        ),
    ]
    .into_iter()
    .filter_map(|(holds, guard)| holds.then_some(guard))
    .collect()
}

fn too_much_lag(facts: &Facts, settings: &Settings) -> bool {
    match (
        settings.max_lag_bytes,
        estimated_loss(facts.primary_lsn, facts.receive_lsn),
    ) {
        (Some(max), Some(loss)) => loss > max,
        _ => false,
    }
}

/// Whether the shell must ask the witnesses before deciding on this verdict: only when it could
/// complete the count, so a healthy cluster costs the witnesses nothing.
pub fn needs_votes(state: &State, verdict: &Verdict, settings: &Settings) -> bool {
    !settings.witnesses.is_empty()
        && !crate::leading::active(settings)
        && matches!(verdict, Verdict::Down(_))
        && state.failures + 1 >= settings.keepalives_count.max(1)
}

/// The guards a manual `pg_promoter_promote(force)` respects: recovery always; without force,
/// also a primary never reached and the data-loss bound.
pub fn manual_guards(force: bool, facts: &Facts, settings: &Settings, ever_reached: bool) -> Vec<Guard> {
    let mut held = Vec::new();
    if !facts.in_recovery {
        held.push(Guard::NotInRecovery);
    }
    if !force && facts.promotion_pending {
        held.push(Guard::PromotionPending);
    }
    if !force && !ever_reached {
        held.push(Guard::NeverReached);
    }
    if !force && too_much_lag(facts, settings) {
        held.push(Guard::TooMuchLag);
    }
    held
}

/// Joins guard reasons into one detail line.
pub fn reasons(held: &[Guard], facts: &Facts, settings: &Settings) -> String {
    held.iter()
        .map(|g| g.reason(facts, settings))
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
        // Owed by a promotion whose wait for recovery ended first, by the worker's or a
        // request's: at every step until the shell has taken it, which it does once.
        let owed = facts.promotion_pending && !facts.promotion_under_way;
        if s.phase != Phase::Primary {
            let detail = if s.phase == Phase::Promoting {
                "recovery has ended: this server is now a primary"
            } else if s.phase == Phase::Starting {
                "this server is a primary: nothing to watch"
            } else if facts.promoted_by_request {
                "recovery has ended (pg_promoter_promote()): this server is now a primary"
            } else {
                "recovery has ended without pg_promoter: this server is now a primary"
            };
            let detail = if owed {
                format!("{detail}, after the wait for it: post_promote_command runs now")
            } else {
                detail.to_string()
            };
            event(EventKind::RoleChanged, detail);
            s.phase = Phase::Primary;
        }
        if owed {
            actions.push(Action::PostPromoteCommand);
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
            s.refusing_since = None;
            s.phase = Phase::Watching;
        }
        Some(Verdict::Misconfigured(reason)) => {
            if s.phase != Phase::Misconfigured || s.last_error.as_deref() != Some(reason) {
                event(
                    EventKind::Misconfigured,
                    format!("the primary is alive but refuses the check: {reason}"),
                );
            }
            // A refusal is a sign of life, but one that may last (no free connection slot on a
            // hung primary): say for how long.
            let since = *s.refusing_since.get_or_insert(now);
            if s.warned_at.is_none_or(|at| now - at >= WARN_EVERY) || s.last_error.as_deref() != Some(reason)
            {
                actions.push(Action::Warn(format!(
                    "{reason} (it has answered the check only with refusals for {} s)",
                    (now - since) / SEC
                )));
                s.warned_at = Some(now);
            }
            s.failures = 0;
            s.first_failure_at = None;
            s.refused_by.clear();
            s.last_error = Some(reason.clone());
            s.phase = Phase::Misconfigured;
        }
        Some(Verdict::Unknown(reason)) => {
            // Not counted either way: the failed checks so far stay as they are.
            if s.last_error.as_deref() != Some(reason) {
                event(
                    EventKind::CheckUnknown,
                    format!(
                        "the check could not tell (not counted; {} failed check(s) stand): {reason}",
                        s.failures
                    ),
                );
            }
            s.last_error = Some(reason.clone());
        }
        Some(Verdict::Down(reason)) => {
            s.refusing_since = None;
            s.failures += 1;
            let since = *s.first_failure_at.get_or_insert(now);
            let count = settings.keepalives_count.max(1);
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
                if held.is_empty() && s.retry_at.is_some_and(|at| now < at) {
                    // A failed attempt was recorded with its reason; wait before the next.
                    s.phase = Phase::Refusing;
                } else if held.is_empty() {
                    let mut detail = format!(
                        "primary down: {} consecutive failed checks over {} ms (last: {reason})",
                        s.failures,
                        to_ms(now - since)
                    );
                    if let Some(loss) = estimated_loss(facts.primary_lsn, facts.receive_lsn) {
                        detail.push_str(&format!("; estimated data loss {loss} bytes"));
                        if let Some(at) = facts.primary_lsn_at {
                            detail.push_str(&format!(
                                " (the primary's position as of {} ms before)",
                                to_ms(now - at)
                            ));
                        }
                    }
                    if let Some(votes) = facts.votes.filter(|_| !settings.witnesses.is_empty()) {
                        let members = 2 + settings.witnesses.len();
                        detail.push_str(&format!("; {} of {members} members agree", 1 + votes.gone));
                    }
                    event(EventKind::Decided, detail);
                    actions.push(Action::Promote);
                    s.phase = Phase::Promoting;
                    s.manual = false;
                    s.retry_at = None;
                    s.refused_by.clear();
                } else {
                    if held != s.refused_by {
                        event(
                            EventKind::Refused,
                            format!("not promoting: {}", reasons(&held, facts, settings)),
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

/// How each step of the promotion sequence went, as the shell carried it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// The pre-promote command succeeded, or there is none: go on.
    Ready,
    /// The pre-promote command failed or timed out (its own event says how): nothing was done.
    PreCommandFailed,
    /// The promotion signal could not be sent.
    SignalFailed(String),
    /// The postmaster was signalled, `took` after the decision.
    Requested { took: Duration },
    /// Recovery ended `waited` after the request, `total` after the decision, onto `timeline`
    /// (the one new WAL is written on, when read).
    Writable {
        waited: Duration,
        total: Duration,
        timeline: Option<u32>,
    },
    /// Recovery had not ended `waited` after the request.
    NotWritable { waited: Duration },
}

/// The next state after a step of the promotion sequence, and what to record. `timeline`: the
/// timeline claimed in the election won for this promotion, which the signal must land on.
pub fn promotion(
    state: &State,
    step: &Promotion,
    now: Micros,
    settings: &Settings,
    timeline: Option<u32>,
) -> Decision {
    let mut s = state.clone();
    let mut actions = Vec::new();
    let (kind, detail) = match step {
        Promotion::Ready => {
            actions.push(Action::SignalPromotion { timeline });
            return Decision {
                state: s,
                actions,
                events: Vec::new(),
            };
        }
        Promotion::PreCommandFailed => {
            s.phase = Phase::Refusing;
            if s.manual {
                (
                    EventKind::PromoteFailed,
                    "pre_promote_command failed: promotion aborted".to_string(),
                )
            } else {
                // Try again once the command has had the time to recover, not at every check.
                let pause = settings.command_timeout.max(settings.keep_alive);
                s.retry_at = Some(now.saturating_add(micros(pause)));
                (
                    EventKind::PromoteFailed,
                    format!(
                        "pre_promote_command failed: promotion aborted, next attempt in {} ms",
                        pause.as_millis()
                    ),
                )
            }
        }
        Promotion::SignalFailed(why) => {
            s.phase = Phase::Refusing;
            (EventKind::PromoteFailed, why.clone())
        }
        Promotion::Requested { took } => {
            actions.push(Action::AwaitWritable);
            (
                EventKind::PromoteRequested,
                format!("promote signal sent to the postmaster in {} ms", took.as_millis()),
            )
        }
        Promotion::Writable {
            waited,
            total,
            timeline: landed,
        } => {
            actions.push(Action::PostPromoteCommand);
            let from = if s.manual { "request" } else { "decision" };
            let onto = match (landed, timeline) {
                // Only a history file that appeared after the placeholders were checked, or one
                // restore_command found in the archive, makes PostgreSQL go past the claim.
                (Some(l), Some(c)) if *l > c => format!(
                    ", onto timeline {l}, not timeline {c} claimed in the election (PostgreSQL found a \
                     history file of timeline {c}, in pg_wal or the archive)"
                ),
                // Below the claim: a placeholder went missing, and the number may be another
                // member's.
                (Some(l), Some(c)) if *l < c => format!(
                    ", onto timeline {l}, BELOW timeline {c} claimed in the election: a placeholder \
                     history file was missing, and timeline {l} may be another member's too; check \
                     the other members' timelines before rejoining any of them"
                ),
                (Some(l), _) => format!(", onto timeline {l}"),
                (None, _) => String::new(),
            };
            let promoted = format!(
                "recovery ended {} ms after the request; {from} to writable {} ms{onto}",
                waited.as_millis(),
                total.as_millis()
            );
            let mut events = vec![Event::new(now, EventKind::Promoted, promoted)];
            // The role changes now, before the post-promote command runs. A request's own
            // state is not the worker's: the worker records the change itself.
            if !s.manual {
                let detail = "recovery has ended: this server is now a primary";
                events.push(Event::new(now, EventKind::RoleChanged, detail));
            }
            s.phase = Phase::Primary;
            s.manual = false;
            return Decision {
                state: s,
                actions,
                events,
            };
        }
        Promotion::NotWritable { waited } => {
            s.phase = Phase::Refusing;
            (
                EventKind::PromoteFailed,
                format!(
                    "recovery had not ended {} s after the request: no new request meanwhile, and \
                     post_promote_command runs when it ends",
                    waited.as_secs()
                ),
            )
        }
    };
    if s.phase != Phase::Promoting {
        s.manual = false;
    }
    Decision {
        state: s,
        actions,
        events: vec![Event::new(now, kind, detail)],
    }
}

/// `pg_promoter_promote(force)`: the same sequence as an automatic promotion, or a refusal that
/// names every guard that holds (see [`manual_guards`]), for the requester to raise.
pub fn manual(state: &State, force: bool, facts: &Facts, settings: &Settings) -> Decision {
    let mut s = state.clone();
    let mut held = manual_guards(force, facts, settings, s.ever_reached);
    if facts.promotion_under_way {
        held.insert(0, Guard::PromotionUnderWay);
    }
    let (event, actions) = if held.is_empty() {
        s.phase = Phase::Promoting;
        s.manual = true;
        let detail = if force {
            "manual promotion requested (force)"
        } else {
            "manual promotion requested"
        };
        (
            Event::new(facts.now, EventKind::Decided, detail),
            vec![Action::Promote],
        )
    } else {
        let why = reasons(&held, facts, settings);
        let detail = format!("manual promotion refused: {why}");
        (
            Event::new(facts.now, EventKind::Refused, detail),
            vec![Action::Reject(why)],
        )
    };
    Decision {
        state: s,
        actions,
        events: vec![event],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MS;

    use crate::members::Member;

    const SETTINGS: Settings = Settings {
        primary_conninfo: String::new(),
        keep_alive: Duration::from_secs(1),
        keepalives_count: 3,
        check_timeout: Duration::from_secs(1),
        enabled: true,
        max_lag_bytes: Some(16 << 20),
        peers: Vec::new(),
        witnesses: Vec::new(),
        fence_mode: crate::settings::FenceMode::RefuseConnections,
        startup_hold_timeout: Duration::from_secs(10),
        pre_promote_command: String::new(),
        post_promote_command: String::new(),
        command_timeout: Duration::from_secs(30),
        priority: 1,
    };

    fn one_witness() -> Settings {
        Settings {
            witnesses: vec![Member {
                name: "w1".into(),
                conninfo: "host=w1".into(),
            }],
            ..SETTINGS
        }
    }
    const T0: Micros = 1_000 * SEC;

    /// A standby that has every WAL record the primary had at the last check.
    fn facts(now: Micros) -> Facts {
        Facts {
            now,
            in_recovery: true,
            primary_lsn: Some(0x3000),
            receive_lsn: Some(0x3000),
            ..Facts::default()
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
        // 198 s of refusals: a warning at once, then one a minute, each saying for how long.
        assert_eq!(warnings, 4);
        let warned: Vec<String> = ds
            .iter()
            .flat_map(|d| &d.actions)
            .filter_map(|a| match a {
                Action::Warn(w) => Some(w.clone()),
                _ => None,
            })
            .collect();
        assert!(
            warned[3].contains("answered the check only with refusals for 180 s"),
            "the last warning says how long: {warned:?}"
        );
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
        let cases: [(Guard, Setup, &str); 7] = [
            (
                Guard::LagUnknown,
                |_, f, _| f.primary_lsn = None,
                "position is not known",
            ),
            (Guard::Disabled, |_, _, s| s.enabled = false, "enabled is off"),
            (Guard::NeverStands, |_, _, s| s.priority = 0, "priority is 0"),
            (
                Guard::NeedsRewind,
                |st, _, _| st.needs_rewind = Some("past the fork".into()),
                "must be rewound",
            ),
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
    fn recovery_that_ends_after_the_wait_runs_the_post_promote_command_once_and_is_not_requested_again() {
        let promoting = State {
            phase: Phase::Promoting,
            ..failing(3)
        };
        let requested = promotion(
            &promoting,
            &Promotion::Requested { took: Duration::ZERO },
            T0,
            &SETTINGS,
            None,
        );
        let late = promotion(
            &requested.state,
            &Promotion::NotWritable {
                waited: Duration::from_secs(60),
            },
            T0,
            &SETTINGS,
            None,
        );
        assert!(late.events[0]
            .detail
            .contains("post_promote_command runs when it ends"));
        // Still in recovery (the shell keeps the request pending), primary still down: no new
        // promotion, its pre-command included.
        let pending = Facts {
            promotion_pending: true,
            ..facts(T0 + SEC)
        };
        let again = decide(&late.state, Some(&down()), &pending, &SETTINGS);
        assert!(again.actions.is_empty(), "{:?}", again.actions);
        assert!(again.state.refused_by.contains(&Guard::PromotionPending));
        // Nor by hand, unless forced.
        let refused = manual(&again.state, false, &pending, &SETTINGS);
        assert!(
            matches!(&refused.actions[..], [Action::Reject(why)] if why.contains("recovery has not ended"))
        );
        assert_eq!(
            manual(&again.state, true, &pending, &SETTINGS).actions,
            vec![Action::Promote]
        );
        // Recovery ends: the post-promote command, until the shell has taken it (once).
        let primary = Facts {
            in_recovery: false,
            promotion_pending: true,
            ..facts(T0 + 2 * SEC)
        };
        let ended = decide(&again.state, None, &primary, &SETTINGS);
        assert_eq!(ended.actions, vec![Action::PostPromoteCommand]);
        assert!(ended.events[0].detail.contains("post_promote_command runs now"));
        let taken = Facts {
            promotion_pending: false,
            ..primary
        };
        assert!(decide(&ended.state, None, &taken, &SETTINGS).actions.is_empty());
        // A request's wait that ended first, and recovery ending while the request still holds
        // the sequence: nothing until it lets go, then the command, with no second role change.
        let by_request = Facts {
            promoted_by_request: true,
            promotion_under_way: true,
            ..primary
        };
        let changed = decide(&again.state, None, &by_request, &SETTINGS);
        assert!(changed.actions.is_empty());
        assert_eq!(kinds(&changed), vec![EventKind::RoleChanged]);
        let released = Facts {
            promotion_under_way: false,
            ..by_request
        };
        let owed = decide(&changed.state, None, &released, &SETTINGS);
        assert_eq!(owed.actions, vec![Action::PostPromoteCommand]);
        assert!(owed.events.is_empty());
        // In time: the command runs with the promotion, not again at the role change.
        let writable = promotion(
            &requested.state,
            &Promotion::Writable {
                waited: Duration::ZERO,
                total: Duration::ZERO,
                timeline: None,
            },
            T0,
            &SETTINGS,
            None,
        );
        assert_eq!(writable.actions, vec![Action::PostPromoteCommand]);
        assert!(decide(&writable.state, None, &taken, &SETTINGS)
            .actions
            .is_empty());
    }

    #[test]
    fn manual_promotion_guards() {
        let standby = facts(T0);
        let primary = Facts {
            in_recovery: false,
            ..standby
        };
        let lagging = Facts {
            primary_lsn: Some(100 << 20),
            receive_lsn: Some(1 << 20),
            ..standby
        };
        let g = |force, f: &Facts, reached| manual_guards(force, f, &SETTINGS, reached);
        assert_eq!(g(false, &standby, true), vec![]);
        assert_eq!(g(false, &standby, false), vec![Guard::NeverReached]);
        assert_eq!(g(true, &standby, false), vec![]);
        assert_eq!(g(true, &primary, true), vec![Guard::NotInRecovery]);
        assert_eq!(
            g(false, &primary, false),
            vec![Guard::NotInRecovery, Guard::NeverReached]
        );
        assert_eq!(g(false, &lagging, true), vec![Guard::TooMuchLag]);
        assert_eq!(g(true, &lagging, true), vec![]);
    }

    #[test]
    fn lag_above_the_bound_refuses_and_names_the_figure() {
        let limit = 16u64 << 20;
        for (received_behind, refused) in [(0, false), (limit, false), (limit + 1, true), (1 << 30, true)] {
            let f = Facts {
                primary_lsn: Some((2 << 30) + received_behind),
                receive_lsn: Some(2 << 30),
                ..facts(T0)
            };
            let d = decide(&failing(2), Some(&down()), &f, &SETTINGS);
            assert_eq!(d.actions.is_empty(), refused, "{received_behind}");
            let detail = &d.events.last().unwrap().detail;
            if refused {
                assert!(
                    detail.contains(&format!("estimated data loss {received_behind} bytes exceeds")),
                    "{detail}"
                );
                assert!(detail.contains(&format!("({limit} bytes)")), "{detail}");
            } else {
                assert!(
                    detail.contains(&format!("estimated data loss {received_behind} bytes")),
                    "{detail}"
                );
            }
        }
        // Off (-1): any lag promotes.
        let off = Settings {
            max_lag_bytes: None,
            ..SETTINGS
        };
        let f = Facts {
            primary_lsn: Some(1 << 40),
            receive_lsn: Some(0),
            ..facts(T0)
        };
        assert_eq!(
            decide(&failing(2), Some(&down()), &f, &off).actions,
            vec![Action::Promote]
        );
        // Never having seen the primary's position, there is no estimate to refuse on.
        assert_eq!(estimated_loss(None, Some(5)), None);
        assert_eq!(estimated_loss(Some(5), None), Some(5));
        assert_eq!(estimated_loss(Some(5), Some(9)), Some(0));
    }

    #[test]
    fn with_witnesses_a_strict_majority_must_say_the_primary_is_gone() {
        let v = |gone, alive, unreachable| Votes {
            gone,
            alive,
            unreachable,
        };
        // One witness: 3 members, this standby plus the witness make 2.
        assert!(has_quorum(1, &v(1, 0, 0)));
        assert!(!has_quorum(1, &v(0, 1, 0)));
        assert!(!has_quorum(1, &v(0, 0, 1)));
        // Two witnesses: 4 members, 3 needed.
        assert!(has_quorum(2, &v(2, 0, 0)));
        assert!(!has_quorum(2, &v(1, 0, 1)));
        // Three witnesses: 5 members, 3 needed.
        assert!(has_quorum(3, &v(2, 1, 0)));
        assert!(!has_quorum(3, &v(1, 1, 1)));

        let one = one_witness();
        let ask = |votes| Facts { votes, ..facts(T0) };
        let d = decide(&failing(2), Some(&down()), &ask(Some(v(1, 0, 0))), &one);
        assert_eq!(d.actions, vec![Action::Promote]);
        assert!(
            d.events[0].detail.contains("2 of 3 members agree"),
            "{}",
            d.events[0].detail
        );
        for (votes, words) in [
            (Some(v(0, 1, 0)), "1 still reach it"),
            (Some(v(0, 0, 1)), "1 unreachable"),
            (None, "1 unreachable"),
        ] {
            let d = decide(&failing(2), Some(&down()), &ask(votes), &one);
            assert!(d.actions.is_empty());
            assert_eq!(d.state.refused_by, vec![Guard::NoQuorum]);
            assert!(d.events[0].detail.contains(words), "{}", d.events[0].detail);
        }
    }

    #[test]
    fn after_a_failed_attempt_the_next_waits_for_its_time() {
        let waiting = State {
            retry_at: Some(T0 + 5 * SEC),
            ..failing(5)
        };
        let d = decide(&waiting, Some(&down()), &facts(T0 + SEC), &SETTINGS);
        assert!(d.actions.is_empty());
        assert!(d.events.is_empty(), "the failure was recorded already");
        assert_eq!(d.state.phase, Phase::Refusing);
        let d = decide(&waiting, Some(&down()), &facts(T0 + 5 * SEC), &SETTINGS);
        assert_eq!(d.actions, vec![Action::Promote]);
        assert_eq!(d.state.retry_at, None);
    }

    #[test]
    fn witnesses_are_asked_only_when_the_count_could_complete() {
        let one = one_witness();
        assert!(!needs_votes(&reached(), &down(), &one));
        assert!(needs_votes(&failing(2), &down(), &one));
        assert!(needs_votes(&failing(7), &down(), &one));
        assert!(!needs_votes(&failing(2), &Verdict::Alive, &one));
        assert!(!needs_votes(&failing(2), &down(), &SETTINGS));
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
