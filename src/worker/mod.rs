//! The background worker: a latch loop that observes at a fixed rate, feeds what it saw to the
//! policy (`policy::step`), and carries out what comes back. It decides nothing itself: what a
//! role observes is in `standby` and `primary`, the actions are carried out by `act`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use policy::fixed::FixedText;
use policy::time::Micros;
use policy::{schedule, Action, Event, EventKind, Input, Node, Phase, Promotion, Settings};

use crate::act::fence;
use crate::act::follow;
use crate::act::leadership::{self, Arbiter};
use crate::act::member;
use crate::act::promote::Sequence;
use crate::check::members::Pool;
use crate::check::{probe, witness};
use crate::pg::latch::sleep_until;
use crate::pg::{guc, local, shmem, this_process};

mod primary;
mod standby;

/// A primary's timeline history (`pg_read_file` needs superuser or pg_read_server_files).
const HISTORY: &std::ffi::CStr = c"SELECT pg_catalog.pg_read_file($1)";

/// The postmaster restarts a crashed worker after this long (never the whole server).
const RESTART_AFTER: Duration = Duration::from_secs(5);

pub fn register() {
    BackgroundWorkerBuilder::new("pg_promoter")
        .set_type("pg_promoter")
        .set_library("pg_promoter")
        .set_function("pg_promoter_worker_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

// The postmaster finds the entry point by its name: the one unsafe attribute of this module.
#[allow(unsafe_code)]
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_promoter_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    Worker::start().run();
    // Restarted unless the server is shutting down, so a stray pg_terminate_backend() cannot
    // silently end automatic failover (exit 0 would).
    this_process::exit_for_restart()
}

fn stop_requested() -> bool {
    this_process::stop_requested()
}

struct Worker {
    /// Everything the policy remembers, settings included.
    node: Node,
    probe: probe::Probe,
    /// Kept connections to the members (a primary's rounds, elections, leases).
    pool: Pool,
    /// The parameters libpq gets for the check, or why there are none.
    params: Result<Vec<(String, String)>, String>,
    last_start: Option<Micros>,
    /// The promotion under way, if any, and the claim that keeps requests out meanwhile.
    sequence: Option<Sequence>,
    claim: Option<shmem::PromotionClaim>,
    /// When this server's name was last looked up among the peers, while it is not known.
    name_asked: Option<Instant>,
}

impl Worker {
    fn start() -> Worker {
        let now = local::now();
        // A restarted worker keeps what the previous one knew: the primary was reached, and
        // its WAL position then (the data-loss bound holds across a restart).
        let known = shmem::read().status;
        let ever_reached = known.ever_reached;
        let pid = this_process::pid();
        // The status describes this worker's checks; only what outlives a worker is kept
        // (the primary was reached, when the server was promoted).
        shmem::update(|s| {
            s.status = shmem::Status {
                worker_pid: pid,
                started_at: Some(now),
                ever_reached,
                primary_lsn: known.primary_lsn,
                primary_lsn_at: known.primary_lsn_at,
                promoted_at: s.status.promoted_at,
                ..shmem::Status::new()
            };
        });
        let settings = guc::snapshot();
        let mut worker = Worker {
            node: Node::new(settings.clone(), now, ever_reached)
                .knowing(known.primary_lsn, known.primary_lsn_at),
            probe: probe::Probe::default(),
            pool: Pool::default(),
            params: Err(String::new()),
            last_start: None,
            sequence: None,
            claim: None,
            name_asked: None,
        };
        worker.use_settings(&settings);
        // The leadership state file, read at the start: the quiet period counts from here.
        if let Err(e) = member::load(&settings) {
            warning!("pg_promoter: {e}");
        }
        if policy::leading::active(&settings) {
            // Its name first: a restarted leader renews the term it leads rather than stand
            // again, and a follower names its own slot. Interrupted by a shutdown, the loop's top
            // ends the worker.
            let _ = leadership::find_name(&mut worker.pool, &settings, &stop_requested);
        }
        worker.feed(Input::Start {
            pid,
            marker: fence::read_marker(),
            leads: member::terms().1,
        });
        worker
    }

    fn run(mut self) {
        loop {
            if stop_requested() {
                let stop = Event::new(
                    local::now(),
                    EventKind::Stop,
                    "worker stopping: shutdown requested",
                );
                shmem::record(&[stop]);
                shmem::update(|s| s.status.worker_pid = 0);
                return;
            }
            if this_process::reload_if_requested() {
                let settings = guc::snapshot();
                self.use_settings(&settings);
                self.feed(Input::Reload(settings));
                self.name_asked = None;
            }
            let now = local::now();
            let primary = !local::in_recovery();
            if !primary {
                // This server ran as a standby since its start: once promoted, ordinary logins
                // are not held for a first round (the hold is for a primary's restart; its
                // commits wait for the lease, where leadership runs).
                shmem::CHECKED.get().store(true, Ordering::Release);
            }
            if !primary && policy::leading::active(&self.node.settings) {
                // Its name, while not found yet (peers set after the start, or its own entry
                // unreachable then): a follower names its own slot by it. Asked after a reload,
                // else once a lease period, so a hung peer does not slow every check.
                let every = policy::leading::lease_duration(&self.node.settings);
                if member::name().is_none() && self.name_asked.is_none_or(|at| at.elapsed() >= every) {
                    self.name_asked = Some(Instant::now());
                    let _ = leadership::find_name(&mut self.pool, &self.node.settings, &stop_requested);
                }
                self.feed(self.leader());
            }
            if primary {
                self.feed(Input::Tick);
                if !self.node.settings.has_members() {
                    // A primary with no one to check only reports its role.
                    shmem::CHECKED.get().store(true, Ordering::Release);
                    let _ = sleep_until(Instant::now() + self.node.settings.keep_alive, &stop_requested);
                    continue;
                }
            }
            let settings = &self.node.settings;
            let period = if primary && policy::leading::active(settings) {
                policy::leading::renew_every(settings)
            } else {
                settings.keep_alive
            };
            let due = schedule::next_check(self.last_start, period, now);
            if due > now {
                let wait = Duration::from_micros((due - now) as u64);
                let _ = sleep_until(Instant::now() + wait, &stop_requested);
                continue;
            }
            self.last_start = Some(now);
            let observed = if primary && policy::leading::active(&self.node.settings) {
                // The round is a lease round (or a stand to lead), which the policy names.
                Ok(Input::Due)
            } else if primary {
                primary::observe(&mut self.pool, &self.node.settings, &stop_requested)
            } else {
                standby::observe(&mut self)
            };
            // `Err`: a shutdown interrupted the observation; the loop's top ends the worker.
            if let Ok(input) = observed {
                self.feed(input);
                if primary {
                    // Ordinary logins, held since the start, may come in: the round is done and
                    // the fence, if due, is in force.
                    shmem::CHECKED.get().store(true, Ordering::Release);
                }
            }
        }
    }

    /// The shell's side of a new settings snapshot, before the policy takes it: the check's
    /// parameters (a changed conninfo drops the kept connection) and what the status and
    /// backends read.
    fn use_settings(&mut self, settings: &Settings) {
        if (&settings.peers, &settings.witnesses)
            != (&self.node.settings.peers, &self.node.settings.witnesses)
        {
            self.pool.clear();
            // A renamed entry must not leave this server asking itself under its new name.
            member::forget_name_unless_in(&settings.peers);
        }
        let changed = settings.primary_conninfo != self.node.settings.primary_conninfo;
        if changed || self.params.is_err() {
            self.probe.disconnect();
            self.params = if settings.primary_conninfo.trim().is_empty() {
                Err(
                    "no conninfo to check the primary with: set pg_promoter.primary_conninfo or primary_conninfo"
                        .into(),
                )
            } else {
                probe::params(&settings.primary_conninfo)
                    .map_err(|e| format!("invalid primary_conninfo: {e}"))
            };
            if let Err(reason) = &self.params {
                if local::in_recovery() {
                    warning!("pg_promoter: {reason}");
                }
            }
        }
        let shown = policy::conninfo::mask_password(&settings.primary_conninfo);
        shmem::update(|s| s.status.conninfo = FixedText::new(&shown));
        shmem::publish_settings(settings);
    }

    /// Feeds an input to the policy, then carries out what it returns, feeding each result back
    /// in turn until nothing follows.
    fn feed(&mut self, first: Input) {
        let mut inputs = VecDeque::from([first]);
        while let Some(input) = inputs.pop_front() {
            let flags = shmem::flags();
            let facts = local::facts(&flags, flags.promoting && self.claim.is_none());
            let before = (self.node.standby.phase, self.node.standby.failures);
            let step = policy::step(&self.node, input, &facts);
            self.node = step.state;
            self.publish();
            if before != (self.node.standby.phase, self.node.standby.failures) {
                self.set_title();
            }
            self.record_fencing(step.events, &step.actions);
            for action in step.actions {
                match self.carry_out(action) {
                    Ok(Some(next)) => inputs.push_back(next),
                    Ok(None) => {}
                    // A shutdown interrupted a wait: nothing more is done.
                    Err(_) => return,
                }
            }
        }
        if self.node.standby.phase != Phase::Promoting {
            self.sequence = None;
            self.claim = None;
        }
    }

    /// Puts fence actions in force before their events are stamped, so no ordinary commit can
    /// follow a `fenced` event's time, and the event says what was done; then records the events.
    fn record_fencing(&self, mut events: Vec<Event>, actions: &[Action]) {
        let mode = self.node.settings.fence_mode;
        let mut done = Vec::new();
        let mut fenced = false;
        for action in actions {
            match action {
                Action::Fence { permanent, reason } => {
                    done.push(fence::fence(*permanent, reason, mode));
                    fenced = true;
                }
                Action::RestoreFence(reason) => fence::restore(reason),
                Action::Unfence => fence::unfence(),
                Action::ForgetMarker => fence::forget_marker(),
                _ => continue,
            }
            let now = local::now();
            events.iter_mut().for_each(|e| e.at = now);
        }
        for e in events
            .iter_mut()
            .filter(|e| e.kind == EventKind::Fenced && !done.is_empty())
        {
            e.detail = format!("{}; {}", e.detail, done.join("; "));
        }
        shmem::record(&events);
        if fenced && mode == policy::FenceMode::Shutdown {
            fence::shut_down();
        }
    }

    /// Carries out one action; what to feed back, if anything. `Err` when a shutdown interrupted it.
    fn carry_out(&mut self, action: Action) -> Result<Option<Input>, crate::pg::latch::Interrupted> {
        match action {
            Action::AskWitnesses => {
                let settings = &self.node.settings;
                // Without its password: a query's parameters may reach the witness's log.
                witness::ask(
                    &settings.witnesses,
                    &policy::conninfo::without_password(&settings.primary_conninfo),
                    settings.check_timeout,
                    &stop_requested,
                )
                .map(|answers| Some(Input::Votes(answers)))
            }
            Action::Stand {
                term,
                primary,
                known_timeline,
            } => {
                let mut arbiter = leadership::Members { pool: &mut self.pool };
                arbiter
                    .stand(
                        &self.node.settings,
                        (term, primary),
                        known_timeline,
                        &stop_requested,
                    )
                    .map(Some)
            }
            Action::ReadHistory {
                timeline,
                own_timeline,
            } => {
                let settings = &self.node.settings;
                // Timeline 1 has no history file, and an older primary timeline needs none.
                let primary = match &self.params {
                    Ok(_) if timeline == 1 || timeline < own_timeline => Ok(String::new()),
                    Ok(params) => {
                        let file = format!("pg_wal/{timeline:08X}.history");
                        let deadline = Instant::now() + settings.check_timeout;
                        match probe::ask(params, HISTORY, &[&file], deadline, &stop_requested)? {
                            Ok(rows) => Ok(rows
                                .first()
                                .and_then(|r| r.first().cloned().flatten())
                                .unwrap_or_default()),
                            Err(outcome) => Err(probe::reason(&outcome)),
                        }
                    }
                    Err(why) => Err(why.clone()),
                };
                let data_dir = local::data_dir();
                let read = primary.map(|primary| policy::rewind::Histories {
                    primary_timeline: timeline,
                    primary,
                    timeline: own_timeline,
                    // Missing on timeline 1, or when removed by hand: then nothing to compare.
                    own: std::fs::read_to_string(format!("{data_dir}/pg_wal/{own_timeline:08X}.history"))
                        .ok(),
                    data_dir,
                    source: policy::conninfo::mask_password(&settings.primary_conninfo),
                    slot: local::primary_slot_name(),
                });
                Ok(Some(Input::History { timeline, read }))
            }
            Action::Follow {
                leader,
                conninfo,
                slot,
            } => {
                let settings = &self.node.settings;
                let result = follow::follow(
                    &mut self.pool,
                    settings,
                    &leader,
                    &conninfo,
                    slot.as_deref(),
                    &stop_requested,
                )?;
                Ok(Some(Input::Followed { leader, result }))
            }
            Action::CreateSlots { names } => {
                let result =
                    follow::create_slots(&mut self.pool, &self.node.settings, &names, &stop_requested)?;
                Ok(Some(Input::Slots(result.map(|()| names))))
            }
            Action::RenewLease { term } => {
                let mut arbiter = leadership::Members { pool: &mut self.pool };
                arbiter
                    .renew(&self.node.settings, term, &stop_requested)
                    .map(Some)
            }
            Action::Warn(reason) => {
                warning!("pg_promoter: the primary is alive but refuses the check: {reason}");
                Ok(None)
            }
            Action::Promote => {
                self.sequence = None;
                self.claim = shmem::PromotionClaim::take();
                if self.claim.is_none() {
                    // A request got there between this step's facts and now.
                    let busy = "pg_promoter_promote() is promoting this server".to_string();
                    return Ok(Some(Input::Promotion(Promotion::SignalFailed(busy))));
                }
                let mut sequence = Sequence::new(&self.node.settings);
                let result = sequence.carry_out(&action, &stop_requested)?;
                self.sequence = Some(sequence);
                Ok(result.map(Input::Promotion))
            }
            Action::SignalPromotion { .. } | Action::AwaitWritable | Action::PostPromoteCommand => {
                // Recovery that ended after the wait for it: its post-promote command is owed.
                if action == Action::PostPromoteCommand && self.sequence.is_none() {
                    self.sequence = Some(Sequence::new(&self.node.settings));
                }
                let Some(sequence) = self.sequence.as_mut() else {
                    return Ok(None);
                };
                Ok(sequence
                    .carry_out(&action, &stop_requested)?
                    .map(Input::Promotion))
            }
            // Carried out before their events were recorded (`record_fencing`).
            Action::Fence { .. } | Action::RestoreFence(_) | Action::Unfence | Action::ForgetMarker => {
                Ok(None)
            }
            // Only a request is rejected (`pg_promoter_promote()`), never the worker's own step.
            Action::Reject(_) => Ok(None),
        }
    }

    /// What this member's state says of who leads, and whether this standby already streams
    /// from that leader (same host and port as its entry in the peers).
    fn leader(&self) -> Input {
        let (leader, term, me) = member::leader_and_name();
        let settings = &self.node.settings;
        let target = |conninfo: &str| {
            probe::params(conninfo).ok().map(|params| {
                let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
                (get("host").or(get("hostaddr")), get("port"))
            })
        };
        let upstream_is_leader = leader
            .as_ref()
            .and_then(|l| settings.peers.iter().find(|p| p.name == *l))
            .is_some_and(|p| {
                target(&p.conninfo).is_some() && target(&p.conninfo) == target(&settings.primary_conninfo)
            });
        Input::Leader {
            leader,
            term,
            me,
            upstream_is_leader,
        }
    }

    fn publish(&self) {
        // Whatever the role: a server promoted by other means (pg_promoter_promote(),
        // pg_ctl promote) takes no ordinary commit before it is elected and leased.
        let until = match self.node.leading.valid_until {
            _ if !policy::leading::active(&self.node.settings) => i64::MAX,
            Some(until) => until,
            None => i64::MIN,
        };
        shmem::LEASE_UNTIL.get().store(until, Ordering::Release);
        let st = &self.node.standby;
        shmem::update(|s| {
            s.status.phase = st.phase;
            s.status.failures = st.failures;
            s.status.refusing_since = st.refusing_since;
            s.status.ever_reached = st.ever_reached;
            s.status.primary_lsn = st.primary_lsn;
            s.status.primary_lsn_at = st.primary_lsn_at;
            s.status.needs_rewind = st.needs_rewind.is_some();
            if let Some(e) = &st.last_error {
                s.status.last_error = FixedText::new(e);
            }
        });
    }

    /// `ps` shows what the worker is doing.
    fn set_title(&self) {
        let st = &self.node.standby;
        let title = match st.phase {
            Phase::Suspecting | Phase::Refusing => {
                format!(
                    "{} {}/{}",
                    st.phase.as_str(),
                    st.failures,
                    self.node.settings.keepalives_count
                )
            }
            phase => phase.as_str().to_string(),
        };
        this_process::set_title(&title);
    }
}
