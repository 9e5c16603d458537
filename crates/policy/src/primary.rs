//! The primary's state machine: fencing a primary that may no longer be the primary.
//!
//! A primary with peers or witnesses checks them at every tick. It fences itself:
//! - for a while, when it reaches no strict majority of the members (itself, its peers and the
//!   witnesses; never with two nodes and no witness, where no majority survives the loss of
//!   either) for `keepalives_count - 2` rounds in a row (at least one), which is at least one
//!   `keep_alive` before any standby with the same settings can have decided, whatever the phase
//!   of either schedule: that standby needs `keepalives_count` failed checks. It unfences when a
//!   majority answers again and no peer is a newer primary;
//! - for good, when a peer answers as a primary on a newer timeline: this server was failed
//!   over from, and must be rejoined with pg_rewind or a new base backup.

use crate::classify::{classify, Outcome, Verdict};
use crate::event::{Event, EventKind};
use crate::machine::{Action, Transition};
use crate::time::Micros;

/// How one member answered a round's check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    /// A peer (a PostgreSQL node of this cluster) rather than a witness.
    pub peer: bool,
    pub outcome: Outcome,
}

/// What a round found out about one other member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub name: String,
    /// A peer (a PostgreSQL node of this cluster) rather than a witness.
    pub peer: bool,
    /// It answered at all (even to refuse us).
    pub answered: bool,
    /// It answered as a primary, on this timeline.
    pub primary_timeline: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    Open,
    /// No majority reachable; lifted when one is.
    Isolated,
    /// A newer primary exists; never lifted by the worker.
    Superseded {
        by: String,
        timeline: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub fence: Fence,
    /// Consecutive rounds without a majority.
    pub short_rounds: u32,
    /// This server's own entry in the member list, once a round recognised it: a later round
    /// whose check of itself fails (a slow fork under load) must not count it as a member lost.
    pub me: Option<String>,
}

impl State {
    pub fn open() -> State {
        State {
            fence: Fence::Open,
            short_rounds: 0,
            me: None,
        }
    }
}

/// Rounds without a majority after which an isolated primary fences itself.
pub fn rounds_before_fencing(keepalives_count: u32) -> u32 {
    keepalives_count.saturating_sub(2).max(1)
}

/// Which entry of a round is this server: the one that answered with this server's start time,
/// else the one recognised in an earlier round.
pub fn recognise(answers: &[Answer], started_unix_us: i64, known: Option<&str>) -> Option<String> {
    answers
        .iter()
        .find(|a| matches!(a.outcome, Outcome::Answered { started: Some(started), .. } if started == started_unix_us))
        .map(|a| a.name.clone())
        .or_else(|| known.map(str::to_string))
}

/// What a round's answers say of each other member. The same member list serves every node, so
/// this server's own entry (`me`, see [`recognise`]) is left out; a member answered when it
/// answered at all, even to refuse the check.
pub fn views(answers: &[Answer], me: Option<&str>) -> Vec<View> {
    answers
        .iter()
        .filter(|a| Some(a.name.as_str()) != me)
        .map(|a| View {
            name: a.name.clone(),
            peer: a.peer,
            // A fenced primary that answers is reached all the same.
            answered: matches!(a.outcome, Outcome::Answered { .. })
                || matches!(classify(&a.outcome), Verdict::Misconfigured(_)),
            primary_timeline: match a.outcome {
                Outcome::Answered {
                    in_recovery: false,
                    timeline,
                    ..
                } => timeline,
                _ => None,
            },
        })
        .collect()
}

/// A permanent fence found at start (the marker an earlier run left): in force again at once.
pub fn restore(state: &State, marker_reason: &str, now: Micros) -> Transition<State> {
    let reason = format!("fenced by an earlier run ({MARKER}): {marker_reason}");
    Transition {
        state: State {
            fence: Fence::Superseded {
                by: String::new(),
                timeline: 0,
            },
            ..state.clone()
        },
        actions: vec![Action::RestoreFence(reason.clone())],
        events: vec![Event::new(now, EventKind::Fenced, reason)],
    }
}

/// The file a permanent fence leaves in the data directory.
pub const MARKER: &str = "pg_promoter.fenced";

/// What a permanent fence's marker is about: this cluster (its system identifier), the
/// timeline this server wrote on and the term it knew when it was superseded. A server rejoined
/// since (rewound, rebuilt from a base backup, or promoted again) is on another timeline, and a
/// base backup of it that becomes a standby is not a primary: the marker no longer applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub system_id: u64,
    pub timeline: u32,
    pub term: u64,
    pub reason: String,
}

impl Marker {
    /// The file's text: the facts on the first line, the reason on the second (for the DBA).
    pub fn render(&self) -> String {
        format!(
            "system_identifier={} timeline={} term={}\n{}\n",
            self.system_id, self.timeline, self.term, self.reason
        )
    }

    /// Reads a marker's text; a marker without facts (an older version's) has its whole text as
    /// the reason, and applies wherever it is found.
    pub fn parse(text: &str) -> (Option<Marker>, String) {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        let facts: Vec<(&str, &str)> = first
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |k: &str| {
            facts
                .iter()
                .find(|(key, _)| *key == k)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        match (get("system_identifier"), get("timeline"), get("term")) {
            (Some(system_id), Some(timeline), Some(term)) => {
                let reason = lines.collect::<Vec<_>>().join(" ").trim().to_string();
                let marker = Marker {
                    system_id,
                    timeline: timeline as u32,
                    term,
                    reason: reason.clone(),
                };
                (Some(marker), reason)
            }
            _ => (None, text.trim().to_string()),
        }
    }

    /// Why the marker does not apply to this server (its system identifier, the timeline it
    /// writes on), if it does not.
    pub fn stale(&self, system_id: u64, timeline: Option<u32>) -> Option<String> {
        if self.system_id != system_id {
            return Some(format!(
                "it was written by another cluster (system identifier {}, this one {system_id})",
                self.system_id
            ));
        }
        match timeline {
            // 0: the timeline was not known when it was written; it applies on any.
            Some(t) if self.timeline != 0 && t != self.timeline => Some(format!(
                "it was written on timeline {}, and this server writes on timeline {t} (rejoined or promoted since)",
                self.timeline
            )),
            _ => None,
        }
    }
}

/// Whether `reachable` of `members` (this server included in both) is a strict majority.
pub fn has_majority(reachable: usize, members: usize) -> bool {
    2 * reachable > members
}

/// One round of member checks on a primary.
pub fn round(
    state: &State,
    views: &[View],
    my_timeline: u32,
    keepalives_count: u32,
    now: Micros,
) -> Transition<State> {
    let mut s = state.clone();
    let mut events = Vec::new();
    let mut actions = Vec::new();
    let done = |state, events, actions| Transition {
        state,
        actions,
        events,
    };
    if matches!(s.fence, Fence::Superseded { .. }) {
        return done(s, events, actions);
    }
    if let Some(newer) = views
        .iter()
        .filter(|v| v.peer)
        .filter_map(|v| v.primary_timeline.filter(|t| *t > my_timeline).map(|t| (v, t)))
        .max_by_key(|(_, t)| *t)
    {
        let (v, timeline) = newer;
        let reason = format!(
            "{} is a primary on timeline {timeline}, newer than this server's {my_timeline}: this server was \
             failed over from; rejoin it with pg_rewind or a new base backup",
            v.name
        );
        events.push(Event::new(now, EventKind::Fenced, reason.clone()));
        actions.push(Action::Fence {
            permanent: true,
            reason,
        });
        s.fence = Fence::Superseded {
            by: v.name.clone(),
            timeline,
        };
        return done(s, events, actions);
    }
    let members = 1 + views.len();
    if members == 2 && views.iter().all(|v| v.peer) {
        // Two nodes and no witness: no majority survives either node's loss, so fencing on it
        // would stop the primary whenever its only standby is down, and a new primary once the
        // old one is gone. As the seed did, only a superseded primary is fenced (above).
        s.short_rounds = 0;
        return done(s, events, actions);
    }
    let reachable = 1 + views.iter().filter(|v| v.answered).count();
    if has_majority(reachable, members) {
        s.short_rounds = 0;
        if s.fence == Fence::Isolated {
            let detail = format!("{reachable} of {members} members reachable again: fence lifted");
            events.push(Event::new(now, EventKind::Unfenced, detail));
            actions.push(Action::Unfence);
            s.fence = Fence::Open;
        }
        return done(s, events, actions);
    }
    s.short_rounds += 1;
    if s.fence == Fence::Open && s.short_rounds >= rounds_before_fencing(keepalives_count) {
        let unreachable: Vec<&str> = views
            .iter()
            .filter(|v| !v.answered)
            .map(|v| v.name.as_str())
            .collect();
        let reason = format!(
            "only {reachable} of {members} members reachable for {} checks (unreachable: {}): a standby may be \
             promoted",
            s.short_rounds,
            unreachable.join(", ")
        );
        events.push(Event::new(now, EventKind::Fenced, reason.clone()));
        actions.push(Action::Fence {
            permanent: false,
            reason,
        });
        s.fence = Fence::Isolated;
    }
    done(s, events, actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, peer: bool, answered: bool, tl: Option<u32>) -> View {
        View {
            name: name.into(),
            peer,
            answered,
            primary_timeline: tl,
        }
    }

    fn standby(answered: bool) -> View {
        v("s1", true, answered, None)
    }

    fn witness(answered: bool) -> View {
        v("w1", false, answered, if answered { Some(1) } else { None })
    }

    fn run(views_per_round: &[Vec<View>], count: u32) -> Vec<(State, Vec<Event>, Vec<Action>)> {
        let mut s = State::open();
        views_per_round
            .iter()
            .enumerate()
            .map(|(i, views)| {
                let out = round(&s, views, 1, count, i as i64);
                s = out.state.clone();
                (out.state, out.events, out.actions)
            })
            .collect()
    }

    #[test]
    fn majority_is_strict() {
        assert!(has_majority(2, 3));
        assert!(!has_majority(1, 3));
        assert!(!has_majority(2, 4));
        assert!(has_majority(3, 4));
        assert!(has_majority(1, 1));
    }

    #[test]
    fn an_isolated_primary_fences_after_count_minus_two_rounds_and_unfences_with_a_majority() {
        let cut = vec![standby(false), witness(false)];
        let ok = vec![standby(true), witness(true)];
        let out = run(&[cut.clone(), cut.clone(), cut.clone(), ok.clone(), ok], 4);
        assert!(out[0].2.is_empty());
        assert_eq!(out[0].0.short_rounds, 1);
        match &out[1].2[..] {
            [Action::Fence {
                permanent: false,
                reason,
            }] => {
                assert!(
                    reason.contains("only 1 of 3 members reachable for 2 checks (unreachable: s1, w1)"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out[1].0.fence, Fence::Isolated);
        assert!(out[2].2.is_empty(), "fenced once");
        assert_eq!(out[3].2, vec![Action::Unfence]);
        assert_eq!(out[3].1[0].kind, EventKind::Unfenced);
        assert!(out[4].2.is_empty());
    }

    #[test]
    fn one_reachable_member_of_three_keeps_the_primary_open() {
        // Cut from the standby only: the witness still answers, 2 of 3.
        let out = run(&vec![vec![standby(false), witness(true)]; 10], 4);
        assert!(out.iter().all(|(s, _, a)| a.is_empty() && s.fence == Fence::Open));
    }

    #[test]
    fn a_blip_shorter_than_the_threshold_does_not_fence() {
        let cut = vec![standby(false), witness(false)];
        let ok = vec![standby(true), witness(true)];
        let out = run(&[cut.clone(), cut.clone(), ok, cut], 5);
        assert!(out.iter().all(|(_, _, a)| a.is_empty()));
        assert_eq!(out[3].0.short_rounds, 1);
    }

    #[test]
    fn a_newer_primary_among_the_peers_fences_for_good() {
        let newer = vec![v("s1", true, true, Some(2)), witness(true)];
        let out = run(&[newer, vec![standby(true), witness(true)]], 3);
        match &out[0].2[..] {
            [Action::Fence {
                permanent: true,
                reason,
            }] => {
                assert!(
                    reason.contains("s1 is a primary on timeline 2, newer than this server's 1"),
                    "{reason}"
                );
                assert!(reason.contains("pg_rewind"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            out[1].0.fence,
            Fence::Superseded {
                by: "s1".into(),
                timeline: 2
            }
        );
        assert!(out[1].2.is_empty(), "never lifted by the worker");
    }

    #[test]
    fn witnesses_and_same_timeline_primaries_never_supersede() {
        let views = vec![v("w1", false, true, Some(9)), v("s1", true, true, Some(1))];
        let out = run(&[views], 3);
        assert!(out[0].2.is_empty());
    }

    #[test]
    fn a_round_leaves_out_this_server_and_counts_refusals_as_answers() {
        let me = 42;
        let answered = |in_recovery, started| Outcome::Answered {
            in_recovery,
            lsn: None,
            timeline: Some(3),
            started: Some(started),
            fenced: false,
        };
        let answers = [
            Answer {
                name: "self".into(),
                peer: true,
                outcome: answered(false, me),
            },
            Answer {
                name: "s1".into(),
                peer: true,
                outcome: answered(true, 7),
            },
            Answer {
                name: "s2".into(),
                peer: true,
                outcome: Outcome::QueryFailed {
                    sqlstate: "28P01".into(),
                    message: "password authentication failed".into(),
                },
            },
            Answer {
                name: "w1".into(),
                peer: false,
                outcome: Outcome::TimedOut { connecting: true },
            },
            Answer {
                name: "old".into(),
                peer: true,
                outcome: answered(false, 8),
            },
        ];
        let found = recognise(&answers, me, None);
        assert_eq!(found.as_deref(), Some("self"));
        // A later round whose check of itself failed: still recognised.
        let mut later = answers.clone();
        later[0].outcome = Outcome::TimedOut { connecting: false };
        assert_eq!(recognise(&later, me, found.as_deref()).as_deref(), Some("self"));
        assert_eq!(recognise(&later, me, None), None);
        assert_eq!(views(&later, found.as_deref()).len(), 4);
        assert_eq!(
            views(&answers, found.as_deref()),
            vec![
                v("s1", true, true, None),
                v("s2", true, true, None),
                v("w1", false, false, None),
                v("old", true, true, Some(3)),
            ]
        );
    }

    #[test]
    fn a_fence_left_by_an_earlier_run_is_restored_and_never_lifted() {
        let out = restore(&State::open(), "s1 is a primary on timeline 2", 5);
        assert!(matches!(out.state.fence, Fence::Superseded { .. }));
        match &out.actions[..] {
            [Action::RestoreFence(reason)] => {
                assert!(reason.starts_with("fenced by an earlier run (pg_promoter.fenced): s1 is"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.events[0].kind, EventKind::Fenced);
        let later = round(&out.state, &[standby(true), witness(true)], 1, 3, 6);
        assert!(later.actions.is_empty());
    }

    #[test]
    fn two_nodes_without_a_witness_fence_only_when_superseded() {
        // The standby is down, or the old primary is gone after a failover: no fence.
        let out = run(&vec![vec![standby(false)]; 10], 3);
        assert!(out.iter().all(|(s, _, a)| a.is_empty() && s.fence == Fence::Open));
        // A newer primary still fences for good.
        let out = run(&[vec![v("s1", true, true, Some(2))]], 3);
        assert!(matches!(out[0].2[..], [Action::Fence { permanent: true, .. }]));
        // With a witness, three members: isolation fences as before.
        let out = run(&vec![vec![standby(false), witness(false)]; 2], 3);
        assert!(matches!(out[0].0.fence, Fence::Isolated));
    }

    #[test]
    fn a_count_of_three_or_less_fences_after_one_round() {
        assert_eq!(rounds_before_fencing(1), 1);
        assert_eq!(rounds_before_fencing(3), 1);
        assert_eq!(rounds_before_fencing(4), 2);
        assert_eq!(rounds_before_fencing(5), 3);
    }
}
