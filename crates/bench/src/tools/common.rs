//! What the tool drivers share: commands and daemons run as the server user on a simulated host,
//! fresh directories that user owns, faults on servers a tool runs itself, and the cluster of
//! the tools that work beside the test bed's own servers.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use testbed::{Host, Net, Node};

use crate::cluster::{Cluster, Fault};

/// Where the test bed keeps its servers' files.
const ROOT: &str = "/tmp/pg_promoter_testbed";
/// The tools and PostgreSQL refuse to run as root.
const SERVER_USER: &str = "postgres";

/// `program` as the server user, inside `host`'s network namespace when given.
pub fn as_server_user(host: Option<&Host>, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = match host {
        Some(host) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", host.netns(), "runuser"]);
            cmd
        }
        None => Command::new("runuser"),
    };
    cmd.args(["-u", SERVER_USER, "--"])
        .arg(program)
        // The server user may not be able to read our working directory.
        .current_dir("/");
    cmd
}

/// Runs `cmd` to completion (the test bed's way: in a process group of its own, the whole group
/// killed after `timeout`): `Ok(stdout)`, or `Err` with all it printed.
pub fn run(cmd: Command, timeout: Duration) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = testbed::run(cmd, timeout)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{shown}: {}: {}{}", out.status, out.stdout, out.stderr))
    }
}

pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a process already gone is no error here.
    unsafe { libc::kill(pid, sig) };
}

/// A long-running program (a tool's daemon, etcd), its output appended to a log file, in a
/// process group of its own: runuser and `ip netns exec` keep the program as their child, and
/// signalling the group reaches all of them.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Daemon, String> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        Ok(Daemon { child, log })
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its process group (the daemon and what it starts, unless they leave the group).
    pub fn group(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `sig` to its whole process group.
    pub fn signal(&self, sig: libc::c_int) {
        signal(-(self.child.id() as i32), sig);
    }

    /// Waits up to `grace` for it to exit (after a SIGTERM), then kills its whole group; reaps it.
    pub fn reap(&mut self, grace: Duration) {
        let ended = testbed::try_wait_until(grace, || self.exited().is_some());
        if ended.is_none() {
            self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Kills its whole group at once and reaps it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A daemon a service manager keeps running (systemd's `Restart=`): how to start it, and the
/// one running now. The chaos run kills it, freezes it with its host, and starts it again.
pub struct Service {
    start: Box<dyn Fn() -> Result<Daemon, String> + Send + Sync>,
    daemon: Mutex<Daemon>,
    /// Processes stopped by `freeze`, so `thaw` resumes exactly them.
    frozen: Mutex<Vec<i32>>,
    /// Killed on purpose, to stay down until `revive`: `supervise` leaves it be.
    held_down: std::sync::atomic::AtomicBool,
}

impl Service {
    pub fn start(
        start: impl Fn() -> Result<Daemon, String> + Send + Sync + 'static,
    ) -> Result<Service, String> {
        let daemon = Mutex::new(start()?);
        Ok(Service {
            start: Box::new(start),
            daemon,
            frozen: Mutex::new(Vec::new()),
            held_down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The running daemon (a panic elsewhere must not stop teardown from reaching it).
    pub fn daemon(&self) -> MutexGuard<'_, Daemon> {
        self.daemon.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn group(&self) -> i32 {
        self.daemon().group()
    }

    pub fn log(&self) -> PathBuf {
        self.daemon().log().to_path_buf()
    }

    /// Whether it has exited (killed, or on its own).
    pub fn exited(&self) -> bool {
        self.daemon().exited().is_some()
    }

    /// kill -9 of its whole group; it stays down until `revive`.
    pub fn kill(&self) {
        self.held_down.store(true, Ordering::Relaxed);
        self.daemon().kill();
    }

    /// Starts it again once it has exited; a no-op while it runs.
    pub fn revive(&self) -> Result<(), String> {
        let mut daemon = self.daemon();
        if daemon.exited().is_some() {
            *daemon = (self.start)()?;
        }
        self.held_down.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// What its service manager does: started again if it exited on its own.
    pub fn supervise(&self) {
        if !self.held_down.load(Ordering::Relaxed) {
            let _ = self.revive();
        }
    }

    /// A crash its service manager restarts it from at once.
    pub fn crash(&self) -> Result<(), String> {
        self.kill();
        self.revive()
    }

    /// A clean restart: SIGTERM, up to 10 s to exit, then started again.
    pub fn restart(&self) -> Result<(), String> {
        {
            let mut daemon = self.daemon();
            daemon.signal(libc::SIGTERM);
            daemon.reap(Duration::from_secs(10));
        }
        self.revive()
    }

    /// SIGSTOPs every process of its group at once (a paused VM stops the daemon with its
    /// server), and notes them so that `thaw` resumes exactly them.
    pub fn freeze(&self) {
        let group = self.group();
        signal(-group, libc::SIGSTOP);
        let mut frozen = self.frozen.lock().unwrap_or_else(|e| e.into_inner());
        frozen.extend(
            testbed::procs()
                .into_iter()
                .filter(|p| p.pgrp == group)
                .map(|p| p.pid),
        );
    }

    pub fn thaw(&self) {
        let mut frozen = self.frozen.lock().unwrap_or_else(|e| e.into_inner());
        for pid in frozen.drain(..).rev() {
            signal(pid, libc::SIGCONT);
        }
    }
}

/// What a tool runs beside PostgreSQL: each daemon's name and process group, for its cost.
pub trait Daemons {
    fn daemons(&self) -> Vec<(String, i32)>;
}

/// pg_promoter runs inside the servers: nothing beside them.
impl Daemons for () {
    fn daemons(&self) -> Vec<(String, i32)> {
        Vec::new()
    }
}

/// The processes of process group `group` that are not PostgreSQL's (a daemon that starts the
/// server itself, as pg_autoctl does, keeps it in its group): their pids.
pub fn group_processes(group: i32) -> Vec<i32> {
    testbed::procs()
        .into_iter()
        .filter(|p| p.pgrp == group && p.comm != "postgres")
        .map(|p| p.pid)
        .collect()
}

/// `pg_ctl stop -m immediate` on the server in `data`, for teardown.
pub fn stop_server(data: &Path) {
    let mut stop = as_server_user(None, testbed::bindir().join("pg_ctl"));
    stop.arg("-D")
        .arg(data)
        .args(["stop", "-m", "immediate", "-w", "-t", "30"]);
    // Fails when no server runs there, which is what teardown wants anyway.
    let _ = run(stop, Duration::from_secs(60));
}

/// The pid on the first line of the postmaster.pid in `data`, which outlives the server.
pub fn postmaster_pid(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The postmaster of `data`, if one runs: the pid in postmaster.pid, alive and working in `data`
/// (a stale file's pid may be another process's by now).
pub fn live_postmaster(data: &Path) -> Option<i32> {
    let pid = postmaster_pid(data)?;
    let dir = data.canonicalize().ok()?;
    testbed::procs()
        .into_iter()
        .any(|p| p.pid == pid && p.cwd.as_ref() == Some(&dir))
        .then_some(pid)
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh directory for one cluster, named after `tool`, owned by the server user, who makes
/// everything in it.
pub fn make_base(tool: &str) -> Result<PathBuf, String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    fs::create_dir_all(ROOT).map_err(|e| format!("creating {ROOT}: {e}"))?;
    // Another user may own it already; then its mode is theirs to keep.
    let _ = fs::set_permissions(ROOT, fs::Permissions::from_mode(0o755));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = Path::new(ROOT).join(format!("{tool}-{}-{n}", std::process::id()));
    // Only a crashed earlier process with our pid can have left this.
    let _ = fs::remove_dir_all(&base);
    make_dir(&base, 0o755)?;
    Ok(base)
}

/// Creates `dir` with `mode`, owned by the server user.
pub fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    give_to_server_user(&[dir])
}

pub fn give_to_server_user(paths: &[&Path]) -> Result<(), String> {
    let mut chown = Command::new("chown");
    chown.arg(format!("{SERVER_USER}:{SERVER_USER}")).args(paths);
    run(chown, Duration::from_secs(10)).map(drop)
}

/// Deletes a torn-down cluster's directory, unless TESTBED_KEEP=1 asks to keep it for a look.
pub fn remove_base(base: &Path, tool: &str) {
    if std::env::var("TESTBED_KEEP").as_deref() == Ok("1") {
        eprintln!("bench: kept {tool} files at {}", base.display());
    } else if let Err(e) = fs::remove_dir_all(base) {
        eprintln!("bench: cannot remove {}: {e}", base.display());
    }
}

/// The faults done to servers that a tool runs itself (not the test bed's [`Node`]s), and the
/// network of their hosts. Its owner drops it last (fields drop after `Drop::drop`), once every
/// process in the hosts is dead.
pub struct Faults {
    net: Net,
    /// Processes stopped by a freeze, so recovery and teardown resume exactly them.
    frozen: Mutex<Vec<i32>>,
}

impl Faults {
    pub fn new(net: Net) -> Faults {
        Faults {
            net,
            frozen: Mutex::new(Vec::new()),
        }
    }

    /// Hurts the server in `data` on `host`. Kill and Freeze reach PostgreSQL only: the tool's
    /// own processes beside it keep running, as when the database crashes or hangs on its own.
    pub fn inject(&self, fault: Fault, host: &Host, data: &Path) {
        match fault {
            Fault::Kill => {
                if let Some(pid) = live_postmaster(data) {
                    signal(pid, libc::SIGKILL);
                }
            }
            Fault::Freeze => {
                if let Some(postmaster) = live_postmaster(data) {
                    Node::freeze_tree(postmaster, &mut self.frozen());
                }
            }
            Fault::Cut => self.net.isolate(host),
        }
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Whether a freeze stopped processes that `recover` has not resumed yet.
    pub fn any_frozen(&self) -> bool {
        !self.frozen().is_empty()
    }

    pub fn recover(&self) {
        // Children first, so the postmaster wakes up to a running family.
        for pid in self.frozen().drain(..).rev() {
            signal(pid, libc::SIGCONT);
        }
        self.net.heal_all();
    }

    fn frozen(&self) -> MutexGuard<'_, Vec<i32>> {
        // A panic elsewhere must not stop teardown from thawing.
        self.frozen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A primary and its standbys that the test bed runs, each on a host of `net`, for the tools that
/// work beside the servers rather than running them.
pub struct Nodes<T> {
    /// What the tool runs beside the servers, kept for its `Drop`; first, so it stops before the
    /// servers and the network go away.
    pub tool: T,
    pub net: Net,
    /// The primary at start first.
    pub nodes: Vec<Node>,
    /// The role the benchmark's client logs in as, when not the servers' superuser.
    pub client_user: Option<&'static str>,
    /// The tool's own account of a failover to a node ([`Cluster::reported`]).
    pub reported: fn(&Node) -> Option<(f64, f64)>,
}

impl<T: Daemons> Cluster for Nodes<T> {
    fn daemons(&self) -> Vec<(String, i32)> {
        self.tool.daemons()
    }

    fn conninfos(&self) -> Vec<String> {
        match self.client_user {
            Some(user) => self
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "host={} port={} user={user} dbname=postgres",
                        n.address(),
                        n.port()
                    )
                })
                .collect(),
            None => self.admin_conninfos(),
        }
    }

    fn admin_conninfos(&self) -> Vec<String> {
        self.nodes.iter().map(Node::conninfo).collect()
    }

    fn inject(&self, fault: Fault) {
        let primary = &self.nodes[0];
        match fault {
            // Anything the tool runs on the primary's host keeps running: only PostgreSQL crashed.
            Fault::Kill => primary.kill9(),
            Fault::Freeze => primary.freeze(),
            Fault::Cut => self.net.isolate(primary.host().expect("nodes live on hosts")),
        }
    }

    fn recover(&self) {
        self.nodes[0].thaw();
        self.net.heal_all();
    }

    fn reported(&self, new_primary: usize) -> Option<(f64, f64)> {
        (self.reported)(&self.nodes[new_primary])
    }
}
