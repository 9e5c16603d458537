//! Locating the PostgreSQL binaries, running them as the right OS user, and
//! handing out ports.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::ops::Range;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The OS user that owns clusters when the tests run as root.
const SERVER_USER: &str = "postgres";

/// Directory holding initdb, pg_ctl, psql, ...: `$PG_CONFIG --bindir` when
/// PG_CONFIG is set, else the Debian location of PostgreSQL 15.
pub fn bindir() -> PathBuf {
    // Every psql call needs it; ask pg_config once.
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(find_bindir).clone()
}

fn find_bindir() -> PathBuf {
    let Some(pg_config) = std::env::var_os("PG_CONFIG") else {
        return PathBuf::from("/usr/lib/postgresql/15/bin");
    };
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pg_config:?} --bindir: {e}"));
    assert!(
        out.status.success(),
        "{pg_config:?} --bindir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Where test ports are reserved across processes: a lock file per port
/// (`<port>.lock`), locked by whoever holds the port, and `cursor`, the port
/// the next search starts from. In /tmp so that any user running tests can
/// share it.
const PORT_DIR: &str = "/tmp/pg_promoter-test-ports";

/// Lowest port handed out: the ones below need privileges.
const MIN_PORT: u32 = 1024;

/// How many ports the test range spans at most, and at least to be worth
/// preferring over the other side of the ephemeral range.
const PORT_SPAN: u32 = 12_000;
const MIN_SPAN: u32 = 1_000;

/// How many of [`free_port`]'s reservations a process keeps at once.
const KEPT_PORTS: usize = 512;

/// A TCP port reserved for this process's tests: no other holder of a lease
/// (in this process or another) gets it until the lease is dropped, and the
/// kernel never picks it as the local port of an outgoing connection.
///
/// The reservation is an flock on the port's file under [`PORT_DIR`], so it
/// ends with the process, however that ends.
pub(crate) struct PortLease {
    port: u16,
    _lock: File,
}

impl PortLease {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Debug for PortLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortLease({})", self.port)
    }
}

/// A TCP port for a test server or proxy on 127.0.0.1 (or on a simulated
/// host), free when handed out and reserved for the rest of this process.
///
/// Ports come from outside the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), from which every outgoing
/// connection (psql, libpq, WAL receivers) takes its local port, and each is
/// reserved with a lock file (see [`PortLease`]) that other processes running
/// test beds respect. A machine-wide cursor hands the range out round-robin,
/// so a port just released is not soon handed out again. The process keeps the
/// last [`KEPT_PORTS`] reservations (one open file each), releasing older ones.
pub fn free_port() -> u16 {
    static KEPT: Mutex<VecDeque<PortLease>> = Mutex::new(VecDeque::new());
    let lease = reserve_port();
    let port = lease.port();
    // A panic elsewhere must not poison every later reservation.
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() >= KEPT_PORTS {
        kept.pop_front();
    }
    kept.push_back(lease);
    port
}

/// Like [`free_port`], but the reservation lasts as long as the lease.
pub(crate) fn reserve_port() -> PortLease {
    let range = test_port_range();
    let dir = Path::new(PORT_DIR);
    prepare_port_dir(dir);
    reserve_in(dir, range.clone(), &can_bind_loopback).unwrap_or_else(|| {
        panic!(
            "no free test port in {}..{}: every one is reserved (under {PORT_DIR}) or bound",
            range.start, range.end
        )
    })
}

/// The ports tests use: a block just below the kernel's ephemeral range
/// (20000..32000 under Linux's default 32768-60999), else above it.
fn test_port_range() -> Range<u32> {
    static RANGE: OnceLock<Range<u32>> = OnceLock::new();
    RANGE
        .get_or_init(|| {
            let (lo, hi) = ephemeral_range();
            ports_outside(lo, hi).unwrap_or_else(|| {
                panic!(
                    "ip_local_port_range {lo}-{hi} leaves no ports for test servers; \
                     narrow it (sysctl net.ipv4.ip_local_port_range)"
                )
            })
        })
        .clone()
}

/// The kernel's ephemeral port range, both ends included (Linux's default
/// when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut ends = text.split_whitespace().map(str::parse::<u16>);
    match (ends.next(), ends.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => (lo, hi),
        _ => (32768, 60999),
    }
}

/// A block of at most [`PORT_SPAN`] ports outside `lo..=hi` and at or above
/// [`MIN_PORT`]: below the range when at least [`MIN_SPAN`] fit there, ending
/// at a round thousand where possible; else above it likewise; else the
/// larger leftover; None if the range covers everything.
fn ports_outside(lo: u16, hi: u16) -> Option<Range<u32>> {
    let (lo, hi) = (u32::from(lo), u32::from(hi));
    let below = lo.saturating_sub(MIN_PORT);
    if below >= MIN_SPAN {
        let round = lo - lo % 1000;
        let end = if round >= MIN_PORT + MIN_SPAN { round } else { lo };
        return Some(end.saturating_sub(PORT_SPAN).max(MIN_PORT)..end);
    }
    let first_above = (hi + 1).max(MIN_PORT);
    let above = 65536u32.saturating_sub(first_above);
    if above >= MIN_SPAN {
        let round = first_above.div_ceil(1000) * 1000;
        let start = if 65536 - round.min(65536) >= MIN_SPAN {
            round
        } else {
            first_above
        };
        return Some(start..(start + PORT_SPAN).min(65536));
    }
    if above >= below && above > 0 {
        Some(first_above..65536)
    } else if below > 0 {
        Some(MIN_PORT..lo)
    } else {
        None
    }
}

/// Creates the directory of lock files, open to every user (sticky, like /tmp).
fn prepare_port_dir(dir: &Path) {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if let Err(e) = fs::create_dir_all(dir) {
            panic!("creating {}: {e}", dir.display());
        }
        // Another user may own it; then its mode is theirs to keep.
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o1777));
    });
}

/// Opens (creating) a lock file. flock works on a read-only descriptor too,
/// which is all another user's file allows.
fn open_lock_file(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(path)
    {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(path),
        other => other,
    }
}

/// Reserves the first port of `range` from the cursor in `dir` on (wrapping
/// around once) that nobody holds a lease on and that `usable` accepts, and
/// moves the cursor past it. Holding the cursor's lock meanwhile makes the
/// test beds on this machine take turns.
fn reserve_in(dir: &Path, range: Range<u32>, usable: &dyn Fn(u16) -> bool) -> Option<PortLease> {
    let span = range.end.checked_sub(range.start).filter(|&n| n > 0)?;
    let cursor_path = dir.join("cursor");
    let cursor = open_lock_file(&cursor_path).and_then(|f| {
        f.lock()?;
        // Let other users move the cursor too (fails harmlessly if not ours).
        let _ = fs::set_permissions(&cursor_path, fs::Permissions::from_mode(0o666));
        Ok(f)
    });
    let next = match cursor.as_ref() {
        Ok(mut f) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            text.trim().parse::<u32>().ok()
        }
        // No shared cursor: spread processes apart by pid instead.
        Err(_) => Some(range.start + std::process::id().wrapping_mul(61) % span),
    };
    let first = next.filter(|p| range.contains(p)).unwrap_or(range.start);
    let lease = (0..span)
        .map(|i| range.start + (first - range.start + i) % span)
        .find_map(|port| try_reserve(dir, u16::try_from(port).ok()?, usable))?;
    if let Ok(mut f) = cursor {
        // Best effort: a lost cursor only means a search starts elsewhere.
        let _ = f
            .set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| write!(f, "{}", u32::from(lease.port) + 1));
    }
    Some(lease)
}

/// Locks `port`'s file in `dir` if nobody holds it, and keeps the lock if
/// `usable(port)`.
fn try_reserve(dir: &Path, port: u16, usable: &dyn Fn(u16) -> bool) -> Option<PortLease> {
    let path = dir.join(format!("{port}.lock"));
    let file = match open_lock_file(&path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("testbed: cannot open {}: {e}", path.display());
            return None;
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return None,
        Err(TryLockError::Error(e)) => {
            eprintln!("testbed: cannot lock {}: {e}", path.display());
            return None;
        }
    }
    // Something that is no test bed (or a server a crashed one left behind)
    // may use it; dropping the file releases the lock.
    usable(port).then_some(PortLease { port, _lock: file })
}

/// Whether a listener could bind 127.0.0.1:`port` right now.
fn can_bind_loopback(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command for a PostgreSQL binary, wrapped in `runuser` when we are root
/// because the server (and files it must own) refuse root, and run inside
/// network namespace `netns` when given (`ip netns exec`), so whatever it
/// starts, such as a postmaster and later all its children, stays there.
pub(crate) fn pg_command(netns: Option<&str>, program: &str) -> Command {
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(OsString::from));
    }
    if is_root() {
        argv.extend(["runuser", "-u", SERVER_USER, "--"].map(OsString::from));
    }
    argv.push(bindir().join(program).into_os_string());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    // Our working directory may be unreadable for the server user, which makes
    // initdb and postgres complain.
    cmd.current_dir("/");
    cmd
}

/// Gives `path` to the server user when we are root, so the server can write
/// there.
pub(crate) fn chown_to_server_user(path: &Path) {
    if !is_root() {
        return;
    }
    let name = CString::new(SERVER_USER).unwrap();
    // SAFETY: `name` is a valid NUL-terminated string; the returned record is
    // only read before any other getpw* call could overwrite it.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "no OS user named {SERVER_USER}");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// What a finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Both streams, for error messages.
    fn both(&self) -> String {
        format!("{}\n{}", self.stdout.trim(), self.stderr.trim())
            .trim()
            .to_string()
    }
}

/// Runs `cmd` to completion, killing it (and anything it started in its
/// process group, such as the program behind `runuser`) after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    // Drain both pipes concurrently so a chatty child cannot block on a full
    // pipe while we wait for it.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let pgid = child.id() as libc::pid_t;
                // SAFETY: kill has no memory-safety preconditions; the group was
                // created for this child by process_group(0).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("{shown} timed out after {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    })
}

/// Runs `cmd` and turns a non-zero exit into `Err` with everything it printed.
pub(crate) fn run_ok(cmd: Command, timeout: Duration) -> Result<(), String> {
    let out = run(cmd, timeout)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, out.both()))
    }
}

/// `psql` against 127.0.0.1:`port` as user postgres, database postgres:
/// `Ok(stdout)` or `Err(stderr)`, both trimmed. Gives up after 5 s connecting
/// and 15 s overall, so a frozen or cut-off server cannot hang a test.
pub fn psql_at(port: u16, sql: &str) -> Result<String, String> {
    psql_via(None, "127.0.0.1", port, sql)
}

/// Like [`psql_at`], against `host`:`port`, and from inside network
/// namespace `netns` when given.
pub(crate) fn psql_via(netns: Option<&str>, host: &str, port: u16, sql: &str) -> Result<String, String> {
    let mut cmd = pg_command(netns, "psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p"])
        .arg(port.to_string())
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5");
    let out = run(cmd, Duration::from_secs(15))?;
    if out.status.success() {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(out.stderr.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, empty lock directory for one test, removed when dropped
    /// (even when the test fails).
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scratch_dir(what: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("testbed-ports-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A lock on `port`'s file in `dir` taken through a separate open file
    /// description, as another process's would be.
    fn foreign_lock(dir: &Path, port: u32) -> File {
        let file = open_lock_file(&dir.join(format!("{port}.lock"))).unwrap();
        file.try_lock().expect("the port's file is free");
        file
    }

    /// Waits until nobody holds `port`'s file in `dir`. A lock released a
    /// moment ago may live on in a child that another test's thread is just
    /// forking: its copy of the descriptor only closes when it execs.
    fn wait_released(dir: &Path, port: u32) {
        let path = dir.join(format!("{port}.lock"));
        let free = crate::wait::try_wait_until(Duration::from_secs(10), || {
            open_lock_file(&path).is_ok_and(|f| f.try_lock().is_ok())
        });
        assert!(free.is_some(), "{port} stays locked");
    }

    const ANY: &dyn Fn(u16) -> bool = &|_| true;

    #[test]
    fn test_ports_avoid_the_ephemeral_range() {
        assert_eq!(ports_outside(32768, 60999), Some(20000..32000));
        assert_eq!(ports_outside(32768, 65535), Some(20000..32000));
        assert_eq!(ports_outside(10000, 65535), Some(1024..10000));
        assert_eq!(ports_outside(2500, 65535), Some(1024..2500));
        assert_eq!(ports_outside(1024, 40000), Some(41000..53000));
        assert_eq!(ports_outside(1, 60000), Some(61000..65536));
        assert_eq!(ports_outside(1024, 65000), Some(65001..65536));
        assert_eq!(ports_outside(1500, 65400), Some(1024..1500));
        assert_eq!(ports_outside(1024, 65535), None);
        for (lo, hi) in [(32768, 60999), (1024, 40000), (15000, 20000), (40000, 50000)] {
            let range = ports_outside(lo, hi).unwrap();
            assert!(
                range.start >= MIN_PORT && range.end <= 65536,
                "{lo}-{hi}: {range:?}"
            );
            assert!(range.len() >= MIN_SPAN as usize, "{lo}-{hi}: {range:?}");
            assert!(
                range.end <= u32::from(lo) || range.start > u32::from(hi),
                "{lo}-{hi}: {range:?} overlaps"
            );
        }
    }

    #[test]
    fn free_ports_are_outside_this_machines_ephemeral_range() {
        let (lo, hi) = ephemeral_range();
        let range = test_port_range();
        for _ in 0..50 {
            let port = free_port();
            assert!(
                !(lo..=hi).contains(&port),
                "{port} is in ip_local_port_range {lo}-{hi}"
            );
            assert!(range.contains(&u32::from(port)), "{port} not in {range:?}");
        }
    }

    #[test]
    fn leases_are_exclusive_and_skip_foreign_locks() {
        let dir = scratch_dir("exclusive");
        let held = foreign_lock(&dir, 40001);
        let mut leases: Vec<PortLease> = Vec::new();
        while let Some(lease) = reserve_in(&dir, 40000..40004, ANY) {
            leases.push(lease);
            assert!(leases.len() <= 4, "more leases than ports: {leases:?}");
        }
        let ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        assert_eq!(ports, [40000, 40002, 40003], "40001 is locked elsewhere");

        // A released port comes back; the foreign one only once it is let go.
        let released = leases.remove(1);
        drop(released);
        wait_released(&dir, 40002);
        assert_eq!(reserve_in(&dir, 40000..40004, ANY).map(|l| l.port()), Some(40002));
        drop(held);
        wait_released(&dir, 40001);
        let again = reserve_in(&dir, 40000..40004, ANY).expect("40001 is free now");
        assert_eq!(again.port(), 40001);
    }

    #[test]
    fn the_cursor_goes_round_instead_of_reusing_at_once() {
        let dir = scratch_dir("cursor");
        let first = reserve_in(&dir, 40000..40003, ANY).unwrap();
        assert_eq!(first.port(), 40000);
        drop(first);
        wait_released(&dir, 40000);
        // 40000 is free again, but the next ones come first.
        let order: Vec<u16> = (0..3)
            .map(|_| reserve_in(&dir, 40000..40003, ANY).unwrap().port())
            .collect();
        assert_eq!(order, [40001, 40002, 40000]);
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let dir = scratch_dir("bound");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = u32::from(listener.local_addr().unwrap().port());
        assert!(reserve_in(&dir, port..port + 1, &can_bind_loopback).is_none());
        // It was not kept locked either.
        wait_released(&dir, port);
    }

    #[test]
    fn an_empty_range_yields_nothing() {
        let dir = scratch_dir("empty");
        assert!(reserve_in(&dir, 40000..40000, ANY).is_none());
    }

    /// Set in the child that `ports_held_by_another_process_are_skipped`
    /// starts: the scratch directory it reserves in.
    const CHILD_ENV: &str = "TESTBED_PORTS_CHILD_DIR";

    /// The child's part: reserves every port of 40000..40003 in the parent's
    /// directory and 20 real test ports, prints them (each on a line of its
    /// own: libtest has just printed the test's name), and holds them until
    /// killed or its stdin closes. Does nothing in a normal test run.
    #[test]
    fn child_holds_ports() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let leases: Vec<PortLease> = (0..3)
            .map(|_| reserve_in(Path::new(&dir), 40000..40003, ANY).unwrap())
            .collect();
        println!();
        for lease in &leases {
            println!("lease {}", lease.port());
        }
        for _ in 0..20 {
            println!("port {}", free_port());
        }
        println!("ready");
        io::stdout().flush().unwrap();
        // Until the parent kills us (or, should it fail, exits).
        let _ = io::stdin().read_to_end(&mut Vec::new());
    }

    /// Kills the child when dropped, so a failing test leaves none behind.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn ports_held_by_another_process_are_skipped() {
        let dir = scratch_dir("child");
        let mut child = Reaped(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "pg::tests::child_holds_ports",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &*dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut leased = Vec::new();
        let mut theirs = HashSet::new();
        for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(port) = line.strip_prefix("lease ") {
                leased.push(port.parse::<u16>().unwrap());
            } else if let Some(port) = line.strip_prefix("port ") {
                theirs.insert(port.parse::<u16>().unwrap());
            } else if line == "ready" {
                break;
            }
        }
        assert_eq!(leased, [40000, 40001, 40002], "the child's leases");
        assert_eq!(theirs.len(), 20, "the child's ports");

        // Everything the child holds is out of reach, here and for free_port.
        assert!(reserve_in(&dir, 40000..40003, ANY).is_none());
        for _ in 0..20 {
            let port = free_port();
            assert!(!theirs.contains(&port), "{port} was handed out in both processes");
        }
        for &port in &theirs {
            let path = Path::new(PORT_DIR).join(format!("{port}.lock"));
            let file = open_lock_file(&path).unwrap();
            assert!(
                matches!(file.try_lock(), Err(TryLockError::WouldBlock)),
                "the child's port {port} is not locked"
            );
        }

        // A process that dies, however, frees its ports.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let lease = reserve_in(&dir, 40000..40003, ANY).expect("the dead child's ports are free");
        assert!(leased.contains(&lease.port()));
    }
}
