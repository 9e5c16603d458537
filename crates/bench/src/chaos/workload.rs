//! The chaos run's clients: one per node, each committing unique keys as an ordinary role every
//! 50 ms and recording every acknowledgement, whichever node takes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwire::Client;

use super::check::Ack;

const EVERY: Duration = Duration::from_millis(50);
/// A commit not acknowledged by then is dropped (a frozen or cut node), with its session.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Node `n`'s keys are `n * KEYS + 1` on, so no two clients share one.
pub const KEYS: i64 = 1_000_000_000;

pub struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    threads: Vec<JoinHandle<()>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Load {
    /// One client per conninfo (node `i` for the `i`-th).
    pub fn start(conninfos: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let threads = conninfos
            .iter()
            .enumerate()
            .map(|(node, conninfo)| {
                let (stop, acks) = (stop.clone(), acks.clone());
                let mut client = Client::new(&format!("{conninfo} connect_timeout=2"));
                std::thread::spawn(move || {
                    let mut key = node as i64 * KEYS;
                    while !stop.load(Ordering::Relaxed) {
                        key += 1;
                        // The timeline the commit is written on (the first 8 digits of its WAL
                        // segment's name), and where.
                        let sql = format!(
                            "INSERT INTO chaos VALUES ({key}, clock_timestamp()) \
                             RETURNING (extract(epoch FROM began) * 1000000)::int8, \
                             substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8), \
                             (pg_catalog.pg_current_wal_lsn() - '0/0')::int8"
                        );
                        let sent = now_us();
                        if let Ok(rows) = client.exec(&sql, TIMEOUT) {
                            let acked = now_us();
                            let cell = |i: usize| rows.first().and_then(|r| r.get(i).cloned().flatten());
                            // Missing values cannot happen; were they to, the send time is an
                            // earlier bound of the commit, and timeline 0 is nobody's.
                            let began = cell(0).and_then(|b| b.parse().ok()).unwrap_or(sent);
                            let timeline = cell(1)
                                .and_then(|t| u32::from_str_radix(&t, 16).ok())
                                .unwrap_or(0);
                            let lsn = cell(2).and_then(|l| l.parse().ok()).unwrap_or(0);
                            acks.lock().unwrap_or_else(|e| e.into_inner()).push(Ack {
                                node,
                                key,
                                sent,
                                began,
                                acked,
                                timeline,
                                lsn,
                            });
                        }
                        std::thread::sleep(EVERY);
                    }
                })
            })
            .collect();
        Load { stop, acks, threads }
    }

    /// Stops the clients and returns every acknowledgement.
    pub fn stop(mut self) -> Vec<Ack> {
        self.halt();
        std::mem::take(&mut *self.acks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    /// A schedule that panicked stops its clients too: their addresses may be another
    /// schedule's next.
    fn drop(&mut self) {
        self.halt();
    }
}
