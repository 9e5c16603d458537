//! False failovers: the primary saturated by pgbench for a while, alone, with a CPU hog on the
//! machine, or with short network stalls (each shorter than the tool's detection budget). A
//! promotion during a soak is a false failover: the primary never died. A tool may also stop
//! writes without failing over (a leader that demotes itself during a stall): a client committing
//! every 100 ms on the primary, over a path no stall cuts, measures the longest write outage.

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
    pub seconds: u64,
    pub failovers: u32,
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
    /// pg_promoter's own account of a false failover: its decision and the checks before it.
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

/// One tool's soak; the CPU hog, when the variant has one, is the caller's.
fn run(tool: &dyn Tool, variant: Variant, duration: Duration, rng: &mut Rng) -> Soak {
    let stall = tool.budget() / 2;
    let mut soak = Soak {
        label: tool.label(),
        variant,
        seconds: duration.as_secs(),
        failovers: 0,
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
    let cluster = match tool.start(2) {
        Ok(c) => c,
        Err(e) => {
            soak.error = Some(format!("setup: {e}"));
            return soak;
        }
    };
    let conninfos = cluster.conninfos();
    match pgbench(&conninfos[0], &["-i", "-q", "-s", "10"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            soak.error = Some(format!(
                "pgbench -i: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return soak;
        }
        Err(e) => {
            soak.error = Some(format!("pgbench: {e}"));
            return soak;
        }
    }
    let secs = duration.as_secs().to_string();
    let bench = pgbench(&conninfos[0], &["-c", "8", "-j", "2", "-T", &secs, "-n"])
        .stdout(Stdio::piped())
        .spawn();
    let bench = match bench {
        Ok(b) => b,
        Err(e) => {
            soak.error = Some(format!("pgbench: {e}"));
            return soak;
        }
    };
    let stop = AtomicBool::new(false);
    let primary = conninfos[0].clone();
    let (gap, failed) = thread::scope(|s| {
        let probe = s.spawn(|| write_probe(&primary, &stop));
        watch(&*cluster, &conninfos[1], variant, duration, rng, &mut soak);
        stop.store(true, Ordering::Relaxed);
        probe.join().expect("the write probe")
    });
    soak.longest_write_gap_ms = Some(gap.as_millis() as u64);
    soak.failed_commits = failed;
    cluster.recover();
    if let Ok(out) = bench.wait_with_output() {
        let text = String::from_utf8_lossy(&out.stdout);
        soak.tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|t| t.parse().ok());
    }
    if tool.family() == "pg_promoter" {
        let longest = Client::new(&conninfos[1]).exec(
            "SELECT longest_check_ms FROM pg_promoter_status",
            Duration::from_secs(5),
        );
        soak.longest_check_ms = longest
            .ok()
            .and_then(|r| r[0][0].as_deref().and_then(|v| v.parse().ok()));
    }
    soak
}

/// Until the end of the soak or a promotion: stalls when the variant has them, and a look at
/// the standby every 250 ms.
fn watch(
    cluster: &dyn Cluster,
    standby: &str,
    variant: Variant,
    duration: Duration,
    rng: &mut Rng,
    soak: &mut Soak,
) {
    let stall = Duration::from_millis(soak.stall_ms);
    let mut standby = Client::new(standby);
    let end = Instant::now() + duration;
    let mut next_stall = Instant::now() + Duration::from_secs(2);
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
                soak.why = events
                    .map(|rows| rows.into_iter().rev().filter_map(|r| r[0].clone()).collect())
                    .unwrap_or_default();
                if let Some(ms) = last_stall_ms {
                    soak.why.push(format!("(the last stall lasted at most {ms} ms)"));
                }
                break;
            }
        }
    }
}

pub fn table(soaks: &[Soak]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:>6} {:>9} {:>7} {:>9} {:>9} {:>9} {:>11} {:>12} {:>7}\n",
        "tool",
        "load",
        "secs",
        "failovers",
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
            "{:<24} {:<16} {:>6} {:>9} {:>7} {:>9} {:>9} {:>9} {:>11} {:>12} {:>7}{}\n",
            s.label,
            s.variant.name(),
            s.seconds,
            s.failovers,
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
