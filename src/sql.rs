//! The SQL surface: status and events for `pg_monitor`, pause/resume/promote for superusers.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{impl_sql_translatable, IntoDatum};
use policy::standby::estimated_loss;
use policy::text::sentence;
use policy::{classify, Action, Event, EventKind, Input, Node, Outcome, Promotion, Verdict};

use policy::leader::{Ballot, LeaseRequest, Position, Rank};

use crate::act;
use crate::act::promote::{Sequence, WAIT};
use crate::check::probe;
use crate::pg::shmem::Running;
use crate::pg::{guc, latch, local, shmem};

/// A WAL position, returned as `pg_lsn`.
pub struct Lsn(u64);

impl IntoDatum for Lsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        crate::pg::versions::LSN_OID
    }
}

impl_sql_translatable!(Lsn, "pg_lsn");

// SAFETY: returns the by-value int64 datum that pg_lsn is.
unsafe impl BoxRet for Lsn {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: a pg_lsn datum is its 64-bit value, as the declared return type says.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0)) }
    }
}

/// The status's settings columns are `integer`, as the settings themselves.
fn int4(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn ts(t: Option<i64>) -> Option<TimestampWithTimeZone> {
    t.and_then(|t| TimestampWithTimeZone::try_from(t).ok())
}

/// One row: what the worker knows and what this server is.
// pgrx reads the column names from the signature itself, so the row type cannot be an alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_promoter_status() -> TableIterator<
    'static,
    (
        name!(role, String),
        name!(state, String),
        name!(enabled, bool),
        name!(paused, bool),
        name!(primary_conninfo, String),
        name!(keep_alive_ms, i32),
        name!(keepalives_count, i32),
        name!(consecutive_failures, i64),
        name!(primary_reached, bool),
        name!(last_check_at, Option<TimestampWithTimeZone>),
        name!(last_success_at, Option<TimestampWithTimeZone>),
        name!(last_check_ms, Option<f64>),
        name!(longest_check_ms, Option<f64>),
        name!(last_error, Option<String>),
        name!(refusing_since, Option<TimestampWithTimeZone>),
        name!(primary_in_recovery, Option<bool>),
        name!(primary_lsn, Option<Lsn>),
        name!(receive_lsn, Option<Lsn>),
        name!(replay_lsn, Option<Lsn>),
        name!(walreceiver_streaming, bool),
        name!(walreceiver_last_msg_at, Option<TimestampWithTimeZone>),
        name!(promoted_at, Option<TimestampWithTimeZone>),
        name!(worker_pid, Option<i32>),
        name!(worker_started_at, Option<TimestampWithTimeZone>),
        name!(max_lag_on_failover, i64),
        name!(estimated_loss_bytes, Option<i64>),
        name!(fenced, bool),
        name!(fence_reason, Option<String>),
        name!(term, i64),
        name!(leader, Option<String>),
        name!(voted_for, Option<String>),
        name!(lease_expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    shmem::require();
    let shared = shmem::read();
    let member = *shmem::MEMBER.share();
    let st = shared.status;
    let local = local::read();
    let role = if local.in_recovery { "standby" } else { "primary" };
    let running = st.worker_pid != 0;
    let fenced = shmem::fenced();
    let state = match (running, fenced) {
        (_, true) => "fenced",
        (true, false) if st.needs_rewind && local.in_recovery => "needs_rewind",
        (true, false) => st.phase.as_str(),
        (false, false) => "stopped",
    };
    let error = st.last_error.as_str();
    let conninfo = if running {
        st.conninfo.as_str().to_string()
    } else {
        String::new()
    };
    // What the worker runs with; with no worker, what one would start with.
    let settings = if running && shared.running.published {
        shared.running
    } else {
        Running::of(&guc::snapshot())
    };
    let row = (
        role.to_string(),
        state.to_string(),
        settings.enabled,
        shared.paused,
        conninfo,
        int4(settings.keep_alive_ms),
        int4(settings.keepalives_count),
        i64::from(st.failures),
        st.ever_reached,
        ts(st.last_check_at),
        ts(st.last_success_at),
        st.last_check_us.map(|us| us as f64 / 1000.0),
        st.longest_check_us.map(|us| us as f64 / 1000.0),
        (!error.is_empty()).then(|| error.to_string()),
        ts(st.refusing_since),
        st.primary_in_recovery,
        st.primary_lsn.map(Lsn),
        local.receive_lsn.map(Lsn),
        local.replay_lsn.map(Lsn),
        local.walrcv_streaming,
        ts(local.walrcv_last_msg),
        ts(st.promoted_at),
        running.then_some(st.worker_pid),
        ts(st.started_at),
        settings.max_lag_bytes,
        estimated_loss(st.primary_lsn, local.receive_lsn.max(local.replay_lsn)).map(|b| b as i64),
        fenced,
        fenced.then(|| shared.fence_reason.as_str().to_string()),
        i64::try_from(member.term).unwrap_or(i64::MAX),
        named(&member.leader),
        named(&member.voted_for),
        // The lease this server granted, on the wall clock.
        (!member.grant_leader.as_str().is_empty() && member.grant_until > local::lease_clock())
            .then(|| ts(Some(local::now() + member.grant_until - local::lease_clock())))
            .flatten(),
    );
    TableIterator::once(row)
}

fn named(text: &policy::fixed::FixedText<64>) -> Option<String> {
    (!text.as_str().is_empty()).then(|| text.as_str().to_string())
}

/// A vote request from a candidate's worker, answered with the rules of the leadership protocol:
/// at most one vote per term, kept in the state file before the answer leaves.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn pg_promoter_vote(
    term: i64,
    candidate: &str,
    timeline: i32,
    position: &str,
    priority: i32,
    primary: default!(bool, false),
    claim: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(granted, bool),
        name!(term, i64),
        name!(leader, Option<String>),
        name!(refusal, Option<String>),
        name!(refused_for, Option<String>),
        name!(timeline, i64),
    ),
> {
    shmem::require();
    let ballot = Ballot {
        term: nonnegative("term", term),
        rank: Rank {
            position: Position {
                timeline: nonnegative("timeline", timeline.into()) as u32,
                lsn: policy::lsn::parse(position).unwrap_or_else(|| {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("invalid WAL position \"{position}\""),
                        "Write it as pg_lsn does, for example 0/3000148."
                    );
                }),
            },
            priority: nonnegative("priority", priority.into()) as u32,
            name: member_name(candidate),
        },
        primary,
        claim: claim.map(|c| {
            if c < 2 {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("claimed timeline {c} is out of range"),
                    "A promotion lands on timeline 2 or above."
                );
            }
            c as u32
        }),
    };
    if primary && ballot.claim.is_some() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a primary's ballot claims no timeline",
            "A primary stays on its timeline: pass claim only for a standby."
        );
    }
    member_answer(act::member::vote(&guc::snapshot(), &ballot))
}

/// A lease request from the leader's worker: granted until `duration` from now on this
/// server's clock, unless a newer term or another leader of this term is known.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn pg_promoter_lease(
    term: i64,
    leader: &str,
    duration: Interval,
) -> TableIterator<
    'static,
    (
        name!(granted, bool),
        name!(term, i64),
        name!(leader, Option<String>),
        name!(refusal, Option<String>),
        name!(refused_for, Option<String>),
        name!(timeline, i64),
    ),
> {
    shmem::require();
    let micros = duration.as_micros();
    if micros <= 0 || micros > 3_600_000_000 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "duration must be between 1 microsecond and 1 hour",
        );
    }
    let request = LeaseRequest {
        term: nonnegative("term", term),
        leader: member_name(leader),
        duration: Duration::from_micros(micros as u64),
    };
    member_answer(act::member::lease(&guc::snapshot(), &request))
}

type MemberRow = (bool, i64, Option<String>, Option<String>, Option<String>, i64);

fn member_answer(answer: Result<act::member::Answer, String>) -> TableIterator<'static, MemberRow> {
    let a = answer.unwrap_or_else(|e| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "could not keep the leadership state",
            format!("{}.", policy::text::sentence(&e).trim_end_matches('.')),
        );
    });
    let refused = a.verdict.err();
    let term = i64::try_from(a.term).unwrap_or(i64::MAX);
    TableIterator::once((
        refused.is_none(),
        term,
        a.leader,
        refused.as_ref().map(|r| r.reason()),
        refused.as_ref().map(|r| r.code().to_string()),
        i64::from(a.timeline),
    ))
}

fn nonnegative(what: &str, v: i64) -> u64 {
    u64::try_from(v).unwrap_or_else(|_| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} must not be negative"),
        );
    })
}

/// A member name as the member lists allow them.
fn member_name(name: &str) -> String {
    let valid = !name.is_empty()
        && name.len() <= policy::leader::NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid member name \"{name}\""),
            "Member names are 1 to 63 letters, digits, \"_\", \"-\" or \".\"."
        );
    }
    name.to_string()
}

/// The most recent events, oldest first.
#[pg_extern(volatile, parallel_safe)]
fn pg_promoter_events() -> TableIterator<
    'static,
    (
        name!(seq, i64),
        name!(at, Option<TimestampWithTimeZone>),
        name!(event, String),
        name!(detail, String),
    ),
> {
    shmem::require();
    let events = shmem::read().events.events();
    let rows = events
        .into_iter()
        .map(|(seq, e)| (seq as i64, ts(Some(e.at)), e.kind.as_str().to_string(), e.detail));
    TableIterator::new(rows)
}

fn set_paused(paused: bool) -> bool {
    shmem::require();
    let was = shmem::update(|s| std::mem::replace(&mut s.paused, paused));
    if was != paused {
        let (kind, detail) = if paused {
            (
                EventKind::Paused,
                "automatic promotion paused by pg_promoter_pause()",
            )
        } else {
            (
                EventKind::Resumed,
                "automatic promotion resumed by pg_promoter_resume()",
            )
        };
        shmem::record(&[Event::new(local::now(), kind, detail)]);
    }
    was != paused
}

/// Stops automatic promotion until `pg_promoter_resume()`; checks and reports go on.
/// Returns false when already paused.
#[pg_extern(volatile)]
fn pg_promoter_pause() -> bool {
    set_paused(true)
}

/// Allows automatic promotion again. Returns false when not paused.
#[pg_extern(volatile)]
fn pg_promoter_resume() -> bool {
    set_paused(false)
}

/// Promotes this standby now, through the worker's own sequence (pre-promote command, signal,
/// wait until writable, post-promote command), and waits until it accepts writes. Without
/// `force`, refuses when the primary was never reached since the worker started or when the
/// estimated data loss exceeds `pg_promoter.max_lag_on_failover`.
#[pg_extern(volatile)]
fn pg_promoter_promote(force: default!(bool, false)) -> bool {
    shmem::require();
    let shared = shmem::read();
    let status = shared.status;
    let mut node = Node::new(guc::snapshot(), local::now(), status.ever_reached)
        .knowing(status.primary_lsn, status.primary_lsn_at);
    // One promotion at a time: without the claim, the policy refuses (another one is under way).
    let claim = shmem::PromotionClaim::take();
    // Interrupts (statement_timeout, cancel) raise their ERROR until the postmaster is signalled;
    // from then on the sequence is finished (the wait for writable is bounded, and so is the
    // post-promote command), so that a promoted server always gets its post-promote command.
    let signalled = std::cell::Cell::new(false);
    let interrupted = || {
        if !signalled.get() {
            pgrx::check_for_interrupts!();
        }
        false
    };
    let mut sequence = Sequence::new(&node.settings);
    let mut inputs = vec![Input::Manual { force }];
    let mut last = None;
    while let Some(input) = inputs.pop() {
        let facts = local::facts(&shmem::flags(), claim.is_none());
        let step = policy::step(&node, input, &facts);
        node = step.state;
        shmem::record(&step.events);
        for action in step.actions {
            if let Action::Reject(why) = action {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "cannot promote this server",
                    sentence(&why),
                );
            }
            let result = sequence
                .carry_out(&action, &interrupted)
                .unwrap_or_else(|latch::Interrupted| unreachable!("interrupts raise an ERROR"));
            if let Some(Promotion::Requested { .. }) = result {
                // Before recovery can end, so the worker names who ended it.
                shmem::update(|s| s.promoted_by_request = true);
                signalled.set(true);
            }
            if let Some(result) = result {
                last = Some(result.clone());
                inputs.push(Input::Promotion(result));
            }
        }
    }
    drop(claim);
    match last {
        Some(Promotion::PreCommandFailed) => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "cannot promote this server",
                "The pre_promote_command failed: promotion aborted.",
            );
        }
        Some(Promotion::SignalFailed(e)) => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
                "could not request promotion",
                format!("{e}.")
            );
        }
        Some(Promotion::Writable { .. }) => return true,
        _ => {}
    }
    warning!(
        "pg_promoter: server did not promote within {} seconds",
        WAIT.as_secs()
    );
    false
}

/// Checks a server with the worker's own non-blocking code: whether it is reachable (it
/// answered, even to refuse us, and is not a fenced primary), its role, timeline and WAL
/// position, and the error. It can be
/// cancelled like any query. A witness runs it for a standby; a DBA can run it by hand.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn pg_promoter_probe(
    conninfo: &str,
    timeout: default!(Interval, "'1s'"),
) -> TableIterator<
    'static,
    (
        name!(reachable, Option<bool>),
        name!(role, Option<String>),
        name!(timeline, Option<i32>),
        name!(lsn, Option<Lsn>),
        name!(error, Option<String>),
        name!(elapsed_ms, f64),
    ),
> {
    let micros = timeout.as_micros();
    if micros <= 0 || micros > 3_600_000_000 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must be between 1 microsecond and 1 hour",
        );
    }
    let params = match probe::params(conninfo) {
        Ok(params) => params,
        Err(reason) => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "invalid connection string",
                format!("{reason}."),
            );
        }
    };
    let interrupts = || {
        pgrx::check_for_interrupts!();
        false
    };
    let start = Instant::now();
    let deadline = start + Duration::from_micros(micros as u64);
    let outcome = probe::check_once(&params, deadline, &interrupts)
        .unwrap_or_else(|_| unreachable!("interrupts raise an ERROR"));
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let row = match (&outcome, classify(&outcome)) {
        // A fenced primary answered, but counts as down: not reachable, and the error says why.
        (
            Outcome::Answered {
                in_recovery,
                lsn,
                timeline,
                ..
            },
            verdict,
        ) => {
            let down = match verdict {
                Verdict::Down(reason) => Some(reason),
                _ => None,
            };
            (
                Some(down.is_none()),
                Some(if *in_recovery { "standby" } else { "primary" }.to_string()),
                timeline.map(|t| t as i32),
                lsn.map(Lsn),
                down,
                elapsed_ms,
            )
        }
        (_, Verdict::Misconfigured(reason)) => (Some(true), None, None, None, Some(reason), elapsed_ms),
        (_, Verdict::Down(reason)) => (Some(false), None, None, None, Some(reason), elapsed_ms),
        // Its name did not resolve: nothing was tried, so nothing is known.
        (_, Verdict::Unknown(reason)) => (None, None, None, None, Some(reason), elapsed_ms),
        (_, Verdict::Alive) => unreachable!("only an answer is alive"),
    };
    TableIterator::once(row)
}

extension_sql!(
    r#"
CREATE VIEW pg_promoter_status AS SELECT * FROM pg_promoter_status();

-- Reading is for monitoring roles; changing behaviour is for superusers only.
REVOKE ALL ON FUNCTION pg_promoter_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_promoter_events() FROM PUBLIC;
REVOKE ALL ON pg_promoter_status FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_promoter_status() TO pg_monitor;
GRANT EXECUTE ON FUNCTION pg_promoter_events() TO pg_monitor;
GRANT SELECT ON pg_promoter_status TO pg_monitor;
REVOKE ALL ON FUNCTION pg_promoter_pause() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_promoter_resume() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_promoter_promote(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_promoter_probe(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_promoter_vote(bigint, text, integer, text, integer, boolean, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_promoter_lease(bigint, text, interval) FROM PUBLIC;
"#,
    name = "privileges",
    finalize,
);
