//! Patroni (Debian's 3.0 package) with a one-node etcd 3.4: etcd on a simulated host of its own,
//! a Patroni on each of two hosts or more, which makes its PostgreSQL server itself (initdb on the
//! first, pg_basebackup on the others) and fails over between them.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwire::Client;
use testbed::{Host, Net};

use super::common::{
    as_server_user, live_postmaster, make_base, make_dir, remove_base, signal, stop_server, tail, Daemon,
    Faults, Service,
};
use crate::chaos::schedule::Op;
use crate::chaos::target::{self, Applied, Target};
use crate::cluster::{Cluster, Fault, Tool};

/// Every host has an address of its own, so the standard ports serve all of them.
const PG_PORT: u16 = 5432;
const API_PORT: u16 = 8008;
const ETCD_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// initdb or pg_basebackup, then Patroni's first cycles.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
/// The line Patroni logs on the node that won the leader race, right after taking the lock and
/// starting the promotion.
const DECIDED: &str = "promoted self to leader by acquiring session lock";
/// `maximum_lag_on_failover`: a replica further behind than this is not promoted.
pub const MAXIMUM_LAG_ON_FAILOVER: u64 = 1 << 20;

pub struct Patroni {
    ttl: u32,
    loop_wait: u32,
    retry_timeout: u32,
    /// `synchronous_mode`: Patroni names a synchronous standby and promotes only it.
    synchronous: bool,
    /// `use_pg_rewind`: an old primary is rewound and rejoins as a replica.
    rewind: bool,
}

impl Patroni {
    /// Patroni's defaults.
    pub fn defaults() -> Patroni {
        Patroni {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            synchronous: false,
            rewind: false,
        }
    }

    /// The lowest values Patroni allows. 3.0.2 checks none of them, but from 3.2.0 on Patroni
    /// raises anything lower to these minimums (ttl 20, loop_wait 1, retry_timeout 3) and
    /// enforces loop_wait + 2 × retry_timeout <= ttl: patroni/config.py
    /// `_validate_and_adjust_timeouts` (pull request 2869) and docs/dynamic_configuration.rst
    /// ("minimum possible value"); its maintainers had advised against a ttl below 20 (issue
    /// 2040). retry_timeout only bounds DCS and PostgreSQL retries, so its minimum is kept.
    pub fn fastest() -> Patroni {
        Patroni {
            ttl: 20,
            loop_wait: 1,
            retry_timeout: 3,
            synchronous: false,
            rewind: false,
        }
    }

    /// The dynamic settings that decide when and whether Patroni fails over, each written into
    /// bootstrap.dcs even where it is Patroni's default, so the record says what ran.
    fn dcs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ttl", self.ttl.to_string()),
            ("loop_wait", self.loop_wait.to_string()),
            ("retry_timeout", self.retry_timeout.to_string()),
            ("maximum_lag_on_failover", MAXIMUM_LAG_ON_FAILOVER.to_string()),
            // How long a crashed primary may take to come back in place before Patroni fails
            // over instead (the default).
            ("primary_start_timeout", "300".into()),
            ("synchronous_mode", self.synchronous.to_string()),
            ("failsafe_mode", "false".into()),
            ("check_timeline", "false".into()),
        ]
    }

    fn config(&self, name: &str, host: &Host, etcd: &Host, dir: &Path) -> String {
        let ip = host.ip();
        let dcs: String = self
            .dcs()
            .iter()
            .map(|(k, v)| format!("    {k}: {v}\n"))
            .collect();
        let dir = dir.display();
        let bindir = testbed::bindir();
        let bindir = bindir.display();
        // %(created) puts Unix time on every line, which `reported` reads. All nodes run as the
        // same user on the same port, so each needs its own socket directory and pgpass file.
        // The server's log goes to Patroni's output, beside Patroni's.
        format!(
            "\
scope: bench
namespace: /pg_promoter_bench/
name: {name}
log:
  level: INFO
  format: '%(created).3f %(levelname)s: %(message)s'
restapi:
  listen: {ip}:{API_PORT}
  connect_address: {ip}:{API_PORT}
etcd3:
  hosts: {etcd}:{ETCD_PORT}
bootstrap:
  dcs:
{dcs}    postgresql:
      use_pg_rewind: {rewind}
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
  initdb:
  - encoding: UTF8
  - locale: C
  - no-sync
postgresql:
  listen: {ip}:{PG_PORT}
  connect_address: {ip}:{PG_PORT}
  data_dir: {dir}/data
  bin_dir: {bindir}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: bench
    replication:
      username: replicator
      password: bench
  parameters:
    unix_socket_directories: '{dir}'
    log_line_prefix: '%m [%p] '
  pg_hba:
  - local all all trust
  - local replication all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
  - host all all 10.231.0.0/16 trust
  - host replication all 10.231.0.0/16 trust
  basebackup:
  - checkpoint: fast
watchdog:
  mode: 'off'
",
            etcd = etcd.ip(),
            rewind = self.rewind,
        )
    }
}

impl Tool for Patroni {
    fn label(&self) -> String {
        let d = Patroni::defaults();
        if (self.ttl, self.loop_wait, self.retry_timeout) == (d.ttl, d.loop_wait, d.retry_timeout) {
            "Patroni defaults".into()
        } else {
            format!("Patroni ttl={}", self.ttl)
        }
    }

    fn family(&self) -> &'static str {
        "patroni"
    }

    fn budget(&self) -> Duration {
        // A dead leader keeps its lock for the lease's lifetime.
        Duration::from_secs(self.ttl.into())
    }

    fn phase_span(&self) -> Duration {
        Duration::from_secs(self.loop_wait.max(self.ttl).into())
    }

    fn fences(&self) -> bool {
        true
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> =
            self.dcs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        settings.extend(
            [
                ("dcs", "etcd3, one node"),
                ("watchdog", "off"),
                ("use_slots", "true"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        settings.push(("use_pg_rewind".into(), self.rewind.to_string()));
        settings
    }

    fn supports(&self, nodes: usize) -> bool {
        nodes >= 2
    }

    fn start(&self, nodes: usize) -> Result<Box<dyn Cluster>, String> {
        Ok(Box::new(self.members(nodes)?))
    }
}

impl Patroni {
    /// The chaos run's cluster: three nodes at these timeouts, etcd on the fourth host, the
    /// replication asked for, and pg_rewind, so that an old primary can rejoin (Patroni's
    /// documentation advises it); the clients' role and table made on the leader.
    pub fn chaos(&self, synchronous: bool) -> Result<Box<dyn Target>, String> {
        let patroni = Patroni {
            synchronous,
            rewind: true,
            ..*self
        };
        let members = patroni.members(3)?;
        target::query(&target::admin_conninfo(&members, 0), target::SCHEMA)?;
        Ok(Box::new(members))
    }

    /// etcd, then a Patroni on each of `nodes` hosts, the first the leader, each streaming.
    fn members(&self, nodes: usize) -> Result<Members, String> {
        let net = Net::new("patroni");
        // pa, pb, pc, ...
        let hosts: Vec<Host> = (0..nodes)
            .map(|i| net.host(&format!("p{}", char::from(b'a' + i as u8))))
            .collect();
        let etcd_host = net.host("etcd");
        let mut cluster = Members {
            base: make_base("patroni")?,
            members: Vec::new(),
            etcd: None,
            etcd_host: etcd_host.clone(),
            faults: Faults::new(net),
        };

        let etcd_dir = cluster.base.join("etcd");
        let ip = etcd_host.ip();
        let (client_url, peer_url) = (
            format!("http://{ip}:{ETCD_PORT}"),
            format!("http://{ip}:{ETCD_PEER_PORT}"),
        );
        let initial = format!("etcd={peer_url}");
        let etcd_argv = [
            "etcd",
            "--name",
            "etcd",
            "--data-dir",
            &etcd_dir.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
        ];
        let etcd_log = cluster.base.join("etcd.log");
        cluster.etcd = Some(service_in(&etcd_host, etcd_log.clone(), &etcd_argv)?);
        let healthy = testbed::try_wait_until(Duration::from_secs(60), || {
            http_get(ip, ETCD_PORT, "/health").is_ok_and(|(code, body)| code == 200 && body.contains("true"))
        });
        healthy.ok_or_else(|| format!("etcd never became healthy\n{}", tail(&etcd_log, 20)))?;

        for (i, host) in hosts.into_iter().enumerate() {
            let name = host.name().to_string();
            let dir = cluster.base.join(&name);
            make_dir(&dir, 0o700)?;
            let config = dir.join("patroni.yml");
            fs::write(&config, self.config(&name, &host, &etcd_host, &dir))
                .map_err(|e| format!("writing {}: {e}", config.display()))?;
            let patroni = service_in(
                &host,
                dir.join("patroni.log"),
                &["patroni", &config.display().to_string()],
            )?;
            cluster.members.push(Member {
                name,
                host,
                dir,
                patroni,
                frozen: std::sync::Mutex::new(Vec::new()),
            });
            let member = &cluster.members[i];
            let ready = if i == 0 {
                testbed::try_wait_until(SETUP_TIMEOUT, || {
                    member.api("/primary") == Some(200) && member.sql("SELECT txid_current()").is_ok()
                })
            } else {
                // This replica streams, beside those started before it.
                let leader = &cluster.members[0];
                let streaming = i.to_string();
                testbed::try_wait_until(SETUP_TIMEOUT, || {
                    member.api("/replica") == Some(200)
                        && leader
                            .sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                            .as_deref()
                            == Ok(streaming.as_str())
                })
            };
            if ready.is_none() {
                let role = if i == 0 {
                    "the leader"
                } else {
                    "a streaming replica"
                };
                return Err(format!(
                    "{} never became {role}\n{}",
                    member.name,
                    tail(&member.patroni.log(), 30)
                ));
            }
        }
        Ok(cluster)
    }
}

/// A Patroni node: the Patroni process and the directory holding its configuration, log and the
/// PostgreSQL data directory Patroni made.
struct Member {
    name: String,
    host: Host,
    dir: PathBuf,
    patroni: Service,
    /// Its server's processes stopped by a chaos freeze.
    frozen: std::sync::Mutex<Vec<i32>>,
}

impl Member {
    fn conninfo(&self) -> String {
        format!(
            "host={} port={PG_PORT} user=postgres dbname=postgres",
            self.host.ip()
        )
    }

    /// The HTTP status of a GET on Patroni's REST API, None if it does not answer.
    fn api(&self, path: &str) -> Option<u16> {
        http_get(self.host.ip(), API_PORT, path)
            .ok()
            .map(|(code, _)| code)
    }

    /// A paused VM: Patroni and its server stopped.
    fn freeze(&self) {
        self.patroni.freeze();
        if let Some(postmaster) = live_postmaster(&self.data()) {
            testbed::Node::freeze_tree(
                postmaster,
                &mut self.frozen.lock().unwrap_or_else(|e| e.into_inner()),
            );
        }
    }

    fn thaw(&self) {
        // Children first, so the postmaster wakes up to a running family.
        for pid in self
            .frozen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .rev()
        {
            signal(pid, libc::SIGCONT);
        }
        self.patroni.thaw();
    }

    /// The first column of the first row of `sql`, as text.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let rows = Client::new(&self.conninfo()).exec(sql, Duration::from_secs(5))?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Patroni's account of when it took the leader lock to promote this node, in Unix seconds.
    fn decided_at(&self) -> Option<f64> {
        let log = fs::read_to_string(self.dir.join("patroni.log")).ok()?;
        let line = log.lines().find(|l| l.contains(DECIDED))?;
        line.split_whitespace().next()?.parse().ok()
    }

    /// Patroni's cluster history (REST API /history) on when this node's timeline began: the
    /// modification time of the timeline history file PostgreSQL writes as it is promoted.
    fn promoted_at(&self) -> Option<f64> {
        let (code, body) = http_get(self.host.ip(), API_PORT, "/history").ok()?;
        if code != 200 {
            return None;
        }
        // Lines look like [1,50331808,"no recovery target specified","2024-...+00:00","pb"].
        let quoted: Vec<&str> = body.split('"').skip(1).step_by(2).collect();
        let at = quoted.windows(2).rev().find(|w| w[1] == self.name)?[0];
        iso8601_to_unix(at)
    }
}

/// etcd and the Patroni nodes, the leader at start first, all under `base`.
struct Members {
    base: PathBuf,
    members: Vec<Member>,
    etcd: Option<Service>,
    etcd_host: Host,
    /// Last: see [`Faults`].
    faults: Faults,
}

impl Cluster for Members {
    fn conninfos(&self) -> Vec<String> {
        self.members.iter().map(Member::conninfo).collect()
    }

    fn daemons(&self) -> Vec<(String, i32)> {
        let mut daemons: Vec<(String, i32)> = (self.members.iter())
            .map(|m| (format!("patroni on {}", m.name), m.patroni.group()))
            .collect();
        daemons.extend(self.etcd.iter().map(|e| ("etcd".to_string(), e.group())));
        daemons
    }

    fn inject(&self, fault: Fault) {
        let leader = &self.members[0];
        self.faults.inject(fault, &leader.host, &leader.data());
    }

    fn recover(&self) {
        if self.faults.any_frozen() {
            // Once its server wakes, the old leader's Patroni 3.0.2 finishes its stalled cycle by
            // taking a new etcd lease and writing the leader key over the new leader's (etcd3
            // `_update_leader` puts unconditionally; fixed after 3.0.2 by Patroni's pull request
            // 2689), which demotes the new primary before its commits are counted. The fault is
            // over: end that Patroni.
            self.members[0].patroni.kill();
        }
        self.faults.recover();
    }

    fn reported(&self, new_primary: usize) -> Option<(f64, f64)> {
        let member = &self.members[new_primary];
        let decided = member.decided_at()?;
        // The new leader publishes its history a cycle or two after the promotion.
        let mut promoted = None;
        testbed::try_wait_until(Duration::from_secs(30), || {
            promoted = member.promoted_at();
            promoted.is_some()
        });
        Some((decided, promoted?))
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        self.recover();
        for member in &self.members {
            member.thaw();
        }
        // Patroni first, or it would start the servers again.
        for member in &self.members {
            member.patroni.kill();
        }
        for member in &self.members {
            stop_server(&member.data());
        }
        if let Some(etcd) = &self.etcd {
            etcd.thaw();
            etcd.kill();
        }
        remove_base(&self.base, "Patroni");
    }
}

/// `argv` as the server user inside `host`, its output appended to `log`, started again by
/// [`Service`] after a crash.
fn service_in(host: &Host, log: PathBuf, argv: &[&str]) -> Result<Service, String> {
    let host = host.clone();
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    Service::start(move || {
        let mut cmd = as_server_user(Some(&host), &argv[0]);
        cmd.args(&argv[1..]);
        Daemon::spawn(cmd, log.clone())
    })
}

impl Target for Members {
    fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    fn endpoint(&self, i: usize) -> (String, u16) {
        (self.members[i].host.ip().to_string(), PG_PORT)
    }

    fn hosts(&self) -> usize {
        self.members.len() + 1
    }

    fn apply(&self, op: &Op) -> Result<Applied, String> {
        let n = self.members.len();
        let etcd = self.etcd.as_ref().ok_or("no etcd")?;
        let host = |h: usize| self.members.get(h).map_or(&self.etcd_host, |m| &m.host);
        match op {
            Op::Kill(h) if *h < n => {
                let m = &self.members[*h];
                if live_postmaster(&m.data()).is_none() {
                    return Ok(Applied::NotDone("its server is not running".into()));
                }
                self.faults.inject(Fault::Kill, &m.host, &m.data());
            }
            Op::Kill(_) => etcd.kill(),
            // Patroni starts its server again itself: that is its job.
            Op::Start(h) if *h < n => {}
            Op::Start(_) => etcd.revive()?,
            Op::Freeze(h) if *h < n => self.members[*h].freeze(),
            Op::Freeze(_) => etcd.freeze(),
            Op::Thaw(h) if *h < n => self.members[*h].thaw(),
            Op::Thaw(_) => etcd.thaw(),
            // Through Patroni, which would otherwise take a server stopped under it for a crash.
            // It refuses (or drops the request) when it cannot read the cluster from etcd.
            Op::Restart(h) if *h < n => {
                let m = &self.members[*h];
                match http(m.host.ip(), API_PORT, "POST", "/restart", Duration::from_secs(20)) {
                    Ok((200, _)) => {}
                    Ok((code, body)) => {
                        return Ok(Applied::NotDone(format!("Patroni refused: {code} {body}")))
                    }
                    Err(e) => return Ok(Applied::NotDone(format!("Patroni refused: {e}"))),
                }
            }
            Op::Restart(_) => etcd.restart()?,
            // The daemon that watches the server, as pg_promoter's worker does.
            Op::KillWorker(h) if *h < n => self.members[*h].patroni.crash()?,
            Op::KillWorker(_) => etcd.crash()?,
            Op::Isolate(h) => self.faults.net().isolate(host(*h)),
            Op::Split(side) => {
                let side: Vec<&Host> = side.iter().map(|h| host(*h)).collect();
                self.faults.net().split(&side);
            }
            Op::OneWay(a, b) => self.faults.net().cut_one_way(host(*a), host(*b)),
            Op::Heal => self.faults.net().heal_all(),
        }
        Ok(Applied::Done)
    }

    fn supervise(&self) {
        for m in &self.members {
            m.patroni.supervise();
        }
        if let Some(etcd) = &self.etcd {
            etcd.supervise();
        }
    }

    fn undo_all(&self) {
        self.faults.net().heal_all();
        for m in &self.members {
            m.thaw();
            let _ = m.patroni.revive();
        }
        if let Some(etcd) = &self.etcd {
            etcd.thaw();
            let _ = etcd.revive();
        }
    }

    /// Patroni's state of the node ("running", "starting", "start failed", ...), or
    /// `needs_rewind` once it logged that pg_rewind failed against a healthy primary: it then
    /// leaves the node for a DBA (remove_data_directory_on_rewind_failure is off), as
    /// pg_promoter's `needs_rewind` does.
    fn state(&self, i: usize) -> String {
        let m = &self.members[i];
        let log = fs::read(m.dir.join("patroni.log")).unwrap_or_default();
        if String::from_utf8_lossy(&log).contains("Failed to rewind from healty primary") {
            return "needs_rewind".into();
        }
        let Ok((200, body)) = http_get(m.host.ip(), API_PORT, "/patroni") else {
            return String::new();
        };
        body.split_once("\"state\": \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or(String::new(), |(state, _)| state.to_string())
    }

    fn recent_events(&self) -> Vec<String> {
        // Patroni's own lines (its format puts the level second), not its server's.
        let patroni = |l: &str| {
            [" INFO: ", " WARNING: ", " ERROR: "]
                .iter()
                .any(|lvl| l.contains(lvl))
        };
        self.members
            .iter()
            .flat_map(|m| target::log_tail(&m.name, &m.dir.join("patroni.log"), 8, patroni))
            .collect()
    }
}

/// A GET over HTTP/1.0: the status code and the body.
fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<(u16, String), String> {
    http(ip, port, "GET", path, Duration::from_secs(3))
}

/// A request without a body over HTTP/1.0: the status code and the body.
fn http(
    ip: Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

/// "2024-05-01T12:34:56.789012+02:00" (Python's isoformat of an aware datetime; the fraction
/// may be missing) to Unix seconds.
fn iso8601_to_unix(s: &str) -> Option<f64> {
    let (date, rest) = s.split_once('T')?;
    let split = rest.rfind(['+', '-'])?;
    let (time, offset) = rest.split_at(split);
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let (h, min): (i64, i64) = (hms.next()?.parse().ok()?, hms.next()?.parse().ok()?);
    let sec: f64 = hms.next()?.parse().ok()?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let (oh, om) = offset[1..].split_once(':')?;
    let offset = sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60 - offset) as f64 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_isoformat() {
        assert_eq!(iso8601_to_unix("1970-01-01T00:00:00+00:00"), Some(0.0));
        assert_eq!(
            iso8601_to_unix("2024-03-01T01:00:00.5+01:00"),
            Some(1_709_251_200.5)
        );
        assert_eq!(iso8601_to_unix("2000-02-29T12:00:00-02:30"), Some(951_834_600.0));
    }
}
