//! The cluster a schedule runs on: three PostgreSQL nodes (p, s1, s2) with pg_promoter and
//! leadership (every node's `peers` names all three), and a witness on a fourth host when the
//! setup has one; synchronous replication (`ANY 1` of the others) when it says so.

use testbed::{Host, Net, Node};

use super::schedule::Op;
use super::target::{self, Applied, Target, SCHEMA};

fn refs(c: &[(String, String)]) -> Vec<(&str, &str)> {
    c.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

const NAMES: [&str; 3] = ["p", "s1", "s2"];
/// The data-loss bound in force (`pg_promoter.max_lag_on_failover`, its default).
pub const BOUND_BYTES: u64 = 16 << 20;

pub struct ChaosCluster {
    /// Dropped after the nodes (fields drop in order).
    nodes: Vec<Node>,
    witness: Option<Node>,
    hosts: Vec<Host>,
    net: Net,
}

impl ChaosCluster {
    pub fn start(witness: bool, synchronous: bool) -> Result<ChaosCluster, String> {
        let net = Net::new("chaos");
        let mut hosts: Vec<Host> = NAMES.iter().map(|n| net.host(n)).collect();
        let witness = witness.then(|| {
            let host = net.host("w");
            hosts.push(host.clone());
            let w = Node::primary_on(&host, "cw", &[]);
            (w.psql("CREATE EXTENSION pg_promoter"), w)
        });
        let witness = match witness {
            Some((Err(e), _)) => return Err(format!("witness: {e}")),
            Some((Ok(_), w)) => Some(w),
            None => None,
        };
        let witness_conf = witness.as_ref().map(|w| format!("'w: {}'", w.conninfo()));
        let conf = |name: &str| -> Vec<(String, String)> {
            let mut c = vec![
                ("pg_promoter.keep_alive".to_string(), "'1s'".to_string()),
                ("pg_promoter.keepalives_count".into(), "3".into()),
                ("cluster_name".into(), format!("'{name}'")),
                ("wal_sender_timeout".into(), "'5s'".into()),
            ];
            if let Some(w) = &witness_conf {
                c.push(("pg_promoter.witness_conninfo".into(), w.clone()));
            }
            c
        };
        let p_conf = conf("p");
        let primary = Node::primary_on(&hosts[0], "cp", &refs(&p_conf));
        primary.psql(&format!("CREATE EXTENSION pg_promoter; {SCHEMA}"))?;
        let mut nodes = vec![primary];
        for (i, name) in NAMES.iter().enumerate().skip(1) {
            let c = conf(name);
            nodes.push(Node::standby_on(
                &hosts[i],
                &format!("c{name}"),
                &nodes[0],
                &refs(&c),
            ));
        }
        let peers: Vec<String> = NAMES
            .iter()
            .zip(&nodes)
            .map(|(name, n)| format!("{name}: {}", n.conninfo()))
            .collect();
        for node in &nodes {
            node.append_conf(&format!("pg_promoter.peers = '{}'", peers.join("; ")));
            // Once the standbys stream: before, the setup's own commits would wait for them.
            if synchronous {
                node.append_conf("synchronous_standby_names = 'ANY 1 (p, s1, s2)'");
            }
            node.reload();
        }
        let cluster = ChaosCluster {
            nodes,
            witness,
            hosts,
            net,
        };
        crate::tools::pg_promoter::wait_ready(&cluster.nodes, true)?;
        Ok(cluster)
    }

    /// The server on host `h`: a PostgreSQL node, or the witness after them.
    fn server(&self, h: usize) -> &Node {
        self.nodes
            .get(h)
            .or(self.witness.as_ref().filter(|_| h == self.nodes.len()))
            .expect("a host of the schedule")
    }
}

impl Target for ChaosCluster {
    fn names(&self) -> Vec<String> {
        NAMES.iter().map(|n| n.to_string()).collect()
    }

    fn endpoint(&self, i: usize) -> (String, u16) {
        (self.nodes[i].address(), self.nodes[i].port())
    }

    fn hosts(&self) -> usize {
        self.hosts.len()
    }

    fn apply(&self, op: &Op) -> Result<Applied, String> {
        let running = |h: usize| self.server(h).is_running();
        match op {
            Op::Kill(h) | Op::Freeze(h) | Op::Restart(h) | Op::KillWorker(h) if !running(*h) => {
                return Ok(Applied::NotDone("its server is not running".into()));
            }
            Op::Kill(h) => self.server(*h).kill9(),
            Op::Start(h) => self.server(*h).start_after_kill(),
            Op::Freeze(h) => self.server(*h).freeze(),
            Op::Thaw(h) => self.server(*h).thaw(),
            Op::Restart(h) => self.server(*h).restart(),
            Op::KillWorker(h) => {
                // By its pid in the status: command lines name the data directory, which holds
                // "pg_promoter" too.
                let pid = match self.server(*h).psql("SELECT worker_pid FROM pg_promoter_status") {
                    Ok(pid) if !pid.is_empty() => pid,
                    Ok(_) => return Ok(Applied::NotDone("no pg_promoter worker running".into())),
                    Err(e) => return Ok(Applied::NotDone(format!("its worker's pid unknown: {e}"))),
                };
                let killed = std::process::Command::new("kill").args(["-9", &pid]).status();
                if !killed.is_ok_and(|s| s.success()) {
                    return Err(format!("kill -9 {pid} failed"));
                }
            }
            Op::Isolate(h) => self.net.isolate(&self.hosts[*h]),
            Op::Split(side) => {
                let side: Vec<&Host> = side.iter().map(|h| &self.hosts[*h]).collect();
                self.net.split(&side);
            }
            Op::OneWay(a, b) => self.net.cut_one_way(&self.hosts[*a], &self.hosts[*b]),
            Op::Heal => self.net.heal_all(),
        }
        Ok(Applied::Done)
    }

    /// Every fault undone: cuts healed, servers thawed, killed ones started.
    fn undo_all(&self) {
        self.net.heal_all();
        let servers = self.nodes.iter().chain(self.witness.as_ref());
        for server in servers {
            server.thaw();
            if !server.is_running() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.start_after_kill()));
            }
        }
    }

    fn state(&self, i: usize) -> String {
        target::query(
            &target::admin_conninfo(self, i),
            "SELECT state FROM pg_promoter_status",
        )
        .unwrap_or_default()
    }

    /// The last events of every server's worker, for a schedule that did not settle.
    fn recent_events(&self) -> Vec<String> {
        let sql = "SELECT string_agg(to_char(at, 'HH24:MI:SS.MS') || ' ' || event || ': ' || detail, E'\\n' \
                   ORDER BY seq) FROM (SELECT * FROM pg_promoter_events() ORDER BY seq DESC LIMIT 8) e";
        let names = NAMES.iter().copied().chain(self.witness.iter().map(|_| "w"));
        let servers = self.nodes.iter().chain(self.witness.as_ref());
        names
            .zip(servers)
            .flat_map(|(name, server)| match server.psql(sql) {
                Ok(text) => text.lines().map(|l| format!("{name}: {l}")).collect::<Vec<_>>(),
                Err(e) => vec![format!("{name}: no events: {e}")],
            })
            .collect()
    }
}
