//! The invariants, checked on what was recorded: every acknowledged commit of the clients, and
//! the state of every node at the end.

use std::collections::HashSet;

/// One commit a client saw acknowledged. Times are Unix microseconds on the one clock every
/// simulated host shares: `began` is `clock_timestamp()` inside the transaction (the commit
/// came after it), `acked` when the client had the acknowledgement (the commit came before).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub node: usize,
    pub key: i64,
    pub sent: i64,
    pub began: i64,
    pub acked: i64,
    /// The timeline the commit was written on (0: not known), and the WAL position its row was
    /// written at (its commit record follows).
    pub timeline: u32,
    pub lsn: u64,
}

/// One PostgreSQL node at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeEnd {
    pub name: String,
    pub address: String,
    /// Whether it answered at all.
    pub reachable: bool,
    pub in_recovery: bool,
    /// An ordinary role's commit succeeded on it just now.
    pub takes_writes: bool,
    /// A standby: the address its WAL receiver streams from, when streaming.
    pub streams_from: Option<String>,
    /// pg_promoter's state (`needs_rewind`, `fenced`, ...).
    pub state: String,
    /// The keys of the workload's table, on a node that takes writes.
    pub keys: Option<HashSet<i64>>,
    /// On the primary: where each older timeline of its history ended (the fork points).
    pub forks: Vec<(u32, u64)>,
}

/// `s1 (standby, watching, streaming from 10.231.5.1)`: how reports name a node's end.
impl std::fmt::Display for NodeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let role = if !self.reachable {
            "unreachable"
        } else if self.in_recovery {
            "standby"
        } else {
            "primary"
        };
        let from = self.streams_from.as_deref().unwrap_or("nothing");
        write!(f, "{} ({role}, {}, streaming from {from})", self.name, self.state)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two nodes acknowledged ordinary commits in overlapping intervals.
    Overlap(String),
    /// Two primaries took commits: two nodes wrote one timeline, or an older timeline took a
    /// commit begun after a newer one had acknowledged one.
    TwoPrimaries(String),
    /// With synchronous replication, an acknowledged key is not on the final primary.
    Lost(String),
    /// Without it, more was lost than the data-loss bound allows.
    LostBeyondBound(String),
    /// No single primary that every other node follows, by the deadline after the last heal.
    NotConverged(String),
}

impl Violation {
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Overlap(_) => "overlapping writes",
            Violation::TwoPrimaries(_) => "two primaries",
            Violation::Lost(_) => "acknowledged commit lost",
            Violation::LostBeyondBound(_) => "loss beyond the bound",
            Violation::NotConverged(_) => "no single primary",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let detail = match self {
            Violation::Overlap(d)
            | Violation::TwoPrimaries(d)
            | Violation::Lost(d)
            | Violation::LostBeyondBound(d)
            | Violation::NotConverged(d) => d,
        };
        write!(f, "{}: {detail}", self.kind())
    }
}

/// No two nodes acknowledge ordinary commits in overlapping intervals. The acknowledgements, in
/// the order they arrived, form runs of one node each; where one node's run ends and another's
/// starts, the first commit of the new run must have begun after the last of the old one was
/// acknowledged. (Checking each boundary suffices: a run's commits all came after the boundary
/// before it.)
pub fn overlaps(acks: &[Ack], names: &[String]) -> Vec<Violation> {
    let mut sorted: Vec<&Ack> = acks.iter().collect();
    sorted.sort_by_key(|a| (a.acked, a.node));
    let name = |n: usize| names.get(n).cloned().unwrap_or_else(|| n.to_string());
    let mut found = Vec::new();
    for pair in sorted.windows(2) {
        let (last, first) = (pair[0], pair[1]);
        if last.node != first.node && first.began < last.acked {
            found.push(Violation::Overlap(format!(
                "{} acknowledged key {} at {} µs, and {} had begun key {} at {} µs, {} ms before",
                name(last.node),
                last.key,
                last.acked,
                name(first.node),
                first.key,
                first.began,
                (last.acked - first.began) as f64 / 1000.0
            )));
        }
    }
    found
}

/// Split brains that leave no overlap (two primaries committing in turn, 50 ms apart): a timeline
/// belongs to the one primary that forked it, so two nodes acknowledging commits on one timeline
/// is two primaries; and once a timeline has acknowledged a commit, a commit begun afterwards on
/// an older one came from a primary that had been superseded.
pub fn timelines(acks: &[Ack], names: &[String]) -> Vec<Violation> {
    let name = |n: usize| names.get(n).cloned().unwrap_or_else(|| n.to_string());
    let mut found = Vec::new();
    // Each timeline's first acknowledgement, and its node.
    let mut first: std::collections::BTreeMap<u32, &Ack> = std::collections::BTreeMap::new();
    let mut sorted: Vec<&Ack> = acks.iter().filter(|a| a.timeline != 0).collect();
    sorted.sort_by_key(|a| a.acked);
    for a in &sorted {
        let owner = *first.entry(a.timeline).or_insert(a);
        if owner.node != a.node {
            found.push(Violation::TwoPrimaries(format!(
                "{} and {} both acknowledged commits on timeline {} (keys {} and {})",
                name(owner.node),
                name(a.node),
                a.timeline,
                owner.key,
                a.key
            )));
        }
    }
    for a in &sorted {
        let newer = first
            .range(a.timeline + 1..)
            .map(|(_, f)| *f)
            .find(|f| f.acked < a.began);
        if let Some(f) = newer {
            found.push(Violation::TwoPrimaries(format!(
                "{} acknowledged key {} on timeline {}, begun at {} µs, after {} had acknowledged key {} \
                 on timeline {} at {} µs",
                name(a.node),
                a.key,
                a.timeline,
                a.began,
                name(f.node),
                f.key,
                f.timeline,
                f.acked
            )));
        }
    }
    found
}

/// The share of the time, from the first commit sent to the last acknowledged, in which a node
/// acknowledged some commit: quarter seconds with one at least, over all of them. Two primaries
/// acknowledging at once count once.
pub fn writable(acks: &[Ack]) -> f64 {
    const SLOT: i64 = 250_000;
    let (Some(first), Some(last)) = (
        acks.iter().map(|a| a.sent).min(),
        acks.iter().map(|a| a.acked).max(),
    ) else {
        return 0.0;
    };
    let slots = ((last - first) / SLOT + 1) as usize;
    let mut seen = vec![false; slots];
    for a in acks {
        seen[((a.acked - first) / SLOT) as usize] = true;
    }
    seen.iter().filter(|s| **s).count() as f64 / slots as f64
}

/// The acknowledged keys missing from the final primary's table.
pub fn lost(acks: &[Ack], keys: &HashSet<i64>) -> Vec<i64> {
    let mut lost: Vec<i64> = acks.iter().map(|a| a.key).filter(|k| !keys.contains(k)).collect();
    lost.sort_unstable();
    lost
}

/// The WAL a promotion threw away, as the lost commits show it: for each, how far past the fork
/// of its timeline (in the new primary's history) it was written; the largest, or None when no
/// lost commit's timeline is in that history (a branch never forked from: a split brain, which
/// [`timelines`] reports).
pub fn lost_wal(acks: &[Ack], lost: &[i64], forks: &[(u32, u64)]) -> Option<u64> {
    acks.iter()
        .filter(|a| lost.binary_search(&a.key).is_ok())
        .filter_map(|a| {
            let fork = forks.iter().find(|(tli, _)| *tli == a.timeline)?.1;
            Some(a.lsn.saturating_sub(fork))
        })
        .max()
}

/// Exactly one node takes writes, and every other node streams from it or cannot follow it
/// (`needs_rewind`, or an old primary fenced until a DBA rejoins it): `Ok` with the primary's
/// index, or why not.
pub fn converged(nodes: &[NodeEnd]) -> Result<usize, String> {
    let writers: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].takes_writes).collect();
    let [primary] = writers[..] else {
        let names: Vec<&str> = writers.iter().map(|i| nodes[*i].name.as_str()).collect();
        return Err(format!("{} nodes take writes: {names:?}", writers.len()));
    };
    let address = &nodes[primary].address;
    let strays: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            *i != primary
                && n.streams_from.as_ref() != Some(address)
                && !matches!(n.state.as_str(), "needs_rewind" | "fenced")
        })
        .map(|(_, n)| n.to_string())
        .collect();
    if strays.is_empty() {
        Ok(primary)
    } else {
        Err(format!(
            "{} takes writes, but these neither follow it nor say they cannot: {}",
            nodes[primary].name,
            strays.join("; ")
        ))
    }
}

/// Every invariant at once, for a history and the end state (`converged` as [`converged`] said
/// by the deadline).
pub fn check(
    acks: &[Ack],
    nodes: &[NodeEnd],
    converged: &Result<usize, String>,
    synchronous: bool,
    bound_bytes: u64,
) -> Vec<Violation> {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let mut found = overlaps(acks, &names);
    found.extend(timelines(acks, &names));
    match converged {
        Err(why) => found.push(Violation::NotConverged(why.clone())),
        Ok(primary) => {
            let keys = nodes[*primary].keys.clone().unwrap_or_default();
            let missing = lost(acks, &keys);
            let shown: Vec<String> = missing.iter().take(10).map(i64::to_string).collect();
            if synchronous && !missing.is_empty() {
                found.push(Violation::Lost(format!(
                    "{} acknowledged key(s) missing on {}: {}",
                    missing.len(),
                    nodes[*primary].name,
                    shown.join(", ")
                )));
            } else if let Some(bytes) = lost_wal(acks, &missing, &nodes[*primary].forks) {
                if bytes > bound_bytes {
                    found.push(Violation::LostBeyondBound(format!(
                        "{} acknowledged key(s) missing on {}, written up to {bytes} bytes past the \
                         fork; the bound is {bound_bytes} bytes",
                        missing.len(),
                        nodes[*primary].name
                    )));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(node: usize, key: i64, began: i64, acked: i64) -> Ack {
        Ack {
            node,
            key,
            sent: began - 1,
            began,
            acked,
            timeline: 0,
            lsn: 0,
        }
    }

    fn on(timeline: u32, a: Ack) -> Ack {
        Ack { timeline, ..a }
    }

    #[test]
    fn writable_is_the_share_of_quarter_seconds_with_an_acknowledgement() {
        assert_eq!(writable(&[]), 0.0);
        // Sent from 0 µs: acks in the first and the last of four quarter seconds; two at once
        // count once.
        let acks = [
            ack(0, 1, 1, 100_000),
            ack(1, 2, 1, 110_000),
            ack(0, 3, 800_000, 999_999),
        ];
        assert_eq!(writable(&acks), 0.5);
    }

    #[test]
    fn two_primaries_committing_in_turn_are_seen_by_their_timelines() {
        // A failover: p on 1, then s1 on 2; p back later as a follower writes nothing.
        let clean = [
            on(1, ack(0, 1, 10, 20)),
            on(2, ack(1, 2, 30, 40)),
            on(2, ack(1, 3, 50, 60)),
        ];
        assert!(timelines(&clean, &names()).is_empty());
        // Two standbys promoted at once both fork timeline 2, and take turns: no overlap.
        let twins = [
            on(2, ack(1, 1, 10, 12)),
            on(2, ack(2, 2, 30, 32)),
            on(2, ack(1, 3, 50, 52)),
        ];
        assert!(overlaps(&twins, &names()).is_empty());
        let found = timelines(&twins, &names());
        assert!(
            !found.is_empty()
                && found[0]
                    .to_string()
                    .contains("s1 and s2 both acknowledged commits on timeline 2")
        );
        // The old primary, still on 1, commits after the new one acknowledged on 2.
        let stale = [
            on(1, ack(0, 1, 10, 12)),
            on(2, ack(1, 2, 30, 32)),
            on(1, ack(0, 3, 50, 52)),
        ];
        assert!(overlaps(&stale, &names()).is_empty());
        let found = timelines(&stale, &names());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .to_string()
                .contains("p acknowledged key 3 on timeline 1"),
            "{}",
            found[0]
        );
        // Unknown timelines say nothing.
        assert!(timelines(&[ack(0, 1, 1, 2), ack(1, 2, 3, 4)], &names()).is_empty());
    }

    fn names() -> Vec<String> {
        vec!["p".into(), "s1".into(), "s2".into()]
    }

    #[test]
    fn a_clean_handover_has_no_overlap_and_an_old_primary_acking_late_has_one() {
        let clean = [
            ack(0, 1, 10, 20),
            ack(0, 2, 30, 40),
            ack(1, 3, 50, 60),
            ack(1, 4, 70, 80),
        ];
        assert!(overlaps(&clean, &names()).is_empty());
        // The old primary acknowledges a commit after the new one began committing.
        let late = [
            ack(0, 1, 10, 20),
            ack(1, 3, 50, 60),
            ack(0, 2, 30, 70),
            ack(1, 4, 75, 80),
        ];
        let found = overlaps(&late, &names());
        assert_eq!(found.len(), 1, "{found:?}");
        let text = found[0].to_string();
        assert!(
            text.contains("s1 acknowledged key 3 at 60") && text.contains("p had begun key 2 at 30"),
            "{text}"
        );
        // Back and forth without overlap is no violation (a failover, then another).
        let twice = [ack(0, 1, 10, 20), ack(1, 2, 30, 40), ack(0, 3, 50, 60)];
        assert!(overlaps(&twice, &names()).is_empty());
        // A commit that began before the other node's last acknowledgement overlaps.
        let tight = [ack(0, 1, 10, 20), ack(1, 2, 19, 25)];
        assert_eq!(overlaps(&tight, &names()).len(), 1);
    }

    fn end(name: &str, takes_writes: bool, streams_from: Option<&str>, state: &str) -> NodeEnd {
        NodeEnd {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            reachable: true,
            in_recovery: !takes_writes,
            takes_writes,
            streams_from: streams_from.map(String::from),
            state: state.into(),
            keys: takes_writes.then(|| [1, 2].into_iter().collect()),
            forks: Vec::new(),
        }
    }

    #[test]
    fn convergence_needs_one_writer_followed_by_every_other_node() {
        let p = end("p", true, None, "primary");
        let addr = p.address.clone();
        let s = |name: &str| end(name, false, Some(&addr), "watching");
        assert_eq!(converged(&[p.clone(), s("s1"), s("s22")]), Ok(0));
        let rewind = end("s1", false, None, "needs_rewind");
        let fenced = end("s22", false, None, "fenced");
        assert_eq!(converged(&[p.clone(), rewind, fenced]), Ok(0));
        let lost = end("s1", false, None, "watching");
        let err = converged(&[p.clone(), lost, s("s22")]).unwrap_err();
        assert!(
            err.contains("s1 (standby, watching, streaming from nothing)"),
            "{err}"
        );
        let two = converged(&[p.clone(), end("s1", true, None, "primary"), s("s22")]).unwrap_err();
        assert!(two.starts_with("2 nodes take writes"), "{two}");
        assert!(converged(&[s("s1"), s("s22")])
            .unwrap_err()
            .starts_with("0 nodes"));
    }

    #[test]
    fn lost_keys_are_a_violation_with_synchronous_replication_and_beyond_the_bound_without() {
        let mut p = end("p", true, None, "primary");
        // Timeline 1 forked into 2 at 1000; key 3 was written on 1 at 1200: 200 bytes lost.
        p.forks = vec![(1, 1000)];
        let at = |a: Ack, lsn: u64| Ack {
            timeline: 1,
            lsn,
            ..a
        };
        let acks = [
            at(ack(0, 1, 1, 2), 900),
            at(ack(0, 2, 3, 4), 950),
            at(ack(0, 3, 5, 6), 1200),
        ];
        assert_eq!(lost_wal(&acks, &[3], &p.forks), Some(200));
        assert_eq!(lost_wal(&acks, &[3], &[(7, 0)]), None);
        let nodes = [p];
        let sync = check(&acks, &nodes, &Ok(0), true, 16 << 20);
        assert!(
            matches!(&sync[..], [Violation::Lost(d)] if d.starts_with("1 acknowledged key(s) missing on p: 3"))
        );
        assert!(check(&acks, &nodes, &Ok(0), false, 200).is_empty());
        let tight = check(&acks, &nodes, &Ok(0), false, 199);
        assert!(
            matches!(&tight[..], [Violation::LostBeyondBound(d)] if d.contains("200 bytes past the fork"))
        );
        let none = check(&acks, &nodes, &Err("0 nodes take writes".into()), false, 100);
        assert!(matches!(&none[..], [Violation::NotConverged(_)]));
    }
}
