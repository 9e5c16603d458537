//! A steady write load: one small committed transaction per interval, so WAL keeps flowing to
//! the standbys and tests can tell which commits were acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use pgwire::Client;

use crate::node::Node;
use crate::pg::psql_via;

/// How long one commit (connecting first if needed) may take before it counts as failed, so a
/// frozen or cut server cannot hang the load, nor `stop` for longer than this.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    /// For each acknowledged commit, in order: when it was sent and when it was acknowledged,
    /// on the client's wall clock.
    times: Arc<Mutex<Vec<(SystemTime, SystemTime)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Creates `table` if needed on `node`, then inserts one row per `interval` until stopped,
    /// over one kept session. Failed commits (the server is down, refuses, or takes more than
    /// 5 s) are retried at the next tick on a new session.
    pub fn start(node: &Node, table: &str, interval: Duration) -> Writer {
        Writer::run(node, None, table, interval)
    }

    /// Like [`Writer::start`], logged in as `role`, an ordinary client: held, refused and
    /// checked at commit as an application is (a superuser that sets a role is not held).
    pub fn start_as(node: &Node, role: &str, table: &str, interval: Duration) -> Writer {
        Writer::run(node, Some(role.to_string()), table, interval)
    }

    fn run(node: &Node, role: Option<String>, table: &str, interval: Duration) -> Writer {
        let (host, port) = (node.address(), node.port());
        let create = format!("CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, at timestamptz)");
        psql_via(None, &host, port, &create).unwrap_or_else(|e| panic!("creating {table}: {e}"));
        if let Some(role) = &role {
            psql_via(None, &host, port, &format!("GRANT ALL ON {table} TO {role}"))
                .unwrap_or_else(|e| panic!("granting {table} to {role}: {e}"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let times = Arc::new(Mutex::new(Vec::new()));
        let (s, a, t, table) = (stop.clone(), acked.clone(), times.clone(), table.to_string());
        let user = role.unwrap_or_else(|| "postgres".to_string());
        let conninfo = format!("host={host} port={port} user={user} dbname=postgres connect_timeout=5");
        let thread = std::thread::spawn(move || {
            // One session kept across commits; any failure (refused, cut, timed out, an error)
            // drops it, and the next tick connects afresh.
            let mut client = Client::new(&conninfo);
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let id = a.load(Ordering::Relaxed) + 1;
                // A commit whose acknowledgement was lost (a timeout while a synchronous standby
                // was away) may have happened: the same id again must not stall the load.
                let sql = format!(
                    "INSERT INTO {table} VALUES ({id}, now()) ON CONFLICT (id) DO UPDATE SET at = now()"
                );
                // Ok only once the server has reported the commit done (ReadyForQuery).
                let sent = SystemTime::now();
                if client.exec(&sql, COMMIT_TIMEOUT).is_ok() {
                    t.lock().unwrap().push((sent, SystemTime::now()));
                    a.store(id, Ordering::Relaxed);
                }
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Writer {
            stop,
            acked,
            times,
            thread: Some(thread),
        }
    }

    /// When the first acknowledged commit was sent: it committed after this instant.
    pub fn first_sent(&self) -> Option<SystemTime> {
        self.times.lock().unwrap().first().map(|(sent, _)| *sent)
    }

    /// When the last commit was acknowledged: it committed before this instant.
    pub fn last_acked(&self) -> Option<SystemTime> {
        self.times.lock().unwrap().last().map(|(_, acked)| *acked)
    }

    /// Commits acknowledged so far (their ids are 1..=acked).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the load and returns the number of acknowledged commits.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.acked()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.halt();
    }
}
