//! What pg_promoter costs while all is well: connections opened on the primary, the worker's CPU
//! and memory, the primary's throughput with and without the worker (interleaved runs), the same
//! with three members and leadership (lease rounds, the commit-time lease check), and how long a
//! standby takes to shut down while its primary is frozen.
#![allow(unsafe_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::Node;

fn settings(keep_alive_ms: u64, count: u32) -> Vec<(&'static str, String)> {
    vec![
        ("pg_promoter.keep_alive", format!("'{keep_alive_ms}ms'")),
        ("pg_promoter.keepalives_count", count.to_string()),
    ]
}

/// A primary and two standbys with one `peers` list (leadership), `keep_alive_ms` x `count`;
/// returned once the primary leads and a standby watches.
fn three(name: &str, keep_alive_ms: u64, count: u32) -> Result<Vec<Node>, String> {
    let s = settings(keep_alive_ms, count);
    let s: Vec<(&str, &str)> = s.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let primary = Node::primary(&format!("{name}-p"), &s);
    primary.psql("CREATE EXTENSION pg_promoter")?;
    let mut nodes = vec![primary];
    for i in 1..=2 {
        nodes.push(Node::standby(
            &format!("{name}-s{i}"),
            &nodes[0],
            nodes[0].port(),
            &s,
        ));
    }
    let peers: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("n{i}: {}", n.conninfo()))
        .collect();
    for node in &nodes {
        node.append_conf(&format!("pg_promoter.peers = '{}'", peers.join("; ")));
        node.reload();
    }
    testbed::try_wait_until(Duration::from_secs(60), || {
        nodes[0].psql("SELECT leader FROM pg_promoter_status").as_deref() == Ok("n0")
            && nodes[2].psql("SELECT state FROM pg_promoter_status").as_deref() == Ok("watching")
    })
    .ok_or("the primary never led, or a standby never watched")?;
    Ok(nodes)
}

/// What leadership costs while all is well, per node of three: new connections per hour on
/// each, and each worker's CPU (the primary's renews its lease, the standbys' check it).
#[derive(Debug)]
pub struct MembersCost {
    pub keep_alive_ms: u64,
    pub count: u32,
    pub seconds: u64,
    pub sessions_per_hour: Vec<f64>,
    pub cpu_seconds_per_hour: Vec<f64>,
}

pub fn members(keep_alive_ms: u64, count: u32, duration: Duration) -> Result<MembersCost, String> {
    let nodes = three(&format!("cost3-{keep_alive_ms}"), keep_alive_ms, count)?;
    let pids: Vec<String> = nodes
        .iter()
        .map(|n| n.psql("SELECT worker_pid FROM pg_promoter_status"))
        .collect::<Result<_, _>>()?;
    let read = || -> Result<Vec<(f64, f64)>, String> {
        nodes
            .iter()
            .zip(&pids)
            .map(|(n, pid)| Ok((sessions(n)?, cpu_seconds(pid)?)))
            .collect()
    };
    let before = read()?;
    std::thread::sleep(duration);
    let after = read()?;
    let per_hour = 3600.0 / duration.as_secs_f64();
    Ok(MembersCost {
        keep_alive_ms,
        count,
        seconds: duration.as_secs(),
        // Each node's second reading opens one session of its own.
        sessions_per_hour: before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a.0 - b.0 - 1.0).max(0.0) * per_hour)
            .collect(),
        cpu_seconds_per_hour: before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a.1 - b.1) * per_hour)
            .collect(),
    })
}

/// The primary's throughput for an ordinary role (its commits pass the lease check), three
/// members at 100 ms x 3, against the same primary restarted without the library.
pub fn members_overhead(rounds: usize, seconds: u64) -> Result<Overhead, String> {
    let nodes = three("overhead3", 100, 3)?;
    // The primary restarts between rounds: at 100 ms x 3 its standbys would fail over. They
    // still grant and answer the leases.
    for standby in &nodes[1..] {
        standby.append_conf("pg_promoter.enabled = off");
        standby.reload();
    }
    let primary = &nodes[0];
    pgbench_init(primary)?;
    primary.psql("CREATE ROLE bench LOGIN; GRANT ALL ON ALL TABLES IN SCHEMA public TO bench")?;
    interleaved(rounds, |with| {
        restart_with_library(primary, with);
        if with {
            testbed::try_wait_until(Duration::from_secs(60), || {
                primary
                    .psql("SELECT lease_expires_at IS NOT NULL FROM pg_promoter_status")
                    .as_deref()
                    == Ok("t")
            })
            .ok_or("the primary did not lead again after its restart")?;
        }
        pgbench_tps_as(primary, "bench", seconds)
    })
}

fn pair(name: &str, keep_alive_ms: u64) -> Result<(Node, Node), String> {
    let s = settings(keep_alive_ms, 3);
    let s: Vec<(&str, &str)> = s.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let primary = Node::primary(&format!("{name}-p"), &s);
    primary.psql("CREATE EXTENSION pg_promoter")?;
    let standby = Node::standby(&format!("{name}-s"), &primary, primary.port(), &s);
    testbed::try_wait_until(Duration::from_secs(60), || {
        standby.psql("SELECT state FROM pg_promoter_status").as_deref() == Ok("watching")
    })
    .ok_or("the worker never watched")?;
    Ok((primary, standby))
}

#[derive(Debug)]
pub struct WorkerCost {
    pub keep_alive_ms: u64,
    pub seconds: u64,
    pub sessions_per_hour: f64,
    pub cpu_seconds_per_hour: f64,
    pub rss_kb: u64,
    pub anon_kb: u64,
}

fn sessions(primary: &Node) -> Result<f64, String> {
    primary
        .psql("SELECT sum(sessions) FROM pg_stat_database")?
        .parse()
        .map_err(|e| format!("{e}"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("bad stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().map_err(|e| e.to_string())?
        + fields[12].parse::<f64>().map_err(|e| e.to_string())?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn status_kb(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn worker(keep_alive_ms: u64, duration: Duration) -> Result<WorkerCost, String> {
    let (primary, standby) = pair(&format!("cost{keep_alive_ms}"), keep_alive_ms)?;
    let pid = standby.psql("SELECT worker_pid FROM pg_promoter_status")?;
    let (s0, c0) = (sessions(&primary)?, cpu_seconds(&pid)?);
    std::thread::sleep(duration);
    let (s1, c1) = (sessions(&primary)?, cpu_seconds(&pid)?);
    let per_hour = 3600.0 / duration.as_secs_f64();
    Ok(WorkerCost {
        keep_alive_ms,
        seconds: duration.as_secs(),
        // The second reading's own session is not the worker's.
        sessions_per_hour: (s1 - s0 - 1.0).max(0.0) * per_hour,
        cpu_seconds_per_hour: (c1 - c0) * per_hour,
        rss_kb: status_kb(&pid, "VmRSS:"),
        anon_kb: status_kb(&pid, "RssAnon:"),
    })
}

fn pgbench_tps(primary: &Node, seconds: u64) -> Result<f64, String> {
    pgbench_tps_as(primary, "postgres", seconds)
}

fn pgbench_tps_as(primary: &Node, user: &str, seconds: u64) -> Result<f64, String> {
    let out = Command::new(testbed::bindir().join("pgbench"))
        .args(["-c", "4", "-j", "2", "-n", "-T", &seconds.to_string()])
        .arg(format!("{} user={user}", primary.conninfo()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("pgbench: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

fn pgbench_init(primary: &Node) -> Result<(), String> {
    let init = Command::new(testbed::bindir().join("pgbench"))
        .args(["-i", "-q", "-s", "10"])
        .arg(primary.conninfo())
        .output()
        .map_err(|e| e.to_string())?;
    if init.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        ))
    }
}

#[derive(Debug)]
pub struct Overhead {
    pub with_worker: Vec<f64>,
    pub without_worker: Vec<f64>,
}

impl Overhead {
    pub fn ratio(&self) -> f64 {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        mean(&self.with_worker) / mean(&self.without_worker)
    }
}

/// Primary throughput with the standby's worker checking every 100 ms, and with the standby
/// restarted without the library.
pub fn overhead(rounds: usize, seconds: u64) -> Result<Overhead, String> {
    let (primary, standby) = pair("overhead", 100)?;
    pgbench_init(&primary)?;
    interleaved(rounds, |with| {
        restart_with_library(&standby, with);
        pgbench_tps(&primary, seconds)
    })
}

/// `rounds` rounds of a measurement with the library, then without it, alternating, so drift of
/// the machine hits both alike.
fn interleaved(
    rounds: usize,
    mut measure: impl FnMut(bool) -> Result<f64, String>,
) -> Result<Overhead, String> {
    let mut result = Overhead {
        with_worker: Vec::new(),
        without_worker: Vec::new(),
    };
    for _ in 0..rounds {
        result.with_worker.push(measure(true)?);
        result.without_worker.push(measure(false)?);
    }
    Ok(result)
}

/// Restarts `node` with pg_promoter preloaded, or without it.
fn restart_with_library(node: &Node, with: bool) {
    let preload = if with { "'pg_promoter'" } else { "''" };
    node.append_conf(&format!("shared_preload_libraries = {preload}"));
    node.restart();
}

/// A peer's cost while all is well, measured as pg_promoter's: new connections per hour on the
/// primary, and the CPU and memory of the tool's daemons beside PostgreSQL (each daemon's
/// process group, its PostgreSQL processes left out).
#[derive(Debug)]
pub struct PeerCost {
    pub label: String,
    pub seconds: u64,
    pub sessions_per_hour: f64,
    /// Each daemon: its name, CPU seconds per hour, and resident memory at the end.
    pub daemons: Vec<(String, f64, u64)>,
}

pub fn peer(tool: &dyn crate::cluster::Tool, duration: Duration) -> Result<PeerCost, String> {
    let cluster = tool.start(2)?;
    let admin = &cluster.admin_conninfos()[0];
    let sessions = || -> Result<f64, String> {
        let rows = pgwire::Client::new(admin).exec(
            "SELECT sum(sessions) FROM pg_stat_database",
            Duration::from_secs(5),
        )?;
        let text = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        text.parse().map_err(|e| format!("sessions: {e}"))
    };
    let usage = || -> Vec<(String, f64, u64)> {
        (cluster.daemons().into_iter())
            .map(|(name, group)| {
                let pids: Vec<String> = super::tools::common::group_processes(group)
                    .iter()
                    .map(i32::to_string)
                    .collect();
                let cpu: f64 = pids.iter().filter_map(|p| cpu_seconds(p).ok()).sum();
                let rss: u64 = pids.iter().map(|p| status_kb(p, "VmRSS:")).sum();
                (name, cpu, rss)
            })
            .collect()
    };
    let (s0, u0) = (sessions()?, usage());
    std::thread::sleep(duration);
    let (s1, u1) = (sessions()?, usage());
    let per_hour = 3600.0 / duration.as_secs_f64();
    Ok(PeerCost {
        label: tool.label(),
        seconds: duration.as_secs(),
        // The second reading's own session is the benchmark's.
        sessions_per_hour: (s1 - s0 - 1.0).max(0.0) * per_hour,
        daemons: u0
            .into_iter()
            .zip(u1)
            .map(|((name, c0, _), (_, c1, rss))| (name, (c1 - c0) * per_hour, rss))
            .collect(),
    })
}

/// A fast shutdown of the standby while its primary is frozen and a check hangs on it.
pub fn shutdown_while_frozen() -> Result<Duration, String> {
    let (primary, standby) = pair("stopfrozen", 1000)?;
    primary.freeze();
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    standby.stop_fast();
    let took = start.elapsed();
    primary.thaw();
    Ok(took)
}
