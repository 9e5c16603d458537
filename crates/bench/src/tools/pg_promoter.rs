//! pg_promoter itself: a primary and one standby or more, each on its own simulated host, the
//! worker in every server. With three nodes or more, leadership runs: every node's
//! `pg_promoter.peers` names all of them (as in tests/election.rs). With a witness, it runs with
//! two nodes too, the witness on a host of its own: the setup that fences, to compare with the
//! tools that do (Patroni, pg_auto_failover).

use std::time::Duration;

use testbed::{Net, Node};

use super::common::Nodes;
use crate::cluster::{Cluster, Tool};

/// The ordinary role the benchmark's client commits as, with two nodes or more: a primary takes
/// ordinary commits only within its lease, holds ordinary logins after a start and refuses them
/// when fenced, while superusers pass every check (so a superuser client would measure less
/// than an application sees).
const CLIENT_ROLE: &str = "bench";

pub struct PgPromoter {
    pub keep_alive_ms: u64,
    pub count: u32,
    /// Leadership at every node count, with a witness on its own host.
    pub witness: bool,
}

/// The witness's server, kept running beside the nodes until the cluster is dropped.
struct Witness {
    _server: Option<Node>,
}

/// A witness is a PostgreSQL server, not a daemon: its cost is a server's.
impl super::common::Daemons for Witness {
    fn daemons(&self) -> Vec<(String, i32)> {
        Vec::new()
    }
}

impl Tool for PgPromoter {
    fn label(&self) -> String {
        let ka = if self.keep_alive_ms.is_multiple_of(1000) {
            format!("{}s", self.keep_alive_ms / 1000)
        } else {
            format!("{}ms", self.keep_alive_ms)
        };
        let witness = if self.witness { " + witness" } else { "" };
        format!("pg_promoter {ka}×{}{witness}", self.count)
    }

    fn family(&self) -> &'static str {
        "pg_promoter"
    }

    fn budget(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms * u64::from(self.count))
    }

    fn phase_span(&self) -> Duration {
        // The worker's checks, and the standby's WAL receiver status messages (10 s).
        Duration::from_millis(self.keep_alive_ms).max(Duration::from_secs(10))
    }

    fn fences(&self) -> bool {
        self.witness
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> =
            self.conf().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        settings.push(("client".into(), format!("the ordinary role {CLIENT_ROLE}")));
        if self.witness {
            settings.push((
                "witness".into(),
                "pg_promoter.witness_conninfo='w: <conninfo>' on every node, peers at every node count"
                    .into(),
            ));
        }
        settings.push((
            "with 3 nodes or more".into(),
            "pg_promoter.peers='p: <conninfo>; s1: <conninfo>; s2: <conninfo>' on every node, \
             cluster_name=<the node's name>"
                .into(),
        ));
        settings
    }

    fn supports(&self, nodes: usize) -> bool {
        nodes >= 2
    }

    fn start(&self, nodes: usize) -> Result<Box<dyn Cluster>, String> {
        let leadership = nodes >= 3 || self.witness;
        let net = Net::new("bench");
        // The names in peers, and each node's cluster_name (how a node finds itself in peers).
        let names: Vec<String> = (0..nodes)
            .map(|i| match (i, leadership) {
                (0, true) => "p".to_string(),
                (_, true) => format!("s{i}"),
                // The names the two-node cluster always had.
                (0, false) => "p".to_string(),
                (_, false) => "s".to_string(),
            })
            .collect();
        let conf = self.conf();
        let conf_of = |name: &str| -> Vec<(String, String)> {
            let mut c: Vec<(String, String)> = conf.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            if leadership {
                c.push(("cluster_name".into(), format!("'{name}'")));
            }
            c
        };
        let primary_conf = conf_of(&names[0]);
        let primary = Node::primary_on(&net.host(&names[0]), "bp", &borrow(&primary_conf));
        primary.psql("CREATE EXTENSION pg_promoter")?;
        primary.psql(&format!(
            "CREATE ROLE {CLIENT_ROLE} LOGIN; GRANT CREATE ON SCHEMA public TO {CLIENT_ROLE}"
        ))?;
        let witness = self
            .witness
            .then(|| Node::primary_on(&net.host("w"), "bw", &borrow(&conf_of("w"))));
        if let Some(w) = &witness {
            w.psql("CREATE EXTENSION pg_promoter")?;
        }
        let mut members = vec![primary];
        for name in &names[1..] {
            let standby_conf = conf_of(name);
            let standby = Node::standby_on(
                &net.host(name),
                &format!("b{name}"),
                &members[0],
                &borrow(&standby_conf),
            );
            members.push(standby);
        }
        if leadership {
            let peers: Vec<String> = names
                .iter()
                .zip(&members)
                .map(|(name, n)| format!("{name}: {}", n.conninfo()))
                .collect();
            for node in &members {
                node.append_conf(&format!("pg_promoter.peers = '{}'", peers.join("; ")));
                if let Some(w) = &witness {
                    node.append_conf(&format!("pg_promoter.witness_conninfo = 'w: {}'", w.conninfo()));
                }
                node.reload();
            }
        }
        wait_ready(&members, leadership)?;
        Ok(Box::new(Nodes {
            // Nothing but the witness: the worker runs inside the servers.
            tool: Witness { _server: witness },
            net,
            nodes: members,
            client_user: Some(CLIENT_ROLE),
            reported: events,
        }))
    }
}

/// Waits until every standby watches and, with leadership, `p` leads, unfenced, with a lease.
pub fn wait_ready(members: &[Node], leadership: bool) -> Result<(), String> {
    let column = |node: &Node, column: &str| {
        node.psql(&format!("SELECT {column} FROM pg_promoter_status"))
            .unwrap_or_default()
    };
    let ready = testbed::try_wait_until(Duration::from_secs(60), || {
        members[1..].iter().all(|s| column(s, "state") == "watching")
            && (!leadership
                || (column(&members[0], "leader") == "p"
                    && column(&members[0], "fenced") == "f"
                    && column(&members[0], "lease_expires_at IS NOT NULL") == "t"))
    });
    if ready.is_none() {
        let states: Vec<String> = members
        .iter()
        .map(|n| {
            format!(
            "{}: {}",
            n.name(),
            column(n, "state || ' leader=' || coalesce(leader, '-') || ' lease=' || coalesce(lease_expires_at::text, '-')")
            )
        })
        .collect();
        return Err(format!(
            "the standbys never all watched{}: {}",
            if leadership {
                ", or the primary never held a lease"
            } else {
                ""
            },
            states.join("; ")
        ));
    }
    Ok(())
}

fn borrow(c: &[(String, String)]) -> Vec<(&str, &str)> {
    c.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl PgPromoter {
    fn conf(&self) -> Vec<(&'static str, String)> {
        vec![
            ("pg_promoter.keep_alive", format!("'{}ms'", self.keep_alive_ms)),
            ("pg_promoter.keepalives_count", self.count.to_string()),
        ]
    }
}

/// The worker's own events on the new primary: when it decided to promote, and when it had.
fn events(new_primary: &Node) -> Option<(f64, f64)> {
    let at = |kind: &str| {
        let sql = format!(
            "SELECT extract(epoch FROM at) FROM pg_promoter_events() WHERE event = '{kind}' ORDER BY seq LIMIT 1"
        );
        new_primary.psql(&sql).ok()?.parse().ok()
    };
    Some((at("decided")?, at("promoted")?))
}
