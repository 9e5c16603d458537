//! Asking every member at once over kept connections: a primary's round (the check, or a lease
//! request), a candidate's vote requests, the search for this server's own name. One connection
//! per member is kept between rounds and remade only after a failure, so a healthy cluster opens
//! no connection per round.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::time::Instant;

use policy::primary::Answer;
use policy::{Outcome, Settings};

use super::probe::{self, Attempt, Rows, CHECK_QUERY};
use crate::pg::latch::{wait_any, Interrupted, Socket};
use crate::pg::libpq::Conn;

/// One question for one member.
pub struct Ask<'a> {
    pub name: &'a str,
    pub conninfo: &'a str,
    pub sql: &'a CStr,
    pub args: Vec<String>,
}

/// The kept connections, by member name.
#[derive(Default)]
pub struct Pool {
    kept: HashMap<String, Conn>,
}

/// One member's question under way.
struct Pending {
    attempt: Attempt,
    params: Vec<(String, String)>,
    args: Vec<CString>,
}

impl Pool {
    /// Drops every kept connection (the member lists changed).
    pub fn clear(&mut self) {
        self.kept.clear();
    }

    /// Asks each member its question, all at once, by `deadline`; every member gets an answer
    /// (rows, or why there are none), in the order asked. `Err` only when `stop` interrupts.
    /// A kept connection that breaks is replaced by a fresh one while time remains: the member
    /// may have restarted, and only a fresh attempt speaks for it.
    pub fn ask_all(
        &mut self,
        asks: &[Ask],
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<(String, Rows)>, Interrupted> {
        self.ask_until(asks, deadline, stop, &|_| false)
    }

    /// As [`Pool::ask_all`], but done as soon as `decided` says the answers so far settle the
    /// question (an election won or lost): the members not heard from yet are answered "not
    /// waited for", and their connections, with a question in flight, are closed.
    pub fn ask_until(
        &mut self,
        asks: &[Ask],
        deadline: Instant,
        stop: &dyn Fn() -> bool,
        decided: &dyn Fn(&[Option<Rows>]) -> bool,
    ) -> Result<Vec<(String, Rows)>, Interrupted> {
        let mut results: Vec<Option<Rows>> = asks.iter().map(|_| None).collect();
        let mut pending: Vec<Option<Pending>> = Vec::with_capacity(asks.len());
        for (i, ask) in asks.iter().enumerate() {
            match self.start(ask) {
                Ok(p) => pending.push(Some(p)),
                Err(outcome) => {
                    results[i] = Some(Err(outcome));
                    pending.push(None);
                }
            }
        }
        loop {
            let live: Vec<usize> = (0..asks.len()).filter(|i| pending[*i].is_some()).collect();
            if live.is_empty() {
                break;
            }
            if decided(&results) {
                for i in live {
                    pending[i] = None;
                    results[i] = Some(Err(Outcome::Lost(
                        "not waited for: the outcome was already decided".into(),
                    )));
                }
                break;
            }
            let sockets: Vec<Socket> = live
                .iter()
                .filter_map(|i| pending[*i].as_ref().map(|p| p.attempt.socket))
                .collect();
            let Some(k) = wait_any(&sockets, deadline, stop)? else {
                for i in live {
                    if let Some(p) = pending[i].take() {
                        results[i] = Some(Err(p.attempt.timed_out()));
                    }
                }
                break;
            };
            let i = live[k];
            let Some(p) = pending[i].as_mut() else { continue };
            match p.attempt.advance() {
                None => {}
                Some(Ok(rows)) => {
                    if let Some(conn) = pending[i].take().and_then(|p| p.attempt.conn) {
                        self.kept.insert(asks[i].name.to_string(), conn);
                    }
                    results[i] = Some(Ok(rows));
                }
                Some(Err(outcome)) => {
                    let retry = p.attempt.reused && Instant::now() < deadline;
                    let fresh = retry.then(|| {
                        let args: Vec<&CStr> = p.args.iter().map(|a| a.as_c_str()).collect();
                        Attempt::fresh(&p.params, asks[i].sql, &args)
                    });
                    match fresh {
                        Some(Ok(attempt)) => p.attempt = attempt,
                        Some(Err(o)) => {
                            pending[i] = None;
                            results[i] = Some(Err(o));
                        }
                        None => {
                            pending[i] = None;
                            results[i] = Some(Err(outcome));
                        }
                    }
                }
            }
        }
        Ok(asks
            .iter()
            .zip(results)
            .map(|(ask, r)| {
                let r = r.unwrap_or_else(|| Err(Outcome::Lost("no answer".into())));
                (ask.name.to_string(), r)
            })
            .collect())
    }

    fn start(&mut self, ask: &Ask) -> Result<Pending, Outcome> {
        let params = probe::params(ask.conninfo).map_err(Outcome::ConnectFailed)?;
        let args = ask
            .args
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Outcome::ConnectFailed("query argument contains a zero byte".into()))?;
        let refs: Vec<&CStr> = args.iter().map(|a| a.as_c_str()).collect();
        let attempt = match self.kept.remove(ask.name) {
            Some(conn) => Attempt::reuse(conn, ask.sql, &refs),
            None => Attempt::fresh(&params, ask.sql, &refs)?,
        };
        Ok(Pending {
            attempt,
            params,
            args,
        })
    }
}

/// A primary's round without leadership: the check of every member at once, within one check's
/// timeout.
pub fn round(
    pool: &mut Pool,
    settings: &Settings,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<Answer>, Interrupted> {
    let members: Vec<_> = (settings.peers.iter().map(|m| (m, true)))
        .chain(settings.witnesses.iter().map(|m| (m, false)))
        .collect();
    let asks: Vec<Ask> = members
        .iter()
        .map(|(m, _)| Ask {
            name: &m.name,
            conninfo: &m.conninfo,
            sql: CHECK_QUERY,
            args: Vec::new(),
        })
        .collect();
    let answers = pool.ask_all(&asks, Instant::now() + settings.check_timeout, stop)?;
    Ok(members
        .iter()
        .zip(answers)
        .map(|((m, peer), (_, rows))| Answer {
            name: m.name.clone(),
            peer: *peer,
            outcome: rows.map_or_else(|o| o, |rows| probe::answered(&rows)),
        })
        .collect())
}
