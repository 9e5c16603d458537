//! The background worker: a latch loop that checks the primary at a fixed rate, asks the policy
//! what that means, and carries out the answer. It decides nothing itself.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use policy::decide::needs_votes;
use policy::fence::{fence_step, Fence, FenceAction, FenceState, View};
use policy::fixed::FixedText;
use policy::members::Member;
use policy::{
    classify, command, conninfo, decide, schedule, Action, Event, EventKind, Facts, Outcome, Phase, Settings,
    State, Verdict, Votes,
};

use crate::latch::sleep_until;
use crate::latch::Interrupted;
use crate::probe::Probe;
use crate::{fence, guc, local, probe, promote, shmem, versions, witness};

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

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_promoter_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    Worker::start().run();
    // Exit code 1: the postmaster restarts the worker unless the server is shutting down, so a
    // stray pg_terminate_backend() cannot silently end automatic failover (exit 0 would).
    // SAFETY: ends this process the PostgreSQL way, running its exit callbacks.
    unsafe { pg_sys::proc_exit(1) }
}

/// SIGTERM: the flag PostgreSQL's own handler sets too; it is never reset, so every wait sees it.
fn stop_requested() -> bool {
    // SAFETY: a sig_atomic_t written only by the signal handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// SIGHUP: true once per reload request.
fn take_reload_request() -> bool {
    // SAFETY: a sig_atomic_t set by the signal handler and cleared here, as PostgreSQL does.
    unsafe {
        let pending = std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0;
        if pending {
            std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
        }
        pending
    }
}

struct Worker {
    state: State,
    probe: Probe,
    settings: Settings,
    check_timeout_ms: i32,
    /// The effective conninfo (unmasked) and the parameters libpq will get, or why there are none.
    conninfo: String,
    params: Result<Vec<(String, String)>, String>,
    last_start: Option<i64>,
    /// Each witness's last answer, so a vote is recorded when it changes.
    last_votes: Vec<(String, Option<bool>)>,
    /// On a primary: the fence, from the member rounds.
    fence: FenceState,
}

impl Worker {
    fn start() -> Worker {
        let now = local::now();
        // A restarted worker keeps what the previous one knew: the primary was reached.
        let ever_reached = shmem::read().status.ever_reached;
        let mut worker = Worker {
            state: State::new(now, ever_reached),
            probe: Probe::default(),
            settings: guc::settings(),
            check_timeout_ms: guc::check_timeout_ms(),
            conninfo: String::new(),
            params: Err(String::new()),
            last_start: None,
            last_votes: Vec::new(),
            fence: FenceState::open(),
        };
        if let Some(reason) = fence::read_marker().filter(|_| !local::in_recovery()) {
            // A permanent fence survives restarts until the DBA rejoins this server.
            let reason = format!("fenced by an earlier run ({}): {reason}", fence::MARKER);
            shmem::set_fence(true, true, &reason);
            shmem::record(&[Event::new(now, EventKind::Fenced, reason)]);
            worker.fence.fence = Fence::Superseded {
                by: String::new(),
                timeline: 0,
            };
        }
        // SAFETY: MyProcPid is this process's pid.
        let pid = unsafe { pg_sys::MyProcPid };
        // The status describes this worker's checks; only what outlives a worker is kept
        // (the primary was reached, when the server was promoted).
        shmem::update(|s| {
            s.status = shmem::Status {
                worker_pid: pid,
                started_at: Some(now),
                ever_reached,
                promoted_at: s.status.promoted_at,
                ..shmem::Status::new()
            };
        });
        worker.load_conninfo();
        let role = if local::in_recovery() {
            "standby"
        } else {
            "primary"
        };
        let detail = format!(
            "worker started on a {role} (PID {pid}): {}",
            worker.describe_settings()
        );
        shmem::record(&[Event::new(now, EventKind::Start, detail)]);
        worker
    }

    fn run(mut self) {
        loop {
            if stop_requested() {
                self.record(EventKind::Stop, "worker stopping: shutdown requested".into());
                shmem::update(|s| s.status.worker_pid = 0);
                return;
            }
            if take_reload_request() {
                // SAFETY: re-reads the configuration files, as every PostgreSQL process does on SIGHUP.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                self.reload();
            }
            let now = local::now();
            let primary = !local::in_recovery();
            if primary {
                self.step(None, now, None);
                if !guc::has_members() {
                    // A primary with no one to check only reports its role.
                    shmem::CHECKED.get().store(true, Ordering::Release);
                    let _ = sleep_until(Instant::now() + ms(self.settings.keep_alive_ms), &stop_requested);
                    continue;
                }
            }
            let due = schedule::next_check(self.last_start, self.settings.keep_alive_ms, now);
            if due > now {
                let _ = sleep_until(
                    Instant::now() + Duration::from_micros((due - now) as u64),
                    &stop_requested,
                );
                continue;
            }
            self.last_start = Some(now);
            if primary {
                let _ = self.round();
                continue;
            }
            let Ok(verdict) = self.check() else { continue };
            let Ok(votes) = self.votes(verdict.as_ref()) else {
                continue;
            };
            self.step(verdict.as_ref(), local::now(), votes);
        }
    }

    /// One check, published as soon as it ends; `Err` when a shutdown interrupted it.
    fn check(&mut self) -> Result<Option<Verdict>, ()> {
        let params = match &self.params {
            Ok(params) => params,
            Err(reason) => {
                let reason = reason.clone();
                shmem::update(|s| s.status.last_error = FixedText::new(&reason));
                return Ok(None);
            }
        };
        let started = Instant::now();
        let deadline = started + ms(self.check_timeout_ms);
        let outcome = self
            .probe
            .check(params, deadline, &stop_requested)
            .map_err(|_| ())?;
        let took = started.elapsed();
        let now = local::now();
        let verdict = classify(&outcome);
        shmem::update(|s| {
            let st = &mut s.status;
            st.last_check_at = Some(now);
            st.last_check_us = Some(took.as_micros() as i64);
            st.longest_check_us = st.last_check_us.max(st.longest_check_us);
            if let policy::Outcome::Answered { in_recovery, lsn, .. } = outcome {
                st.last_success_at = Some(now);
                st.primary_in_recovery = Some(in_recovery);
                st.primary_lsn = lsn.or(st.primary_lsn);
            }
        });
        Ok(Some(verdict))
    }

    /// On a primary: checks every peer and witness, then fences or unfences as the policy says.
    /// The round shares one check's deadline, split evenly, so rounds keep the fixed rate.
    fn round(&mut self) -> Result<(), Interrupted> {
        let members: Vec<(Member, bool)> = guc::peers()
            .into_iter()
            .map(|m| (m, true))
            .chain(guc::witnesses().into_iter().map(|m| (m, false)))
            .collect();
        let share = ms(self.check_timeout_ms) / members.len().max(1) as u32;
        let me = local::started_unix_us();
        let mut views = Vec::new();
        for (member, peer) in members {
            let outcome = match probe::params(&member.conninfo) {
                Ok(params) => probe::check_once(&params, Instant::now() + share, &stop_requested)?,
                Err(e) => Outcome::ConnectFailed(e),
            };
            if let Outcome::Answered {
                started: Some(started),
                ..
            } = outcome
            {
                if started == me {
                    continue; // this server's own entry
                }
            }
            let primary_timeline = match outcome {
                Outcome::Answered {
                    in_recovery: false,
                    timeline,
                    ..
                } => timeline,
                _ => None,
            };
            let answered = !matches!(classify(&outcome), Verdict::Down(_));
            views.push(View {
                name: member.name,
                peer,
                answered,
                primary_timeline,
            });
        }
        let timeline = local::insert_timeline().unwrap_or(1);
        let (fence, events, actions) = fence_step(
            &self.fence,
            &views,
            timeline,
            self.settings.keepalives_count,
            local::now(),
        );
        self.fence = fence;
        let done: Vec<String> = actions.into_iter().filter_map(apply_fence).collect();
        // Stamped once in effect, so no ordinary commit can follow a `fenced` event's time; the
        // event says why and what was done.
        let now = local::now();
        let events: Vec<Event> = events
            .into_iter()
            .map(|e| match e.kind {
                EventKind::Fenced if !done.is_empty() => Event {
                    at: now,
                    detail: format!("{}; {}", e.detail, done.join("; ")),
                    ..e
                },
                _ => Event { at: now, ..e },
            })
            .collect();
        shmem::record(&events);
        if !done.is_empty() && guc::fence_action() == guc::FenceAction::Shutdown {
            fence::shut_down();
        }
        shmem::CHECKED.get().store(true, Ordering::Release);
        Ok(())
    }

    /// Asks the witnesses when this verdict could complete the count; `Err` on shutdown.
    fn votes(&mut self, verdict: Option<&Verdict>) -> Result<Option<Votes>, ()> {
        if !verdict.is_some_and(|v| needs_votes(&self.state, v, &self.settings)) {
            return Ok(None);
        }
        let timeout = ms(self.check_timeout_ms);
        let answers =
            witness::ask(&guc::witnesses(), &self.conninfo, timeout, &stop_requested).map_err(|_| ())?;
        for a in &answers {
            let said = (a.name.clone(), a.gone);
            if !self.last_votes.contains(&said) {
                self.last_votes.retain(|(name, _)| *name != a.name);
                self.last_votes.push(said);
                self.record(
                    EventKind::WitnessVote,
                    format!("witness {}: {}", a.name, a.detail),
                );
            }
        }
        Ok(Some(witness::tally(&answers)))
    }

    /// Feeds the policy and carries out what it returns.
    fn step(&mut self, verdict: Option<&Verdict>, now: i64, votes: Option<Votes>) {
        let local = local::read();
        let shared = shmem::read();
        let facts = Facts {
            now,
            in_recovery: local.in_recovery,
            paused: shared.paused,
            walrcv_last_msg: local.walrcv_last_msg,
            primary_lsn: shared.status.primary_lsn,
            receive_lsn: local.receive_lsn,
            votes,
        };
        let before = (self.state.phase, self.state.failures);
        let decision = decide(&self.state, verdict, &facts, &self.settings);
        shmem::record(&decision.events);
        self.state = decision.state;
        self.publish();
        if before != (self.state.phase, self.state.failures) {
            self.set_title();
        }
        for action in decision.actions {
            match action {
                Action::Promote => self.promote(),
                Action::Warn(reason) => {
                    warning!("pg_promoter: the primary is alive but refuses the check: {reason}")
                }
            }
        }
    }

    /// Runs a promote hook, if set; `None` when there is none, else whether it succeeded.
    fn hook(&self, what: &str, template: &str, timeline: Option<u32>) -> Option<bool> {
        if template.trim().is_empty() {
            return None;
        }
        let values = command::Values {
            data_dir: local::data_dir(),
            timeline,
            old_primary_host: self
                .param("host")
                .or_else(|| self.param("hostaddr"))
                .unwrap_or_default(),
            old_primary_port: self.param("port").unwrap_or_else(|| "5432".into()),
            node_name: local::cluster_name(),
        };
        let line = command::expand(template, &values);
        let timeout = ms(guc::command_timeout_ms());
        let (ok, detail) = match crate::command::run(&line, timeout, &stop_requested) {
            Ok(ran) => (
                ran.exit == command::Exit::Code(0),
                command::summary(what, &ran.exit, ran.took.as_millis(), &ran.output),
            ),
            Err(e) => (false, format!("{what} could not run: {e}")),
        };
        if ok {
            versions::log(format!("pg_promoter: {detail}"));
        } else {
            warning!("pg_promoter: {detail}");
        }
        self.record(EventKind::Command, detail);
        Some(ok)
    }

    /// The first value of a parameter of the check's connection (the old primary's address).
    fn param(&self, key: &str) -> Option<String> {
        let params = self.params.as_ref().ok()?;
        let value = params.iter().find(|(k, _)| k == key)?;
        value.1.split(',').next().map(str::to_string)
    }

    fn promote(&mut self) {
        let decided = Instant::now();
        if self.hook(
            "pre_promote_command",
            &guc::pre_promote_command(),
            local::replay_timeline(),
        ) == Some(false)
        {
            // Try again once the command has had the time to recover, not at every check.
            let pause = ms(guc::command_timeout_ms().max(self.settings.keep_alive_ms));
            self.state.retry_at = Some(local::now() + pause.as_micros() as i64);
            self.state.phase = Phase::Refusing;
            self.record(
                EventKind::PromoteFailed,
                format!(
                    "pre_promote_command failed: promotion aborted, next attempt in {} ms",
                    pause.as_millis()
                ),
            );
            self.publish();
            return;
        }
        if let Err(e) = promote::signal() {
            self.record(EventKind::PromoteFailed, e);
            self.state.phase = Phase::Refusing;
            return;
        }
        let signalled = decided.elapsed();
        self.record(
            EventKind::PromoteRequested,
            format!(
                "promote signal sent to the postmaster in {} ms",
                signalled.as_millis()
            ),
        );
        match promote::wait_until_writable(&stop_requested) {
            Ok(Some(waited)) => {
                let now = local::now();
                let total = decided.elapsed();
                shmem::update(|s| s.status.promoted_at = Some(now));
                let detail = format!(
                    "recovery ended {} ms after the request; decision to writable {} ms",
                    waited.as_millis(),
                    total.as_millis()
                );
                self.record(EventKind::Promoted, detail);
                self.step(None, now, None);
                self.post_promote();
            }
            Ok(None) => {
                let detail = format!(
                    "recovery had not ended {} s after the request",
                    promote::WAIT.as_secs()
                );
                self.record(EventKind::PromoteFailed, detail);
                self.state.phase = Phase::Refusing;
                self.publish();
            }
            Err(_) => {}
        }
    }

    /// Runs the post-promote command once the server accepts writes.
    fn post_promote(&self) {
        self.hook(
            "post_promote_command",
            &guc::post_promote_command(),
            local::insert_timeline(),
        );
    }

    /// Applies reloaded settings and records what changed.
    fn reload(&mut self) {
        let old = (self.settings, self.check_timeout_ms, self.conninfo.clone());
        self.settings = guc::settings();
        self.check_timeout_ms = guc::check_timeout_ms();
        self.load_conninfo();
        let mut changes = Vec::new();
        let mut changed = |name: &str, from: String, to: String| {
            if from != to {
                changes.push(format!("{name} {from} -> {to}"));
            }
        };
        changed(
            "keep_alive",
            format!("{} ms", old.0.keep_alive_ms),
            format!("{} ms", self.settings.keep_alive_ms),
        );
        changed(
            "keepalives_count",
            old.0.keepalives_count.to_string(),
            self.settings.keepalives_count.to_string(),
        );
        changed(
            "check_timeout",
            format!("{} ms", old.1),
            format!("{} ms", self.check_timeout_ms),
        );
        changed(
            "enabled",
            onoff(old.0.enabled).into(),
            onoff(self.settings.enabled).into(),
        );
        changed("primary_conninfo", quoted(&old.2), quoted(&self.conninfo));
        let detail = if changes.is_empty() {
            "configuration reloaded: no pg_promoter setting changed".to_string()
        } else {
            format!("configuration reloaded: {}", changes.join(", "))
        };
        self.record(EventKind::Reload, detail);
    }

    /// Reads the effective conninfo and, when it changed, parses it and drops the old connection.
    fn load_conninfo(&mut self) {
        let current = guc::primary_conninfo();
        if current == self.conninfo && self.params.is_ok() {
            return;
        }
        self.probe.disconnect();
        self.params = if current.trim().is_empty() {
            Err(
                "no conninfo to check the primary with: set pg_promoter.primary_conninfo or primary_conninfo"
                    .into(),
            )
        } else {
            probe::params(&current).map_err(|e| format!("invalid primary_conninfo: {e}"))
        };
        match &self.params {
            Err(reason) if local::in_recovery() => warning!("pg_promoter: {reason}"),
            _ => {}
        }
        self.conninfo = current;
        let shown = conninfo::mask_password(&self.conninfo);
        shmem::update(|s| s.status.conninfo = FixedText::new(&shown));
    }

    fn describe_settings(&self) -> String {
        format!(
            "keep_alive {} ms, keepalives_count {}, check_timeout {} ms, enabled {}, primary_conninfo {}",
            self.settings.keep_alive_ms,
            self.settings.keepalives_count,
            self.check_timeout_ms,
            onoff(self.settings.enabled),
            quoted(&self.conninfo)
        )
    }

    fn record(&self, kind: EventKind, detail: String) {
        shmem::record(&[Event::new(local::now(), kind, detail)]);
    }

    fn publish(&self) {
        let st = &self.state;
        shmem::update(|s| {
            s.status.phase = st.phase;
            s.status.failures = st.failures;
            s.status.ever_reached = st.ever_reached;
            if let Some(e) = &st.last_error {
                s.status.last_error = FixedText::new(e);
            }
        });
    }

    /// `ps` shows what the worker is doing.
    fn set_title(&self) {
        let title = match self.state.phase {
            Phase::Suspecting | Phase::Refusing => {
                format!(
                    "{} {}/{}",
                    self.state.phase.as_str(),
                    self.state.failures,
                    self.settings.keepalives_count
                )
            }
            phase => phase.as_str().to_string(),
        };
        let title = CString::new(title).expect("no zero byte in a phase name");
        // SAFETY: set_ps_display copies the string.
        unsafe { pg_sys::set_ps_display(title.as_ptr()) };
    }
}

fn ms(ms: i32) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// A conninfo as it may appear in events and the log: password masked.
fn quoted(conninfo: &str) -> String {
    format!("'{}'", conninfo::mask_password(conninfo))
}

/// Puts a fence action in force; returns what was done, for the event.
fn apply_fence(action: FenceAction) -> Option<String> {
    match action {
        FenceAction::Fence { permanent, reason } => {
            shmem::set_fence(true, permanent, &reason);
            if permanent {
                fence::write_marker(&reason);
            }
            Some(match guc::fence_action() {
                guc::FenceAction::RefuseConnections => {
                    let ended = fence::terminate_sessions();
                    format!("ordinary connections refused, {ended} session(s) ended")
                }
                guc::FenceAction::Shutdown => "fence_action is shutdown: fast shutdown requested".to_string(),
            })
        }
        FenceAction::Unfence => {
            shmem::set_fence(false, false, "");
            None
        }
    }
}
