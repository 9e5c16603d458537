//! Fault schedules, drawn from a seed: several faults per schedule, overlapping, each undone
//! after a random time, all undone by the end. The same seed gives the same schedule, so a
//! failure replays from its seed.

use std::fmt;
use std::time::Duration;

/// splitmix64: small, fast, and the same everywhere (no dependency to pin).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What happens to the cluster at one moment. Hosts are numbered: the PostgreSQL nodes first
/// (0 the primary at start), then the witness when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// kill -9 of the host's postmaster.
    Kill(usize),
    /// Its server started again after a kill (as a service manager would).
    Start(usize),
    /// SIGSTOP of every process of the server (a paused VM), and SIGCONT.
    Freeze(usize),
    Thaw(usize),
    /// A clean restart (`pg_ctl restart -m fast`).
    Restart(usize),
    /// kill -9 of the pg_promoter worker: a crash of one of its processes, so the postmaster
    /// restarts the whole server (crash recovery), as for any backend killed by a signal.
    KillWorker(usize),
    /// The host cut from every other one.
    Isolate(usize),
    /// The hosts split in two: these on one side, the rest on the other.
    Split(Vec<usize>),
    /// Packets from the first host to the second are lost; the other way works.
    OneWay(usize, usize),
    /// Every cut undone.
    Heal,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Op::Kill(h) => write!(f, "kill -9 node {h}"),
            Op::Start(h) => write!(f, "start node {h}"),
            Op::Freeze(h) => write!(f, "freeze node {h}"),
            Op::Thaw(h) => write!(f, "thaw node {h}"),
            Op::Restart(h) => write!(f, "restart node {h}"),
            Op::KillWorker(h) => write!(f, "kill -9 the worker of node {h}"),
            Op::Isolate(h) => write!(f, "isolate node {h}"),
            Op::Split(side) => write!(f, "split {side:?} from the rest"),
            Op::OneWay(a, b) => write!(f, "cut {a} -> {b} one way"),
            Op::Heal => write!(f, "heal every cut"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub length: Duration,
    pub steps: Vec<Step>,
}

/// The hosts a schedule is drawn for: three PostgreSQL nodes and a fourth (a witness, a store),
/// whatever the setup, so that every tool meets the same faults; a setup without a fourth host
/// skips the steps that need it.
pub const HOSTS: usize = 4;
/// Faults per schedule, at least and at most.
const FAULTS: (u64, u64) = (2, 5);
/// How long one lasting fault (a kill, a freeze, a partition) lasts, at least and at most; a
/// restart and a worker kill are instants.
const SHORTEST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(15);
/// Draws for a place before a fault is given up (every host busy all along).
const TRIES: usize = 50;
/// Time a started server takes to come up, before its host takes another fault.
const COME_UP: Duration = Duration::from_secs(5);

/// A schedule of `length` over `hosts` hosts (PostgreSQL nodes and the witness). Faults start
/// from the first second to `length - 5 s`, and every fault is undone by `length`. A host takes
/// one process fault at a time (a frozen server is not killed too); one partition holds at a
/// time, over whatever process faults.
pub fn generate(seed: u64, length: Duration, hosts: usize) -> Schedule {
    let mut rng = Rng::new(seed);
    let ms = |d: Duration| d.as_millis() as u64;
    let last_start = ms(length).saturating_sub(5_000).max(1_001);
    let mut steps = Vec::new();
    let mut busy_until = vec![0u64; hosts];
    let mut net_busy_until = 0u64;
    let faults = FAULTS.0 + rng.below(FAULTS.1 - FAULTS.0 + 1);
    let mut placed = 0;
    for _ in 0..TRIES {
        if placed == faults {
            break;
        }
        let start = 1_000 + rng.below(last_start - 1_000);
        let span = ms(SHORTEST) + rng.below(ms(LONGEST) - ms(SHORTEST) + 1);
        let end = (start + span).min(ms(length));
        let host = rng.below(hosts as u64) as usize;
        let mut push = |at: u64, op: Op| {
            steps.push(Step {
                at: Duration::from_millis(at),
                op,
            })
        };
        match rng.below(7) {
            kind @ 0..=3 => {
                if busy_until[host] > start {
                    continue;
                }
                busy_until[host] = match kind {
                    0 => {
                        push(start, Op::Kill(host));
                        push(end, Op::Start(host));
                        end + ms(COME_UP)
                    }
                    1 => {
                        push(start, Op::Freeze(host));
                        push(end, Op::Thaw(host));
                        end
                    }
                    2 => {
                        push(start, Op::Restart(host));
                        start + ms(COME_UP)
                    }
                    _ => {
                        push(start, Op::KillWorker(host));
                        start + ms(COME_UP)
                    }
                };
                placed += 1;
            }
            kind => {
                if net_busy_until > start || hosts < 2 {
                    continue;
                }
                let other = (host + 1 + rng.below(hosts as u64 - 1) as usize) % hosts;
                let op = match kind {
                    4 => Op::Isolate(host),
                    5 => {
                        // A random proper subset with `host` in it.
                        let mut side: Vec<usize> = (0..hosts)
                            .filter(|h| *h == host || (*h != other && rng.below(2) == 0))
                            .collect();
                        side.sort_unstable();
                        Op::Split(side)
                    }
                    _ => Op::OneWay(host, other),
                };
                push(start, op);
                push(end, Op::Heal);
                net_busy_until = end;
                placed += 1;
            }
        }
    }
    steps.sort_by_key(|s| s.at);
    Schedule { seed, length, steps }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "schedule {} ({} s):", self.seed, self.length.as_secs())?;
        for s in &self.steps {
            writeln!(f, "  {:>7.3} s  {}", s.at.as_secs_f64(), s.op)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_seeds_differ() {
        let a = generate(7, Duration::from_secs(60), 4);
        assert_eq!(a, generate(7, Duration::from_secs(60), 4));
        assert_ne!(a.steps, generate(8, Duration::from_secs(60), 4).steps);
    }

    #[test]
    fn every_fault_is_undone_by_the_end_and_hosts_take_one_fault_at_a_time() {
        for seed in 0..500 {
            let length = Duration::from_secs(20 + seed % 50);
            let s = generate(seed, length, 4);
            assert!(!s.steps.is_empty(), "seed {seed}: no fault");
            let mut killed = [false; 4];
            let mut frozen = [false; 4];
            let mut cut = false;
            let mut last = Duration::ZERO;
            for step in &s.steps {
                assert!(step.at >= last && step.at <= length, "seed {seed}: {step:?}");
                last = step.at;
                let up = |h: usize, killed: &[bool; 4], frozen: &[bool; 4]| !killed[h] && !frozen[h];
                match step.op {
                    Op::Kill(h) => {
                        assert!(up(h, &killed, &frozen), "seed {seed}: {s}");
                        killed[h] = true;
                    }
                    Op::Start(h) => {
                        assert!(killed[h], "seed {seed}");
                        killed[h] = false;
                    }
                    Op::Freeze(h) => {
                        assert!(up(h, &killed, &frozen), "seed {seed}: {s}");
                        frozen[h] = true;
                    }
                    Op::Thaw(h) => {
                        assert!(frozen[h], "seed {seed}");
                        frozen[h] = false;
                    }
                    Op::Restart(h) | Op::KillWorker(h) => {
                        assert!(up(h, &killed, &frozen), "seed {seed}: {s}")
                    }
                    Op::Isolate(_) | Op::OneWay(..) => {
                        assert!(!cut, "seed {seed}: {s}");
                        cut = true;
                    }
                    Op::Split(ref side) => {
                        assert!(!cut, "seed {seed}: {s}");
                        assert!(!side.is_empty() && side.len() < 4, "seed {seed}: {side:?}");
                        cut = true;
                    }
                    Op::Heal => cut = false,
                }
            }
            assert!(
                !cut && killed == [false; 4] && frozen == [false; 4],
                "seed {seed}: {s}"
            );
        }
    }

    #[test]
    fn over_many_seeds_every_kind_of_fault_and_overlaps_occur() {
        let mut kinds = std::collections::HashSet::new();
        let mut overlapping = 0;
        for seed in 0..200 {
            let s = generate(seed, Duration::from_secs(60), 4);
            let mut open = 0;
            for step in &s.steps {
                kinds.insert(std::mem::discriminant(&step.op));
                match step.op {
                    Op::Kill(_) | Op::Freeze(_) | Op::Isolate(_) | Op::Split(_) | Op::OneWay(..) => {
                        open += 1;
                        if open > 1 {
                            overlapping += 1;
                        }
                    }
                    Op::Start(_) | Op::Thaw(_) | Op::Heal => open -= 1,
                    _ => {}
                }
            }
        }
        assert_eq!(kinds.len(), 10, "every op appears");
        assert!(overlapping > 20, "faults overlap: {overlapping}");
    }
}
