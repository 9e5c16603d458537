//! False failovers: the primary saturated by pgbench for a while, alone, with a CPU hog on the
//! machine, or with short network stalls (each shorter than the tool's detection budget). A
//! promotion during a soak is a false failover: the primary never died.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::cluster::{Fault, Tool};
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
    pub tps: Option<f64>,
    /// pg_promoter only: the longest check the standby's worker saw.
    pub longest_check_ms: Option<f64>,
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

pub fn run(tool: &dyn Tool, variant: Variant, duration: Duration, rng: &mut Rng) -> Soak {
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
        tps: None,
        longest_check_ms: None,
        error: None,
    };
    let cluster = match tool.start() {
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
    let _hog = (variant == Variant::CpuHog).then(Hog::start);
    let mut standby = Client::new(&conninfos[1]);
    let end = Instant::now() + duration;
    let mut next_stall = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        if variant == Variant::Stalls && Instant::now() >= next_stall {
            cluster.inject(Fault::Cut);
            thread::sleep(stall);
            cluster.recover();
            soak.stalls += 1;
            // Random gaps between stalls: every phase of the tool's schedule gets hit.
            next_stall = Instant::now() + Duration::from_millis(1000 + (rng.next_f64() * 3000.0) as u64);
        }
        thread::sleep(Duration::from_millis(250));
        let promoted = standby.exec("SELECT pg_is_in_recovery()", Duration::from_secs(2));
        if let Ok(rows) = promoted {
            if rows[0][0].as_deref() == Some("f") {
                soak.failovers += 1;
                break;
            }
        }
    }
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
        let longest = standby.exec(
            "SELECT longest_check_ms FROM pg_promoter_status",
            Duration::from_secs(5),
        );
        soak.longest_check_ms = longest
            .ok()
            .and_then(|r| r[0][0].as_deref().and_then(|v| v.parse().ok()));
    }
    soak
}

pub fn table(soaks: &[Soak]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:>6} {:>9} {:>7} {:>9} {:>9} {:>11}\n",
        "tool", "load", "secs", "failovers", "stalls", "stall ms", "tps", "longest chk"
    );
    for s in soaks {
        out.push_str(&format!(
            "{:<24} {:<16} {:>6} {:>9} {:>7} {:>9} {:>9} {:>11}{}\n",
            s.label,
            s.variant.name(),
            s.seconds,
            s.failovers,
            s.stalls,
            s.stall_ms,
            s.tps.map_or("-".into(), |t| format!("{t:.0}")),
            s.longest_check_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
            s.error
                .as_deref()
                .map_or(String::new(), |e| format!("  error: {e}"))
        ));
    }
    out
}
