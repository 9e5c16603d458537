//! Locating the PostgreSQL binaries, running them as the right OS user, and
//! handing out ports.

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::io::Read;
use std::net::TcpListener;
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

/// A TCP port on 127.0.0.1 that was free a moment ago and that no earlier call
/// in this process returned (the kernel may hand the same ephemeral port out
/// twice once it is released, and parallel tests would then collide).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot bind 127.0.0.1:0")
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
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
