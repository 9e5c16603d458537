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
                        let sql = format!(
                            "INSERT INTO chaos VALUES ({key}, clock_timestamp()) \
                             RETURNING (extract(epoch FROM began) * 1000000)::int8"
                        );
                        let sent = now_us();
                        if let Ok(rows) = client.exec(&sql, TIMEOUT) {
                            let acked = now_us();
                            let began = rows.first().and_then(|r| r.first().cloned().flatten());
                            if let Some(began) = began.and_then(|b| b.parse().ok()) {
                                acks.lock().unwrap_or_else(|e| e.into_inner()).push(Ack {
                                    node,
                                    key,
                                    sent,
                                    began,
                                    acked,
                                });
                            }
                        }
                        std::thread::sleep(EVERY);
                    }
                })
            })
            .collect();
        Load { stop, acks, threads }
    }

    /// Stops the clients and returns every acknowledgement.
    pub fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.acks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
