//! This server as a member of the leadership protocol: it answers a candidate's vote request or a
//! leader's lease request (`pg_promoter_vote()`, `pg_promoter_lease()`, run by the asking
//! worker), with the rules of `policy::leader`. A changed term or vote reaches the state file,
//! fsynced, before the answer leaves; the lease granted lives in shared memory.

use std::time::Duration;

use pgrx::prelude::*;

use policy::fixed::FixedText;
use policy::leader::{
    self, Ballot, Campaign, Durable, Grant, LeaseRequest, Member, Rank, Refusal, Standing, Upstream,
};
use policy::schedule::silence_window;
use policy::Settings;
use policy::{Event, EventKind};

use crate::pg::shmem::{self, MemberShared};
use crate::pg::{local, state_file};

/// An answer: granted or refused (with why), and the member's term, leader and highest claimed
/// timeline afterwards.
pub struct Answer {
    pub verdict: Result<(), Refusal>,
    pub term: u64,
    pub leader: Option<String>,
    pub timeline: u32,
}

/// Answers a vote request, with this server's standing as the settings and local facts say,
/// and records the answer as an event.
pub fn vote(settings: &Settings, ballot: &Ballot) -> Result<Answer, String> {
    let standing = standing(settings);
    let a = answer(settings, |m, now| leader::vote(m, &standing, ballot, now))?;
    let (kind, detail) = match &a.verdict {
        Ok(()) => (
            EventKind::VoteGranted,
            match ballot.claim {
                Some(c) => format!(
                    "vote granted to {} in term {}, claiming timeline {c}",
                    ballot.rank.name, ballot.term
                ),
                None => format!("vote granted to {} in term {}", ballot.rank.name, ballot.term),
            },
        ),
        Err(r) => (
            EventKind::VoteRefused,
            format!(
                "vote refused to {} in term {}: {}",
                ballot.rank.name,
                ballot.term,
                r.reason()
            ),
        ),
    };
    shmem::record(&[Event::new(local::now(), kind, detail)]);
    Ok(a)
}

/// This server stands in `term`: its own vote, by the rules every member follows, on disk
/// before anyone is asked. A standby claims the timeline it would promote onto: above its newest
/// timeline history (`newest`), its own record and `known_timeline` (`leader::claim`). The
/// ballot to send, or why its own vote is refused (`Refusal::Failed` when it could not vote).
pub fn stand(
    settings: &Settings,
    (term, rank, primary): (u64, &Rank, bool),
    newest: u32,
    known_timeline: u32,
) -> Result<Ballot, Refusal> {
    let mut shared = shmem::MEMBER.exclusive();
    load_into(&mut shared, settings).map_err(Refusal::Failed)?;
    let members = policy::leading::members(settings);
    let me = member(&shared);
    let ballot = Ballot {
        term,
        rank: rank.clone(),
        primary,
        claim: (!primary).then(|| leader::claim(newest, me.durable.timeline.max(known_timeline))),
    };
    let (_, me) = Campaign::stand(&me, &ballot, members, local::lease_clock())?;
    state_file::write(shared.name.as_str(), &me.durable).map_err(Refusal::Failed)?;
    store(&mut shared, &me);
    Ok(ballot)
}

/// This server's name among the members, once known.
pub fn name() -> Option<String> {
    text(&shmem::MEMBER.share().name)
}

/// Forgets this server's name when `peers` no longer has it (found again by start time).
pub fn forget_name_unless_in(peers: &[policy::members::Member]) {
    let mut shared = shmem::MEMBER.exclusive();
    let name = shared.name.as_str().to_string();
    if !name.is_empty() && !peers.iter().any(|p| p.name == name) {
        shared.name = FixedText::new("");
    }
}

/// Records this server's name, found among the peers.
pub fn set_name(name: &str) {
    shmem::MEMBER.exclusive().name = FixedText::new(name);
}

/// The leader this member knows for its term, that term (read together), and its own name.
pub fn leader_and_name() -> (Option<String>, leader::Term, Option<String>) {
    let shared = shmem::MEMBER.share();
    (text(&shared.leader), shared.term, text(&shared.name))
}

/// This member's term, and the term it leads according to its state file.
pub fn terms() -> (u64, Option<u64>) {
    let shared = shmem::MEMBER.share();
    let leads = (!shared.name.as_str().is_empty() && shared.leader.as_str() == shared.name.as_str())
        .then_some(shared.term);
    (shared.term, leads)
}

/// How this server ranks as a candidate named `name`: a standby by what it received or
/// replayed, a primary by what it wrote.
pub fn rank(settings: &Settings, name: &str) -> Rank {
    let facts = local::read();
    let position = if facts.in_recovery {
        leader::Position {
            timeline: local::replay_timeline().unwrap_or(0),
            lsn: facts.receive_lsn.max(facts.replay_lsn).unwrap_or(0),
        }
    } else {
        leader::Position {
            timeline: local::insert_timeline().unwrap_or(0),
            lsn: local::insert_lsn(),
        }
    };
    Rank {
        position,
        priority: settings.priority,
        name: name.to_string(),
    }
}

/// Answers a lease request.
pub fn lease(settings: &Settings, request: &LeaseRequest) -> Result<Answer, String> {
    answer(settings, |m, now| leader::lease(m, request, now))
}

/// Reads the state file once after a start; the member then stays quiet for one lease, since
/// the grants it made before were in memory.
pub fn load(settings: &Settings) -> Result<(), String> {
    let mut shared = shmem::MEMBER.exclusive();
    load_into(&mut shared, settings)
}

fn load_into(shared: &mut MemberShared, settings: &Settings) -> Result<(), String> {
    if shared.loaded {
        return Ok(());
    }
    let (owner, durable) = state_file::read()?.unwrap_or_default();
    let member = Member::start(durable, local::lease_clock(), lease_of(settings));
    store(shared, &member);
    // This node's name: its cluster_name, when the member list has it.
    let name = local::cluster_name();
    if settings.peers.iter().any(|p| p.name == name) {
        shared.name = FixedText::new(&name);
        if let Some(owner) = owner.filter(|o| *o != name) {
            // A base backup or pg_rewind copied it: its term is a lower bound of the cluster's,
            // and the quiet period covers the rest (docs/leadership.md).
            warning!(
                "pg_promoter: file \"{}\" was written by member \"{owner}\", not by this member \"{name}\"",
                state_file::FILE
            );
        }
    }
    shared.loaded = true;
    Ok(())
}

fn answer(settings: &Settings, rule: impl FnOnce(&Member, i64) -> leader::Answer) -> Result<Answer, String> {
    let mut shared = shmem::MEMBER.exclusive();
    load_into(&mut shared, settings)?;
    let now = local::lease_clock();
    let a = rule(&member(&shared), now);
    if a.persist {
        // Under the lock: no other answer can be given from the state before this one.
        state_file::write(shared.name.as_str(), &a.member.durable)?;
    }
    store(&mut shared, &a.member);
    Ok(Answer {
        verdict: a.verdict,
        term: a.member.durable.term,
        leader: a.member.durable.leader,
        timeline: a.member.durable.timeline,
    })
}

fn lease_of(settings: &Settings) -> Duration {
    leader::lease_duration(settings.keep_alive, settings.keepalives_count)
}

fn text(t: &FixedText<64>) -> Option<String> {
    (!t.as_str().is_empty()).then(|| t.as_str().to_string())
}

fn member(s: &MemberShared) -> Member {
    Member {
        durable: Durable {
            term: s.term,
            voted_for: text(&s.voted_for),
            leader: text(&s.leader),
            longest_grant: s.longest_grant,
            timeline: s.timeline,
        },
        grant: text(&s.grant_leader).map(|leader| Grant {
            leader,
            term: s.grant_term,
            until: s.grant_until,
        }),
        quiet_until: s.quiet_until,
    }
}

fn store(s: &mut MemberShared, m: &Member) {
    let name = |n: &Option<String>| FixedText::new(n.as_deref().unwrap_or(""));
    s.term = m.durable.term;
    s.voted_for = name(&m.durable.voted_for);
    s.longest_grant = m.durable.longest_grant;
    s.timeline = m.durable.timeline;
    s.leader = name(&m.durable.leader);
    s.grant_leader = name(&m.grant.as_ref().map(|g| g.leader.clone()));
    s.grant_term = m.grant.as_ref().map_or(0, |g| g.term);
    s.grant_until = m.grant.as_ref().map_or(0, |g| g.until);
    s.quiet_until = m.quiet_until;
}

/// What this server is when asked: a standby (its rank, and whether it still sees the primary,
/// as its worker last saw it), or else a primary or a witness, which the rules treat alike.
fn standing(settings: &Settings) -> Standing {
    let facts = local::read();
    if !facts.in_recovery {
        return Standing::Witness;
    }
    let status = shmem::read_status();
    let sees_primary = leader::sees_primary(&Upstream {
        now: local::now(),
        window: silence_window(settings.keep_alive, settings.keepalives_count),
        walrcv_last_msg: facts.walrcv_last_msg,
        last_answer_at: status.last_success_at,
        failures: status.failures,
        in_recovery: status.primary_in_recovery,
        fenced: status.primary_fenced,
    });
    let mut rank = rank(settings, &name().unwrap_or_default());
    // A standby that will not stand (disabled, paused, never reached its primary) does not
    // refuse a candidate level with it in its own favour.
    let flags = shmem::flags();
    if !settings.enabled || flags.paused || !status.ever_reached {
        rank.priority = 0;
    }
    Standing::Standby { rank, sees_primary }
}
