//! The chaos run: clusters of three PostgreSQL nodes (and a witness, in half the setups) on
//! simulated hosts, put through seeded fault schedules (kills, freezes, restarts, worker kills,
//! partitions, heals; several per schedule, overlapping) while a client per node commits unique
//! keys as an ordinary role; then the invariants are checked on the recorded history and the
//! final state of every node ([`check`]). Every failure prints its seed and timeline, and
//! `bench chaos --seed S --schedules 1 --secs L --setups <its setup>` replays it.

pub mod check;
mod pg_promoter;
pub mod schedule;
pub mod target;
mod workload;

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use check::{Ack, NodeEnd, Violation};
use pg_promoter::ChaosCluster;
use schedule::{Op, Schedule};
use target::{Applied, Target};

/// How long the cluster has, after the last heal, to end with one primary every node follows.
pub const SETTLE: Duration = Duration::from_secs(60);

/// What a schedule runs on: pg_promoter with a witness or not, Patroni with its store (etcd) on
/// the fourth host, or repmgrd with its witness there; synchronous replication or not (repmgr
/// does not manage it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    PgPromoter { witness: bool, synchronous: bool },
    Patroni { synchronous: bool },
    Repmgrd,
}

impl Setup {
    pub const ALL: [Setup; 7] = [
        Setup::PgPromoter {
            witness: true,
            synchronous: false,
        },
        Setup::PgPromoter {
            witness: true,
            synchronous: true,
        },
        Setup::PgPromoter {
            witness: false,
            synchronous: false,
        },
        Setup::PgPromoter {
            witness: false,
            synchronous: true,
        },
        Setup::Patroni { synchronous: false },
        Setup::Patroni { synchronous: true },
        Setup::Repmgrd,
    ];

    pub fn synchronous(self) -> bool {
        match self {
            Setup::PgPromoter { synchronous, .. } | Setup::Patroni { synchronous } => synchronous,
            Setup::Repmgrd => false,
        }
    }

    /// Whether it is pg_promoter's: a violation of a peer is a finding about the peer, not a
    /// failure of the run.
    pub fn ours(self) -> bool {
        matches!(self, Setup::PgPromoter { .. })
    }

    pub fn name(self) -> String {
        let replication = if self.synchronous() {
            "synchronous"
        } else {
            "asynchronous"
        };
        match self {
            Setup::PgPromoter { witness, .. } => format!(
                "pg_promoter, {} witness, {replication} replication",
                if witness { "a" } else { "no" }
            ),
            Setup::Patroni { synchronous } => format!(
                "Patroni ttl=20, etcd, {}",
                if synchronous {
                    "synchronous_mode"
                } else {
                    "asynchronous replication"
                }
            ),
            Setup::Repmgrd => "repmgrd 1s×3, a witness, asynchronous replication".to_string(),
        }
    }

    /// `witness+sync`, `nowitness+async`, `patroni+sync`, `repmgrd`, ...: how `--setups` names it.
    pub fn key(self) -> String {
        let replication = if self.synchronous() { "sync" } else { "async" };
        match self {
            Setup::PgPromoter { witness, .. } => {
                format!("{}+{replication}", if witness { "witness" } else { "nowitness" })
            }
            Setup::Patroni { .. } => format!("patroni+{replication}"),
            Setup::Repmgrd => "repmgrd".to_string(),
        }
    }

    /// The data-loss bound the tool promises without synchronous replication: pg_promoter's
    /// `max_lag_on_failover` and Patroni's `maximum_lag_on_failover` as set; repmgr has none.
    pub fn bound_bytes(self) -> u64 {
        match self {
            Setup::PgPromoter { .. } => pg_promoter::BOUND_BYTES,
            Setup::Patroni { .. } => crate::tools::patroni::MAXIMUM_LAG_ON_FAILOVER,
            Setup::Repmgrd => u64::MAX,
        }
    }

    fn start(self) -> Result<Box<dyn Target>, String> {
        Ok(match self {
            Setup::PgPromoter { witness, synchronous } => {
                Box::new(ChaosCluster::start(witness, synchronous)?)
            }
            Setup::Patroni { synchronous } => crate::tools::patroni::Patroni::fastest().chaos(synchronous)?,
            Setup::Repmgrd => crate::tools::repmgr::Repmgrd::FAST.chaos()?,
        })
    }
}

/// What one schedule did.
pub struct Outcome {
    pub setup: Setup,
    pub schedule: Schedule,
    /// Each step as carried out: when (from the start), what, how long it took or why it failed.
    pub timeline: Vec<String>,
    /// Every acknowledged commit, in the order recorded.
    pub acks: Vec<Ack>,
    pub violations: Vec<Violation>,
    /// The harness itself failed (a server that would not start): no verdict.
    pub harness_error: Option<String>,
    /// How long after the last heal the cluster had one primary every node followed.
    pub settled: Option<Duration>,
    /// Without synchronous replication: the acknowledged commits lost, and the most WAL past a
    /// fork one of them was written at.
    pub lost: Option<(usize, u64)>,
    /// Steps not carried out (refused by the tool, nothing to hurt, or failed).
    pub not_done: usize,
}

/// Runs one schedule on a fresh cluster of `setup`; a panic anywhere (the test bed's `ip`
/// failing, say) is this schedule's harness error, not the end of the run.
pub fn run_one(setup: Setup, schedule: Schedule) -> Outcome {
    let seed = schedule.seed;
    let length = schedule.length;
    catch_unwind(AssertUnwindSafe(|| run_unguarded(setup, schedule))).unwrap_or_else(|panic| Outcome {
        setup,
        schedule: Schedule {
            seed,
            length,
            steps: Vec::new(),
        },
        timeline: Vec::new(),
        acks: Vec::new(),
        violations: Vec::new(),
        harness_error: Some(format!("the harness panicked: {}", panic_text(&panic))),
        settled: None,
        lost: None,
        not_done: 0,
    })
}

fn run_unguarded(setup: Setup, schedule: Schedule) -> Outcome {
    let mut outcome = Outcome {
        setup,
        schedule,
        timeline: Vec::new(),
        acks: Vec::new(),
        violations: Vec::new(),
        harness_error: None,
        settled: None,
        lost: None,
        not_done: 0,
    };
    let built = catch_unwind(|| setup.start());
    let cluster = match built {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            outcome.harness_error = Some(format!("cluster setup: {e}"));
            return outcome;
        }
        Err(panic) => {
            outcome.harness_error = Some(format!("cluster setup: {}", panic_text(&panic)));
            return outcome;
        }
    };
    let cluster: &dyn Target = cluster.as_ref();
    let clients: Vec<String> = (0..cluster.names().len())
        .map(|i| target::client_conninfo(cluster, i))
        .collect();
    let load = workload::Load::start(&clients);
    let supervising = AtomicBool::new(true);
    let (mut ends, converged, start, healed) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while supervising.load(Ordering::Relaxed) {
                cluster.supervise();
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let settled = steps_and_settle(cluster, &mut outcome);
        supervising.store(false, Ordering::Relaxed);
        settled
    });
    let acks: Vec<Ack> = load.stop();
    match converged {
        Ok(primary) => {
            outcome.settled = Some(healed.elapsed());
            // The keys of the primary found, read once no client writes any more.
            match (target::keys(cluster, primary), target::forks(cluster, primary)) {
                (Ok(keys), Ok(forks)) => {
                    ends[primary].keys = Some(keys);
                    ends[primary].forks = forks;
                }
                (Err(e), _) | (_, Err(e)) => outcome.harness_error = Some(format!("reading the keys: {e}")),
            }
        }
        Err(_) => {
            // What each node's worker last said, to see why.
            for line in cluster.recent_events() {
                outcome.timeline.push(format!("          {line}"));
            }
        }
    }
    outcome.timeline.push(format!(
        "{:>8.3} s  {}",
        start.elapsed().as_secs_f64(),
        match &converged {
            Ok(p) => format!(
                "settled: {} takes writes, every other node follows it or says it cannot",
                ends[*p].name
            ),
            Err(why) => format!("not settled {} s after the end: {why}", SETTLE.as_secs()),
        }
    ));
    // Each node as the verdict saw it.
    for end in &ends {
        outcome.timeline.push(format!("          {end}"));
    }
    outcome.violations = check::check(&acks, &ends, &converged, setup.synchronous(), setup.bound_bytes());
    if let (Ok(p), false) = (&converged, setup.synchronous()) {
        if let Some(keys) = &ends[*p].keys {
            let missing = check::lost(&acks, keys);
            let wal = check::lost_wal(&acks, &missing, &ends[*p].forks);
            outcome.lost = Some((missing.len(), wal.unwrap_or(0)));
        }
    }
    outcome.acks = acks;
    outcome
}

/// The schedule's steps at their times, every fault undone at its end, then up to [`SETTLE`] for
/// the cluster to settle: the nodes' ends, the verdict on them, when the schedule began and when
/// its end came.
fn steps_and_settle(
    cluster: &dyn Target,
    outcome: &mut Outcome,
) -> (Vec<NodeEnd>, Result<usize, String>, Instant, Instant) {
    let start = Instant::now();
    for step in outcome.schedule.steps.clone() {
        std::thread::sleep((start + step.at).saturating_duration_since(Instant::now()));
        let began = start.elapsed();
        let done = match target::within(&step.op, cluster.hosts()) {
            Some(op) => catch_unwind(AssertUnwindSafe(|| cluster.apply(&op))),
            None => Ok(Ok(Applied::NoHost)),
        };
        let took = start.elapsed() - began;
        let result = match done {
            Ok(Ok(Applied::Done)) => format!("done in {} ms", took.as_millis()),
            Ok(Ok(Applied::NoHost)) => "skipped: this setup has no such host".to_string(),
            Ok(Ok(Applied::NotDone(why))) => {
                outcome.not_done += 1;
                format!("NOT DONE after {} ms: {why}", took.as_millis())
            }
            Ok(Err(e)) => format!("FAILED after {} ms: {e}", took.as_millis()),
            Err(panic) => format!("FAILED after {} ms: {}", took.as_millis(), panic_text(&panic)),
        };
        if result.starts_with("FAILED") {
            outcome.not_done += 1;
            // A server that would not start leaves nothing to judge.
            if matches!(step.op, Op::Start(_) | Op::Restart(_)) {
                outcome
                    .harness_error
                    .get_or_insert(format!("{}: {result}", step.op));
            }
        }
        outcome
            .timeline
            .push(format!("{:>8.3} s  {}: {result}", began.as_secs_f64(), step.op));
    }
    // Whatever failed above, the end is every fault undone.
    cluster.undo_all();
    std::thread::sleep((start + outcome.schedule.length).saturating_duration_since(Instant::now()));
    let healed = Instant::now();
    outcome.timeline.push(format!(
        "{:>8.3} s  end of the schedule: every fault undone",
        start.elapsed().as_secs_f64()
    ));
    let mut ends = target::ends(cluster);
    let mut converged = check::converged(&ends);
    // A round of `ends` takes time of its own: the deadline is checked after each.
    while converged.is_err() && healed.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_secs(1));
        ends = target::ends(cluster);
        converged = check::converged(&ends);
    }
    if converged.is_ok() && healed.elapsed() > SETTLE {
        converged = Err(format!(
            "settled only after {:.1} s",
            healed.elapsed().as_secs_f64()
        ));
    }
    (ends, converged, start, healed)
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Violations of each kind a schedule's report lists.
const SHOWN: usize = 5;

/// A schedule's report: its seed, setup, verdict, and on any failure the whole timeline.
pub fn describe(o: &Outcome) -> String {
    let mut text = String::new();
    let verdict = if let Some(e) = &o.harness_error {
        format!("HARNESS ERROR: {e}")
    } else if o.violations.is_empty() {
        "ok".to_string()
    } else {
        format!("{} VIOLATION(S)", o.violations.len())
    };
    let lost = o.lost.map_or(String::new(), |(keys, bytes)| {
        format!(", {keys} lost (up to {bytes} bytes of WAL past a fork)")
    });
    let _ = writeln!(
        text,
        "seed {} [{}] {} acknowledged commits{lost}, settled {}: {verdict}",
        o.schedule.seed,
        o.setup.key(),
        o.acks.len(),
        o.settled
            .map_or("never".to_string(), |d| format!("after {:.1} s", d.as_secs_f64()))
    );
    // A split brain overlaps thousands of acknowledgements: the first few of each kind say it
    // (the schedule's history is in its CSV file).
    let mut shown: Vec<(&str, usize)> = Vec::new();
    for v in &o.violations {
        match shown.iter_mut().find(|(kind, _)| *kind == v.kind()) {
            Some((_, n)) => *n += 1,
            None => shown.push((v.kind(), 1)),
        }
        let n = shown
            .iter()
            .find(|(kind, _)| *kind == v.kind())
            .map_or(0, |s| s.1);
        if n <= SHOWN {
            let _ = writeln!(text, "  {v}");
        }
    }
    for (kind, n) in shown.iter().filter(|(_, n)| *n > SHOWN) {
        let _ = writeln!(text, "  ... and {} more of {kind}", n - SHOWN);
    }
    if verdict != "ok" {
        let _ = writeln!(
            text,
            "  replay: bench chaos --seed {} --schedules 1 --secs {} --setups {}",
            o.schedule.seed,
            o.schedule.length.as_secs(),
            o.setup.key()
        );
    }
    for line in &o.timeline {
        let _ = writeln!(text, "  {line}");
    }
    text
}

/// The table: schedules, violations of each kind per 100 schedules, and harness errors, for
/// each setup.
pub fn table(outcomes: &[Outcome]) -> String {
    let kinds = [
        "overlapping writes",
        "two primaries",
        "acknowledged commit lost",
        "loss beyond the bound",
        "no single primary",
    ];
    let mut text = String::from(
        "| setup | schedules | with a violation | overlapping writes | two primaries | acknowledged commit lost | \
         loss beyond the bound | no single primary | harness errors | steps not carried out | writable, median | lost without sync: keys, largest WAL |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for setup in Setup::ALL {
        let mine: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.setup == setup && o.harness_error.is_none())
            .collect();
        let errors = outcomes
            .iter()
            .filter(|o| o.setup == setup && o.harness_error.is_some())
            .count();
        if mine.is_empty() && errors == 0 {
            continue;
        }
        let per100 = |n: usize| {
            if mine.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", n as f64 * 100.0 / mine.len() as f64)
            }
        };
        let failing = mine.iter().filter(|o| !o.violations.is_empty()).count();
        let _ = write!(
            text,
            "| {} | {} | {} |",
            setup.name(),
            mine.len(),
            per100(failing)
        );
        for kind in kinds {
            // Schedules with one at least: a split brain of 15 s is one incident, not the
            // hundreds of acknowledgements it overlapped.
            let n = mine
                .iter()
                .filter(|o| o.violations.iter().any(|v| v.kind() == kind))
                .count();
            let shown = if kind == "loss beyond the bound" && setup.bound_bytes() == u64::MAX {
                "n/a (no bound)".to_string()
            } else {
                per100(n)
            };
            let _ = write!(text, " {shown} |");
        }
        let lost: Vec<(usize, u64)> = mine.iter().filter_map(|o| o.lost).collect();
        let lost = if setup.synchronous() {
            "-".to_string()
        } else {
            let keys: usize = lost.iter().map(|l| l.0).sum();
            let bytes = lost.iter().map(|l| l.1).max().unwrap_or(0);
            format!("{keys}, {bytes} B")
        };
        let not_done: usize = mine.iter().map(|o| o.not_done).sum();
        let mut writable: Vec<f64> = mine.iter().map(|o| check::writable(&o.acks)).collect();
        writable.sort_by(f64::total_cmp);
        let acked = writable
            .get(writable.len() / 2)
            .map_or("-".to_string(), |w| format!("{:.0} %", w * 100.0));
        let _ = writeln!(text, " {errors} | {not_done} | {acked} | {lost} |");
    }
    text.push_str(
        "\nEach violation column is the schedules (per 100 that ran, harness errors apart) with at least \
         one violation of that kind; the steps not carried out are counted in all (a tool refused \
         them, or there was nothing to hurt: see each schedule's timeline); writable is the share of \
         the time, from the first commit to the last, in which some node acknowledged an ordinary \
         commit (quarter seconds), through the same faults; the last column is the acknowledged \
         commits lost in all, and the most WAL past a fork that one of them was written at (the bounds: pg_promoter's 16 MB, Patroni's \
         maximum_lag_on_failover 1 MB; repmgr has none). A peer's violations are findings about \
         the peer: they do not fail the run.\n",
    );
    text
}

/// A schedule to run: its seed, the setup, the hosts it is drawn for, and its length.
pub type Run = (u64, Setup, usize, Duration);

/// The schedules that once found a violation of pg_promoter's, each with the hosts it was drawn
/// for, its length in seconds and what it found; `bench chaos --regressions` runs them again
/// (CI does).
pub const REGRESSIONS: [(u64, Setup, usize, u64, &str); 4] = [
    (
        1054,
        Setup::PgPromoter {
            witness: false,
            synchronous: false,
        },
        3,
        60,
        "a standby started on the old primary's data never followed the leader (64f1d2d)",
    ),
    (
        1095,
        Setup::PgPromoter {
            witness: false,
            synchronous: true,
        },
        3,
        60,
        "an old primary whose term had passed the leader's was never superseded (56decc0)",
    ),
    (
        3,
        Setup::PgPromoter {
            witness: false,
            synchronous: false,
        },
        4,
        20,
        "a second winner promoted onto the timeline number the first had taken (two histories \
         numbered 2); later, a standby cut off through the failover took the old primary, fenced \
         but answering, for alive, and never followed the winner",
    ),
    (
        3047,
        Setup::PgPromoter {
            witness: false,
            synchronous: false,
        },
        4,
        60,
        "a standby elected leader while it still streamed from the old leader, fenced by its term, \
         never promoted: its WAL receiver's contact held it back",
    ),
];

/// Which setup runs which seed: every schedule once per tool among `setups` (pg_promoter,
/// Patroni, repmgrd), each tool's setups taking the seeds in turn, so that every tool meets the
/// same faults at the same moments.
pub fn runs(first_seed: u64, schedules: usize, setups: &[Setup], length: Duration) -> Vec<Run> {
    let mut tools: Vec<Vec<Setup>> = Vec::new();
    for &setup in setups {
        let tool = std::mem::discriminant(&setup);
        match tools.iter_mut().find(|t| std::mem::discriminant(&t[0]) == tool) {
            Some(t) => t.push(setup),
            None => tools.push(vec![setup]),
        }
    }
    (0..schedules)
        .flat_map(|k| {
            let tools = &tools;
            tools
                .iter()
                .map(move |t| (first_seed + k as u64, t[k % t.len()], schedule::HOSTS, length))
        })
        .collect()
}

/// `bench chaos`: each seed on its setup, for its length ([`runs`], [`REGRESSIONS`]),
/// `parallel` at a time (each on its own cluster and network); writes chaos.txt
/// (the table, then every schedule in seed order) under `out`, after each schedule. True when a
/// schedule of pg_promoter's found a violation, or any could not run.
pub fn run(runs: &[Run], parallel: usize, out: &Path) -> bool {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes: std::sync::Mutex<Vec<Outcome>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(seed, setup, hosts, length)) = runs.get(i) else {
                    break;
                };
                let schedule = schedule::generate(seed, length, hosts);
                eprintln!("chaos: {}/{}: seed {seed}, {}", i + 1, runs.len(), setup.key());
                let outcome = run_one(setup, schedule);
                eprint!("{}", describe(&outcome));
                if !outcome.violations.is_empty() {
                    // The history behind the verdict, for a closer look.
                    let mut csv = String::from("node,key,sent_us,began_us,acked_us\n");
                    for a in &outcome.acks {
                        let _ = writeln!(csv, "{},{},{},{},{}", a.node, a.key, a.sent, a.began, a.acked);
                    }
                    let _ = std::fs::write(out.join(format!("chaos-{seed}-{}.csv", setup.key())), csv);
                }
                let mut all = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                all.push(outcome);
                all.sort_by_key(|o| (o.schedule.seed, Setup::ALL.iter().position(|s| *s == o.setup)));
                // Written after every schedule: a long run leaves its results behind if stopped.
                let log: String = all.iter().map(describe).collect();
                let _ = std::fs::write(out.join("chaos.txt"), format!("{}\n{log}", table(&all)));
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    println!("{}", table(&outcomes));
    outcomes
        .iter()
        .any(|o| o.setup.ours() && (o.harness_error.is_some() || !o.violations.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_meets_every_seed_and_its_setups_take_turns() {
        let runs = runs(10, 4, &Setup::ALL, Duration::from_secs(20));
        assert_eq!(runs.len(), 12);
        for seed in 10..14 {
            let tools: Vec<String> = runs
                .iter()
                .filter(|r| r.0 == seed)
                .map(|r| r.1.name().split(' ').next().unwrap_or_default().to_string())
                .collect();
            assert_eq!(tools, ["pg_promoter,", "Patroni", "repmgrd"], "seed {seed}");
        }
        let ours: Vec<Setup> = runs.iter().filter(|r| r.1.ours()).map(|r| r.1).collect();
        assert_eq!(ours, Setup::ALL[..4]);
        let patroni = runs
            .iter()
            .filter(|r| matches!(r.1, Setup::Patroni { synchronous: true }))
            .count();
        assert_eq!(patroni, 2);
        // Drawn for four hosts whatever the setup: the same schedule for every tool.
        assert!(runs.iter().all(|r| r.2 == schedule::HOSTS));
    }
}
