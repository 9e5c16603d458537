//! The worker's side of leadership (the member's side is `leader`): when to stand for election,
//! what an election's answers mean, and what a lease round's answers mean, for a standby that
//! would promote and for a primary that must keep its lease to take ordinary commits.
//!
//! Leadership runs when the members (the nodes of `pg_promoter.peers` and the witnesses) are at
//! least three: with two, no majority survives the loss of either, and the seed's rules stay
//! (docs/leadership.md).

use crate::event::{Event, EventKind};
use crate::leader::{self, Campaign, Lease, Refusal, Renewal, Round, Term};
use crate::settings::Settings;
use crate::time::{micros, to_ms, Micros};

/// Whether leadership runs with these settings: named PostgreSQL nodes and at least three
/// members in all.
pub fn active(settings: &Settings) -> bool {
    !settings.peers.is_empty() && members(settings) >= 3
}

/// `N`: the configured members.
pub fn members(settings: &Settings) -> usize {
    settings.peers.len() + settings.witnesses.len()
}

/// The physical replication slot a member streams through, where members use slots: its name
/// in the member list, lowercased, with anything but letters, digits and `_` made `_`.
pub fn slot_name(member: &str) -> String {
    member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The slots a new leader named `me` creates for the other nodes, where members use slots.
pub fn slots_for_followers(settings: &Settings, me: &str) -> Vec<String> {
    settings
        .peers
        .iter()
        .filter(|p| p.name != me)
        .map(|p| slot_name(&p.name))
        .collect()
}

/// The lease a leader asks for, with these settings.
pub fn lease_duration(settings: &Settings) -> std::time::Duration {
    leader::lease_duration(settings.keep_alive, settings.keepalives_count)
}

/// How often a leader renews, and how long a round may take: at most a quarter of the lease
/// (and no slower than `keep_alive`), so that a round lost entirely, and the next one taking
/// all its time, still end within the lease (`2/4 + 1/4` of it, under the `1 − ε` it may be
/// relied on).
pub fn renew_every(settings: &Settings) -> std::time::Duration {
    settings.keep_alive.min(lease_duration(settings) / 4)
}

/// What this worker knows of its own leadership.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The term this server won, and leads unless superseded.
    pub leads: Option<Term>,
    /// Until when (the lease clock) it may take ordinary commits.
    pub valid_until: Option<Micros>,
    /// The last round renewed the lease (so a loss, and a renewal after one, are recorded once).
    pub renewed: bool,
    /// No standing before this (the lease clock): after a lost election, so that candidates
    /// that tied do not tie again, and a higher-ranked one stands first.
    pub stand_after: Option<Micros>,
    /// The highest term a member named in a refusal: the next stand goes above it.
    pub seen_term: Term,
    /// The highest timeline a member's refusal said was claimed: the next claim goes above it.
    pub seen_timeline: u32,
    /// The timeline claimed in the election this server won (a standby's): its promotion must
    /// land on it.
    pub claimed: Option<u32>,
    /// A primary that could not stand because its own member grants another leader a live
    /// lease: that leader, and when (the lease clock) the grant first seen was to end.
    pub own_grant_to: Option<(String, Micros)>,
    /// A lease was held since the worker started (a primary that never held one is not fenced
    /// for the lack of it: its commits wait at the pre-commit check, and a starting cluster or a
    /// restarted worker is not shut down by `fence_action = shutdown`).
    pub held: bool,
}

impl State {
    /// Whether ordinary commits may happen at `now` (the lease clock).
    pub fn may_commit(&self, now: Micros) -> bool {
        leader::may_commit(&self.lease(), now)
    }

    /// The term to stand in, above this member's own (`term`) and every term seen.
    pub fn next_term(&self, term: Term) -> Term {
        term.max(self.seen_term) + 1
    }

    /// Whether a lost election still holds standing back at `clock`, and for how long.
    pub fn wait_to_stand(&self, clock: Micros) -> Option<Micros> {
        self.stand_after.filter(|at| clock < *at).map(|at| at - clock)
    }

    fn see(&mut self, answers: &Answers) {
        for (_, v) in answers {
            match v {
                Err(Refusal::StaleTerm { current, .. }) => self.seen_term = self.seen_term.max(*current),
                Err(Refusal::TimelineTaken { highest }) => {
                    self.seen_timeline = self.seen_timeline.max(*highest)
                }
                _ => {}
            }
        }
    }

    fn lease(&self) -> Lease {
        Lease {
            term: self.leads.unwrap_or(0),
            valid_until: self.valid_until,
        }
    }
}

/// Each other member's answer to a vote or lease request: granted, or refused with why (a
/// refusal that could not be asked is `Refusal::Unreachable`).
pub type Answers = Vec<(String, Result<(), Refusal>)>;

/// An election's outcome, as the candidate counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A majority voted for this candidate.
    Won,
    /// A member that ranks higher refused: it stands instead.
    Outranked,
    /// A member knows a newer term with a leader.
    Superseded { term: Term, leader: String },
    /// No majority, for the reasons recorded.
    Lost,
}

/// What an election's answers mean for this worker: the outcome, its state afterwards (a won
/// term led; after a loss, when it may stand again), and the event that records it. `clock` is
/// the lease clock, `at` the events' time.
pub fn elected(
    state: &State,
    settings: &Settings,
    me: &str,
    (term, claim): (Term, Option<u32>),
    answers: &Answers,
    (clock, at, random): (Micros, Micros, u32),
) -> (Outcome, State, Event) {
    let (outcome, event) = count_election(settings, me, term, answers, at);
    let mut s = state.clone();
    s.see(answers);
    s.renewed = false;
    s.valid_until = None;
    if outcome == Outcome::Won {
        s.leads = Some(term);
        s.claimed = claim;
        s.stand_after = None;
    } else {
        s.leads = None;
        s.claimed = None;
        s.stand_after = Some(clock + wait_after_loss(settings, &outcome, random));
    }
    (outcome, s, event)
}

/// Counts an election in `term` (the candidate's own vote is in), from the other members'
/// answers; the event that records it.
pub fn count_election(
    settings: &Settings,
    me: &str,
    term: Term,
    answers: &Answers,
    now: Micros,
) -> (Outcome, Event) {
    let mut campaign = Campaign {
        term,
        members: members(settings),
        votes: vec![me.to_string()],
        refusals: Vec::new(),
    };
    for (name, verdict) in answers {
        campaign.count(name, verdict.clone());
    }
    let tally = format!(
        "{} of {} votes{}",
        campaign.votes.len(),
        campaign.members,
        refusals_text(&campaign.refusals)
    );
    if campaign.won() {
        let detail = format!(
            "elected leader of term {term}: {tally} ({})",
            campaign.votes.join(", ")
        );
        return (Outcome::Won, Event::new(now, EventKind::Elected, detail));
    }
    let outcome = if let Some((t, l)) = campaign.newer_leader() {
        Outcome::Superseded {
            term: t,
            leader: l.to_string(),
        }
    } else if campaign.outranked() {
        Outcome::Outranked
    } else {
        Outcome::Lost
    };
    let detail = format!("election of term {term} lost: {tally}");
    (outcome, Event::new(now, EventKind::ElectionLost, detail))
}

/// How long a candidate that lost waits before standing again: one check when no one outranks
/// it, plus a share of another drawn from `random`, so two candidates that split the votes do
/// not split them again; two checks and more when a higher-ranked member will stand.
pub fn wait_after_loss(settings: &Settings, outcome: &Outcome, random: u32) -> Micros {
    let ka = micros(settings.keep_alive);
    let jitter = ka * i64::from(random % 1000) / 1000;
    match outcome {
        Outcome::Outranked => 2 * ka + jitter,
        _ => ka + jitter,
    }
}

/// What a lease round means to the leader of `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundResult {
    pub state: State,
    pub renewal: Renewal,
    pub events: Vec<Event>,
}

/// Counts a lease round of `term`, sent at `sent_at` (the lease clock), with this server's own
/// grant among the answers; `now` is the lease clock, `at` the events' time.
pub fn count_round(
    state: &State,
    settings: &Settings,
    term: Term,
    sent_at: Micros,
    answers: &Answers,
    (now, at): (Micros, Micros),
) -> RoundResult {
    let round = Round {
        sent_at,
        granted: answers
            .iter()
            .filter(|(_, v)| v.is_ok())
            .map(|(n, _)| n.clone())
            .collect(),
        refusals: answers
            .iter()
            .filter_map(|(n, v)| v.clone().err().map(|r| (n.clone(), r)))
            .collect(),
    };
    let lease = Lease {
        term,
        valid_until: state.valid_until.filter(|_| state.leads == Some(term)),
    };
    let n = members(settings);
    let (next, renewal) = leader::renew(&lease, &round, n, lease_duration(settings));
    let mut s = state.clone();
    s.see(answers);
    let mut events = Vec::new();
    match &renewal {
        Renewal::Renewed { until } => {
            s.leads = Some(term);
            s.valid_until = next.valid_until;
            s.held = true;
            if !s.renewed {
                let detail = format!(
                    "lease of term {term} granted by {} of {n} members ({}), valid for {} ms",
                    round.granted.len(),
                    round.granted.join(", "),
                    to_ms(until - now)
                );
                events.push(Event::new(at, EventKind::LeaseRenewed, detail));
            }
            s.renewed = true;
        }
        Renewal::Short { granted } => {
            let expired = !s.may_commit(now);
            if expired && (s.renewed || s.valid_until.is_none()) {
                let detail = format!(
                    "lease of term {term} not renewed: {granted} of {n} members granted it{}; no ordinary \
                     commit until a majority does",
                    refusals_text(&round.refusals)
                );
                events.push(Event::new(at, EventKind::LeaseLost, detail));
                s.renewed = false;
                // Recorded once, until a renewal.
                s.valid_until = Some(s.valid_until.unwrap_or(Micros::MIN));
            }
            if s.seen_term > term {
                // Members took a newer term that no one leads yet: this one can no longer be
                // renewed, and the next round stands above it.
                let detail = format!(
                    "term {} was opened by an election: this server no longer leads term {term} and stands again",
                    s.seen_term
                );
                events.push(Event::new(at, EventKind::LeaseLost, detail));
                s.leads = None;
                s.renewed = false;
            }
        }
        Renewal::Superseded { term: t, leader } => {
            let detail = format!("term {t} is led by {leader}: this server no longer leads term {term}");
            events.push(Event::new(at, EventKind::LeaseLost, detail));
            s.leads = None;
            s.valid_until = None;
            s.renewed = false;
        }
    }
    RoundResult {
        state: s,
        renewal,
        events,
    }
}

/// "; refused by a (why), b (why)", or nothing.
fn refusals_text(refusals: &[(String, Refusal)]) -> String {
    if refusals.is_empty() {
        return String::new();
    }
    let each: Vec<String> = refusals
        .iter()
        .map(|(n, r)| format!("{n} ({})", r.reason()))
        .collect();
    format!("; refused by {}", each.join(", "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::members::Member;
    use crate::time::{MS, SEC};

    fn settings(peers: &[&str], witnesses: &[&str]) -> Settings {
        let m = |n: &&str| Member {
            name: n.to_string(),
            conninfo: format!("host={n}"),
        };
        Settings {
            peers: peers.iter().map(m).collect(),
            witnesses: witnesses.iter().map(m).collect(),
            keep_alive: Duration::from_secs(1),
            keepalives_count: 3,
            ..Settings::default()
        }
    }

    fn three() -> Settings {
        settings(&["p", "s1", "s2"], &[])
    }

    #[test]
    fn a_leader_renews_at_least_four_times_a_lease() {
        let mut s = three();
        assert_eq!(
            renew_every(&s),
            Duration::from_millis(500),
            "1 s x 3: a 2 s lease"
        );
        s.keepalives_count = 5;
        assert_eq!(renew_every(&s), Duration::from_secs(1), "a 4 s lease: keep_alive");
        // One round lost and the next one taking all its time end within the lease's 99 %.
        for count in 1..12 {
            s.keepalives_count = count;
            let (every, lease) = (renew_every(&s), lease_duration(&s));
            assert!(
                3 * every <= lease.mul_f64(0.99),
                "{count}: {every:?} of {lease:?}"
            );
        }
    }

    #[test]
    fn slots_are_named_after_the_members() {
        assert_eq!(slot_name("Node-2.east"), "node_2_east");
        assert_eq!(slots_for_followers(&three(), "s1"), vec!["p", "s2"]);
    }

    #[test]
    fn leadership_needs_named_nodes_and_three_members() {
        assert!(active(&three()));
        assert!(active(&settings(&["p", "s"], &["w"])));
        assert!(
            !active(&settings(&["p", "s"], &[])),
            "two nodes keep the seed's rules"
        );
        assert!(!active(&settings(&[], &["w1", "w2", "w3"])), "no named nodes");
        assert_eq!(members(&settings(&["p", "s1", "s2"], &["w"])), 4);
    }

    #[test]
    fn a_majority_of_the_configured_members_wins() {
        let s = three();
        let (o, e) = count_election(&s, "s1", 4, &vec![("s2".into(), Ok(()))], 0);
        assert_eq!(o, Outcome::Won);
        assert_eq!(e.kind, EventKind::Elected);
        assert_eq!(e.detail, "elected leader of term 4: 2 of 3 votes (s1, s2)");
        let unreachable = Refusal::Unreachable("connection refused".into());
        let (o, e) = count_election(&s, "s1", 4, &vec![("s2".into(), Err(unreachable))], 0);
        assert_eq!(o, Outcome::Lost, "the dead primary is still counted in N");
        assert_eq!(
            e.detail,
            "election of term 4 lost: 1 of 3 votes; refused by s2 (unreachable: connection refused)"
        );
    }

    #[test]
    fn a_refusal_that_names_a_newer_leader_supersedes_and_a_higher_rank_outranks() {
        let s = settings(&["p", "s1", "s2"], &["w"]);
        let newer = Refusal::StaleTerm {
            current: 9,
            leader: Some("s2".into()),
        };
        let (o, _) = count_election(&s, "s1", 4, &vec![("w".into(), Err(newer))], 0);
        assert_eq!(
            o,
            Outcome::Superseded {
                term: 9,
                leader: "s2".into()
            }
        );
        let by = Refusal::Outranked {
            by: leader::Rank {
                position: leader::Position { timeline: 1, lsn: 9 },
                priority: 1,
                name: "s2".into(),
            },
        };
        let (o, _) = count_election(
            &s,
            "s1",
            4,
            &vec![("s2".into(), Err(by)), ("w".into(), Ok(()))],
            0,
        );
        assert_eq!(o, Outcome::Outranked, "2 of 4 is no majority");
        assert!(wait_after_loss(&s, &Outcome::Outranked, 0) > wait_after_loss(&s, &Outcome::Lost, 999));
        assert_eq!(wait_after_loss(&s, &Outcome::Lost, 500), SEC + 500 * MS);
    }

    fn granted(names: &[&str]) -> Answers {
        names.iter().map(|n| (n.to_string(), Ok(()))).collect()
    }

    #[test]
    fn a_round_renews_from_its_sending_time_then_a_short_one_lets_it_lapse_once() {
        let s = three();
        let r = count_round(
            &State::default(),
            &s,
            3,
            10 * SEC,
            &granted(&["p", "s1"]),
            (10 * SEC + 5 * MS, 10 * SEC + 5 * MS),
        );
        assert!(matches!(r.renewal, Renewal::Renewed { .. }));
        assert_eq!(r.state.leads, Some(3));
        // 2 s less 1 % for drift, from when the requests left.
        assert_eq!(r.state.valid_until, Some(10 * SEC + 1980 * MS));
        assert_eq!(r.events.len(), 1);
        assert!(r.events[0]
            .detail
            .starts_with("lease of term 3 granted by 2 of 3 members (p, s1)"));
        assert!(r.state.may_commit(11 * SEC));

        let again = count_round(
            &r.state,
            &s,
            3,
            11 * SEC,
            &granted(&["p", "s1", "s2"]),
            (11 * SEC, 11 * SEC),
        );
        assert!(again.events.is_empty(), "a renewal is recorded only after a loss");

        // Short rounds: the lease runs out at its time, and the loss is recorded once.
        let short = count_round(
            &again.state,
            &s,
            3,
            12 * SEC,
            &granted(&["p"]),
            (12 * SEC, 12 * SEC),
        );
        assert!(short.events.is_empty(), "still valid until 12.98 s");
        assert!(short.state.may_commit(12 * SEC + 900 * MS));
        let lost = count_round(
            &short.state,
            &s,
            3,
            13 * SEC,
            &granted(&["p"]),
            (13 * SEC, 13 * SEC),
        );
        assert_eq!(lost.events[0].kind, EventKind::LeaseLost);
        assert!(!lost.state.may_commit(13 * SEC));
        let still = count_round(
            &lost.state,
            &s,
            3,
            14 * SEC,
            &granted(&["p"]),
            (14 * SEC, 14 * SEC),
        );
        assert!(still.events.is_empty());
        let back = count_round(
            &still.state,
            &s,
            3,
            15 * SEC,
            &granted(&["p", "s2"]),
            (15 * SEC, 15 * SEC),
        );
        assert_eq!(back.events[0].kind, EventKind::LeaseRenewed);
        assert!(back.state.may_commit(15 * SEC + MS));
    }

    #[test]
    fn a_first_round_without_a_majority_records_the_missing_lease() {
        let r = count_round(&State::default(), &three(), 1, 0, &granted(&["p"]), (0, 0));
        assert_eq!(r.events[0].kind, EventKind::LeaseLost);
        assert!(!r.state.may_commit(0));
    }

    #[test]
    fn a_newer_leader_ends_the_leadership() {
        let s = three();
        let r = count_round(&State::default(), &s, 3, 0, &granted(&["p", "s1"]), (0, 0));
        let newer = Refusal::StaleTerm {
            current: 4,
            leader: Some("s2".into()),
        };
        let mut answers = granted(&["p"]);
        answers.push(("s1".into(), Err(newer)));
        let r = count_round(&r.state, &s, 3, SEC, &answers, (SEC, SEC));
        assert_eq!(
            r.renewal,
            Renewal::Superseded {
                term: 4,
                leader: "s2".into()
            }
        );
        assert!(!r.state.may_commit(SEC));
        assert_eq!(r.state.leads, None);
    }
}
