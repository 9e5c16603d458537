//! What every failover tool under test provides: a running two-node cluster on simulated hosts,
//! a way to hurt its primary, and (when it has one) its own account of the failover.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the primary's postmaster.
    Kill,
    /// SIGSTOP of every process of the primary.
    Freeze,
    /// The primary's host cut from every other host (the benchmark's own client still reaches it).
    Cut,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::Kill, Fault::Freeze, Fault::Cut];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Freeze => "freeze",
            Fault::Cut => "cut",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

pub trait Cluster {
    /// How the benchmark client reaches each node; index 0 is the primary at start.
    fn conninfos(&self) -> Vec<String>;
    /// Hurts node 0.
    fn inject(&self, fault: Fault);
    /// Undoes a freeze or a cut, so the cluster can be torn down.
    fn recover(&self);
    /// The tool's own account, in Unix seconds: when it decided to fail over and when the new
    /// primary (node `new_primary`) became writable.
    fn reported(&self, _new_primary: usize) -> Option<(f64, f64)> {
        None
    }
}

/// `Sync`: soaks run every tool side by side, each from its own thread.
pub trait Tool: Sync {
    /// Tool and setting, e.g. "pg_promoter 200ms×3".
    fn label(&self) -> String;
    fn family(&self) -> &'static str;
    /// The detection budget the settings promise (the time a dead primary goes unnoticed).
    fn budget(&self) -> Duration;
    /// The longest period among the tool's checkers: faults are injected at a uniformly random
    /// moment over it, so no phase of any schedule is favoured.
    fn phase_span(&self) -> Duration;
    /// The exact settings, recorded with the results.
    fn settings(&self) -> Vec<(String, String)>;
    fn start(&self) -> Result<Box<dyn Cluster>, String>;
}
