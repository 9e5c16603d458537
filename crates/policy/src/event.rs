//! Events: what the worker did and why, for the DBA, the tests and the benchmarks.

use crate::time::Micros;

macro_rules! kinds {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// The kinds of event, stored as their index in shared memory.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum EventKind { $($variant),* }

        impl EventKind {
            const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The name shown in `pg_promoter_events()`.
            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$variant => $name),* }
            }

            pub fn from_u8(v: u8) -> Option<EventKind> {
                Self::ALL.get(usize::from(v)).copied()
            }
        }
    };
}

kinds! {
    Start = "start",
    Reload = "reload",
    FirstContact = "first_contact",
    CheckFailed = "check_failed",
    Misconfigured = "misconfigured",
    PrimaryBack = "primary_back",
    Decided = "decided",
    Refused = "refused",
    PromoteRequested = "promote_requested",
    Promoted = "promoted",
    PromoteFailed = "promote_failed",
    RoleChanged = "role_changed",
    Paused = "paused",
    Resumed = "resumed",
    Stop = "stop",
    WitnessVote = "witness_vote",
    Command = "command",
    Fenced = "fenced",
    Unfenced = "unfenced",
    ElectionStarted = "election_started",
    Elected = "elected",
    ElectionLost = "election_lost",
    VoteGranted = "vote_granted",
    VoteRefused = "vote_refused",
    LeaseRenewed = "lease_renewed",
    LeaseLost = "lease_lost",
    Following = "following",
    FollowFailed = "follow_failed",
    NeedsRewind = "needs_rewind",
    CheckUnknown = "check_unknown",
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Micros,
    pub kind: EventKind,
    pub detail: String,
}

impl Event {
    pub fn new(at: Micros, kind: EventKind, detail: impl Into<String>) -> Event {
        Event {
            at,
            kind,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_index() {
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(EventKind::from_u8(i as u8), Some(*kind));
            assert_eq!(*kind as u8 as usize, i);
        }
        assert_eq!(EventKind::from_u8(EventKind::ALL.len() as u8), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
    }
}
