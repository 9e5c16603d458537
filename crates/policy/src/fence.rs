//! Fencing a primary that may no longer be the primary.
//!
//! A primary with peers or witnesses checks them at every tick. It fences itself:
//! - for a while, when it reaches no strict majority of the members (itself, its peers and the
//!   witnesses) for `keepalives_count - 2` rounds in a row (at least one), which is at least one
//!   `keep_alive` before any standby with the same settings can have decided, whatever the phase
//!   of either schedule: that standby needs `keepalives_count` failed checks. It unfences when a
//!   majority answers again and no peer is a newer primary;
//! - for good, when a peer answers as a primary on a newer timeline: this server was failed
//!   over from, and must be rejoined with pg_rewind or a new base backup.

use crate::event::{Event, EventKind};
use crate::time::Micros;

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
pub struct FenceState {
    pub fence: Fence,
    /// Consecutive rounds without a majority.
    pub short_rounds: u32,
}

impl FenceState {
    pub fn open() -> FenceState {
        FenceState {
            fence: Fence::Open,
            short_rounds: 0,
        }
    }
}

/// What the shell must do when the fence changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceAction {
    /// Refuse ordinary connections, end ordinary sessions, block ordinary commits; `permanent`
    /// also leaves a marker in the data directory so a restart stays fenced.
    Fence {
        permanent: bool,
        reason: String,
    },
    Unfence,
}

/// Rounds without a majority after which an isolated primary fences itself.
pub fn rounds_before_fencing(keepalives_count: i32) -> u32 {
    (keepalives_count - 2).max(1) as u32
}

/// Whether `reachable` of `members` (this server included in both) is a strict majority.
pub fn has_majority(reachable: usize, members: usize) -> bool {
    2 * reachable > members
}

/// One round of member checks on a primary.
pub fn fence_step(
    state: &FenceState,
    views: &[View],
    my_timeline: u32,
    keepalives_count: i32,
    now: Micros,
) -> (FenceState, Vec<Event>, Vec<FenceAction>) {
    let mut s = state.clone();
    let mut events = Vec::new();
    let mut actions = Vec::new();
    if matches!(s.fence, Fence::Superseded { .. }) {
        return (s, events, actions);
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
        actions.push(FenceAction::Fence {
            permanent: true,
            reason,
        });
        s.fence = Fence::Superseded {
            by: v.name.clone(),
            timeline,
        };
        return (s, events, actions);
    }
    let members = 1 + views.len();
    let reachable = 1 + views.iter().filter(|v| v.answered).count();
    if has_majority(reachable, members) {
        s.short_rounds = 0;
        if s.fence == Fence::Isolated {
            let detail = format!("{reachable} of {members} members reachable again: fence lifted");
            events.push(Event::new(now, EventKind::Unfenced, detail));
            actions.push(FenceAction::Unfence);
            s.fence = Fence::Open;
        }
        return (s, events, actions);
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
        actions.push(FenceAction::Fence {
            permanent: false,
            reason,
        });
        s.fence = Fence::Isolated;
    }
    (s, events, actions)
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

    fn run(views_per_round: &[Vec<View>], count: i32) -> Vec<(FenceState, Vec<Event>, Vec<FenceAction>)> {
        let mut s = FenceState::open();
        views_per_round
            .iter()
            .enumerate()
            .map(|(i, views)| {
                let out = fence_step(&s, views, 1, count, i as i64);
                s = out.0.clone();
                out
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
            [FenceAction::Fence {
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
        assert_eq!(out[3].2, vec![FenceAction::Unfence]);
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
            [FenceAction::Fence {
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
    fn a_count_of_three_or_less_fences_after_one_round() {
        assert_eq!(rounds_before_fencing(1), 1);
        assert_eq!(rounds_before_fencing(3), 1);
        assert_eq!(rounds_before_fencing(4), 2);
        assert_eq!(rounds_before_fencing(5), 3);
    }
}
