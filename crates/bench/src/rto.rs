//! One failover trial: a client commits a small transaction every 10 ms; the primary is hurt at
//! a random moment; the recovery time (RTO) runs from the fault, once in force (the injection's
//! own time is measured apart), to the first commit that a new primary acknowledges.
//! Acknowledged commits missing on the new primary are the data lost. A trial where writes came
//! back on the old primary itself (a tool that restarts PostgreSQL in place) is not a failover
//! and has no RTO. With three nodes or more, the follow time runs from that first commit until
//! every other surviving standby streams from the new primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgwire::Client;

use crate::cluster::{case_label, Fault, Tool};

/// The client's cadence and its per-commit deadline.
const EVERY: Duration = Duration::from_millis(10);
const COMMIT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often the follow time polls the new primary, and for how long.
const FOLLOW_EVERY: Duration = Duration::from_millis(20);
const FOLLOW_GIVE_UP: Duration = Duration::from_secs(60);

/// What a trial turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Another node took writes: the RTO is a failover time.
    Failover,
    /// The old primary took writes again after failing: restarted in place, not a failover.
    InPlace,
    /// No node took writes within the trial's limit.
    None,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::InPlace => "in_place",
            Kind::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Failover, Kind::InPlace, Kind::None]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

#[derive(Clone, Debug)]
pub struct Trial {
    /// Tool, setting and node count ([`case_label`]).
    pub label: String,
    pub family: String,
    /// PostgreSQL nodes at start: the primary and its standbys.
    pub nodes: usize,
    pub fault: Fault,
    pub kind: Kind,
    /// Seconds from the fault (in force) to the first commit acknowledged by a new primary; none
    /// when the trial was not a failover.
    pub rto: Option<f64>,
    /// For a restart in place, the same time until the old primary took writes again.
    pub in_place: Option<f64>,
    /// How long injecting the fault took (the clock starts once it is done); None in files from
    /// before it was measured.
    pub injection: Option<f64>,
    /// The machine's 1-minute load average when the fault was injected.
    pub load: Option<f64>,
    /// The tool's own account: fault to decision, and decision to writable.
    pub detection: Option<f64>,
    pub promotion: Option<f64>,
    /// Seconds from the first commit a new primary acknowledged until every other surviving
    /// standby streamed from it; None with two nodes (no other standby), or when they did not
    /// within a minute (then `follow_error` says what was seen).
    pub follow: Option<f64>,
    pub follow_error: Option<String>,
    /// Commits the old primary acknowledged that the new one does not have.
    pub lost: Option<u64>,
    pub acked_before: u64,
    /// Commits the old primary acknowledged after the fault was in force (possible only when it
    /// was cut off but still reachable by clients: the split-brain window).
    pub old_acked_after: u64,
    /// Commits it acknowledged while the fault was being injected: the harness's, not the tool's.
    pub old_acked_injecting: u64,
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

/// The 1-minute load average (/proc/loadavg).
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
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

pub fn run(tool: &dyn Tool, nodes: usize, fault: Fault, rng: &mut Rng, give_up: Duration) -> Trial {
    let mut trial = Trial {
        label: case_label(tool, nodes),
        family: tool.family().to_string(),
        nodes,
        fault,
        kind: Kind::None,
        rto: None,
        in_place: None,
        injection: None,
        load: None,
        detection: None,
        promotion: None,
        follow: None,
        follow_error: None,
        lost: None,
        acked_before: 0,
        old_acked_after: 0,
        old_acked_injecting: 0,
        error: None,
    };
    let cluster = match tool.start(nodes) {
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
    // One client per node, each committing every 10 ms: a standby refuses until it is
    // promoted, and a hung node delays only its own client.
    let stops: Vec<Arc<AtomicBool>> = conninfos.iter().map(|_| Arc::default()).collect();
    let writers: Vec<_> = conninfos
        .iter()
        .enumerate()
        .map(|(node, conninfo)| {
            let (log, stop, conninfo) = (log.clone(), stops[node].clone(), conninfo.clone());
            thread::spawn(move || commit_loop(node, &conninfo, &log, &stop))
        })
        .collect();
    // Warm up, then wait a random part of the longest checker period before the fault.
    thread::sleep(Duration::from_secs(2));
    thread::sleep(tool.phase_span().mul_f64(rng.next_f64()));
    trial.load = load_average();
    let injecting = now_unix();
    cluster.inject(fault);
    let t0 = now_unix();
    trial.injection = Some(t0 - injecting);
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
    // The follow time is measured with the fault still in place (the old primary still dead,
    // frozen or cut off) and with the new primary's client still committing every 10 ms: the
    // other standbys re-point while the new primary takes writes, as they would in production.
    // The other clients stop now; the commits counted below are those up to the first new one.
    for (node, stop) in stops.iter().enumerate() {
        if first_new.is_none_or(|(new, _)| new != node) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    if let Some((new, at)) = first_new.filter(|_| nodes > 2) {
        // Every node but the new primary and the old one, or, when the old one came back in
        // place as the primary (a restart), every other node. On a cut the old primary lives
        // but cannot reach the new one: it is not expected to follow.
        let expected = nodes - 1 - usize::from(new != 0);
        match follow(&cluster.admin_conninfos()[new], expected, at) {
            Ok(secs) => trial.follow = Some(secs),
            Err(e) => trial.follow_error = Some(e),
        }
    }
    stops.iter().for_each(|s| s.store(true, Ordering::Relaxed));
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
    if new == 0 {
        trial.kind = Kind::InPlace;
        trial.in_place = Some(at - t0);
    } else {
        trial.kind = Kind::Failover;
        trial.rto = Some(at - t0);
    }
    if let Some((decided, writable)) = cluster.reported(new).filter(|_| new != 0) {
        trial.detection = Some(decided - t0);
        trial.promotion = Some(writable - decided);
    }
    // Up to the first commit on the new primary, as before the follow time was measured.
    let acks: Vec<(u64, usize, f64)> = log
        .lock()
        .expect("log")
        .acks
        .iter()
        .filter(|a| a.2 <= at)
        .cloned()
        .collect();
    let on_old: Vec<u64> = acks.iter().filter(|a| a.1 == 0).map(|a| a.0).collect();
    trial.acked_before = acks.iter().filter(|a| a.1 == 0 && a.2 < injecting).count() as u64;
    trial.old_acked_injecting = acks
        .iter()
        .filter(|a| a.1 == 0 && a.2 >= injecting && a.2 < t0)
        .count() as u64;
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

/// Polls the new primary every 20 ms until `expected` standbys stream from it: the seconds from
/// `since` (its first acknowledged commit, Unix time), or what was seen when a minute passed. A
/// standby counts once it streams and has flushed the WAL the new primary had written at the
/// first poll (after its first commit, so on its new timeline): a row of a connection made
/// before the promotion, not yet ended, does not count.
fn follow(conninfo: &str, expected: usize, since: f64) -> Result<f64, String> {
    let mut client = Client::new(conninfo);
    let mut first = |sql: &str| -> Result<String, String> {
        let rows = client.exec(sql, Duration::from_secs(1))?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default())
    };
    let deadline = Instant::now() + FOLLOW_GIVE_UP;
    let mut mark: Option<String> = None;
    loop {
        let started = Instant::now();
        if mark.is_none() {
            mark = first("SELECT pg_current_wal_lsn()").ok();
        }
        let seen = match &mark {
            None => "the new primary did not answer".to_string(),
            Some(lsn) => match first(&format!(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND flush_lsn >= '{lsn}'"
            )) {
                Ok(count) => {
                    let streaming: usize = count.parse().unwrap_or(0);
                    if streaming >= expected {
                        return Ok((now_unix() - since).max(0.0));
                    }
                    format!("{streaming} of {expected} standbys streaming")
                }
                Err(e) => format!("the new primary did not answer: {e}"),
            },
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{seen} from the new primary after {} s",
                FOLLOW_GIVE_UP.as_secs()
            ));
        }
        thread::sleep(FOLLOW_EVERY.saturating_sub(started.elapsed()));
    }
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
