//! Carrying out the leadership actions over the member majority: standing for election (this
//! server's own vote, then every other member's) and renewing the lease (this server's own
//! grant, then every other member's), each over the members' kept connections, all at once.
//! What the answers mean is the policy's (`policy::leading`).
//!
//! This is the one seam a later arbiter (an etcd lease, say) would replace: `Arbiter` is what
//! the worker needs of one.

use std::ffi::CStr;
use std::time::Instant;

use policy::leader::{LeaseRequest, Refusal, Term};
use policy::leading::{self, Answers};
use policy::{Input, Outcome, Settings};

use crate::act::member;
use crate::check::members::{Ask, Pool};
use crate::check::probe::{self, Rows, CHECK_QUERY};
use crate::pg::latch::Interrupted;
use crate::pg::{history, local};

const VOTE: &CStr = c"SELECT granted, term, leader, refusal, refused_for, timeline \
    FROM pg_promoter_vote($1::int8, $2, $3::int4, $4, $5::int4, $6::bool, NULLIF($7, '')::int4)";
const LEASE: &CStr = c"SELECT granted, term, leader, refusal, refused_for, timeline \
    FROM pg_promoter_lease($1::int8, $2, $3::interval)";

/// What the worker needs of whatever decides who leads: an election, a lease round. Each
/// returns the input to feed back.
pub trait Arbiter {
    fn stand(
        &mut self,
        settings: &Settings,
        candidacy: (Term, bool),
        known_timeline: u32,
        stop: &dyn Fn() -> bool,
    ) -> Result<Input, Interrupted>;
    fn renew(
        &mut self,
        settings: &Settings,
        term: Term,
        stop: &dyn Fn() -> bool,
    ) -> Result<Input, Interrupted>;
}

/// Leadership decided by a majority of the configured members, asked over `pool`.
pub struct Members<'a> {
    pub pool: &'a mut Pool,
}

impl Arbiter for Members<'_> {
    fn stand(
        &mut self,
        settings: &Settings,
        (term, primary): (Term, bool),
        known_timeline: u32,
        stop: &dyn Fn() -> bool,
    ) -> Result<Input, Interrupted> {
        let cannot = |me: String, why: Refusal| Input::Election {
            me,
            term,
            claim: None,
            answers: Vec::new(),
            error: Some(why),
        };
        let Some(me) = find_name(self.pool, settings, stop)? else {
            return Ok(cannot(String::new(), Refusal::Failed(not_found())));
        };
        let rank = member::rank(settings, &me);
        // What this server's promotion would otherwise go past: its claim goes above it.
        let newest = match history::files() {
            Ok(files) => policy::timeline::newest(rank.position.timeline, &files),
            Err(why) => return Ok(cannot(me, Refusal::Failed(why))),
        };
        let ballot = match member::stand(settings, (term, &rank, primary), newest, known_timeline) {
            Ok(ballot) => ballot,
            Err(why) => return Ok(cannot(me, why)),
        };
        let position = policy::lsn::format(rank.position.lsn);
        let args = vec![
            term.to_string(),
            me.clone(),
            rank.position.timeline.to_string(),
            position,
            rank.priority.to_string(),
            primary.to_string(),
            // Empty, read as NULL: a primary claims no timeline.
            ballot.claim.map(|c| c.to_string()).unwrap_or_default(),
        ];
        // Its own vote is in: done once the others' votes make a majority, or cannot.
        let needed = majority(settings) - 1;
        let answers = ask_others(self.pool, settings, &me, VOTE, &args, Some(needed), stop)?;
        Ok(Input::Election {
            me,
            term,
            claim: ballot.claim,
            answers,
            error: None,
        })
    }

    fn renew(
        &mut self,
        settings: &Settings,
        term: Term,
        stop: &dyn Fn() -> bool,
    ) -> Result<Input, Interrupted> {
        let me = member::name().unwrap_or_default();
        let duration = leading::lease_duration(settings);
        // The lease counts from here, before any request leaves (this server's own included).
        let sent_at = local::lease_clock();
        let request = LeaseRequest {
            term,
            leader: me.clone(),
            duration,
        };
        let own = match member::lease(settings, &request) {
            Ok(a) => a.verdict,
            Err(why) => Err(Refusal::Unreachable(why)),
        };
        let args = vec![
            term.to_string(),
            me.clone(),
            format!("{} microseconds", duration.as_micros()),
        ];
        // A standby renewing has just won, and its promotion waits on this lease: done once a
        // majority granted it. A primary's rounds hear every member out, so that no kept
        // connection is closed with a question in flight.
        let needed = local::in_recovery().then(|| majority(settings) - usize::from(own.is_ok()));
        let mut answers = vec![(me.clone(), own)];
        answers.extend(ask_others(self.pool, settings, &me, LEASE, &args, needed, stop)?);
        Ok(Input::Leases {
            term,
            sent_at,
            answers,
        })
    }
}

fn not_found() -> String {
    "this server is not among pg_promoter.peers: no entry answered with its start time (set \
     cluster_name to its name there, or check its conninfo)"
        .into()
}

/// How many members make a majority of the configured ones.
fn majority(settings: &Settings) -> usize {
    leading::members(settings) / 2 + 1
}

/// Asks every member but `me` the same question, within one check's timeout; with `needed`,
/// done as soon as that many granted, or too many refused for that.
fn ask_others(
    pool: &mut Pool,
    settings: &Settings,
    me: &str,
    sql: &CStr,
    args: &[String],
    needed: Option<usize>,
    stop: &dyn Fn() -> bool,
) -> Result<Answers, Interrupted> {
    let asks: Vec<Ask> = settings
        .peers
        .iter()
        .chain(&settings.witnesses)
        .filter(|m| m.name != me)
        .map(|m| Ask {
            name: &m.name,
            conninfo: &m.conninfo,
            sql,
            args: args.to_vec(),
        })
        .collect();
    // A round fits in a renewal period (see `leading::renew_every`).
    let timeout = settings.check_timeout.min(leading::renew_every(settings));
    let others = asks.len();
    let decided = |results: &[Option<Rows>]| {
        let Some(needed) = needed else { return false };
        let answered = results.iter().flatten();
        let granted = answered.clone().filter(|r| verdict((*r).clone()).is_ok()).count();
        let refused = answered.count() - granted;
        granted >= needed || refused > others.saturating_sub(needed)
    };
    let answers = pool.ask_until(&asks, Instant::now() + timeout, stop, &decided)?;
    Ok(answers
        .into_iter()
        .map(|(name, rows)| (name, verdict(rows)))
        .collect())
}

/// A member's answer row: `granted, term, leader, refusal, refused_for, timeline`.
fn verdict(rows: Rows) -> Result<(), Refusal> {
    let rows = rows.map_err(|o| Refusal::Unreachable(probe::reason(&o)))?;
    let cell = |i: usize| rows.first().and_then(|r| r.get(i)).cloned().flatten();
    match cell(0).as_deref() {
        Some("t") => Ok(()),
        Some("f") => {
            let term = cell(1).and_then(|t| t.parse().ok()).unwrap_or(0);
            let reason = cell(3).unwrap_or_default();
            let timeline = cell(5).and_then(|t| t.parse().ok()).unwrap_or(0);
            Err(Refusal::from_answer(
                &cell(4).unwrap_or_default(),
                &reason,
                term,
                cell(2),
                timeline,
            ))
        }
        _ => Err(Refusal::Unreachable("it gave no answer".into())),
    }
}

/// This server's name among the members: known already, else the peer whose check answers
/// with this server's start time (every node runs the same member list).
pub fn find_name(
    pool: &mut Pool,
    settings: &Settings,
    stop: &dyn Fn() -> bool,
) -> Result<Option<String>, Interrupted> {
    if let Some(name) = member::name() {
        return Ok(Some(name));
    }
    let asks: Vec<Ask> = settings
        .peers
        .iter()
        .map(|m| Ask {
            name: &m.name,
            conninfo: &m.conninfo,
            sql: CHECK_QUERY,
            args: Vec::new(),
        })
        .collect();
    let started = local::started_unix_us();
    let found = pool
        .ask_all(&asks, Instant::now() + settings.check_timeout, stop)?
        .into_iter()
        .find(|(_, rows)| {
            matches!(rows.as_ref().map(|r| probe::answered(r)),
                Ok(Outcome::Answered { started: Some(s), .. }) if s == started)
        })
        .map(|(name, _)| name);
    if let Some(name) = &found {
        member::set_name(name);
    }
    Ok(found)
}
