//! What every integration test needs: a primary with the extension, a standby watching it, and
//! readers for the status row and the events.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use testbed::{try_wait_until, wait_until, Node};

/// Generous bounds: tests wait for conditions, they never time anything.
pub const LONG: Duration = Duration::from_secs(60);

/// A primary with the extension created, and a standby streaming from `upstream_port` (the
/// primary's, or a proxy's in front of it) with `settings` on both.
pub fn pair(name: &str, settings: &[(&str, &str)], upstream: Option<u16>) -> (Node, Node) {
    let primary = Node::primary(&format!("{name}-p"), settings);
    primary.query("CREATE EXTENSION pg_promoter");
    let port = upstream.unwrap_or(primary.port());
    let standby = Node::standby(&format!("{name}-s"), &primary, port, settings);
    wait_until("the standby's worker watches the primary", LONG, || {
        state(&standby) == "watching"
    });
    (primary, standby)
}

/// One column of `pg_promoter_status` as text ("" for NULL or when unreachable).
pub fn status(node: &Node, column: &str) -> String {
    node.psql(&format!("SELECT {column} FROM pg_promoter_status"))
        .unwrap_or_default()
}

pub fn state(node: &Node) -> String {
    status(node, "state")
}

/// `(event, detail)` pairs, oldest first. A fence ends every session, superusers' too, so a read
/// that meets one is made again.
pub fn events(node: &Node) -> Vec<(String, String)> {
    let sql = "SELECT event || '|' || detail FROM pg_promoter_events() ORDER BY seq";
    let mut out = node.psql(sql);
    for _ in 0..5 {
        match &out {
            Err(e) if e.contains("terminating connection due to administrator command") => {
                std::thread::sleep(Duration::from_millis(100));
                out = node.psql(sql);
            }
            _ => break,
        }
    }
    let out = out.unwrap_or_else(|e| panic!("{}: reading the events failed: {e}", node.name()));
    out.lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(e, d)| (e.to_string(), d.to_string()))
        .collect()
}

pub fn has_event(node: &Node, kind: &str, words: &str) -> bool {
    events(node).iter().any(|(e, d)| e == kind && d.contains(words))
}

pub fn wait_promoted(standby: &Node) -> Duration {
    wait_until("the standby is promoted", LONG, || {
        standby.in_recovery() == Some(false)
    })
}

/// Fails if the standby leaves recovery during `period`.
pub fn assert_stays_standby(standby: &Node, period: Duration) {
    let left = try_wait_until(period, || standby.in_recovery() == Some(false));
    assert!(
        left.is_none(),
        "the standby was promoted but must not be; events:\n{:#?}\nlog:\n{}",
        events(standby),
        standby.log_tail(30)
    );
}

/// Settings for a fast detection window, kept in one place.
pub const FAST: &[(&str, &str)] = &[
    ("pg_promoter.keep_alive", "'200ms'"),
    ("pg_promoter.keepalives_count", "3"),
];

/// Sends SIGTERM to the worker, as the postmaster does at shutdown. (pg_terminate_backend()
/// cannot: a worker with no database connection is not in the process array.)
pub fn terminate_worker(node: &Node) -> String {
    let pid = status(node, "worker_pid");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(ok.success(), "kill -TERM {pid}");
    pid
}

/// Waits until a worker other than `old_pid` runs.
pub fn wait_new_worker(node: &Node, old_pid: &str) {
    wait_until("the postmaster restarts the worker", LONG, || {
        let pid = status(node, "worker_pid");
        !pid.is_empty() && pid != old_pid
    });
}

/// psql as another login role (trust authentication in the test bed); Ok(stdout) or Err(stderr).
pub fn psql_as(node: &Node, user: &str, sql: &str) -> Result<String, String> {
    psql_with(node, &format!("user={user}"), sql)
}

/// psql with more connection parameters (`key=value ...`); Ok(stdout) or Err(stderr).
pub fn psql_with(node: &Node, params: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new(testbed::bindir().join("psql"))
        .arg(format!("{} {params} connect_timeout=10", node.conninfo()))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Waits until no process of `node`'s server is left (after kill -9 of the postmaster, its
/// children exit on their own, and a restart must wait for them: they hold shared memory).
pub fn wait_all_exited(node: &Node) {
    wait_until("every process of the old server exits", LONG, || {
        node.processes().is_empty()
    });
}

/// Starts a node again after kill -9 of its postmaster.
pub fn start_after_crash(node: &Node) {
    node.start_after_kill();
}

/// Sends `sig` (`-STOP`, `-CONT`) to `node`'s pg_promoter worker.
pub fn signal_worker(node: &Node, sig: &str) {
    let worker = status(node, "worker_pid");
    let ok = std::process::Command::new("kill").args([sig, &worker]).status();
    assert!(ok.expect("kill runs").success(), "kill {sig} {worker}");
}
