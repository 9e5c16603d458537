//! pg_auto_failover 2.0 (`pg_autoctl`): a monitor, a primary and a secondary on three simulated
//! hosts, each `pg_autoctl` a child process we keep. pg_autoctl makes and runs the PostgreSQL
//! servers itself: initdb for the monitor and the primary, pg_basebackup for the secondary.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use pgwire::Client;
use testbed::{Host, Net};

use super::common::{
    as_server_user, make_base, postmaster_pid, remove_base, run, stop_server, tail, Daemon, Faults,
};
use crate::cluster::{Cluster, Fault, Tool};

/// pg_autoctl leaves unix_socket_directories at Debian's default, where psql looks too.
const SOCKETS: &str = "/var/run/postgresql";
/// initdb or pg_basebackup and the first state changes, on a machine shared with other benchmarks.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);

/// The monitor's health checks and its patience with a silent keeper, in milliseconds.
pub struct AutoFailover {
    label: &'static str,
    health_check_period: u32,
    health_check_timeout: u32,
    health_check_max_retries: u32,
    health_check_retry_delay: u32,
    node_considered_unhealthy_timeout: u32,
}

impl AutoFailover {
    /// pg_auto_failover's defaults: a keeper silent for 20 s, and three failed connection tries
    /// of 5 s, 2 s apart, started every 5 s.
    pub fn defaults() -> AutoFailover {
        AutoFailover {
            label: "defaults",
            health_check_period: 5000,
            health_check_timeout: 5000,
            health_check_max_retries: 2,
            health_check_retry_delay: 2000,
            node_considered_unhealthy_timeout: 20_000,
        }
    }

    /// A 3 s detection budget, like pg_promoter's 1 s × 3: three connection tries of 800 ms,
    /// 200 ms apart, started every second, and a keeper silent for 3 s. The settings take values
    /// down to 1 ms; what bounds them is the machine. A try must outlast the time a healthy but
    /// busy server takes to accept a connection (a backend fork on two shared cores), and the
    /// keepers report about once a second (a constant in pg_autoctl), so a shorter silence would
    /// leave the health checks alone to decide.
    pub fn fast() -> AutoFailover {
        AutoFailover {
            label: "fast",
            health_check_period: 1000,
            health_check_timeout: 800,
            health_check_max_retries: 2,
            health_check_retry_delay: 200,
            node_considered_unhealthy_timeout: 3000,
        }
    }

    /// Every monitor setting that decides when and how it fails over, defaults included, so the
    /// record says what ran.
    fn monitor_conf(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "pgautofailover.health_check_period",
                self.health_check_period.to_string(),
            ),
            (
                "pgautofailover.health_check_timeout",
                self.health_check_timeout.to_string(),
            ),
            (
                "pgautofailover.health_check_max_retries",
                self.health_check_max_retries.to_string(),
            ),
            (
                "pgautofailover.health_check_retry_delay",
                self.health_check_retry_delay.to_string(),
            ),
            (
                "pgautofailover.node_considered_unhealthy_timeout",
                self.node_considered_unhealthy_timeout.to_string(),
            ),
            // Left at the default in both settings: before promoting, the monitor waits this long
            // for a silent primary to demote itself, which its keeper does after
            // network_partition_timeout (20 s); shorter would promote while the old primary may
            // still run.
            ("pgautofailover.primary_demote_timeout", "30000".into()),
            // No failover in the monitor's first 10 s; `start` waits them out.
            ("pgautofailover.startup_grace_period", "10000".into()),
        ]
    }
}

impl Tool for AutoFailover {
    fn label(&self) -> String {
        format!("pg_auto_failover {}", self.label)
    }

    fn family(&self) -> &'static str {
        "pg_auto_failover"
    }

    /// A silent primary is unhealthy once max_retries + 1 connection tries in a row each waited
    /// health_check_timeout and then health_check_retry_delay, and its keeper has not reported
    /// for node_considered_unhealthy_timeout. A keeper reporting PostgreSQL down (a crash) gets
    /// a failover at once.
    fn budget(&self) -> Duration {
        let tries = self.health_check_max_retries + 1;
        let checks = tries * (self.health_check_timeout + self.health_check_retry_delay);
        Duration::from_millis(checks.max(self.node_considered_unhealthy_timeout).into())
    }

    fn phase_span(&self) -> Duration {
        // The health checks' rounds, and the keepers' reports every second.
        Duration::from_millis(self.health_check_period.into()).max(Duration::from_secs(10))
    }

    fn fences(&self) -> bool {
        true
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = self
            .monitor_conf()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        settings.extend(
            [
                ("pg_autoctl create", "--auth trust --no-ssl --pg-hba-lan"),
                (
                    "keeper timeouts",
                    "pg_autoctl's defaults (network_partition_timeout 20 s)",
                ),
                (
                    "replication",
                    "pg_autoctl's defaults: one secondary in the quorum, synchronous",
                ),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        settings
    }

    fn start(&self, _nodes: usize) -> Result<Box<dyn Cluster>, String> {
        let net = Net::new("autofailover");
        let base = make_base("autofailover")?;
        // The hosts have addresses of their own, but the servers share one socket directory.
        let instance = |name, host: Host| Instance {
            pgdata: base.join(name),
            name,
            host,
            port: testbed::free_port(),
        };
        let mut f = Formation {
            monitor: instance("monitor", net.host("mon")),
            nodes: vec![instance("a", net.host("a")), instance("b", net.host("b"))],
            daemons: Vec::new(),
            base,
            faults: Faults::new(net),
        };

        let m = &f.monitor;
        let (port, ip) = (m.port.to_string(), m.host.ip().to_string());
        let pgdata = m.pgdata.display().to_string();
        run(
            pg_autoctl(&m.host, &f.base, m.create("monitor", &[])),
            SETUP_TIMEOUT,
        )?;
        // postgresql.conf includes pg_autoctl's own file first, so these lines win.
        let conf: String = self
            .monitor_conf()
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let path = m.pgdata.join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(conf.as_bytes()))
            .map_err(|e| format!("appending to {}: {e}", path.display()))?;
        let daemon = spawn(&f.base, &f.monitor, ["run", "--pgdata", &pgdata])?;
        f.daemons.push(daemon);
        f.wait("the monitor answers", |f| f.monitor_sql("SELECT 1").is_ok())?;

        let monitor = format!("postgres://autoctl_node@{ip}:{port}/pg_auto_failover?sslmode=disable");
        for i in 0..2 {
            let node = &f.nodes[i];
            let create = node.create(
                "postgres",
                &[
                    "--name",
                    node.name,
                    // Rules for the whole subnet, so the benchmark's client gets in from the bridge.
                    "--pg-hba-lan",
                    "--monitor",
                    &monitor,
                    "--run",
                ],
            );
            let daemon = spawn(&f.base, node, create)?;
            f.daemons.push(daemon);
            if i == 0 {
                // Registered alone, so it is the one that becomes primary.
                f.wait("the first node runs as single", |f| f.in_state(0, "single"))?;
            }
        }
        f.wait("the monitor shows a primary and a secondary", |f| {
            f.in_state(0, "primary") && f.in_state(1, "secondary")
        })?;
        // A transaction with an id waits for the synchronous secondary to confirm its commit.
        let primary = f.nodes[0].conninfo();
        f.wait("the primary accepts writes", |_| {
            Client::new(&primary)
                .exec("SELECT txid_current()", Duration::from_secs(5))
                .is_ok()
        })?;
        f.wait("the monitor's startup grace period is over", |f| {
            f.monitor_sql(
                "SELECT now() - pg_postmaster_start_time() \
                 > current_setting('pgautofailover.startup_grace_period')::interval",
            )
            .as_deref()
                == Ok("t")
        })?;
        Ok(Box::new(f))
    }
}

/// A PostgreSQL server that pg_autoctl runs, on its own host.
struct Instance {
    name: &'static str,
    host: Host,
    port: u16,
    pgdata: PathBuf,
}

impl Instance {
    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.host.ip(),
            self.port
        )
    }

    /// `pg_autoctl create <kind>` for this server: the options the monitor and the nodes share,
    /// then `extra`.
    fn create(&self, kind: &str, extra: &[&str]) -> Vec<String> {
        let shared = [
            "create",
            kind,
            "--pgdata",
            &self.pgdata.display().to_string(),
            "--pgport",
            &self.port.to_string(),
            "--hostname",
            &self.host.ip().to_string(),
            "--auth",
            "trust",
            "--no-ssl",
            "--pgctl",
            &testbed::bindir().join("pg_ctl").display().to_string(),
        ];
        shared.iter().chain(extra).map(|arg| arg.to_string()).collect()
    }
}

/// The monitor and the two nodes, primary first, all under `base`.
struct Formation {
    base: PathBuf,
    monitor: Instance,
    nodes: Vec<Instance>,
    /// Each long-running pg_autoctl (the monitor's `run`, a node's `create postgres --run`), by
    /// the name of its server.
    daemons: Vec<(&'static str, Daemon)>,
    /// Last: see [`Faults`].
    faults: Faults,
}

impl Formation {
    /// Polls `done` until it holds; fails early, with its log, if a pg_autoctl exits.
    fn wait(&mut self, what: &str, mut done: impl FnMut(&Formation) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            for (name, d) in &mut self.daemons {
                if let Some(status) = d.exited() {
                    return Err(format!(
                        "waiting until {what}: pg_autoctl for {name} exited ({status})\n{}",
                        tail(d.log(), 30)
                    ));
                }
            }
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .daemons
                    .iter()
                    .map(|(name, d)| format!("--- {name} ---\n{}", tail(d.log(), 15)))
                    .collect();
                return Err(format!(
                    "not within {SETUP_TIMEOUT:?}: {what}\n{}",
                    logs.join("\n")
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// `sql` on the monitor's database over its Unix socket: the rows as psql's unaligned text.
    fn monitor_sql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = as_server_user(None, testbed::bindir().join("psql"));
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", SOCKETS, "-p"])
            .arg(self.monitor.port.to_string())
            .args(["-d", "pg_auto_failover", "-c", sql]);
        run(cmd, Duration::from_secs(15)).map(|out| out.trim().to_string())
    }

    /// Whether the monitor has node `i` both reported in and assigned to `state`.
    fn in_state(&self, i: usize, state: &str) -> bool {
        let node = &self.nodes[i];
        let sql = format!(
            "SELECT reportedstate, goalstate FROM pgautofailover.node \
             WHERE nodehost = '{}' AND nodeport = {}",
            node.host.ip(),
            node.port
        );
        self.monitor_sql(&sql)
            .is_ok_and(|out| out == format!("{state}|{state}"))
    }
}

impl Cluster for Formation {
    fn conninfos(&self) -> Vec<String> {
        self.nodes.iter().map(Instance::conninfo).collect()
    }

    /// The pg_autoctl processes; the monitor's PostgreSQL is a server, not counted here.
    fn daemons(&self) -> Vec<(String, i32)> {
        (self.daemons.iter())
            .map(|(name, d)| (format!("pg_autoctl for {name}"), d.group()))
            .collect()
    }

    /// On a kill, the keeper beside the server keeps running and reacts as it would to a crash.
    fn inject(&self, fault: Fault) {
        let primary = &self.nodes[0];
        self.faults.inject(fault, &primary.host, &primary.pgdata);
    }

    fn recover(&self) {
        self.faults.recover();
    }

    /// From the monitor's event log: when it assigned prepare_promotion to the new primary, and
    /// when that node's keeper reported wait_primary, having promoted PostgreSQL and turned
    /// synchronous replication off, so writes commit. Both on the monitor's clock, this machine's.
    fn reported(&self, new_primary: usize) -> Option<(f64, f64)> {
        let n = &self.nodes[new_primary];
        let node = format!("nodehost = '{}' AND nodeport = {}", n.host.ip(), n.port);
        let out = self
            .monitor_sql(&format!(
                "SELECT extract(epoch FROM d.eventtime), extract(epoch FROM w.eventtime) \
                 FROM (SELECT eventid, eventtime FROM pgautofailover.event \
                       WHERE {node} AND goalstate = 'prepare_promotion' ORDER BY eventid LIMIT 1) d \
                 CROSS JOIN LATERAL (SELECT eventtime FROM pgautofailover.event \
                       WHERE {node} AND eventid > d.eventid \
                       AND reportedstate IN ('wait_primary', 'primary') ORDER BY eventid LIMIT 1) w"
            ))
            .ok()?;
        let (decided, writable) = out.split_once('|')?;
        Some((decided.parse().ok()?, writable.parse().ok()?))
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        self.recover();
        // pg_autoctl stops its PostgreSQL server when it stops; every process of a daemon,
        // servers included, is in its process group.
        for (_, d) in &self.daemons {
            d.signal(libc::SIGTERM);
        }
        for (_, d) in &mut self.daemons {
            d.reap(Duration::from_secs(15));
        }
        for instance in self.nodes.iter().chain([&self.monitor]) {
            if postmaster_pid(&instance.pgdata).is_some() {
                stop_server(&instance.pgdata);
            }
        }
        remove_base(&self.base, "pg_auto_failover");
    }
}

/// Starts pg_autoctl for `instance`, its output in `<base>/<name>.log`.
fn spawn(
    base: &Path,
    instance: &Instance,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Result<(&'static str, Daemon), String> {
    let log = base.join(format!("{}.log", instance.name));
    Ok((
        instance.name,
        Daemon::spawn(pg_autoctl(&instance.host, base, args), log)?,
    ))
}

/// `pg_autoctl args` as the server user inside `host`.
fn pg_autoctl(host: &Host, base: &Path, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Command {
    let mut cmd = as_server_user(Some(host), "pg_autoctl");
    cmd.args(args)
        // pg_autoctl keeps its configuration and state there, not in the server user's home.
        .env("XDG_CONFIG_HOME", base.join("config"))
        .env("XDG_DATA_HOME", base.join("share"));
    cmd
}
