//! This server as a member of the leadership protocol: it answers a candidate's vote request or a
//! leader's lease request (`pg_promoter_vote()`, `pg_promoter_lease()`, run by the asking
//! worker), with the rules of `policy::leader`. A changed term or vote reaches the state file,
//! fsynced, before the answer leaves; the lease granted lives in shared memory.

use std::time::Duration;

use pgrx::prelude::*;

use policy::fixed::FixedText;
use policy::leader::{self, Ballot, Durable, Grant, LeaseRequest, Member, Refusal, Standing};
use policy::schedule::silence_window;
use policy::Settings;

use crate::pg::shmem::{self, MemberShared};
use crate::pg::{local, state_file};

/// An answer: granted or refused (with why), and the member's term and leader afterwards.
pub struct Answer {
    pub verdict: Result<(), Refusal>,
    pub term: u64,
    pub leader: Option<String>,
}

/// Answers a vote request, with this server's standing as the settings and local facts say.
pub fn vote(settings: &Settings, ballot: &Ballot) -> Result<Answer, String> {
    let standing = standing(settings);
    answer(settings, |m, now| leader::vote(m, &standing, ballot, now))
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
    let now = local::now();
    let window = silence_window(settings.keep_alive, settings.keepalives_count);
    let recent = |at: Option<i64>| at.is_some_and(|at| now - at < window);
    let sees_primary =
        recent(facts.walrcv_last_msg) || (status.failures == 0 && recent(status.last_success_at));
    let lsn = facts.receive_lsn.max(facts.replay_lsn).unwrap_or(0);
    Standing::Standby {
        rank: leader::Rank {
            position: leader::Position {
                timeline: local::replay_timeline().unwrap_or(0),
                lsn,
            },
            priority: settings.priority,
            name: shmem::MEMBER.share().name.as_str().to_string(),
        },
        sees_primary,
    }
}
