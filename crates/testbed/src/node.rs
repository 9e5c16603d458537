//! A PostgreSQL cluster, on loopback or on a simulated [`Host`]: a primary
//! made with initdb or a standby made with pg_basebackup, plus the crude ways
//! tests hurt it.

#![allow(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::net::Host;
use crate::pg::{chown_to_server_user, pg_command, psql_via, reserve_port, run, run_ok, PortLease};
use crate::wait::try_wait_until;

/// Parent of every node's base directory.
const ROOT: &str = "/tmp/pg_promoter_testbed";

/// How long a node may take to start, stop, or accept connections.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many ports a new node tries before giving up, when something else
/// keeps taking the one it was given.
const PORT_ATTEMPTS: usize = 5;

const PG_HBA: &str = "\
# testbed: these clusters only listen on loopback, so trust everyone.
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
";

const PG_HBA_ON_HOST: &str = "\
# testbed: these clusters only listen on the test bed's private networks.
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   trust
host    replication  all   127.0.0.1/32   trust
host    all          all   10.231.0.0/16  trust
host    replication  all   10.231.0.0/16  trust
";

/// One running (or deliberately broken) PostgreSQL cluster. Dropping it stops
/// the server and deletes its files.
pub struct Node {
    name: String,
    base: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// Keeps `port` from other test beds until the node is dropped (after
    /// its server is stopped).
    _port_lease: PortLease,
    /// Where the server runs; None for loopback in the root namespace.
    host: Option<Host>,
    /// Processes stopped by `freeze`, so `thaw` (and drop) resume exactly
    /// them even if the postmaster has since been killed.
    frozen: Mutex<Vec<i32>>,
}

impl Node {
    /// A new primary: initdb, testbed settings, then `extra` appended verbatim
    /// as `key = value` (so it overrides the defaults), started and accepting
    /// connections. `shared_preload_libraries` defaults to `'pg_promoter'`.
    pub fn primary(name: &str, extra: &[(&str, &str)]) -> Node {
        Node::init_primary(name, None, extra)
    }

    /// Like [`Node::primary`], but running inside `host` and listening on its
    /// address only. Several nodes may share a host.
    pub fn primary_on(host: &Host, name: &str, extra: &[(&str, &str)]) -> Node {
        Node::init_primary(name, Some(host), extra)
    }

    fn init_primary(name: &str, host: Option<&Host>, extra: &[(&str, &str)]) -> Node {
        Node::allocate(name, host).setup_primary(extra)
    }

    /// initdb, configuration and first start of a freshly allocated node.
    fn setup_primary(self, extra: &[(&str, &str)]) -> Node {
        let mut node = self;
        let mut initdb = pg_command(None, "initdb");
        initdb
            .arg("-D")
            .arg(&node.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            // The clusters are disposable; skipping fsync saves seconds each.
            .arg("--no-sync");
        node.run_or_panic("initdb", initdb, Duration::from_secs(120));

        let listen = format!("'{}'", node.address());
        let port = node.port.to_string();
        let sockets = node.socket_dir_setting();
        let mut settings = vec![
            ("listen_addresses", listen.as_str()),
            ("port", port.as_str()),
            ("unix_socket_directories", sockets.as_str()),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("hot_standby", "on"),
            ("logging_collector", "off"),
            ("log_line_prefix", "'%m [%p] '"),
            ("wal_keep_size", "'256MB'"),
        ];
        if !extra.iter().any(|(k, _)| *k == "shared_preload_libraries") {
            settings.push(("shared_preload_libraries", "'pg_promoter'"));
        }
        settings.extend_from_slice(extra);
        node.append_settings(&settings);
        let hba = if node.host.is_some() {
            PG_HBA_ON_HOST
        } else {
            PG_HBA
        };
        fs::write(node.data.join("pg_hba.conf"), hba)
            .unwrap_or_else(|e| panic!("{}: writing pg_hba.conf: {e}", node.name));
        node.first_start();
        node
    }

    /// A new hot standby of `from`, base-backed-up and then streaming through
    /// 127.0.0.1:`upstream_port` (normally `from.port()`, or a proxy in front
    /// of it). `extra` is appended after the inherited configuration.
    pub fn standby(name: &str, from: &Node, upstream_port: u16, extra: &[(&str, &str)]) -> Node {
        Node::init_standby(name, None, from, "127.0.0.1", upstream_port, extra)
    }

    /// A new hot standby of `from` running inside `host`, base-backed-up from
    /// there and then streaming from `from`'s address and port, so it goes
    /// over the network between the two hosts (and through any cut). `from`
    /// must be on a host of the same Net: loopback is not reachable from one.
    pub fn standby_on(host: &Host, name: &str, from: &Node, extra: &[(&str, &str)]) -> Node {
        Node::init_standby(name, Some(host), from, &from.address(), from.port, extra)
    }

    fn init_standby(
        name: &str,
        host: Option<&Host>,
        from: &Node,
        upstream_host: &str,
        upstream_port: u16,
        extra: &[(&str, &str)],
    ) -> Node {
        Node::allocate(name, host).setup_standby(from, upstream_host, upstream_port, extra)
    }

    /// pg_basebackup, configuration and first start of a freshly allocated
    /// node.
    fn setup_standby(
        self,
        from: &Node,
        upstream_host: &str,
        upstream_port: u16,
        extra: &[(&str, &str)],
    ) -> Node {
        let mut node = self;
        let mut backup = pg_command(node.netns(), "pg_basebackup");
        backup
            .arg("-D")
            .arg(&node.data)
            .args(["-R", "-X", "stream", "-c", "fast", "-h", upstream_host, "-p"])
            .arg(upstream_port.to_string())
            .args(["-U", "postgres", "--no-sync"]);
        if let Err(e) = run_ok(backup, Duration::from_secs(300)) {
            panic!(
                "{}: pg_basebackup from {} via {upstream_host}:{upstream_port} failed: {e}\n\
                 --- {} log tail ---\n{}",
                node.name,
                from.name,
                from.name,
                from.log_tail(20)
            );
        }

        let listen = format!("'{}'", node.address());
        let port = node.port.to_string();
        let sockets = node.socket_dir_setting();
        let mut settings = vec![
            ("port", port.as_str()),
            ("unix_socket_directories", sockets.as_str()),
        ];
        // Loopback standbys keep what they inherit, as they always did; one
        // on a host must not listen on its upstream's address.
        if node.host.is_some() {
            settings.push(("listen_addresses", listen.as_str()));
        }
        settings.extend_from_slice(extra);
        node.append_settings(&settings);
        node.first_start();
        node
    }

    /// Reserves a port and an empty, correctly owned base and data directory.
    fn allocate(name: &str, host: Option<&Host>) -> Node {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        fs::create_dir_all(ROOT).unwrap_or_else(|e| panic!("creating {ROOT}: {e}"));
        // Another user may own it already; then its mode is theirs to keep.
        let _ = fs::set_permissions(ROOT, fs::Permissions::from_mode(0o755));

        let base = Path::new(ROOT).join(format!("{name}-{}-{n}", std::process::id()));
        // Only a crashed earlier process with our pid can have left this.
        let _ = fs::remove_dir_all(&base);
        let data = base.join("data");
        for (dir, mode) in [(&base, 0o755), (&data, 0o700)] {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
            chown_to_server_user(dir);
        }
        let lease = reserve_port();
        Node {
            name: name.to_string(),
            log: base.join("server.log"),
            base,
            data,
            port: lease.port(),
            _port_lease: lease,
            host: host.cloned(),
            frozen: Mutex::new(Vec::new()),
        }
    }

    fn socket_dir_setting(&self) -> String {
        format!("'{}'", self.base.display())
    }

    fn append_settings(&self, settings: &[(&str, &str)]) {
        let block: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        self.append_conf(&format!("\n# added by testbed for node {}\n{block}", self.name));
    }

    fn run_or_panic(&self, what: &str, cmd: Command, timeout: Duration) {
        if let Err(e) = run_ok(cmd, timeout) {
            panic!(
                "{}: {what} failed: {e}\n--- log tail ---\n{}",
                self.name,
                self.log_tail(30)
            );
        }
    }

    /// pg_ctl inside `netns`: the one that starts the server must run in the
    /// node's namespace, the others only signal and need none (so they still
    /// work after the host's Net is gone).
    fn pg_ctl(&self, netns: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = pg_command(netns, "pg_ctl");
        cmd.arg("-D").arg(&self.data).args(args);
        cmd
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The simulated host the node runs on; None on loopback.
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    fn netns(&self) -> Option<&str> {
        self.host.as_ref().map(Host::netns)
    }

    /// The address the server listens on: its host's, or 127.0.0.1.
    pub fn address(&self) -> String {
        self.host
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |h| h.ip().to_string())
    }

    /// A libpq connection string for this node over TCP.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.address(),
            self.port
        )
    }

    /// Starts the server and waits until it accepts connections (a standby:
    /// read-only ones). Panics with the log tail when it does not come up.
    pub fn start(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!(
                "{}: pg_ctl start failed: {e}\n--- log tail ---\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        self.await_connections();
    }

    /// The first start of a new node, which moves to another port when the
    /// server cannot bind its own: the port is reserved against other test
    /// beds and outside the kernel's ephemeral range, but something else on
    /// the machine may still have taken it. Nothing knows the node's port
    /// yet except its own configuration, which gets the new one.
    fn first_start(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            let log_before = self.log_len();
            let Err(e) = self.pg_ctl_start() else {
                break;
            };
            let log = self.log_since(log_before);
            if attempt == PORT_ATTEMPTS || !port_taken(&log) {
                panic!(
                    "{}: pg_ctl start failed (attempt {attempt}, port {}): {e}\n\
                     --- log tail ---\n{}",
                    self.name,
                    self.port,
                    self.log_tail(30)
                );
            }
            let lease = reserve_port();
            eprintln!(
                "testbed: {}: port {} is taken, moving to {} (attempt {attempt} of \
                 {PORT_ATTEMPTS}):\n{}",
                self.name,
                self.port,
                lease.port(),
                log.trim_end()
            );
            self.port = lease.port();
            self._port_lease = lease;
            let port = self.port.to_string();
            self.append_settings(&[("port", port.as_str())]);
        }
        self.await_connections();
    }

    /// `pg_ctl start -w` in the node's namespace, logging to its log file.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = self.pg_ctl(self.netns(), &["start", "-w", "-t", "60", "-l"]);
        cmd.arg(&self.log);
        run_ok(cmd, SERVER_TIMEOUT + Duration::from_secs(10))
    }

    fn await_connections(&self) {
        // pg_ctl -w trusts postmaster.pid; confirm with a real connection.
        if try_wait_until(SERVER_TIMEOUT, || self.psql("SELECT 1").is_ok()).is_none() {
            panic!(
                "{}: started but refuses connections for {SERVER_TIMEOUT:?}\n\
                 --- log tail ---\n{}",
                self.name,
                self.log_tail(30)
            );
        }
    }

    /// Fast shutdown (`pg_ctl stop -m fast -w -t 60`); returns how long it took.
    pub fn stop_fast(&self) -> Duration {
        let start = Instant::now();
        self.run_or_panic(
            "pg_ctl stop -m fast",
            self.pg_ctl(None, &["stop", "-m", "fast", "-w", "-t", "60"]),
            SERVER_TIMEOUT + Duration::from_secs(10),
        );
        start.elapsed()
    }

    pub fn restart(&self) {
        self.stop_fast();
        self.start();
    }

    /// SIGKILLs the postmaster only, like a crash of the server process; its
    /// children notice on their own and exit.
    pub fn kill9(&self) {
        let pid = self.expect_postmaster_pid();
        signal(pid, libc::SIGKILL);
    }

    /// The live processes of the server: they all run in its data directory.
    pub fn processes(&self) -> Vec<i32> {
        let Ok(dir) = self.data.canonicalize() else {
            return Vec::new();
        };
        crate::procs::procs()
            .into_iter()
            .filter(|p| p.cwd.as_ref() == Some(&dir))
            .map(|p| p.pid)
            .collect()
    }

    /// Starts the server again after kill -9 of its postmaster: once its
    /// processes are gone (they hold shared memory), the stale lock files go
    /// too (the dead postmaster can linger as a zombie, which PostgreSQL's
    /// lock-file check would take for a running server).
    pub fn start_after_kill(&self) {
        let gone = crate::try_wait_until(SERVER_TIMEOUT, || self.processes().is_empty());
        assert!(gone.is_some(), "{}: processes left after kill -9", self.name);
        let _ = fs::remove_file(self.data.join("postmaster.pid"));
        let _ = fs::remove_file(self.base.join(format!(".s.PGSQL.{}.lock", self.port)));
        self.start();
    }

    /// SIGSTOPs the postmaster and all its descendants: the server hangs
    /// while the kernel still completes TCP handshakes for it.
    pub fn freeze(&self) {
        let postmaster = self.expect_postmaster_pid();
        Node::freeze_tree(postmaster, &mut self.frozen_pids());
    }

    /// What `freeze` does, for servers that something other than a `Node`
    /// runs: SIGSTOPs `postmaster` and all its descendants, adding each to
    /// `frozen` (to SIGCONT later, last first).
    pub fn freeze_tree(postmaster: i32, frozen: &mut Vec<i32>) {
        signal(postmaster, libc::SIGSTOP);
        frozen.push(postmaster);
        // A second walk catches children forked while the first was running.
        for _ in 0..2 {
            for pid in descendants(postmaster) {
                if !frozen.contains(&pid) {
                    signal(pid, libc::SIGSTOP);
                    frozen.push(pid);
                }
            }
        }
    }

    /// SIGCONTs whatever `freeze` stopped; a no-op when nothing is frozen.
    pub fn thaw(&self) {
        // Children first, so the postmaster wakes up to a running family.
        for pid in self.frozen_pids().drain(..).rev() {
            signal(pid, libc::SIGCONT);
        }
    }

    fn frozen_pids(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        // A panic elsewhere must not stop Drop from thawing.
        self.frozen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pid on the first line of postmaster.pid, if the file exists. It
    /// survives a kill -9, so check `is_running` for liveness.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn expect_postmaster_pid(&self) -> i32 {
        self.postmaster_pid()
            .unwrap_or_else(|| panic!("{}: no postmaster.pid, server not running", self.name))
    }

    /// Whether the postmaster process exists (a zombie counts as dead).
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(alive)
    }

    /// Runs `sql` with psql: `Ok(stdout)` or `Err(stderr)`, trimmed. Gives up
    /// after 5 s connecting and 15 s overall. psql runs in the root namespace,
    /// so for a node on a host it takes the admin path, which cuts spare.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        psql_via(None, &self.address(), self.port, sql)
    }

    /// Runs `sql` on `other` with a psql started where this node runs (inside
    /// its host), so it takes the network path this node's server would, cuts
    /// included. Otherwise like [`Node::psql`].
    pub fn psql_to(&self, other: &Node, sql: &str) -> Result<String, String> {
        psql_via(self.netns(), &other.address(), other.port, sql)
    }

    /// Like [`Node::psql`], but panics on error.
    pub fn query(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("{}: query {sql:?} failed: {e}", self.name))
    }

    /// Appends one line to postgresql.conf (it wins over earlier lines once
    /// the server reloads or restarts).
    pub fn append_conf(&self, line: &str) {
        let path = self.data.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .unwrap_or_else(|e| panic!("{}: appending to {}: {e}", self.name, path.display()));
    }

    pub fn reload(&self) {
        self.query("SELECT pg_reload_conf()");
    }

    /// `pg_is_in_recovery()`, or None when the node cannot answer.
    pub fn in_recovery(&self) -> Option<bool> {
        match self.psql("SELECT pg_is_in_recovery()").as_deref() {
            Ok("t") => Some(true),
            Ok("f") => Some(false),
            _ => None,
        }
    }

    /// The whole server log (empty if the server never wrote one).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The log's size in bytes now (0 if there is none yet).
    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// What the server logged after the log was `from` bytes long.
    fn log_since(&self, from: u64) -> String {
        let log = fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[from..]).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A stopped server ignores SIGQUIT until continued.
        self.thaw();
        // Errors are expected here (e.g. after kill9) and nothing can be done
        // about them during drop.
        let _ = run(
            self.pg_ctl(None, &["stop", "-m", "immediate", "-w", "-t", "30"]),
            SERVER_TIMEOUT,
        );
        if std::env::var("TESTBED_KEEP").as_deref() == Ok("1") {
            eprintln!("testbed: kept node {} at {}", self.name, self.base.display());
        } else if let Err(e) = fs::remove_dir_all(&self.base) {
            eprintln!("testbed: cannot remove {}: {e}", self.base.display());
        }
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions. A failure means the
    // process is already gone, which is what every caller is after anyway
    // or will see through is_running.
    unsafe { libc::kill(pid, sig) };
}

/// Whether a server's log (of one start) says it could not listen because
/// its port was in use: PostgreSQL's "could not bind IPv4 address
/// "127.0.0.1": Address already in use", followed by "could not create listen
/// socket" and "could not create any TCP/IP sockets". A Unix socket whose
/// name (which holds the port) is in use reads alike.
fn port_taken(log: &str) -> bool {
    log.lines().any(|line| {
        line.contains("Address already in use")
            && (line.contains("could not bind") || line.contains("could not create listen socket"))
    })
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be
    // signalled; it has no memory-safety preconditions.
    let signalled = unsafe { libc::kill(pid, 0) };
    let exists = signalled == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // A killed postmaster is reparented to pid 1, which may be slow to reap
    // it (or never do so in a container); kill(pid, 0) succeeds on zombies.
    exists && proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// State letter and parent pid from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may itself contain spaces or ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// All live descendants of `root`, parents before children.
fn descendants(root: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(i32, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?.1)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    //! The port retry, against real servers (PostgreSQL, and root for the
    //! simulated host).

    use super::*;
    use crate::net::Net;
    use crate::wait::wait_until;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::process::{Child, Stdio};

    /// The extension may not be built yet; these tests don't need it.
    const PLAIN: &[(&str, &str)] = &[("shared_preload_libraries", "''")];

    /// Set in the child that `squat` runs as: the address to occupy.
    const SQUAT_ENV: &str = "TESTBED_SQUAT_ADDR";

    /// The child's part of `a_node_on_a_host_moves_off_a_port_someone_took`:
    /// listens on the address given, inside the host's namespace, until its
    /// stdin closes. Does nothing in a normal test run.
    #[test]
    fn squat() {
        let Ok(addr) = std::env::var(SQUAT_ENV) else {
            return;
        };
        let _listener = TcpListener::bind(addr.as_str()).unwrap();
        println!("\nready");
        io::stdout().flush().unwrap();
        let _ = io::stdin().read_to_end(&mut Vec::new());
    }

    /// Kills the child when dropped.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn count(node: &Node) -> Option<i64> {
        node.psql("SELECT count(*) FROM t").ok()?.parse().ok()
    }

    /// Asserts that `node` left the `taken` port, said why, and serves.
    fn moved(node: &Node, taken: u16) {
        assert_ne!(node.port(), taken, "{} still on its taken port", node.name());
        let log = node.log();
        assert!(
            port_taken(&log),
            "{}: no bind failure in the log:\n{log}",
            node.name()
        );
        assert_eq!(node.query("SELECT 1"), "1");
        assert!(node.conninfo().contains(&format!("port={}", node.port())));
    }

    #[test]
    fn the_log_lines_of_a_taken_port_are_recognised() {
        let pg15 = "2024-01-01 00:00:00.000 UTC [42] LOG:  could not bind IPv4 address \
                    \"127.0.0.1\": Address already in use\n\
                    2024-01-01 00:00:00.000 UTC [42] HINT:  Is another postmaster already \
                    running on port 20001? If not, wait a few seconds and retry.\n\
                    2024-01-01 00:00:00.000 UTC [42] WARNING:  could not create listen socket \
                    for \"127.0.0.1\"\n\
                    2024-01-01 00:00:00.000 UTC [42] FATAL:  could not create any TCP/IP sockets\n";
        assert!(port_taken(pg15));
        assert!(!port_taken(
            "FATAL:  could not create lock file \"postmaster.pid\": File exists\n"
        ));
        assert!(!port_taken(
            "FATAL:  data directory \"/x\" has invalid permissions\n"
        ));
    }

    /// Something that is no test bed listens on the ports a primary and then
    /// its standby were given, before they first start: each moves to another
    /// port, and the standby still streams from the primary.
    #[test]
    fn a_new_node_moves_off_a_port_someone_took() {
        let node = Node::allocate("taken_p", None);
        let taken_p = node.port;
        let _squatter_p = TcpListener::bind(("127.0.0.1", taken_p)).unwrap();
        let primary = node.setup_primary(PLAIN);
        moved(&primary, taken_p);

        let node = Node::allocate("taken_s", None);
        let taken_s = node.port;
        let _squatter_s = TcpListener::bind(("127.0.0.1", taken_s)).unwrap();
        let standby = node.setup_standby(&primary, "127.0.0.1", primary.port(), PLAIN);
        moved(&standby, taken_s);
        assert_eq!(standby.in_recovery(), Some(true));
        primary.query("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 5)");
        wait_until("the standby sees 5 rows", Duration::from_secs(30), || {
            count(&standby) == Some(5)
        });

        // Later starts keep the port they have.
        let port = standby.port();
        standby.restart();
        assert_eq!(standby.port(), port);
        assert_eq!(count(&standby), Some(5));
    }

    /// The same on a simulated host, where the port is taken on the host's
    /// own address inside its namespace.
    #[test]
    fn a_node_on_a_host_moves_off_a_port_someone_took() {
        let net = Net::new("taken");
        let (hp, hs) = (net.host("p"), net.host("s"));
        let primary = Node::primary_on(&hp, "taken_hp", PLAIN);

        let node = Node::allocate("taken_hs", Some(&hs));
        let taken = node.port;
        let mut squatter = Reaped(
            Command::new("ip")
                .args(["netns", "exec", hs.netns()])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", "node::tests::squat", "--nocapture", "--test-threads=1"])
                .env(SQUAT_ENV, format!("{}:{taken}", hs.ip()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let ready = BufReader::new(squatter.0.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "ready");
        assert!(ready, "the squatter did not start");

        let standby = node.setup_standby(&primary, &primary.address(), primary.port(), PLAIN);
        moved(&standby, taken);
        primary.query("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 3)");
        wait_until("the standby sees 3 rows", Duration::from_secs(30), || {
            count(&standby) == Some(3)
        });
    }
}
