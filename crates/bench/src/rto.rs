//! One failover trial: a client commits a small transaction every 10 ms; the primary is hurt at
//! a random moment; the recovery time (RTO) runs from the fault to the first commit that a new
//! primary acknowledges. Acknowledged commits missing on the new primary are the data lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgwire::Client;

use crate::cluster::{Fault, Tool};

/// The client's cadence and its per-commit deadline.
const EVERY: Duration = Duration::from_millis(10);
const COMMIT_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug)]
pub struct Trial {
    pub label: String,
    pub family: String,
    pub fault: Fault,
    /// Seconds from the fault to the first commit acknowledged by a new primary (or by the old
    /// one once it failed and came back, for tools that restart PostgreSQL in place).
    pub rto: Option<f64>,
    /// The tool's own account: fault to decision, and decision to writable.
    pub detection: Option<f64>,
    pub promotion: Option<f64>,
    /// Commits the old primary acknowledged that the new one does not have.
    pub lost: Option<u64>,
    pub acked_before: u64,
    /// Commits the old primary acknowledged after the fault (possible only when it was cut off
    /// but still reachable by clients: the split-brain window).
    pub old_acked_after: u64,
    pub error: Option<String>,
}

/// A tiny generator (xorshift), seeded from the clock: random phases without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn from_clock() -> Rng {
        Rng(now_unix().to_bits() | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[derive(Default)]
struct Log {
    /// (commit id, node, Unix time of the acknowledgement)
    acks: Vec<(u64, usize, f64)>,
    /// When each node last refused or failed a commit (Unix time).
    last_failure: Vec<f64>,
}

pub fn run(tool: &dyn Tool, fault: Fault, rng: &mut Rng, give_up: Duration) -> Trial {
    let mut trial = Trial {
        label: tool.label(),
        family: tool.family().to_string(),
        fault,
        rto: None,
        detection: None,
        promotion: None,
        lost: None,
        acked_before: 0,
        old_acked_after: 0,
        error: None,
    };
    let cluster = match tool.start() {
        Ok(c) => c,
        Err(e) => {
            trial.error = Some(format!("setup: {e}"));
            return trial;
        }
    };
    let conninfos = cluster.conninfos();
    let mut setup = Client::new(&conninfos[0]);
    if let Err(e) = setup.exec(
        "CREATE TABLE IF NOT EXISTS bench (id bigint PRIMARY KEY)",
        Duration::from_secs(10),
    ) {
        trial.error = Some(format!("creating the table: {e}"));
        return trial;
    }

    let log = Arc::new(Mutex::new(Log {
        last_failure: vec![0.0; conninfos.len()],
        ..Log::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    // One client per node, each committing every 10 ms: the standby refuses until it is
    // promoted, and a hung node delays only its own client.
    let writers: Vec<_> = conninfos
        .iter()
        .enumerate()
        .map(|(node, conninfo)| {
            let (log, stop, conninfo) = (log.clone(), stop.clone(), conninfo.clone());
            thread::spawn(move || commit_loop(node, &conninfo, &log, &stop))
        })
        .collect();
    // Warm up, then wait a random part of the longest checker period before the fault.
    thread::sleep(Duration::from_secs(2));
    thread::sleep(tool.phase_span().mul_f64(rng.next_f64()));
    let t0 = now_unix();
    cluster.inject(fault);
    let deadline = Instant::now() + give_up;
    let first_new = loop {
        // A new primary, or the old one back after it failed (a tool that restarts PostgreSQL
        // in place): either way, writes are accepted again.
        let found = {
            let log = log.lock().expect("log");
            let old_failed_at = log.last_failure.first().copied().filter(|f| *f >= t0);
            log.acks
                .iter()
                .find(|(_, node, at)| *at >= t0 && (*node != 0 || old_failed_at.is_some_and(|f| f < *at)))
                .cloned()
        };
        if let Some((_, node, at)) = found {
            break Some((node, at));
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::Relaxed);
    writers.into_iter().for_each(|w| {
        let _ = w.join();
    });
    cluster.recover();

    let Some((new, at)) = first_new else {
        trial.error = Some(format!(
            "no new primary acknowledged a commit within {} s",
            give_up.as_secs()
        ));
        return trial;
    };
    trial.rto = Some(at - t0);
    if let Some((decided, writable)) = cluster.reported(new) {
        trial.detection = Some(decided - t0);
        trial.promotion = Some(writable - decided);
    }
    let acks = log.lock().expect("log").acks.clone();
    let on_old: Vec<u64> = acks.iter().filter(|a| a.1 == 0).map(|a| a.0).collect();
    trial.acked_before = acks.iter().filter(|a| a.1 == 0 && a.2 < t0).count() as u64;
    trial.old_acked_after = acks.iter().filter(|a| a.1 == 0 && a.2 >= t0).count() as u64;
    let ids = on_old.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut check = Client::new(&conninfos[new]);
    match check.exec(
        &format!("SELECT count(*) FROM bench WHERE id IN ({ids})"),
        Duration::from_secs(10),
    ) {
        Ok(rows) if !on_old.is_empty() => {
            let present: u64 = rows[0][0].as_deref().unwrap_or("0").parse().unwrap_or(0);
            trial.lost = Some(on_old.len() as u64 - present);
        }
        Ok(_) => trial.lost = Some(0),
        Err(e) => trial.error = Some(format!("counting lost commits: {e}")),
    }
    trial
}

/// Commits every 10 ms on one node, ids unique across nodes.
fn commit_loop(node: usize, conninfo: &str, log: &Mutex<Log>, stop: &AtomicBool) {
    let mut client = Client::new(conninfo);
    let mut seq = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let id = node as u64 * 1_000_000_000 + seq;
        let ok = client
            .exec(&format!("INSERT INTO bench VALUES ({id})"), COMMIT_TIMEOUT)
            .is_ok();
        let mut log = log.lock().expect("log");
        if ok {
            log.acks.push((id, node, now_unix()));
        } else {
            log.last_failure[node] = now_unix();
        }
        drop(log);
        next += EVERY;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
