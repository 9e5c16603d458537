//! repmgrd (repmgr 5.3): a primary and a standby on two simulated hosts, registered with repmgr,
//! and repmgrd running on both hosts in the foreground of a child process we keep.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use testbed::{Host, Net, Node};

use crate::cluster::{Cluster, Fault, Tool};

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
            id: "<1 primary, 2 standby>".to_string(),
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

    fn start(&self) -> Result<Box<dyn Cluster>, String> {
        let net = Net::new("bench");
        let (hp, hs) = (net.host("p"), net.host("s"));
        // Naming a library keeps the test bed from loading pg_promoter. The WAL receiver takes
        // cluster_name as its application_name, by which repmgr finds a standby in
        // pg_stat_replication: it must be the node's name.
        let pg = |name| [("shared_preload_libraries", "'repmgr'"), ("cluster_name", name)];
        let primary = Node::primary_on(&hp, "rp", &pg("'rp'"));
        let conf_p = self.write_conf(1, &primary)?;
        repmgr(&hp, &conf_p, &["primary", "register"])?;
        let standby = Node::standby_on(&hs, "rs", &primary, &pg("'rs'"));
        let conf_s = self.write_conf(2, &standby)?;
        // repmgrd on the standby reads its own node record, so wait until it has replayed it.
        repmgr(&hs, &conf_s, &["standby", "register", "--wait-sync=60"])?;
        let daemons = vec![Daemon::start(&hp, &conf_p)?, Daemon::start(&hs, &conf_s)?];
        for (daemon, sign) in daemons.iter().zip([
            "monitoring cluster primary",
            "monitoring connection to upstream node",
        ]) {
            daemon.wait_for(sign)?;
        }
        Ok(Box::new(Pair {
            _daemons: daemons,
            net,
            nodes: [primary, standby],
        }))
    }
}

impl Repmgrd {
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
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(&path).arg(&log);
        run(chown, Duration::from_secs(10))?;
        Ok(path)
    }
}

/// `program args` as the postgres user inside `host`'s namespace.
fn as_postgres(host: &Host, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.netns(), "runuser", "-u", "postgres", "--"])
        .arg(testbed::bindir().join(program))
        // The postgres user may not be able to read our working directory.
        .current_dir("/")
        .process_group(0);
    cmd
}

/// `repmgr -f conf args` on `host`.
fn repmgr(host: &Host, conf: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = as_postgres(host, "repmgr");
    cmd.arg("-f").arg(conf).args(args);
    run(cmd, Duration::from_secs(90))
}

/// Runs `cmd` (made with its own process group) to completion: `Ok(stdout)`, or `Err` with all
/// it printed; after `timeout` its whole group is killed.
fn run(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    let group = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(Ok(out)) => Err(format!(
            "{shown}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Ok(Err(e)) => Err(format!("waiting for {shown}: {e}")),
        Err(_) => {
            signal_group(group, libc::SIGKILL);
            Err(format!("{shown} timed out after {timeout:?}"))
        }
    }
}

fn signal_group(group: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the group is one we created, and a failure
    // only means it is gone already.
    unsafe { libc::kill(-group, sig) };
}

/// repmgrd in the foreground of a child (its own process group, with runuser and `ip netns
/// exec` before it), stopped when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(host: &Host, conf: &Path) -> Result<Daemon, String> {
        let log = conf.with_file_name("repmgr.log");
        // Anything repmgrd says before it opens its log_file goes to the same file.
        let out = OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = as_postgres(host, "repmgrd");
        cmd.arg("-f")
            .arg(conf)
            .args(["--daemonize=false", "--no-pid-file"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().map_err(|e| format!("cannot start repmgrd: {e}"))?;
        Ok(Daemon { child, log })
    }

    /// Waits until the log shows `sign`, i.e. repmgrd monitors its node.
    fn wait_for(&self, sign: &str) -> Result<(), String> {
        let read = || fs::read_to_string(&self.log).unwrap_or_default();
        testbed::try_wait_until(Duration::from_secs(60), || read().contains(sign)).ok_or_else(|| {
            format!(
                "repmgrd never logged {sign:?}; {}:\n{}",
                self.log.display(),
                read()
            )
        })?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        signal_group(group, libc::SIGTERM);
        let ended = testbed::try_wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if ended.is_none() {
            signal_group(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

struct Pair {
    /// First, so repmgrd stops before the servers and the network go away.
    _daemons: Vec<Daemon>,
    net: Net,
    nodes: [Node; 2],
}

impl Cluster for Pair {
    fn conninfos(&self) -> Vec<String> {
        self.nodes.iter().map(Node::conninfo).collect()
    }

    fn inject(&self, fault: Fault) {
        let primary = &self.nodes[0];
        match fault {
            // repmgrd on the primary's host keeps running: only PostgreSQL crashed.
            Fault::Kill => primary.kill9(),
            Fault::Freeze => primary.freeze(),
            Fault::Cut => self.net.isolate(primary.host().expect("nodes live on hosts")),
        }
    }

    fn recover(&self) {
        self.nodes[0].thaw();
        self.net.heal_all();
    }

    // `reported` keeps its default (None): repmgr.events has no event for the decision (it is
    // taken while no node is writable, so repmgrd cannot store one), and standby_promote is
    // stamped when `repmgr standby promote` next checks the node (promote_check_interval, whole
    // seconds, at least 1 s), which in our runs was ~1 s after PostgreSQL's log shows it
    // writable. repmgrd's own log has whole-second timestamps only.
}
