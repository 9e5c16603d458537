//! What a chaos schedule runs on, whichever tool keeps it: three PostgreSQL nodes on simulated
//! hosts (and a fourth host with the tool's witness or store, when the setup has one), faults
//! carried out the tool's way, and the reads the checker makes at the end.

use std::collections::HashSet;
use std::time::Duration;

use pgwire::Client;

use super::check::NodeEnd;
use super::schedule::Op;

/// The role the clients commit as: fencing exempts superusers.
pub const CLIENT_ROLE: &str = "app";
/// The table the clients write, made on the primary once the cluster runs.
pub const SCHEMA: &str = "CREATE ROLE app LOGIN; \
                          CREATE TABLE chaos (k bigint PRIMARY KEY, began timestamptz); \
                          GRANT ALL ON chaos TO app";

/// What became of one step of a schedule.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// Not carried out, and why: the tool refused it (Patroni's REST API does when it cannot
    /// reach its store), or there was nothing to hurt (no server running on the host).
    NotDone(String),
    /// The step names the fourth host, which this setup does not have.
    NoHost,
}

/// `Sync`: a supervisor thread restarts the tool's daemons beside the schedule's steps.
pub trait Target: Sync {
    /// The PostgreSQL nodes' names, by host number (the primary at start first).
    fn names(&self) -> Vec<String>;
    /// Its hosts: the PostgreSQL nodes', then the witness's or the store's when it has one.
    fn hosts(&self) -> usize;
    /// Node `i`'s address and port.
    fn endpoint(&self, i: usize) -> (String, u16);
    /// Carries out one step of a schedule. Hosts past the PostgreSQL nodes are the witness's
    /// (or the store's). `Err` when the harness failed at it.
    fn apply(&self, op: &Op) -> Result<Applied, String>;
    /// What a service manager does (systemd's `Restart=`): the tool's daemons that exited on
    /// their own started again; called twice a second. A daemon a step killed stays down until
    /// the step that starts it.
    fn supervise(&self) {}
    /// Every fault undone: cuts healed, processes thawed, what was killed started again.
    fn undo_all(&self);
    /// The tool's word on node `i` (pg_promoter's `needs_rewind` or `fenced`: a node that says it
    /// cannot follow), or "" when it has none.
    fn state(&self, i: usize) -> String;
    /// What the tool last said on every host, for a schedule that did not settle.
    fn recent_events(&self) -> Vec<String>;
}

/// `op` on a cluster of `hosts` hosts (schedules are drawn for four): None when it names a host
/// beyond them and means nothing without it; a split keeps the hosts there are.
pub fn within(op: &Op, hosts: usize) -> Option<Op> {
    let here = |h: &usize| *h < hosts;
    match op {
        Op::Kill(h)
        | Op::Start(h)
        | Op::Freeze(h)
        | Op::Thaw(h)
        | Op::Restart(h)
        | Op::KillWorker(h)
        | Op::Isolate(h) => here(h).then(|| op.clone()),
        Op::Split(side) => {
            let side: Vec<usize> = side.iter().copied().filter(here).collect();
            (!side.is_empty() && side.len() < hosts).then_some(Op::Split(side))
        }
        Op::OneWay(a, b) => (here(a) && here(b)).then(|| op.clone()),
        Op::Heal => Some(Op::Heal),
    }
}

/// How the clients reach node `i`: as the ordinary role.
pub fn client_conninfo(t: &dyn Target, i: usize) -> String {
    let (host, port) = t.endpoint(i);
    format!("host={host} port={port} user={CLIENT_ROLE} dbname=postgres")
}

/// How the checker reads node `i`: as the servers' superuser (timeline history files).
pub fn admin_conninfo(t: &dyn Target, i: usize) -> String {
    let (host, port) = t.endpoint(i);
    format!("host={host} port={port} user=postgres dbname=postgres")
}

/// `sql`'s result as psql -At prints it: rows on lines, columns split by `|`, NULL empty.
pub fn query(conninfo: &str, sql: &str) -> Result<String, String> {
    let rows = Client::new(&format!("{conninfo} connect_timeout=2")).exec(sql, Duration::from_secs(10))?;
    Ok(rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| c.clone().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The last `n` lines of a log file, each after `who: `.
pub fn log_tail(who: &str, path: &std::path::Path, n: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("{who}: {l}"))
        .collect()
}

/// The workload's keys on node `i`.
pub fn keys(t: &dyn Target, i: usize) -> Result<HashSet<i64>, String> {
    let text = query(&admin_conninfo(t, i), "SELECT k FROM chaos WHERE k > 0")?;
    Ok(text.lines().filter_map(|l| l.parse().ok()).collect())
}

/// Node `i`'s timeline history: where each older timeline ended (from its history file).
pub fn forks(t: &dyn Target, i: usize) -> Result<Vec<(u32, u64)>, String> {
    let admin = admin_conninfo(t, i);
    let tli = query(
        &admin,
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    )?;
    if u32::from_str_radix(&tli, 16).map_err(|e| format!("timeline {tli}: {e}"))? == 1 {
        return Ok(Vec::new());
    }
    let text = query(&admin, &format!("SELECT pg_read_file('pg_wal/{tli}.history')"))?;
    // Lines: parent timeline, tab, switchpoint (X/X), tab, reason.
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli: u32 = f.next()?.parse().ok()?;
            let (hi, lo) = f.next()?.split_once('/')?;
            let lsn = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
            Some((tli, lsn))
        })
        .collect())
}

/// Every PostgreSQL node as it is now.
pub fn ends(t: &dyn Target) -> Vec<NodeEnd> {
    t.names()
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let state = query(
                &admin_conninfo(t, i),
                "SELECT pg_is_in_recovery(), \
                 (SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming')",
            );
            let mut end = NodeEnd {
                name,
                address: t.endpoint(i).0,
                state: t.state(i),
                ..NodeEnd::default()
            };
            if let Ok(row) = state {
                let cells: Vec<&str> = row.split('|').collect();
                end.reachable = true;
                end.in_recovery = cells.first() == Some(&"t");
                end.streams_from = cells.get(1).filter(|s| !s.is_empty()).map(|s| s.to_string());
            }
            // An ordinary commit, as the clients make them (a negative key: not theirs); its
            // lease is checked as theirs are, and it waits for no synchronous standby, which
            // would leave it waiting where none can follow.
            let probe = "SET synchronous_commit = local; \
                         INSERT INTO chaos VALUES (-1, now()) ON CONFLICT (k) DO UPDATE SET began = now()";
            end.takes_writes = Client::new(&format!("{} connect_timeout=2", client_conninfo(t, i)))
                .exec(probe, Duration::from_secs(3))
                .is_ok();
            end
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_on_a_missing_fourth_host_mean_nothing_and_splits_keep_the_hosts_there_are() {
        assert_eq!(within(&Op::Kill(3), 3), None);
        assert_eq!(within(&Op::Kill(2), 3), Some(Op::Kill(2)));
        assert_eq!(within(&Op::Isolate(3), 3), None);
        assert_eq!(within(&Op::OneWay(0, 3), 3), None);
        assert_eq!(within(&Op::Split(vec![0, 3]), 3), Some(Op::Split(vec![0])));
        // Only the missing host on one side, or every host there is: no partition left.
        assert_eq!(within(&Op::Split(vec![3]), 3), None);
        assert_eq!(within(&Op::Split(vec![0, 1, 2]), 3), None);
        assert_eq!(
            within(&Op::Split(vec![0, 1, 2]), 4),
            Some(Op::Split(vec![0, 1, 2]))
        );
        assert_eq!(within(&Op::Heal, 3), Some(Op::Heal));
    }
}
