//! A steady write load: one small committed transaction per interval, so WAL keeps flowing to
//! the standbys and tests can tell which commits were acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pg::psql_at;

pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Creates `table` if needed on the server at `port`, then inserts one row per `interval`
    /// until stopped. Failed commits (the server is down) are retried at the next tick.
    pub fn start(port: u16, table: &str, interval: Duration) -> Writer {
        psql_at(
            port,
            &format!("CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, at timestamptz)"),
        )
        .unwrap_or_else(|e| panic!("creating {table}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a, table) = (stop.clone(), acked.clone(), table.to_string());
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let id = a.load(Ordering::Relaxed) + 1;
                if psql_at(port, &format!("INSERT INTO {table} VALUES ({id}, now())")).is_ok() {
                    a.store(id, Ordering::Relaxed);
                }
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
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
