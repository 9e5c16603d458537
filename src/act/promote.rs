//! The one promotion sequence, for the worker's decision and for `pg_promoter_promote()` alike:
//! the pre-promote command (a failure aborts), PostgreSQL's own promotion path (placeholder
//! history files so that it lands on the timeline claimed in the election, the `promote` signal
//! file, then SIGUSR1 to the postmaster, as `pg_ctl promote` does), the wait until
//! recovery has ended, and the post-promote command. The policy names each step
//! (`Action::Promote`, `SignalPromotion`, `AwaitWritable`, `PostPromoteCommand`); this carries
//! it out and returns its result, which the caller feeds back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use policy::hook::{self, Exit};
use policy::{Action, Event, EventKind, Promotion, Settings};

use super::process;
use crate::check::probe;
use crate::pg::latch::{sleep_until, Interrupted};
use crate::pg::{history, local, shmem, this_process, versions};

/// How long to wait for recovery to end (`pg_promote()`'s default wait).
pub const WAIT: Duration = Duration::from_secs(60);

/// Carries out the promotion steps the policy names, one at a time, and times them.
pub struct Sequence {
    hooks: Hooks,
    decided: Instant,
    requested: Instant,
}

impl Sequence {
    /// A sequence for these settings (the hooks, their timeout, the old primary's address).
    pub fn new(settings: &Settings) -> Sequence {
        Sequence {
            hooks: Hooks::new(settings),
            decided: Instant::now(),
            requested: Instant::now(),
        }
    }

    /// Carries out one promotion action: what to feed back, if anything. `None` also for an
    /// action that is not a promotion step. `Err` when `stop` interrupted a wait (the worker is
    /// stopping, or a backend's query was cancelled).
    pub fn carry_out(
        &mut self,
        action: &Action,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Promotion>, Interrupted> {
        Ok(match action {
            Action::Promote => {
                self.decided = Instant::now();
                let template = &self.hooks.pre_promote_command;
                match self
                    .hooks
                    .run("pre_promote_command", template, local::replay_timeline(), stop)
                {
                    Some(false) => Some(Promotion::PreCommandFailed),
                    _ => Some(Promotion::Ready),
                }
            }
            Action::SignalPromotion { timeline } => {
                // Before the signal: PostgreSQL picks the new timeline when recovery ends.
                let placed = match timeline {
                    Some(claim) => match history::claim(*claim, local::replay_timeline().unwrap_or(1)) {
                        Ok(placed) => placed,
                        Err(why) => return Ok(Some(Promotion::SignalFailed(why))),
                    },
                    None => Vec::new(),
                };
                // Owed from before the signal, so that recovery ending at once finds it owed; an
                // earlier promotion's, still pending (a forced request), stays owed if this fails.
                let earlier = shmem::update(|s| std::mem::replace(&mut s.promotion_pending, true));
                Some(match signal() {
                    Ok(()) => {
                        self.requested = Instant::now();
                        Promotion::Requested {
                            took: self.decided.elapsed(),
                        }
                    }
                    Err(e) => {
                        shmem::update(|s| s.promotion_pending = earlier);
                        history::forget(&placed);
                        Promotion::SignalFailed(e)
                    }
                })
            }
            Action::AwaitWritable => Some(if wait_until_writable(stop)? {
                shmem::update(|s| s.status.promoted_at = Some(local::now()));
                Promotion::Writable {
                    waited: self.requested.elapsed(),
                    total: self.decided.elapsed(),
                    timeline: local::insert_timeline(),
                }
            } else {
                Promotion::NotWritable {
                    waited: self.requested.elapsed(),
                }
            }),
            Action::PostPromoteCommand => {
                // Once per promotion, whoever saw recovery end.
                if shmem::take_post_promote() {
                    let template = &self.hooks.post_promote_command;
                    self.hooks
                        .run("post_promote_command", template, local::insert_timeline(), stop);
                }
                None
            }
            _ => None,
        })
    }
}

/// Asks the postmaster to end recovery.
fn signal() -> Result<(), String> {
    let path = PathBuf::from(local::data_dir()).join("promote");
    std::fs::write(&path, b"").map_err(|e| format!("could not write file \"{}\": {e}", path.display()))?;
    this_process::signal_postmaster_promote().inspect_err(|_| {
        let _ = std::fs::remove_file(&path);
    })
}

/// Waits on the latch until recovery has ended: `Ok(false)` if it had not within `WAIT`.
fn wait_until_writable(stop: &dyn Fn() -> bool) -> Result<bool, Interrupted> {
    let start = Instant::now();
    while local::in_recovery() {
        if start.elapsed() >= WAIT {
            return Ok(false);
        }
        // Recovery ends in the startup process, which does not set our latch: poll often.
        sleep_until(Instant::now() + Duration::from_millis(5), stop)?;
    }
    Ok(true)
}

/// The promote hooks with the placeholder values they share.
struct Hooks {
    pre_promote_command: String,
    post_promote_command: String,
    values: hook::Values,
    timeout: Duration,
}

impl Hooks {
    fn new(settings: &Settings) -> Hooks {
        let params = probe::params(&settings.primary_conninfo).unwrap_or_default();
        // The first value of a parameter of the check's connection (the old primary's address).
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.split(',').next().map(str::to_string))
        };
        Hooks {
            pre_promote_command: settings.pre_promote_command.clone(),
            post_promote_command: settings.post_promote_command.clone(),
            values: hook::Values {
                data_dir: local::data_dir(),
                timeline: None,
                old_primary_host: param("host").or_else(|| param("hostaddr")).unwrap_or_default(),
                old_primary_port: param("port").unwrap_or_else(|| "5432".into()),
                node_name: local::cluster_name(),
            },
            timeout: settings.command_timeout,
        }
    }

    /// Runs a hook, if set, and records how it went; `None` when there is none, else whether it
    /// succeeded.
    fn run(
        &self,
        what: &str,
        template: &str,
        timeline: Option<u32>,
        stop: &dyn Fn() -> bool,
    ) -> Option<bool> {
        if template.trim().is_empty() {
            return None;
        }
        let values = hook::Values {
            timeline,
            ..self.values.clone()
        };
        let line = hook::expand(template, &values);
        let (ok, detail) = match process::run(&line, self.timeout, stop) {
            Ok(ran) => (
                ran.exit == Exit::Code(0),
                hook::summary(what, &ran.exit, ran.took.as_millis(), &ran.output),
            ),
            Err(e) => (false, format!("{what} could not run: {e}")),
        };
        if ok {
            versions::log(format!("pg_promoter: {detail}"));
        } else {
            warning!("pg_promoter: {detail}");
        }
        shmem::record(&[Event::new(local::now(), EventKind::Command, detail)]);
        Some(ok)
    }
}
