//! Leadership without a consensus store: terms, votes and leases, in the style of Raft with no
//! log, between the configured members (the PostgreSQL nodes of `pg_promoter.peers` and the
//! witnesses). Every rule a member applies when it is asked for a vote or a lease, what a
//! candidate and a leader count, and how long each promise lasts, as pure functions.
//!
//! The guarantees, argued in docs/leadership.md and model-checked in tests/model.rs:
//! - at most one winner per term: a member grants one vote per term, kept durably before it
//!   answers, and a winner needs a strict majority of the configured members;
//! - never two valid leases at once: a leader counts its lease from the moment it asked, shortened
//!   by the clock-rate bound, and a member that granted it refuses every vote until the grant has
//!   expired on its own clock; majorities intersect;
//! - no vote reused after a restart: the vote is durable, and a member that starts (its grants
//!   were in memory) refuses votes for one lease duration.
//!
//! Times are each member's own monotonic clock, in microseconds; nothing compares two members'
//! clocks. The only assumption about clocks is that their rates differ by at most
//! [`DRIFT_PPM`].

use std::cmp::Ordering;
use std::time::Duration;

use crate::time::{micros, Micros};

pub type Term = u64;

/// How far two members' monotonic clocks may drift apart, in parts per million of elapsed time
/// (1 %: far above what NTP-disciplined or free-running quartz clocks do).
pub const DRIFT_PPM: i64 = 10_000;

/// How long a lease lasts: `max(2, keepalives_count - 1)` checks. At least two, so that a lease
/// renewed at every `keep_alive` never lapses between two renewals; at most the count less one,
/// so that the grants of a dead primary have expired when its standbys' counts complete.
pub fn lease_duration(keep_alive: Duration, keepalives_count: u32) -> Duration {
    keep_alive.saturating_mul(keepalives_count.saturating_sub(1).max(2))
}

/// How long a leader may rely on a lease it asked for at `sent_at` (its own clock): the lease
/// shortened by the drift bound, so it ends before any granting member's grant does, whatever
/// the members' clock rates and the messages' delays (a grant starts when the request arrives,
/// after it was sent).
pub fn leader_lease_end(sent_at: Micros, lease: Duration) -> Micros {
    let d = micros(lease);
    sent_at.saturating_add(d - d / 1_000_000 * DRIFT_PPM - d % 1_000_000 * DRIFT_PPM / 1_000_000)
}

/// Whether `count` of `members` configured members is a strict majority.
pub fn is_majority(count: usize, members: usize) -> bool {
    2 * count > members
}

/// A node's replication position: timeline first, then WAL position (`max(receive, replay)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub timeline: u32,
    pub lsn: u64,
}

/// How candidates compare: the most advanced first, then the highest priority, then the name
/// that sorts first. Priority 0 never stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rank {
    pub position: Position,
    pub priority: u32,
    pub name: String,
}

impl Ord for Rank {
    fn cmp(&self, other: &Rank) -> Ordering {
        self.position
            .cmp(&other.position)
            .then(self.priority.cmp(&other.priority))
            .then(other.name.cmp(&self.name))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Rank) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a member keeps in its state file, written and fsynced before it answers anything that
/// changed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Durable {
    pub term: Term,
    /// Whom this member voted for in `term`.
    pub voted_for: Option<String>,
    /// The leader of `term`, once known.
    pub leader: Option<String>,
    /// The longest lease this member ever granted, in microseconds: after a restart it stays
    /// quiet that long at least, whatever its own settings say.
    pub longest_grant: Micros,
    /// The highest timeline claimed by a candidate this member voted for (its own candidacies
    /// included): it votes only for a candidate that claims a higher one, so that no two winners
    /// promote onto one timeline number.
    pub timeline: u32,
}

/// The longest member name, in bytes (names are kept in shared memory and in the state file).
pub const NAME_MAX: usize = 63;

/// The state file's text: one `key value` line each, `-` for none; `member` names the node the
/// file belongs to, so a file copied from another node (a base backup, pg_rewind) is told apart.
pub fn encode(member: &str, d: &Durable) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "member {}\nterm {}\nvoted_for {}\nleader {}\nlongest_grant_us {}\ntimeline {}\n",
        if member.is_empty() { "-" } else { member },
        d.term,
        or_dash(&d.voted_for),
        or_dash(&d.leader),
        d.longest_grant,
        d.timeline
    )
}

/// The state file read back: the member it belongs to, and the durable state. Anything else is
/// an error naming the line, and the caller refuses to answer rather than guess.
pub fn decode(text: &str) -> Result<(Option<String>, Durable), String> {
    let mut member = None;
    let mut durable = Durable::default();
    let mut seen_term = false;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {} has no value", i + 1))?;
        let name = |v: &str| (v != "-").then(|| v.to_string());
        match key {
            "member" => member = name(value),
            "term" => {
                durable.term = value
                    .parse()
                    .map_err(|_| format!("line {}: \"{value}\" is not a term", i + 1))?;
                seen_term = true;
            }
            "voted_for" => durable.voted_for = name(value),
            "leader" => durable.leader = name(value),
            "longest_grant_us" => {
                durable.longest_grant = value
                    .parse()
                    .map_err(|_| format!("line {}: \"{value}\" is not a duration", i + 1))?;
            }
            "timeline" => {
                durable.timeline = value
                    .parse()
                    .map_err(|_| format!("line {}: \"{value}\" is not a timeline", i + 1))?;
            }
            _ => return Err(format!("line {}: unknown key \"{key}\"", i + 1)),
        }
    }
    if !seen_term {
        return Err("no term".into());
    }
    Ok((member, durable))
}

/// A lease this member granted, on its own clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    pub leader: String,
    pub term: Term,
    pub until: Micros,
}

/// A member's whole state: the durable part and what it keeps in memory only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub durable: Durable,
    pub grant: Option<Grant>,
    /// No vote before this: grants made before a restart were in memory and are forgotten, so a
    /// starting member waits one lease duration.
    pub quiet_until: Micros,
}

impl Member {
    /// A member that starts at `now` with what its state file says: quiet for its own lease, or
    /// the longest it ever granted if that is longer.
    pub fn start(durable: Durable, now: Micros, lease: Duration) -> Member {
        let quiet = micros(lease).max(durable.longest_grant);
        Member {
            durable,
            grant: None,
            quiet_until: now.saturating_add(quiet),
        }
    }

    /// The lease this member granted that still holds at `now`.
    pub fn live_grant(&self, now: Micros) -> Option<&Grant> {
        self.grant.as_ref().filter(|g| now < g.until)
    }
}

/// What a member is besides a voter, when it is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A witness: no data, no position.
    Witness,
    /// A primary (it grants itself its own lease, so it refuses while it leads).
    Primary,
    /// A standby, with its rank and whether it still sees the primary (its last check reached it,
    /// or its WAL receiver heard from it within the silence window).
    Standby { rank: Rank, sees_primary: bool },
}

/// What a standby's worker last saw of its upstream, as its member reads it when asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    pub now: Micros,
    /// How long silence may last before the primary counts as gone (`silence_window`).
    pub window: Micros,
    /// When the WAL receiver last heard from the upstream.
    pub walrcv_last_msg: Option<Micros>,
    /// When a check last got an answer, and how many checks have failed since.
    pub last_answer_at: Option<Micros>,
    pub failures: u32,
    /// What the last answer said: a standby this one cascades from, or a primary fenced by
    /// pg_promoter.
    pub in_recovery: Option<bool>,
    pub fenced: bool,
}

/// Whether a standby still sees a primary that takes writes: its last check reached it, or its
/// WAL receiver heard from it within the window. A standby it cascades from hides nothing, and
/// a primary that last answered fenced takes no ordinary write, even while it streams: a
/// standby that streams from it refuses no candidate for it.
pub fn sees_primary(u: &Upstream) -> bool {
    let recent = |at: Option<Micros>| at.is_some_and(|at| u.now - at < u.window);
    u.in_recovery != Some(true)
        && !u.fenced
        && (recent(u.walrcv_last_msg) || (u.failures == 0 && recent(u.last_answer_at)))
}

/// A candidate's request for a vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ballot {
    pub term: Term,
    pub rank: Rank,
    /// The candidate is a primary seeking to lead (a cluster's first leader, or a primary whose
    /// term was left without a leader): a standby that sees a primary does not refuse it for that.
    pub primary: bool,
    /// The timeline a standby candidate promotes onto if it wins ([`claim`]); `None` for a
    /// primary, which stays on its own.
    pub claim: Option<u32>,
}

/// The timeline a standby standing for election claims: above the newest timeline it has a
/// history of (`newest_here`, what PostgreSQL would otherwise take the next of) and above every
/// timeline it knows was claimed (`known`: its own votes', and members' refusals').
pub fn claim(newest_here: u32, known: u32) -> u32 {
    newest_here.max(known).saturating_add(1)
}

/// Why a member refuses a vote or a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request's term is older than the member's; `leader` is the member's leader of it.
    StaleTerm { current: Term, leader: Option<String> },
    /// The member started recently and may have forgotten a lease it granted.
    Starting { left: Micros },
    /// The member granted `leader` a lease of `term` that still holds.
    LeaseHeld {
        leader: String,
        term: Term,
        left: Micros,
    },
    /// The member, a standby, still sees the primary.
    SeesPrimary,
    /// The member voted for someone else in this term.
    AlreadyVoted { term: Term, candidate: String },
    /// The member, a standby, ranks above the candidate: it should stand, not the candidate.
    Outranked { by: Rank },
    /// Another leader holds this term (a leader's lease request).
    OtherLeader { term: Term, leader: String },
    /// The member voted for a candidate that claimed timeline `highest`, not below the
    /// candidate's claim: promoting onto it could give two histories one number.
    TimelineTaken { highest: u32 },
    /// Another member's refusal as it arrived (its `code()` and reason), when it is none of the
    /// above that the asker must act on.
    Remote {
        code: String,
        reason: String,
        /// The leader the member knows, of `term`, the member's own.
        leader: Option<String>,
        term: Term,
    },
    /// The member could not be asked.
    Unreachable(String),
    /// The member could not answer: its state file, or its own name among the members.
    Failed(String),
}

impl Refusal {
    /// A sentence fragment for events.
    pub fn reason(&self) -> String {
        let ms = |us: &Micros| (us + 999) / 1000;
        match self {
            Refusal::StaleTerm { current, leader } => match leader {
                Some(l) => format!("term {current} is newer, led by {l}"),
                None => format!("term {current} is newer"),
            },
            Refusal::Starting { left } => format!("started recently: no vote for {} ms", ms(left)),
            Refusal::LeaseHeld { leader, left, .. } => {
                format!("its lease to {leader} holds for {} ms more", ms(left))
            }
            Refusal::SeesPrimary => "it still sees the primary".into(),
            Refusal::AlreadyVoted { term, candidate } => format!("it voted for {candidate} in term {term}"),
            Refusal::Outranked { by } => format!(
                "{} ranks higher (timeline {}, position {:X}/{:X}, priority {})",
                by.name,
                by.position.timeline,
                by.position.lsn >> 32,
                by.position.lsn & 0xFFFF_FFFF,
                by.priority
            ),
            Refusal::OtherLeader { term, leader } => format!("{leader} leads term {term}"),
            Refusal::TimelineTaken { highest } => {
                format!("it voted for a candidate that claimed timeline {highest}: claim a higher one")
            }
            Refusal::Remote { reason, .. } => reason.clone(),
            Refusal::Unreachable(why) => format!("unreachable: {why}"),
            Refusal::Failed(why) => why.clone(),
        }
    }

    /// A short name for the kind of refusal, as a member's answer carries it.
    pub fn code(&self) -> &str {
        match self {
            Refusal::StaleTerm { .. } => "stale_term",
            Refusal::Starting { .. } => "starting",
            Refusal::LeaseHeld { .. } => "lease_held",
            Refusal::SeesPrimary => "sees_primary",
            Refusal::AlreadyVoted { .. } => "already_voted",
            Refusal::Outranked { .. } => "outranked",
            Refusal::OtherLeader { .. } => "other_leader",
            Refusal::TimelineTaken { .. } => "timeline_taken",
            Refusal::Remote { code, .. } => code,
            Refusal::Unreachable(_) => "unreachable",
            Refusal::Failed(_) => "failed",
        }
    }

    /// The leader whose lease the member still grants, and the lease's term, when that is why
    /// it refused: a live leader, which a candidate that lost can follow.
    pub fn lease_holder(&self) -> Option<(&str, Term)> {
        match self {
            Refusal::LeaseHeld { leader, term, .. } => Some((leader, *term)),
            // A member with a live grant takes no other term: its own is the lease's.
            Refusal::Remote {
                code,
                leader: Some(leader),
                term,
                ..
            } if code == "lease_held" => Some((leader, *term)),
            _ => None,
        }
    }

    /// A member's answer read back: `code` and `reason` as it gave them, `term`, `leader` and
    /// `timeline` (the highest it knows claimed) its own afterwards. Only the refusals the asker
    /// acts on are rebuilt: a newer term's, and a taken timeline's.
    pub fn from_answer(
        code: &str,
        reason: &str,
        term: Term,
        leader: Option<String>,
        timeline: u32,
    ) -> Refusal {
        match code {
            "stale_term" => Refusal::StaleTerm {
                current: term,
                leader,
            },
            "timeline_taken" => Refusal::TimelineTaken { highest: timeline },
            _ => Refusal::Remote {
                code: code.to_string(),
                reason: reason.to_string(),
                leader,
                term,
            },
        }
    }
}

/// A member's answer, and its state afterwards. `persist` says the durable part changed: it
/// must reach the state file (fsynced) before the answer leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub member: Member,
    pub verdict: Result<(), Refusal>,
    pub persist: bool,
}

/// A member asked for its vote at `now`. It refuses without even taking the new term while it may
/// still be promised to a leader (starting, a live grant) or, as a standby, still sees the
/// primary, so a cut-off standby cannot disturb a live leader by raising terms.
pub fn vote(member: &Member, standing: &Standing, ballot: &Ballot, now: Micros) -> Answer {
    let refuse = |refusal| Answer {
        member: member.clone(),
        verdict: Err(refusal),
        persist: false,
    };
    let d = &member.durable;
    if ballot.term < d.term {
        return refuse(Refusal::StaleTerm {
            current: d.term,
            leader: d.leader.clone(),
        });
    }
    if now < member.quiet_until {
        return refuse(Refusal::Starting {
            left: member.quiet_until - now,
        });
    }
    // A grant to the candidate itself promises nothing to another leader.
    if let Some(g) = member.live_grant(now).filter(|g| g.leader != ballot.rank.name) {
        return refuse(Refusal::LeaseHeld {
            leader: g.leader.clone(),
            term: g.term,
            left: g.until - now,
        });
    }
    if !ballot.primary
        && matches!(
            standing,
            Standing::Standby {
                sees_primary: true,
                ..
            }
        )
    {
        return refuse(Refusal::SeesPrimary);
    }
    // The primary is gone as far as this member can tell: the new term is taken for good.
    let mut m = member.clone();
    let mut persist = false;
    if ballot.term > m.durable.term {
        m.durable = Durable {
            term: ballot.term,
            voted_for: None,
            leader: None,
            ..m.durable
        };
        persist = true;
    }
    let highest = m.durable.timeline;
    let verdict = match &m.durable.voted_for {
        Some(other) if *other != ballot.rank.name => Err(Refusal::AlreadyVoted {
            term: m.durable.term,
            candidate: other.clone(),
        }),
        // The same ballot again (a retry): the claim it recorded, and no other.
        Some(_) if ballot.claim.is_some_and(|c| c != highest) => Err(Refusal::TimelineTaken { highest }),
        Some(_) => Ok(()),
        None => match standing {
            // A primary on an older timeline than this standby's was failed over from: this
            // standby holds what a newer leader wrote (its synchronous commits too), which that
            // primary lacks, and would lose if it led again.
            Standing::Standby { rank, .. }
                if ballot.primary && rank.position.timeline > ballot.rank.position.timeline =>
            {
                Err(Refusal::Outranked { by: rank.clone() })
            }
            // A primary seeking to lead is ahead of its standbys on its timeline, whatever their
            // names (the positions are read at different times: only timelines are compared).
            Standing::Standby { rank, .. } if !ballot.primary && outranks(rank, &ballot.rank) => {
                Err(Refusal::Outranked { by: rank.clone() })
            }
            _ if ballot.claim.is_some_and(|c| c <= highest) => Err(Refusal::TimelineTaken { highest }),
            _ => {
                m.durable.voted_for = Some(ballot.rank.name.clone());
                // A primary's own timeline is taken too (it may have come by a promotion by hand).
                m.durable.timeline = highest.max(ballot.claim.unwrap_or(ballot.rank.position.timeline));
                persist = true;
                Ok(())
            }
        },
    };
    Answer {
        member: m,
        verdict,
        persist,
    }
}

/// Whether a standby of rank `mine` must refuse a candidate of rank `candidate`: the candidate
/// is behind it, or level with it and this standby may stand (priority above 0) and ranks higher.
fn outranks(mine: &Rank, candidate: &Rank) -> bool {
    mine.position > candidate.position
        || (mine.priority > 0 && mine.position == candidate.position && mine > candidate)
}

/// A leader's request for its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    pub term: Term,
    pub leader: String,
    pub duration: Duration,
}

/// A member asked to grant or renew a leader's lease at `now`.
pub fn lease(member: &Member, request: &LeaseRequest, now: Micros) -> Answer {
    let d = &member.durable;
    let refusal = if request.term < d.term {
        Some(Refusal::StaleTerm {
            current: d.term,
            leader: d.leader.clone(),
        })
    } else {
        match &d.leader {
            Some(other) if request.term == d.term && *other != request.leader => Some(Refusal::OtherLeader {
                term: d.term,
                leader: other.clone(),
            }),
            _ => None,
        }
    };
    if let Some(refusal) = refusal {
        return Answer {
            member: member.clone(),
            verdict: Err(refusal),
            persist: false,
        };
    }
    let mut m = member.clone();
    let mut persist = false;
    if request.term > m.durable.term {
        m.durable = Durable {
            term: request.term,
            voted_for: None,
            leader: Some(request.leader.clone()),
            ..m.durable
        };
        persist = true;
    } else if m.durable.leader.is_none() {
        m.durable.leader = Some(request.leader.clone());
        persist = true;
    }
    // A grant never ends earlier than one already made to the same leader in the same term:
    // that leader may rely on the earlier end (its lease only grows).
    let earlier = member
        .live_grant(now)
        .filter(|g| g.leader == request.leader && g.term == request.term)
        .map_or(Micros::MIN, |g| g.until);
    m.grant = Some(Grant {
        leader: request.leader.clone(),
        term: request.term,
        until: now.saturating_add(micros(request.duration)).max(earlier),
    });
    if micros(request.duration) > m.durable.longest_grant {
        m.durable.longest_grant = micros(request.duration);
        persist = true;
    }
    Answer {
        member: m,
        verdict: Ok(()),
        persist,
    }
}

/// A candidate's election in one term: the votes it has, out of the configured members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    pub term: Term,
    pub members: usize,
    pub votes: Vec<String>,
    pub refusals: Vec<(String, Refusal)>,
}

impl Campaign {
    /// Stands in the next term: the candidate's own vote, to persist before asking anyone. The
    /// candidate votes by the rules every member follows, so it cannot stand while its own grant
    /// to a leader holds, or in the quiet period after its start: with three members, that
    /// grant may be the one that makes the leader's majority.
    /// The ballot's term must be above the candidate's own, and its claim (a standby's) above
    /// every timeline the candidate voted for.
    pub fn stand(
        me: &Member,
        ballot: &Ballot,
        members: usize,
        now: Micros,
    ) -> Result<(Campaign, Member), Refusal> {
        if ballot.term <= me.durable.term {
            return Err(Refusal::StaleTerm {
                current: me.durable.term,
                leader: me.durable.leader.clone(),
            });
        }
        let answer = vote(me, &Standing::Witness, ballot, now);
        answer.verdict?;
        let campaign = Campaign {
            term: ballot.term,
            members,
            votes: vec![ballot.rank.name.clone()],
            refusals: Vec::new(),
        };
        Ok((campaign, answer.member))
    }

    /// Counts one member's answer (each member once).
    pub fn count(&mut self, member: &str, verdict: Result<(), Refusal>) {
        if self.votes.iter().any(|v| v == member) || self.refusals.iter().any(|(n, _)| n == member) {
            return;
        }
        match verdict {
            Ok(()) => self.votes.push(member.to_string()),
            Err(r) => self.refusals.push((member.to_string(), r)),
        }
    }

    pub fn won(&self) -> bool {
        is_majority(self.votes.len(), self.members)
    }

    /// Whether a member that ranks higher refused, and will stand instead.
    pub fn outranked(&self) -> bool {
        self.refusals.iter().any(|(_, r)| r.code() == "outranked")
    }

    /// A newer term with a leader, if a member named one: this candidate must follow it.
    pub fn newer_leader(&self) -> Option<(Term, &str)> {
        self.refusals.iter().find_map(|(_, r)| match r {
            Refusal::StaleTerm {
                current,
                leader: Some(l),
            } if *current > self.term => Some((*current, l.as_str())),
            _ => None,
        })
    }
}

/// A leader's lease: renewed by rounds, each asked at `sent_at` on the leader's clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub term: Term,
    /// Until when the leader may take ordinary commits (its own clock); `None` before the first
    /// majority.
    pub valid_until: Option<Micros>,
}

/// One renewal round's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub sent_at: Micros,
    pub granted: Vec<String>,
    pub refusals: Vec<(String, Refusal)>,
}

/// What a leader learns from a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// A majority granted: the lease holds until `until`.
    Renewed { until: Micros },
    /// No majority this round; the lease (if any) runs out at its time.
    Short { granted: usize },
    /// A member knows a newer term with a leader: this leader is superseded for good.
    Superseded { term: Term, leader: String },
}

/// Counts a round (the leader's own grant included in `granted`), out of `members`.
pub fn renew(lease: &Lease, round: &Round, members: usize, duration: Duration) -> (Lease, Renewal) {
    for (_, r) in &round.refusals {
        if let Refusal::StaleTerm {
            current,
            leader: Some(l),
        } = r
        {
            if *current > lease.term {
                let renewal = Renewal::Superseded {
                    term: *current,
                    leader: l.clone(),
                };
                return (lease.clone(), renewal);
            }
        }
    }
    if is_majority(round.granted.len(), members) {
        let until = leader_lease_end(round.sent_at, duration).max(lease.valid_until.unwrap_or(Micros::MIN));
        let next = Lease {
            term: lease.term,
            valid_until: Some(until),
        };
        (next, Renewal::Renewed { until })
    } else {
        let granted = round.granted.len();
        (lease.clone(), Renewal::Short { granted })
    }
}

/// Whether the leader may take an ordinary commit at `now` (its own clock).
pub fn may_commit(lease: &Lease, now: Micros) -> bool {
    lease.valid_until.is_some_and(|until| now < until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{MS, SEC};

    const LEASE: Duration = Duration::from_secs(2);

    #[test]
    fn a_standby_sees_a_primary_that_answers_or_streams_unless_it_is_fenced_or_a_standby() {
        let now = 100 * SEC;
        let seen = Upstream {
            now,
            window: 3 * SEC,
            walrcv_last_msg: Some(now - 2 * SEC),
            last_answer_at: None,
            failures: 2,
            in_recovery: Some(false),
            fenced: false,
        };
        assert!(sees_primary(&seen));
        // The WAL receiver's silence past the window, then an answer with no failure since.
        let silent = Upstream {
            walrcv_last_msg: Some(now - 3 * SEC),
            ..seen
        };
        assert!(!sees_primary(&silent));
        let answered = Upstream {
            last_answer_at: Some(now - SEC),
            ..silent
        };
        assert!(!sees_primary(&answered));
        assert!(sees_primary(&Upstream {
            failures: 0,
            ..answered
        }));
        // Nothing answered yet: the WAL receiver alone tells.
        assert!(sees_primary(&Upstream {
            in_recovery: None,
            ..seen
        }));
        // The chaos run's seed 3047: a fenced primary that streams takes no ordinary write.
        assert!(!sees_primary(&Upstream { fenced: true, ..seen }));
        assert!(!sees_primary(&Upstream {
            in_recovery: Some(true),
            ..seen
        }));
    }

    fn rank(name: &str, lsn: u64, priority: u32) -> Rank {
        Rank {
            position: Position { timeline: 1, lsn },
            priority,
            name: name.into(),
        }
    }

    fn ballot(term: Term, name: &str, lsn: u64) -> Ballot {
        Ballot {
            term,
            rank: rank(name, lsn, 1),
            primary: false,
            claim: None,
        }
    }

    /// A standby's ballot that claims `timeline`.
    fn claiming(term: Term, name: &str, timeline: u32) -> Ballot {
        Ballot {
            claim: Some(timeline),
            ..ballot(term, name, 10)
        }
    }

    /// `Campaign::stand` with a standby's ballot that claims nothing, or a primary's.
    fn stand(
        me: &Member,
        term: Term,
        rank: &Rank,
        primary: bool,
        members: usize,
        now: Micros,
    ) -> Result<(Campaign, Member), Refusal> {
        let ballot = Ballot {
            term,
            rank: rank.clone(),
            primary,
            claim: None,
        };
        Campaign::stand(me, &ballot, members, now)
    }

    fn member(term: Term) -> Member {
        Member {
            durable: Durable {
                term,
                voted_for: None,
                leader: Some("p".into()),
                // It granted leases of this length before.
                longest_grant: micros(LEASE),
                timeline: 0,
            },
            grant: None,
            quiet_until: 0,
        }
    }

    /// A member of term 3 that granted p a lease at `at`.
    fn leased_to_p(at: Micros) -> Member {
        let request = LeaseRequest {
            term: 3,
            leader: "p".into(),
            duration: LEASE,
        };
        lease(&member(3), &request, at).member
    }

    fn lost(name: &str, lsn: u64) -> Standing {
        Standing::Standby {
            rank: rank(name, lsn, 1),
            sees_primary: false,
        }
    }

    #[test]
    fn the_state_file_round_trips_and_rejects_what_it_cannot_read() {
        let d = Durable {
            term: 7,
            voted_for: Some("s1".into()),
            leader: None,
            longest_grant: 2_000_000,
            timeline: 3,
        };
        let text = encode("pg2", &d);
        assert_eq!(
            text,
            "member pg2\nterm 7\nvoted_for s1\nleader -\nlongest_grant_us 2000000\ntimeline 3\n"
        );
        // A file written before the longest grant, or the timeline, was kept reads as none.
        assert_eq!(decode("term 7\n").unwrap().1.longest_grant, 0);
        assert_eq!(decode("term 7\n").unwrap().1.timeline, 0);
        assert!(decode("term 1\ntimeline two\n")
            .unwrap_err()
            .contains("not a timeline"));
        assert_eq!(decode(&text), Ok((Some("pg2".into()), d)));
        assert_eq!(decode("term 0\n").unwrap().1, Durable::default());
        assert!(decode("member x\n").unwrap_err().contains("no term"));
        assert!(decode("term seven\n").unwrap_err().contains("not a term"));
        assert!(decode("term 1\ncolour red\n")
            .unwrap_err()
            .contains("unknown key"));
        assert!(decode("term\n").unwrap_err().contains("no value"));
    }

    #[test]
    fn the_lease_lasts_at_least_two_checks_and_at_most_the_count_less_one() {
        let ka = Duration::from_secs(1);
        assert_eq!(lease_duration(ka, 1), 2 * ka);
        assert_eq!(lease_duration(ka, 3), 2 * ka);
        assert_eq!(lease_duration(ka, 5), 4 * ka);
    }

    #[test]
    fn a_leader_counts_its_lease_from_the_request_shortened_by_the_drift_bound() {
        assert_eq!(leader_lease_end(10 * SEC, LEASE), 10 * SEC + 1_980 * MS);
        assert_eq!(leader_lease_end(0, Duration::from_micros(100)), 99);
        assert_eq!(leader_lease_end(i64::MAX - 5, LEASE), i64::MAX);
    }

    #[test]
    fn ranks_order_position_then_priority_then_name() {
        assert!(rank("b", 2, 1) > rank("a", 1, 9));
        assert!(rank("b", 1, 2) > rank("a", 1, 1));
        assert!(
            rank("a", 1, 1) > rank("b", 1, 1),
            "the name that sorts first wins a tie"
        );
        let newer = Rank {
            position: Position { timeline: 2, lsn: 0 },
            ..rank("z", 0, 0)
        };
        assert!(newer > rank("a", u64::MAX, 9), "the timeline comes first");
    }

    #[test]
    fn one_vote_per_term_kept_before_answering() {
        let w = member(3);
        let a = vote(&w, &Standing::Witness, &ballot(4, "s1", 10), SEC);
        assert_eq!(a.verdict, Ok(()));
        assert!(a.persist);
        assert_eq!(a.member.durable.term, 4);
        assert_eq!(a.member.durable.voted_for.as_deref(), Some("s1"));
        assert_eq!(a.member.durable.leader, None);
        // The same candidate again: granted, nothing new to persist.
        let again = vote(&a.member, &Standing::Witness, &ballot(4, "s1", 10), SEC);
        assert_eq!((again.verdict, again.persist), (Ok(()), false));
        let other = vote(&a.member, &Standing::Witness, &ballot(4, "s2", 99), SEC);
        assert_eq!(
            other.verdict,
            Err(Refusal::AlreadyVoted {
                term: 4,
                candidate: "s1".into()
            })
        );
        let next = vote(&a.member, &Standing::Witness, &ballot(5, "s2", 99), SEC);
        assert_eq!(next.verdict, Ok(()));
        let stale = vote(&next.member, &Standing::Witness, &ballot(4, "s1", 10), SEC);
        assert!(matches!(
            stale.verdict,
            Err(Refusal::StaleTerm { current: 5, .. })
        ));
    }

    #[test]
    fn a_live_grant_a_recent_start_or_a_visible_primary_refuse_without_taking_the_term() {
        let granted = leased_to_p(10 * SEC);
        let a = vote(&granted, &Standing::Witness, &ballot(4, "s1", 10), 11 * SEC);
        assert_eq!(
            a.verdict,
            Err(Refusal::LeaseHeld {
                leader: "p".into(),
                term: 3,
                left: SEC
            })
        );
        assert_eq!(a.member.durable.term, 3, "the term is not taken");
        assert_eq!(
            vote(&granted, &Standing::Witness, &ballot(4, "s1", 10), 12 * SEC).verdict,
            Ok(()),
            "expired on the member's own clock"
        );

        let started = Member::start(member(3).durable, 10 * SEC, LEASE);
        let a = vote(&started, &Standing::Witness, &ballot(4, "s1", 10), 11 * SEC);
        assert_eq!(a.verdict, Err(Refusal::Starting { left: SEC }));
        assert!(!a.persist);

        let seeing = Standing::Standby {
            rank: rank("s2", 0, 1),
            sees_primary: true,
        };
        let a = vote(&member(3), &seeing, &ballot(4, "s1", 10), SEC);
        assert_eq!(a.verdict, Err(Refusal::SeesPrimary));
        assert_eq!(a.member.durable.term, 3);
    }

    #[test]
    fn a_standby_votes_only_for_a_candidate_at_least_as_advanced_and_ranked() {
        let m = member(3);
        let behind = vote(&m, &lost("s2", 20), &ballot(4, "s1", 10), SEC);
        assert!(matches!(behind.verdict, Err(Refusal::Outranked { ref by }) if by.name == "s2"));
        assert_eq!(
            behind.member.durable.term, 4,
            "the term is taken: s2 will stand in a later one"
        );
        assert_eq!(behind.member.durable.voted_for, None);
        assert_eq!(
            vote(&m, &lost("s2", 10), &ballot(4, "s1", 10), SEC).verdict,
            Ok(()),
            "s1 sorts first"
        );
        assert!(vote(&m, &lost("s0", 10), &ballot(4, "s1", 10), SEC)
            .verdict
            .is_err());
        // A standby that may never stand does not hold back an equal candidate.
        let never = Standing::Standby {
            rank: rank("s0", 10, 0),
            sees_primary: false,
        };
        assert_eq!(vote(&m, &never, &ballot(4, "s1", 10), SEC).verdict, Ok(()));
        assert!(vote(&m, &never, &ballot(4, "s1", 9), SEC).verdict.is_err());
    }

    #[test]
    fn a_lease_is_granted_to_the_leader_of_the_newest_term_only() {
        let req = |term, leader: &str| LeaseRequest {
            term,
            leader: leader.into(),
            duration: LEASE,
        };
        let m = member(3);
        let a = lease(&m, &req(3, "p"), SEC);
        assert_eq!(a.verdict, Ok(()));
        assert!(!a.persist, "same term, same leader");
        assert_eq!(a.member.live_grant(SEC).unwrap().until, 3 * SEC);
        assert!(matches!(
            lease(&m, &req(2, "old").clone(), SEC).verdict,
            Err(Refusal::StaleTerm { current: 3, .. })
        ));
        assert_eq!(
            lease(&m, &req(3, "q"), SEC).verdict,
            Err(Refusal::OtherLeader {
                term: 3,
                leader: "p".into()
            })
        );
        let newer = lease(&m, &req(4, "s1"), SEC);
        assert!(newer.persist);
        assert_eq!(newer.member.durable.leader.as_deref(), Some("s1"));
        // The old leader is refused from then on, and told who leads.
        assert_eq!(
            lease(&newer.member, &req(3, "p"), SEC).verdict,
            Err(Refusal::StaleTerm {
                current: 4,
                leader: Some("s1".into())
            })
        );
    }

    #[test]
    fn a_grant_never_shrinks_and_the_longest_one_sets_the_quiet_period_after_a_restart() {
        let ask = |duration: Duration| LeaseRequest {
            term: 3,
            leader: "p".into(),
            duration,
        };
        let long = lease(&member(3), &ask(Duration::from_secs(20)), 0);
        assert!(long.persist, "the longest grant is durable");
        assert_eq!(long.member.durable.longest_grant, 20 * SEC);
        // keep_alive reloaded shorter: the new request does not cut the grant the leader relies on.
        let short = lease(&long.member, &ask(Duration::from_secs(4)), SEC);
        assert_eq!(short.member.grant.as_ref().unwrap().until, 20 * SEC);
        assert!(!short.persist);
        // A restart with a 2 s lease of its own stays quiet for the 20 s it once granted.
        let restarted = Member::start(short.member.durable.clone(), 30 * SEC, LEASE);
        assert_eq!(restarted.quiet_until, 50 * SEC);
    }

    #[test]
    fn a_leader_whose_own_grant_holds_may_stand_again_but_no_one_else_may() {
        let granted = leased_to_p(0);
        let rank_p = rank("p", 10, 1);
        assert!(stand(&granted, 4, &rank_p, true, 3, SEC).is_ok());
        assert!(matches!(
            vote(&granted, &Standing::Witness, &ballot(4, "s1", 10), SEC).verdict,
            Err(Refusal::LeaseHeld { .. })
        ));
    }

    #[test]
    fn a_candidate_cannot_stand_while_its_own_grant_holds_or_while_quiet() {
        let me = leased_to_p(SEC);
        let refused = stand(
            &me,
            4,
            &rank("s1", 10, 1),
            false,
            3,
            SEC + LEASE.as_micros() as i64 - 1,
        );
        assert!(matches!(refused, Err(Refusal::LeaseHeld { .. })), "{refused:?}");
        assert!(stand(
            &me,
            4,
            &rank("s1", 10, 1),
            false,
            3,
            SEC + LEASE.as_micros() as i64
        )
        .is_ok());
        assert!(matches!(
            stand(&me, 3, &rank("s1", 10, 1), false, 3, 10 * SEC),
            Err(Refusal::StaleTerm { current: 3, .. })
        ));
        let starting = Member::start(me.durable.clone(), 0, LEASE);
        assert!(matches!(
            stand(&starting, 4, &rank("s1", 10, 1), false, 3, 0),
            Err(Refusal::Starting { .. })
        ));
    }

    #[test]
    fn a_standby_that_sees_the_primary_votes_for_that_primary_only() {
        let sees = Standing::Standby {
            rank: rank("s1", 10, 1),
            sees_primary: true,
        };
        let mut b = ballot(4, "s2", 20);
        assert_eq!(
            vote(&member(3), &sees, &b, SEC).verdict,
            Err(Refusal::SeesPrimary)
        );
        b.primary = true;
        assert_eq!(vote(&member(3), &sees, &b, SEC).verdict, Ok(()));
    }

    #[test]
    fn a_standby_on_a_newer_timeline_refuses_a_primary_on_an_older_one() {
        // s2 streamed from a leader promoted onto timeline 2 (and acknowledged its synchronous
        // commits); p, back on timeline 1, lacks them.
        let on_two = Standing::Standby {
            rank: Rank {
                position: Position { timeline: 2, lsn: 5 },
                ..rank("s2", 5, 1)
            },
            sees_primary: false,
        };
        let p = Ballot {
            primary: true,
            ..ballot(4, "p", 100)
        };
        let refused = vote(&member(3), &on_two, &p, SEC);
        assert!(
            matches!(refused.verdict, Err(Refusal::Outranked { ref by }) if by.name == "s2"),
            "{refused:?}"
        );
        assert_eq!(refused.member.durable.voted_for, None);
        // On one timeline the primary leads, even behind a position read later than its own.
        let on_one = Standing::Standby {
            rank: rank("s2", 500, 1),
            sees_primary: true,
        };
        assert_eq!(vote(&member(3), &on_one, &p, SEC).verdict, Ok(()));
        // A primary on a newer timeline than the standby's (promoted, the standby not yet
        // following) is not refused for it.
        let newer = Ballot {
            rank: Rank {
                position: Position { timeline: 3, lsn: 1 },
                ..p.rank.clone()
            },
            ..p.clone()
        };
        assert_eq!(vote(&member(3), &on_two, &newer, SEC).verdict, Ok(()));
    }

    #[test]
    fn a_vote_records_the_claimed_timeline_and_only_a_higher_claim_gets_the_next_one() {
        let lost = lost("w", 5);
        let first = vote(&member(3), &lost, &claiming(4, "s1", 2), SEC);
        assert_eq!(first.verdict, Ok(()));
        assert!(first.persist);
        assert_eq!(first.member.durable.timeline, 2);
        // The same ballot again: granted; the same candidate with another claim: refused.
        assert_eq!(
            vote(&first.member, &lost, &claiming(4, "s1", 2), SEC).verdict,
            Ok(())
        );
        assert_eq!(
            vote(&first.member, &lost, &claiming(4, "s1", 3), SEC).verdict,
            Err(Refusal::TimelineTaken { highest: 2 })
        );
        // The next term: a claim of the same number is refused, with the term taken all the same.
        let again = vote(&first.member, &lost, &claiming(5, "s2", 2), SEC);
        assert_eq!(again.verdict, Err(Refusal::TimelineTaken { highest: 2 }));
        assert_eq!(again.member.durable.term, 5);
        assert_eq!(again.member.durable.voted_for, None);
        let higher = vote(&again.member, &lost, &claiming(5, "s2", 3), SEC);
        assert_eq!(higher.verdict, Ok(()));
        assert_eq!(higher.member.durable.timeline, 3);
        // A primary claims nothing (it stays on its timeline); a vote for it records its own
        // timeline when that is higher (a promotion by hand made it, outside any claim).
        let mut primary = Ballot {
            primary: true,
            ..ballot(6, "p", 10)
        };
        let p = vote(&higher.member, &lost, &primary, SEC);
        assert_eq!(p.verdict, Ok(()));
        assert_eq!(p.member.durable.timeline, 3);
        primary.term = 7;
        primary.rank.position.timeline = 5;
        let p = vote(&p.member, &lost, &primary, SEC);
        assert_eq!(p.member.durable.timeline, 5);
        // A candidate's own vote follows the same rule: it must claim above its own record.
        let mine = Member {
            durable: Durable {
                timeline: 4,
                ..member(3).durable
            },
            ..member(3)
        };
        assert_eq!(
            Campaign::stand(&mine, &claiming(4, "s1", 4), 3, SEC).map(|_| ()),
            Err(Refusal::TimelineTaken { highest: 4 })
        );
        let (_, me) = Campaign::stand(&mine, &claiming(4, "s1", claim(1, 4)), 3, SEC).unwrap();
        assert_eq!(me.durable.timeline, 5);
        assert_eq!(claim(7, 4), 8, "above the newest history it has, too");
        assert_eq!(
            Refusal::from_answer("timeline_taken", "it voted", 5, None, 6),
            Refusal::TimelineTaken { highest: 6 }
        );
        assert!(Refusal::TimelineTaken { highest: 6 }
            .reason()
            .contains("claimed timeline 6"));
    }

    #[test]
    fn a_campaign_needs_a_majority_of_the_configured_members() {
        let (mut c, me) = stand(&member(3), 4, &rank("s1", 10, 1), false, 4, 0).unwrap();
        assert_eq!(c.term, 4);
        assert_eq!(me.durable.voted_for.as_deref(), Some("s1"));
        c.count("w", Ok(()));
        assert!(!c.won(), "2 of 4");
        c.count("w", Ok(()));
        assert!(!c.won(), "each member counts once");
        c.count(
            "s2",
            Err(Refusal::Outranked {
                by: rank("s2", 20, 1),
            }),
        );
        assert!(!c.won());
        assert!(c.outranked());
        c.count("p", Ok(()));
        assert!(c.won(), "3 of 4");
        assert!(is_majority(2, 3) && !is_majority(1, 2) && !is_majority(2, 4));
    }

    #[test]
    fn a_round_renews_with_a_majority_and_a_newer_leader_supersedes() {
        let l = Lease {
            term: 3,
            valid_until: None,
        };
        let round = |granted: &[&str], refusals| Round {
            sent_at: 10 * SEC,
            granted: granted.iter().map(|s| s.to_string()).collect(),
            refusals,
        };
        let (l2, r) = renew(&l, &round(&["p", "w"], vec![]), 3, LEASE);
        assert_eq!(r, Renewal::Renewed { until: 11_980 * MS });
        assert!(may_commit(&l2, 11_979 * MS) && !may_commit(&l2, 11_980 * MS));
        let (l3, r) = renew(&l2, &round(&["p"], vec![]), 3, LEASE);
        assert_eq!(r, Renewal::Short { granted: 1 });
        assert_eq!(l3, l2, "an earlier renewal runs out at its own time");
        let newer = Refusal::StaleTerm {
            current: 4,
            leader: Some("s1".into()),
        };
        let (_, r) = renew(&l2, &round(&["p", "w"], vec![("s1".into(), newer)]), 3, LEASE);
        assert_eq!(
            r,
            Renewal::Superseded {
                term: 4,
                leader: "s1".into()
            }
        );
        assert!(!may_commit(&l, 0), "no lease before the first majority");
    }
}
