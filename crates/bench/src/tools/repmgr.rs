//! repmgrd (repmgr 5.3): a primary and one standby or more, each on its own simulated host,
//! registered with repmgr, and repmgrd running on every host in the foreground of a child process
//! we keep. No witness in the failover trials: every node is a PostgreSQL node (repmgr's witness
//! only serves to tell a primary in another location from a dead one, which one location does not
//! need); the chaos run adds one on a fourth host, as repmgr's documentation sets it up. With two
//! standbys, repmgrd's election picks one and the other follows it (`follow_command`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::{Host, Net, Node};

use super::common::{as_server_user, give_to_server_user, run, Daemon, Nodes, Service};
use crate::chaos::schedule::Op;
use crate::chaos::target::{self, Applied, Target};
use crate::cluster::{Cluster, Tool};

/// repmgrd's detection settings, in whole seconds: repmgr takes nothing finer.
#[derive(PartialEq, Eq)]
pub struct Repmgrd {
    pub monitor_interval_secs: u32,
    pub reconnect_attempts: u32,
    pub reconnect_interval: u32,
}

impl Repmgrd {
    /// repmgr's own defaults: 2 s checks, then 6 reconnection attempts 10 s apart.
    pub const DEFAULTS: Repmgrd = Repmgrd {
        monitor_interval_secs: 2,
        reconnect_attempts: 6,
        reconnect_interval: 10,
    };

    /// The same detection budget as pg_promoter's fast setting, 1 s × 3: whole seconds are as
    /// low as repmgr goes.
    pub const FAST: Repmgrd = Repmgrd {
        monitor_interval_secs: 1,
        reconnect_attempts: 3,
        reconnect_interval: 1,
    };

    /// Every repmgr.conf line of a node.
    fn conf(&self, n: &PerNode) -> Vec<(&'static str, String)> {
        let repmgr = testbed::bindir().join("repmgr");
        let command = |action: &str, tail: &str| {
            let conf = format!("{}/repmgr.conf", n.base);
            format!(
                "'{} standby {action} -f {conf} --log-to-file{tail}'",
                repmgr.display()
            )
        };
        vec![
            ("node_id", n.id.clone()),
            ("node_name", format!("'{}'", n.name)),
            ("conninfo", format!("'{}'", n.conninfo)),
            ("data_directory", format!("'{}'", n.data)),
            ("log_file", format!("'{}/repmgr.log'", n.base)),
            ("failover", "automatic".to_string()),
            // What `repmgr standby follow` runs to restart a standby on its new upstream.
            ("pg_bindir", format!("'{}'", testbed::bindir().display())),
            ("promote_command", command("promote", "")),
            ("follow_command", command("follow", " --upstream-node-id=%n")),
            ("monitor_interval_secs", self.monitor_interval_secs.to_string()),
            ("reconnect_attempts", self.reconnect_attempts.to_string()),
            ("reconnect_interval", self.reconnect_interval.to_string()),
        ]
    }
}

/// What differs between the nodes' repmgr.conf files.
struct PerNode {
    id: String,
    name: String,
    conninfo: String,
    data: String,
    /// The directory holding the data directory, repmgr.conf and repmgr.log.
    base: String,
}

/// Added to every conninfo, as repmgr's documentation asks ("repmgrd connection settings"):
/// without it, a PQping of a hung primary, whose kernel still completes the TCP handshake, never
/// returns. 2 s is also libpq's minimum, so every check of a hung or cut-off node takes 2 s.
const CONNECT_TIMEOUT: &str = "connect_timeout=2";

impl Tool for Repmgrd {
    fn label(&self) -> String {
        if *self == Repmgrd::DEFAULTS {
            "repmgrd defaults".to_string()
        } else {
            format!("repmgrd {}s×{}", self.reconnect_interval, self.reconnect_attempts)
        }
    }

    fn family(&self) -> &'static str {
        "repmgrd"
    }

    /// What the settings promise. repmgrd actually sleeps between its attempts only, so a dead
    /// primary that refuses connections goes unnoticed for one monitor interval at most plus
    /// (attempts - 1) reconnect intervals; one that hangs or is cut off adds 2 s per ping
    /// (CONNECT_TIMEOUT), and 2 s more when `repmgr standby promote` checks it is gone.
    fn budget(&self) -> Duration {
        Duration::from_secs(u64::from(self.reconnect_attempts * self.reconnect_interval))
    }

    fn phase_span(&self) -> Duration {
        let longest = self.monitor_interval_secs.max(self.reconnect_interval);
        Duration::from_secs(u64::from(longest)).max(Duration::from_secs(10))
    }

    fn settings(&self) -> Vec<(String, String)> {
        let placeholders = PerNode {
            id: "<1 the primary, 2, 3, ... the standbys>".to_string(),
            name: "<node name>".to_string(),
            conninfo: format!("host=<host ip> port=<port> user=postgres dbname=postgres {CONNECT_TIMEOUT}"),
            data: "<node base dir>/data".to_string(),
            base: "<node base dir>".to_string(),
        };
        self.conf(&placeholders)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn supports(&self, nodes: usize) -> bool {
        nodes >= 2
    }

    fn start(&self, nodes: usize) -> Result<Box<dyn Cluster>, String> {
        Ok(Box::new(self.cluster(nodes, false)?))
    }
}

impl Repmgrd {
    /// While the primary is frozen (repmgrd's check hangs on it): how long the standby's repmgrd
    /// takes to exit after SIGTERM, then the standby's fast shutdown. (pg_promoter's worker is
    /// inside the server: its share is in the server's shutdown.)
    pub fn shutdown_while_frozen(&self) -> Result<(Duration, Duration), String> {
        let pair = self.cluster(2, false)?;
        pair.nodes[0].freeze();
        std::thread::sleep(Duration::from_millis(1500));
        let start = Instant::now();
        let daemon = &pair.tool.daemons[1];
        daemon.daemon().signal(libc::SIGTERM);
        testbed::try_wait_until(Duration::from_secs(60), || daemon.exited())
            .ok_or("repmgrd did not exit within 60 s of SIGTERM")?;
        let repmgrd = start.elapsed();
        let server = pair.nodes[1].stop_fast();
        pair.nodes[0].thaw();
        Ok((repmgrd, server))
    }

    /// The chaos run's cluster: three nodes and a witness, the clients' role and table made.
    pub fn chaos(&self) -> Result<Box<dyn Target>, String> {
        let cluster = self.cluster(3, true)?;
        target::query(&target::admin_conninfo(&cluster, 0), target::SCHEMA)?;
        Ok(Box::new(cluster))
    }

    /// A primary and `nodes - 1` standbys, registered, and a witness when asked, with repmgrd
    /// monitoring every node.
    fn cluster(&self, nodes: usize, witness: bool) -> Result<Nodes<Repmgrds>, String> {
        let net = Net::new("bench");
        // The names the two-node cluster always had; then rs1, rs2, ...
        let names: Vec<String> = (0..nodes)
            .map(|i| match i {
                0 => "rp".to_string(),
                _ if nodes == 2 => "rs".to_string(),
                _ => format!("rs{i}"),
            })
            .collect();
        let hosts: Vec<Host> = (0..nodes)
            .map(|i| net.host(if i == 0 { "p" } else { &names[i][1..] }))
            .collect();
        // Naming a library keeps the test bed from loading pg_promoter. The WAL receiver takes
        // cluster_name as its application_name, by which repmgr finds a standby in
        // pg_stat_replication: it must be the node's name.
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        let pg = |i: usize| {
            [
                ("shared_preload_libraries", "'repmgr'"),
                ("cluster_name", quoted[i].as_str()),
            ]
        };
        let primary = Node::primary_on(&hosts[0], &names[0], &pg(0));
        let mut confs = vec![self.write_conf(1, &primary)?];
        repmgr(&hosts[0], &confs[0], &["primary", "register"])?;
        let mut members = vec![primary];
        for i in 1..nodes {
            let standby = Node::standby_on(&hosts[i], &names[i], &members[0], &pg(i));
            confs.push(self.write_conf(i as u32 + 1, &standby)?);
            // repmgrd on the standby reads its own node record, so wait until it has replayed it.
            repmgr(&hosts[i], &confs[i], &["standby", "register", "--wait-sync=60"])?;
            members.push(standby);
        }
        let mut daemons = Repmgrds {
            daemons: Vec::new(),
            witness: None,
        };
        let mut hosts = hosts;
        if witness {
            let host = net.host("w");
            let w = Node::primary_on(
                &host,
                "rw",
                &[("shared_preload_libraries", "'repmgr'"), ("cluster_name", "'rw'")],
            );
            confs.push(self.write_conf(nodes as u32 + 1, &w)?);
            let primary = members[0].address();
            let port = members[0].port().to_string();
            repmgr(
                &host,
                &confs[nodes],
                &[
                    "witness", "register", "-h", &primary, "-p", &port, "-U", "postgres", "-d", "postgres",
                ],
            )?;
            hosts.push(host);
            daemons.witness = Some(w);
        }
        for (host, conf) in hosts.iter().zip(&confs) {
            daemons.daemons.push(repmgrd(host, conf)?);
        }
        for (i, daemon) in daemons.daemons.iter().enumerate() {
            let sign = match i {
                0 => "monitoring cluster primary",
                _ if i == nodes => "witness monitoring connection to primary node",
                _ => "monitoring connection to upstream node",
            };
            wait_for(daemon, sign)?;
        }
        Ok(Nodes {
            tool: daemons,
            net,
            nodes: members,
            client_user: None,
            // repmgr keeps no account of its own that would do: repmgr.events has no event for
            // the decision (it is taken while no node is writable, so repmgrd cannot store one),
            // and standby_promote is stamped when `repmgr standby promote` next checks the node
            // (promote_check_interval, whole seconds, at least 1 s), which in our runs was ~1 s
            // after PostgreSQL's log shows it writable. repmgrd's own log has whole-second
            // timestamps only.
            reported: |_| None,
        })
    }

    /// Writes node `id`'s repmgr.conf beside its data directory, and an empty log file, both
    /// the postgres user's; returns the configuration's path.
    fn write_conf(&self, id: u32, node: &Node) -> Result<PathBuf, String> {
        let base = node.data_dir().parent().ok_or("a data directory has a parent")?;
        let path = base.join("repmgr.conf");
        let per_node = PerNode {
            id: id.to_string(),
            name: node.name().to_string(),
            conninfo: format!("{} {CONNECT_TIMEOUT}", node.conninfo()),
            data: node.data_dir().display().to_string(),
            base: base.display().to_string(),
        };
        let text: String = self
            .conf(&per_node)
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let log = base.join("repmgr.log");
        fs::write(&log, "").map_err(|e| format!("writing {}: {e}", log.display()))?;
        give_to_server_user(&[&path, &log])?;
        Ok(path)
    }
}

/// `repmgr -f conf args` on `host`.
fn repmgr(host: &Host, conf: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = as_server_user(Some(host), testbed::bindir().join("repmgr"));
    cmd.arg("-f").arg(conf).args(args);
    run(cmd, Duration::from_secs(90))
}

/// repmgrd in the foreground of a child we keep, started again after a crash.
fn repmgrd(host: &Host, conf: &Path) -> Result<Service, String> {
    let (host, conf) = (host.clone(), conf.to_path_buf());
    Service::start(move || {
        let mut cmd = as_server_user(Some(&host), testbed::bindir().join("repmgrd"));
        cmd.arg("-f")
            .arg(&conf)
            .args(["--daemonize=false", "--no-pid-file"]);
        // Anything repmgrd says before it opens its log_file goes to the same file.
        Daemon::spawn(cmd, conf.with_file_name("repmgr.log"))
    })
}

/// Waits until the log shows `sign`, i.e. repmgrd monitors its node.
fn wait_for(daemon: &Service, sign: &str) -> Result<(), String> {
    let log = daemon.log();
    let read = || fs::read_to_string(&log).unwrap_or_default();
    testbed::try_wait_until(Duration::from_secs(60), || read().contains(sign))
        .ok_or_else(|| format!("repmgrd never logged {sign:?}; {}:\n{}", log.display(), read()))?;
    Ok(())
}

/// repmgrd on each host (the witness's last), stopped one after the other when dropped, and the
/// witness's server when there is one.
struct Repmgrds {
    daemons: Vec<Service>,
    witness: Option<Node>,
}

impl super::common::Daemons for Repmgrds {
    fn daemons(&self) -> Vec<(String, i32)> {
        (self.daemons.iter().enumerate())
            .map(|(i, d)| (format!("repmgrd on node {i}"), d.group()))
            .collect()
    }
}

impl Drop for Repmgrds {
    fn drop(&mut self) {
        for service in &self.daemons {
            service.thaw();
            let mut daemon = service.daemon();
            daemon.signal(libc::SIGTERM);
            daemon.reap(Duration::from_secs(5));
        }
    }
}

impl Nodes<Repmgrds> {
    /// The server on host `h`: a PostgreSQL node, or the witness after them.
    fn server(&self, h: usize) -> Result<&Node, String> {
        self.nodes
            .get(h)
            .or(self.tool.witness.as_ref().filter(|_| h == self.nodes.len()))
            .ok_or_else(|| format!("no host {h}"))
    }

    fn host(&self, h: usize) -> Result<&Host, String> {
        self.server(h)?
            .host()
            .ok_or_else(|| format!("host {h} is no simulated host"))
    }

    fn daemon(&self, h: usize) -> Result<&Service, String> {
        self.tool
            .daemons
            .get(h)
            .ok_or_else(|| format!("no repmgrd on host {h}"))
    }
}

impl Target for Nodes<Repmgrds> {
    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name().to_string()).collect()
    }

    fn endpoint(&self, i: usize) -> (String, u16) {
        (self.nodes[i].address(), self.nodes[i].port())
    }

    fn hosts(&self) -> usize {
        self.tool.daemons.len()
    }

    fn apply(&self, op: &Op) -> Result<Applied, String> {
        match op {
            Op::Kill(h) | Op::Freeze(h) | Op::Restart(h) if !self.server(*h)?.is_running() => {
                return Ok(Applied::NotDone("its server is not running".into()));
            }
            Op::Kill(h) => self.server(*h)?.kill9(),
            // As a service manager would: repmgr starts no server itself.
            Op::Start(h) => self.server(*h)?.start_after_kill(),
            Op::Freeze(h) => {
                self.daemon(*h)?.freeze();
                self.server(*h)?.freeze();
            }
            Op::Thaw(h) => {
                self.server(*h)?.thaw();
                self.daemon(*h)?.thaw();
            }
            Op::Restart(h) => self.server(*h)?.restart(),
            // The daemon that watches the server, as pg_promoter's worker does.
            Op::KillWorker(h) => self.daemon(*h)?.crash()?,
            Op::Isolate(h) => self.net.isolate(self.host(*h)?),
            Op::Split(side) => {
                let side = side
                    .iter()
                    .map(|h| self.host(*h))
                    .collect::<Result<Vec<_>, _>>()?;
                self.net.split(&side);
            }
            Op::OneWay(a, b) => self.net.cut_one_way(self.host(*a)?, self.host(*b)?),
            Op::Heal => self.net.heal_all(),
        }
        Ok(Applied::Done)
    }

    fn supervise(&self) {
        for daemon in &self.tool.daemons {
            daemon.supervise();
        }
    }

    fn undo_all(&self) {
        self.net.heal_all();
        for (server, daemon) in self
            .nodes
            .iter()
            .chain(&self.tool.witness)
            .zip(&self.tool.daemons)
        {
            server.thaw();
            daemon.thaw();
            if !server.is_running() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.start_after_kill()));
            }
            let _ = daemon.revive();
        }
    }

    /// repmgr keeps no state of its own that says a node cannot follow.
    fn state(&self, _: usize) -> String {
        String::new()
    }

    fn recent_events(&self) -> Vec<String> {
        let names = self.nodes.iter().chain(&self.tool.witness).map(Node::name);
        names
            .zip(&self.tool.daemons)
            .flat_map(|(name, d)| target::log_tail(name, &d.log(), 8, |_| true))
            .collect()
    }
}
