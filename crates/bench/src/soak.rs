//! False failovers: the primary saturated by pgbench for a while, alone, with a CPU hog on the
//! machine, or with short network stalls (each shorter than the tool's detection budget). A
//! promotion during a soak is a false failover: the primary never died. The soak then goes on
//! on a cluster built afresh, until its time is up, so it counts every false failover its time
//! holds; the time really soaked excludes the rebuilds. A tool may also stop writes without
//! failing over (a leader that demotes itself during a stall): a client committing every 100 ms
//! on the primary, over a path no stall cuts, measures the longest write outage.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pgwire::Client;

use crate::cluster::{Cluster, Fault, Tool};
use crate::rto::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Load,
    CpuHog,
    Stalls,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Load, Variant::CpuHog, Variant::Stalls];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Load => "pgbench",
            Variant::CpuHog => "pgbench+cpu hog",
            Variant::Stalls => "pgbench+stalls",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Soak {
    pub label: String,
    pub variant: Variant,
    /// The time asked for, and the time really soaked (watching a running cluster).
    pub seconds: u64,
    pub soaked_secs: f64,
    pub failovers: u32,
    /// Clusters built afresh after a false failover.
    pub rebuilds: u32,
    pub stalls: u32,
    pub stall_ms: u64,
    /// The longest stall as the harness made it, from the start of the cut to the end of the
    /// heal (an upper bound: on a busy machine the `ip` commands wait for the CPU too).
    pub longest_stall_ms: Option<u64>,
    pub tps: Option<f64>,
    /// pg_promoter only: the longest check the standby's worker saw.
    pub longest_check_ms: Option<f64>,
    /// The longest time between two commits acknowledged by the primary, and how many of the
    /// probe's commits failed (each waits at most 1 s).
    pub longest_write_gap_ms: Option<u64>,
    pub failed_commits: u64,
    /// pg_promoter's own account of each false failover: its decision and the checks before it.
    pub why: Vec<String>,
    pub error: Option<String>,
}

fn pgbench(conninfo: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(testbed::bindir().join("pgbench"));
    cmd.args(args).arg(conninfo).stdin(Stdio::null());
    cmd
}

/// Busy loops on every core for as long as the guard lives.
struct Hog(Vec<Child>);

impl Hog {
    fn start() -> Hog {
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        Hog((0..cores)
            .filter_map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .ok()
            })
            .collect())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Soaks every tool at once, under the same load of the machine: one CPU hog for all when the
/// variant has one, each tool its own cluster, pgbench and stalls.
pub fn run_side_by_side(tools: &[&dyn Tool], variant: Variant, duration: Duration) -> Vec<Soak> {
    let _hog = (variant == Variant::CpuHog).then(Hog::start);
    thread::scope(|s| {
        let runs: Vec<_> = tools
            .iter()
            .map(|tool| s.spawn(move || run(*tool, variant, duration, &mut Rng::from_clock())))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a soak thread"))
            .collect()
    })
}

/// Commits every 100 ms until told to stop; returns the longest gap between acknowledged
/// commits (from the start, and to the end) and the number of failed commits.
fn write_probe(conninfo: &str, stop: &AtomicBool) -> (Duration, u64) {
    let mut client = Client::new(conninfo);
    let _ = client.exec(
        "CREATE TABLE IF NOT EXISTS soak_probe (at timestamptz)",
        Duration::from_secs(10),
    );
    let (mut last_ack, mut longest, mut failed) = (Instant::now(), Duration::ZERO, 0);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match client.exec("INSERT INTO soak_probe VALUES (now())", Duration::from_secs(1)) {
            Ok(_) => {
                longest = longest.max(last_ack.elapsed());
                last_ack = Instant::now();
            }
            Err(_) => failed += 1,
        }
        thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
    }
    (longest.max(last_ack.elapsed()), failed)
}

/// Rounds shorter than this are not started: building a cluster takes longer.
const SHORTEST_ROUND: Duration = Duration::from_secs(15);

/// One tool's soak, round after round until its time is up (a false failover ends a round);
/// the CPU hog, when the variant has one, is the caller's.
fn run(tool: &dyn Tool, variant: Variant, duration: Duration, rng: &mut Rng) -> Soak {
    let stall = tool.budget() / 2;
    let mut soak = Soak {
        label: tool.label(),
        variant,
        seconds: duration.as_secs(),
        soaked_secs: 0.0,
        failovers: 0,
        rebuilds: 0,
        stalls: 0,
        stall_ms: if variant == Variant::Stalls {
            stall.as_millis() as u64
        } else {
            0
        },
        longest_stall_ms: None,
        tps: None,
        longest_check_ms: None,
        longest_write_gap_ms: None,
        failed_commits: 0,
        why: Vec::new(),
        error: None,
    };
    // pgbench's figure for each round that ran to its end, weighted by its length.
    let mut tps: Vec<(f64, f64)> = Vec::new();
    let mut first = true;
    // The time asked for is time watched: building a cluster does not count.
    let left = |soak: &Soak| duration.saturating_sub(Duration::from_secs_f64(soak.soaked_secs));
    while first || left(&soak) >= SHORTEST_ROUND {
        if !first {
            soak.rebuilds += 1;
        }
        first = false;
        match round(tool, variant, left(&soak), rng, &mut soak) {
            Ok(Some(round_tps)) => tps.push(round_tps),
            Ok(None) => {}
            Err(e) => {
                soak.error = Some(e);
                break;
            }
        }
        if soak.failovers as usize == soak.rebuilds as usize {
            // The round ran to the end without a false failover.
            break;
        }
    }
    let weight: f64 = tps.iter().map(|(_, secs)| secs).sum();
    soak.tps = (weight > 0.0).then(|| tps.iter().map(|(t, secs)| t * secs).sum::<f64>() / weight);
    soak
}

/// One cluster for `left` once it runs, or until a false failover: pgbench, stalls, the write
/// probe. Returns pgbench's figure and the seconds it ran when it ran to its end.
fn round(
    tool: &dyn Tool,
    variant: Variant,
    left: Duration,
    rng: &mut Rng,
    soak: &mut Soak,
) -> Result<Option<(f64, f64)>, String> {
    let cluster = tool.start(2).map_err(|e| format!("setup: {e}"))?;
    let conninfos = cluster.conninfos();
    match pgbench(&conninfos[0], &["-i", "-q", "-s", "10"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(format!(
                "pgbench -i: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => return Err(format!("pgbench: {e}")),
    }
    let end = Instant::now() + left;
    let secs = left.as_secs().max(1).to_string();
    let mut bench = pgbench(&conninfos[0], &["-c", "8", "-j", "2", "-T", &secs, "-n"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pgbench: {e}"))?;
    let stop = AtomicBool::new(false);
    let primary = conninfos[0].clone();
    let started = Instant::now();
    let (promoted, (gap, failed)) = thread::scope(|s| {
        let probe = s.spawn(|| write_probe(&primary, &stop));
        let promoted = watch(&*cluster, &conninfos[1], variant, end, rng, soak);
        stop.store(true, Ordering::Relaxed);
        (promoted, probe.join().expect("the write probe"))
    });
    soak.soaked_secs += started.elapsed().as_secs_f64();
    soak.longest_write_gap_ms = soak.longest_write_gap_ms.max(Some(gap.as_millis() as u64));
    soak.failed_commits += failed;
    cluster.recover();
    if promoted {
        // Its primary is no longer the one pgbench writes to: the round ends here.
        let _ = bench.kill();
    }
    let out = bench.wait_with_output();
    let tps = out.ok().filter(|_| !promoted).and_then(|out| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|t| t.parse::<f64>().ok())
    });
    if tool.family() == "pg_promoter" {
        // The status is for monitoring roles: the admin connection, not the ordinary client's.
        let longest = Client::new(&cluster.admin_conninfos()[1]).exec(
            "SELECT longest_check_ms FROM pg_promoter_status",
            Duration::from_secs(5),
        );
        let longest = longest
            .ok()
            .and_then(|r| r[0][0].as_deref().and_then(|v| v.parse::<f64>().ok()));
        soak.longest_check_ms = match (soak.longest_check_ms, longest) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(tps.map(|t| (t, started.elapsed().as_secs_f64())))
}

/// Until `end` or a promotion (then true): stalls when the variant has them, and a look at
/// the standby every 250 ms.
fn watch(
    cluster: &dyn Cluster,
    standby: &str,
    variant: Variant,
    end: Instant,
    rng: &mut Rng,
    soak: &mut Soak,
) -> bool {
    let stall = Duration::from_millis(soak.stall_ms);
    let mut standby = Client::new(standby);
    let watched = Instant::now();
    let mut next_stall = watched + Duration::from_secs(2);
    let mut last_stall_ms = None;
    while Instant::now() < end {
        if variant == Variant::Stalls && Instant::now() >= next_stall {
            let began = Instant::now();
            cluster.inject(Fault::Cut);
            thread::sleep(stall.saturating_sub(began.elapsed()));
            cluster.recover();
            let took = began.elapsed().as_millis() as u64;
            last_stall_ms = Some(took);
            soak.longest_stall_ms = soak.longest_stall_ms.max(Some(took));
            soak.stalls += 1;
            // Random gaps between stalls: every phase of the tool's schedule gets hit.
            next_stall = Instant::now() + Duration::from_millis(1000 + (rng.next_f64() * 3000.0) as u64);
        }
        thread::sleep(Duration::from_millis(250));
        let promoted = standby.exec("SELECT pg_is_in_recovery()", Duration::from_secs(2));
        if let Ok(rows) = promoted {
            if rows[0][0].as_deref() == Some("f") {
                soak.failovers += 1;
                // pg_promoter's events say why; on other tools the query fails and says nothing.
                let events = standby.exec(
                    "SELECT to_char(at, 'HH24:MI:SS.MS') || ' ' || event || ': ' || detail \
                     FROM pg_promoter_events() WHERE event IN ('check_failed', 'decided', 'primary_back') \
                     ORDER BY seq DESC LIMIT 6",
                    Duration::from_secs(5),
                );
                // The rounds before this one, and this one's time so far.
                soak.why.push(format!(
                    "false failover {}, {:.0} s into the soak:",
                    soak.failovers,
                    soak.soaked_secs + watched.elapsed().as_secs_f64()
                ));
                let lines: Vec<String> = events
                    .map(|rows| rows.into_iter().rev().filter_map(|r| r[0].clone()).collect())
                    .unwrap_or_default();
                soak.why.extend(lines.into_iter().map(|l| format!("  {l}")));
                if let Some(ms) = last_stall_ms {
                    soak.why
                        .push(format!("  (the last stall lasted at most {ms} ms)"));
                }
                return true;
            }
        }
    }
    false
}

pub fn table(soaks: &[Soak]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:>6} {:>7} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>11} {:>12} {:>7}\n",
        "tool",
        "load",
        "secs",
        "soaked",
        "failovers",
        "rebuilds",
        "stalls",
        "stall ms",
        "max stall",
        "tps",
        "longest chk",
        "write gap",
        "failed"
    );
    for s in soaks {
        out.push_str(&format!(
            "{:<24} {:<16} {:>6} {:>7.0} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>11} {:>12} {:>7}{}\n",
            s.label,
            s.variant.name(),
            s.seconds,
            s.soaked_secs,
            s.failovers,
            s.rebuilds,
            s.stalls,
            s.stall_ms,
            s.longest_stall_ms.map_or("-".into(), |m| m.to_string()),
            s.tps.map_or("-".into(), |t| format!("{t:.0}")),
            s.longest_check_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
            s.longest_write_gap_ms.map_or("-".into(), |m| format!("{m} ms")),
            s.failed_commits,
            s.error
                .as_deref()
                .map_or(String::new(), |e| format!("  error: {e}"))
        ));
        for line in &s.why {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}
