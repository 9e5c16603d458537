//! Host names resolved on threads of their own, never on the latch loop (see
//! `policy::resolve`): a connection starts with the addresses as `hostaddr`, or waits on the
//! lookup's pipe, which its thread writes to once done. The threads call `getaddrinfo()` and
//! nothing of PostgreSQL's; one hanging on a dead resolver is left to it, one per name at most.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{PipeReader, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use pgrx::prelude::*;
use policy::resolve::{self, Cache, Lookup};

use crate::pg::{local, this_process, versions};

/// Lookups under way at once, at most.
const MAX_LOOKUPS: usize = 16;

/// What a connection can do about its host names now.
pub enum Prepared {
    /// Connect with these parameters: every name has its addresses.
    Ready(Vec<(String, String)>),
    /// Wait for this descriptor to be readable (a lookup ended), then prepare again. The
    /// waiter's own (a duplicate), so it stays open and alone in a wait set whatever else waits.
    Wait(OwnedFd),
    /// No address to try: the server cannot be checked (not a sign of its death).
    Unresolved(String),
}

/// Prepares a connection's parameters: the addresses of its names as `hostaddr`, looked up on a
/// thread when due.
pub fn prepare(params: &[(String, String)]) -> Prepared {
    let mut params = params.to_vec();
    // With no host given, libpq would take PGHOST from the environment, and resolve it.
    let given = |key: &str| params.iter().any(|(k, _)| k == key);
    if !given("host") && !given("hostaddr") {
        if let Some(host) = std::env::var("PGHOST").ok().filter(|h| !h.is_empty()) {
            params.push(("host".into(), host));
        }
    }
    let names = resolve::names(&params);
    if names.is_empty() {
        return Prepared::Ready(params);
    }
    RESOLVER.with_borrow_mut(|r| r.prepare(&params, &names))
}

/// Why a connection still waiting for its names at its deadline got nowhere.
pub fn unfinished(params: &[(String, String)]) -> String {
    format!(
        "could not resolve host name \"{}\": the lookup had not ended by the deadline",
        resolve::names(params).join(", ")
    )
}

thread_local! {
    static RESOLVER: RefCell<Resolver> = RefCell::default();
}

/// One lookup under way.
struct Job {
    result: Mutex<Option<Result<Vec<IpAddr>, String>>>,
    /// Readable once the result is in: the thread writes a byte, and nobody reads it.
    done: PipeReader,
}

#[derive(Default)]
struct Resolver {
    cache: Cache,
    jobs: HashMap<String, Arc<Job>>,
}

impl Resolver {
    /// Starts every lookup that is due, then connects to what has addresses, waits when nothing
    /// has yet and a lookup is under way, or gives up with the first failure.
    fn prepare(&mut self, params: &[(String, String)], names: &[String]) -> Prepared {
        self.collect();
        let now = local::lease_clock();
        let mut addrs = HashMap::new();
        let mut failed = None;
        for name in names {
            let (lookup, ask) = self.cache.lookup(name, now);
            let started = if ask { self.start(name) } else { Ok(()) };
            match (lookup, started) {
                (Lookup::Use(a), _) => {
                    addrs.insert(name.clone(), a);
                }
                (Lookup::Wait, Ok(())) => {}
                (Lookup::Wait, Err(why)) | (Lookup::Failed(why), _) => failed = failed.or(Some(why)),
            }
        }
        if let Some(ready) = resolve::with_addresses(params, &addrs) {
            return Prepared::Ready(ready);
        }
        let waiting = names.iter().filter_map(|n| self.jobs.get(n)).next();
        match waiting.map(|job| job.done.try_clone()) {
            Some(Ok(fd)) => Prepared::Wait(fd.into()),
            Some(Err(e)) => Prepared::Unresolved(format!("could not wait for a host name lookup: {e}")),
            None => Prepared::Unresolved(failed.unwrap_or_else(|| unfinished(params))),
        }
    }

    /// Takes in the lookups that ended.
    fn collect(&mut self) {
        let ended: Vec<String> = self
            .jobs
            .iter()
            // Done, or its thread is gone without a word (it panicked).
            .filter(|(_, job)| Arc::strong_count(job) == 1 || job.result.lock().map_or(true, |r| r.is_some()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            let Some(job) = self.jobs.remove(&name) else {
                continue;
            };
            let result = job.result.lock().ok().and_then(|mut r| r.take());
            let result = result.unwrap_or_else(|| Err(resolve_failed(&name, "the lookup failed")));
            let failed = result.is_err();
            if let Some(line) = self.cache.answered(&name, result, local::lease_clock()) {
                if failed {
                    warning!("pg_promoter: {line}");
                } else {
                    versions::log(format!("pg_promoter: {line}"));
                }
            }
        }
    }

    /// Starts looking `name` up on a thread.
    fn start(&mut self, name: &str) -> Result<(), String> {
        if self.jobs.len() >= MAX_LOOKUPS {
            let why = format!("{MAX_LOOKUPS} lookups are under way already");
            return Err(resolve_failed(name, &why));
        }
        let (reader, mut writer) =
            std::io::pipe().map_err(|e| resolve_failed(name, &format!("could not create a pipe: {e}")))?;
        let job = Arc::new(Job {
            result: Mutex::new(None),
            done: reader,
        });
        let theirs = Arc::clone(&job);
        let host = name.to_string();
        this_process::spawn_without_signals("pg_promoter dns", move || {
            let result = lookup(&host);
            if let Ok(mut slot) = theirs.result.lock() {
                *slot = Some(result);
            }
            // A full pipe cannot happen (one byte, once); a failed write is a lookup that hangs,
            // which its deadline covers.
            let _ = writer.write_all(b"x");
        })
        .map_err(|e| resolve_failed(name, &format!("could not start a thread: {e}")))?;
        self.jobs.insert(name.to_string(), job);
        self.cache.asked(name);
        Ok(())
    }
}

fn resolve_failed(name: &str, why: &str) -> String {
    format!("could not resolve host name \"{name}\": {why}")
}

/// `getaddrinfo()`, blocking: only ever on a lookup's thread.
fn lookup(host: &str) -> Result<Vec<IpAddr>, String> {
    match (host, 0u16).to_socket_addrs() {
        Ok(found) => {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for a in found {
                if !addrs.contains(&a.ip()) {
                    addrs.push(a.ip());
                }
            }
            Ok(addrs)
        }
        Err(e) => {
            let text = e.to_string();
            let why = text
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&text);
            Err(resolve_failed(host, why))
        }
    }
}
