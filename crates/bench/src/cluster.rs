//! What every failover tool under test provides: a running cluster of a primary and one standby
//! or more on simulated hosts, a way to hurt its primary, and (when it has one) its own account
//! of the failover.

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
    /// How the benchmark reads each node's replication state (`pg_stat_replication`'s `state`
    /// needs a privileged role): the same nodes in the same order. The client's, unless the
    /// client is an ordinary role.
    fn admin_conninfos(&self) -> Vec<String> {
        self.conninfos()
    }
    /// Hurts node 0.
    fn inject(&self, fault: Fault);
    /// Undoes a freeze or a cut, so the cluster can be torn down.
    fn recover(&self);
    /// What the tool runs beside PostgreSQL, for its cost: each daemon's name and process group.
    fn daemons(&self) -> Vec<(String, i32)> {
        Vec::new()
    }
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
    /// Whether an old primary cut off from the others stops taking writes before a standby is
    /// promoted (a lease, a demote timeout, synchronous replication it waits on): the ratios
    /// compare such tools with pg_promoter's setup that does the same.
    fn fences(&self) -> bool {
        false
    }
    /// Whether [`Tool::start`] can run `nodes` PostgreSQL nodes (a primary and `nodes - 1`
    /// standbys); two, unless the tool says more.
    fn supports(&self, nodes: usize) -> bool {
        nodes == 2
    }
    /// A running cluster of `nodes` PostgreSQL nodes, each on its own simulated host, node 0 the
    /// primary (only counts that [`Tool::supports`] allows).
    fn start(&self, nodes: usize) -> Result<Box<dyn Cluster>, String>;
}

/// A trial's label: the tool and setting, and the node count.
pub fn case_label(tool: &dyn Tool, nodes: usize) -> String {
    format!("{}, {nodes} nodes", tool.label())
}

/// The tool-and-setting label and the node count of a trial's label ([`case_label`]); a label
/// from before node counts were recorded is a two-node one.
pub fn split_label(label: &str) -> (&str, usize) {
    label
        .rsplit_once(", ")
        .and_then(|(tool, tail)| Some((tool, tail.strip_suffix(" nodes")?.parse().ok()?)))
        .unwrap_or((label, 2))
}
