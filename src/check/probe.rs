//! Talking to another server without ever blocking: connect with `PQconnectStartParams` and
//! `PQconnectPoll`, query with `PQsendQueryParams` and `PQconsumeInput`, every wait on the latch
//! with a deadline. The check keeps its connection between checks and remakes it only after a
//! failure, and adds fresh attempts while the network loses what it sent. Rounds over the
//! members keep theirs too (`members`); a witness's question and `pg_promoter_probe()` use a
//! fresh one.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use policy::schedule::{self, Path};
use policy::{conninfo, lsn, Outcome};

use super::resolve::{self, Prepared};
use crate::pg::latch::{wait, wait_any, Interrupted, Socket};
use crate::pg::libpq::{self, Conn, PgResult, Poll, Progress};

/// Whether the server is in recovery, its WAL position (received, on a standby) and timeline
/// (exact on a primary, from its WAL file name; the WAL receiver's on a standby), when it
/// started, and whether pg_promoter fenced it (NULL where the library is not loaded).
pub const CHECK_QUERY: &CStr = c"SELECT pg_catalog.pg_is_in_recovery(), \
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_receive_lsn() \
    ELSE pg_catalog.pg_current_wal_lsn() END, \
    CASE WHEN pg_catalog.pg_is_in_recovery() \
    THEN (SELECT received_tli FROM pg_catalog.pg_stat_get_wal_receiver()) \
    ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
    (extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::int8, \
    pg_catalog.current_setting('pg_promoter.fenced', true)::bool";

/// Result rows as text (`None` for NULL), or why there are none.
pub type Rows = Result<Vec<Vec<Option<String>>>, Outcome>;

/// The parameters a check connects with, from a conninfo as libpq parses it.
pub fn params(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let c = CString::new(conninfo).map_err(|_| "the conninfo contains a zero byte".to_string())?;
    libpq::parse_conninfo(&c).map(|pairs| conninfo::check_params(&pairs))
}

#[derive(Default)]
pub struct Probe {
    conn: Option<Conn>,
}

impl Probe {
    /// Forgets the kept connection (the conninfo changed).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Runs one check, ending by `deadline`; `Err` only when `stop` interrupts it. It starts with
    /// the kept connection (or a fresh one) and adds fresh attempts while the network loses what
    /// was sent (see `schedule::next_attempt`); the first attempt to end decides, and the one
    /// that got an answer is kept for the next check.
    pub fn check(
        &mut self,
        params: &[(String, String)],
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, Interrupted> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut newest = Instant::now();
        // Set when an attempt could not even start (out of descriptors, say): no more of them.
        let mut no_more = false;
        loop {
            let paths: Vec<Path> = attempts.iter().map(Attempt::path).collect();
            let due = (!no_more)
                .then(|| schedule::next_attempt(timeout, &paths, newest.elapsed().as_micros() as i64))
                .flatten();
            if due == Some(0) && (attempts.is_empty() || Instant::now() < deadline) {
                let started = match self.conn.take() {
                    Some(conn) => Ok(Attempt::reuse(conn, CHECK_QUERY, &[])),
                    None => Attempt::fresh(params, CHECK_QUERY, &[]),
                };
                newest = Instant::now();
                match started {
                    Ok(attempt) => attempts.push(attempt),
                    Err(outcome) if attempts.is_empty() => return Ok(outcome),
                    Err(_) => no_more = true,
                }
                continue;
            }
            // Wake up when another attempt may be due (paths change meanwhile), at the latest at
            // the deadline.
            let wake = due.map_or(deadline, |us| {
                deadline.min(Instant::now() + Duration::from_micros(us as u64))
            });
            let sockets: Vec<Socket> = attempts.iter().map(|a| a.socket).collect();
            let Some(i) = wait_any(&sockets, wake, stop)? else {
                if Instant::now() < deadline {
                    continue;
                }
                // Only when no attempt got as far as connecting is the lookup to blame.
                let tried: Vec<&Attempt> = attempts.iter().filter(|a| a.stage != Stage::Resolving).collect();
                if let (true, Some(a)) = (tried.is_empty(), attempts.first()) {
                    return Ok(a.timed_out());
                }
                let connecting = tried.iter().all(|a| a.stage == Stage::Connecting);
                return Ok(Outcome::TimedOut { connecting });
            };
            match attempts[i].advance() {
                None => {}
                Some(Ok(rows)) => {
                    self.conn = attempts.swap_remove(i).conn;
                    return Ok(answered(&rows));
                }
                // A kept connection can break while the primary is fine (it restarted, or an idle
                // connection was cut): only a fresh attempt speaks for the primary, if time remains.
                Some(Err(_)) if attempts[i].reused && Instant::now() < deadline => {
                    attempts.swap_remove(i);
                }
                Some(Err(outcome)) => return Ok(outcome),
            }
        }
    }
}

/// Checks a server once, on a fresh connection (`pg_promoter_probe()`).
pub fn check_once(
    params: &[(String, String)],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<Outcome, Interrupted> {
    Probe::default().check(params, deadline, stop)
}

/// Runs one query with text parameters on a fresh connection.
pub fn ask(
    params: &[(String, String)],
    sql: &CStr,
    args: &[&str],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<Rows, Interrupted> {
    let args: Vec<CString> = match args.iter().map(|a| CString::new(*a)).collect() {
        Ok(args) => args,
        Err(_) => {
            return Ok(Err(Outcome::ConnectFailed(
                "query argument contains a zero byte".into(),
            )))
        }
    };
    let args: Vec<&CStr> = args.iter().map(|a| a.as_c_str()).collect();
    let mut attempt = match Attempt::fresh(params, sql, &args) {
        Ok(attempt) => attempt,
        Err(outcome) => return Ok(Err(outcome)),
    };
    loop {
        if !wait(attempt.socket, deadline, stop)? {
            return Ok(Err(attempt.timed_out()));
        }
        if let Some(rows) = attempt.advance() {
            return Ok(rows);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting for a host name's lookup; no connection yet.
    Resolving,
    Connecting,
    /// Connected, the query not sent yet (a kept connection, writable at once).
    Idle,
    Sending,
    Reading,
}

/// One connection asking one query, moved forward each time its socket is ready and never
/// blocking in between.
pub(crate) struct Attempt {
    /// `None` only while resolving.
    pub(crate) conn: Option<Conn>,
    pub(crate) stage: Stage,
    /// What to wait for before the next `advance`.
    pub(crate) socket: Socket,
    /// On a kept connection, as opposed to a fresh one.
    pub(crate) reused: bool,
    /// What a fresh connection connects with, its names not resolved yet.
    params: Vec<(String, String)>,
    /// While resolving: the descriptor `socket` names, held open.
    lookup: Option<OwnedFd>,
    sql: CString,
    args: Vec<CString>,
    first: Option<PgResult>,
}

impl Attempt {
    /// A fresh connection: at once when its host names have addresses, else once their lookups
    /// end (`Stage::Resolving`).
    pub(crate) fn fresh(params: &[(String, String)], sql: &CStr, args: &[&CStr]) -> Result<Attempt, Outcome> {
        let mut attempt = Attempt {
            conn: None,
            stage: Stage::Resolving,
            socket: Socket::Readable(-1),
            reused: false,
            params: params.to_vec(),
            lookup: None,
            sql: sql.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            first: None,
        };
        match attempt.resolve() {
            None => Ok(attempt),
            Some(Err(outcome)) => Err(outcome),
            Some(Ok(_)) => unreachable!("resolving never ends with rows"),
        }
    }

    /// The query goes out at the first `advance`, so that even an answer that arrives at once
    /// goes the one way every answer goes.
    pub(crate) fn reuse(conn: Conn, sql: &CStr, args: &[&CStr]) -> Attempt {
        Attempt {
            socket: Socket::Writable(conn.socket()),
            conn: Some(conn),
            stage: Stage::Idle,
            reused: true,
            params: Vec::new(),
            lookup: None,
            sql: sql.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            first: None,
        }
    }

    /// Why the attempt got nowhere by its deadline.
    pub(crate) fn timed_out(&self) -> Outcome {
        match self.stage {
            Stage::Resolving => Outcome::Unresolved(resolve::unfinished(&self.params)),
            stage => Outcome::TimedOut {
                connecting: stage == Stage::Connecting,
            },
        }
    }

    /// How far what the attempt sent has got, as the schedule reads it; nothing is sent while
    /// resolving.
    fn path(&self) -> Path {
        self.conn.as_ref().map_or(Path::Local, path)
    }

    /// Goes as far as it can now that its socket is ready: `None` to wait again, or the end.
    pub(crate) fn advance(&mut self) -> Option<Rows> {
        match self.stage {
            Stage::Resolving => self.resolve(),
            Stage::Connecting => match self.conn().poll() {
                // The socket can change between polls when several hosts are tried.
                Poll::Read => self.wait_readable(),
                Poll::Write => self.wait_writable(),
                Poll::Ready => self.send(),
                Poll::Failed => Some(Err(Outcome::ConnectFailed(self.conn().error_message()))),
            },
            Stage::Idle => self.send(),
            Stage::Sending => self.flush(),
            Stage::Reading => self.read(),
        }
    }

    /// Connects once every host name has its addresses, or waits for their lookups.
    fn resolve(&mut self) -> Option<Rows> {
        match resolve::prepare(&self.params) {
            Prepared::Wait(fd) => {
                let waited = self.wait_for(Socket::Readable(fd.as_raw_fd()));
                self.lookup = Some(fd);
                waited
            }
            Prepared::Unresolved(why) => Some(Err(Outcome::Unresolved(why))),
            Prepared::Ready(params) => match Conn::start(&params) {
                Ok(conn) => {
                    self.lookup = None;
                    // libpq's protocol: after PQconnectStartParams, act as if polling asked to
                    // write.
                    self.socket = Socket::Writable(conn.socket());
                    self.conn = Some(conn);
                    self.stage = Stage::Connecting;
                    None
                }
                Err(e) => Some(Err(Outcome::ConnectFailed(e))),
            },
        }
    }

    /// The connection, there from the connecting stage on.
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("an attempt past resolving has its connection")
    }

    /// Queues the query, then pushes it out.
    fn send(&mut self) -> Option<Rows> {
        let args: Vec<&CStr> = self.args.iter().map(|a| a.as_c_str()).collect();
        let Some(conn) = self.conn.as_mut() else {
            return Some(Err(Outcome::Lost("no connection".into())));
        };
        if let Err(msg) = conn.send_query(&self.sql, &args) {
            return Some(Err(Outcome::Lost(msg)));
        }
        self.stage = Stage::Sending;
        self.flush()
    }

    fn flush(&mut self) -> Option<Rows> {
        match self.conn().flush() {
            Ok(false) => {
                self.stage = Stage::Reading;
                self.read()
            }
            Ok(true) => self.wait_writable(),
            Err(msg) => Some(Err(Outcome::Lost(msg))),
        }
    }

    /// Reads every result until libpq says none is left, waiting whenever one is incomplete
    /// (PQgetResult on an incomplete result would block).
    fn read(&mut self) -> Option<Rows> {
        loop {
            match self.conn().consume() {
                Ok(true) => return self.wait_readable(),
                Ok(false) => {}
                Err(msg) => return Some(Err(Outcome::Lost(msg))),
            }
            match self.conn().next_result() {
                Some(result) => {
                    self.first.get_or_insert(result);
                }
                None => return Some(rows(self.first.take(), self.conn())),
            }
        }
    }

    fn wait_for(&mut self, socket: Socket) -> Option<Rows> {
        self.socket = socket;
        None
    }

    fn wait_readable(&mut self) -> Option<Rows> {
        let fd = self.conn().socket();
        self.wait_for(Socket::Readable(fd))
    }

    fn wait_writable(&mut self) -> Option<Rows> {
        let fd = self.conn().socket();
        self.wait_for(Socket::Writable(fd))
    }
}

/// How far what an attempt sent has got, as the schedule reads it.
fn path(conn: &Conn) -> Path {
    match conn.progress() {
        Progress::Local => Path::Local,
        Progress::Unacked { rtt_us } => Path::Unacked { rtt_us },
        Progress::Delivered => Path::Delivered,
    }
}

/// The rows of a query's first result, or why there are none.
fn rows(first: Option<PgResult>, conn: &Conn) -> Rows {
    match first {
        // A command (ALTER SYSTEM) succeeds with no rows.
        Some(r) if r.is_ok() => Ok((0..r.rows())
            .map(|row| (0..r.columns()).map(|col| r.value(row, col)).collect())
            .collect()),
        Some(r) => Err(match r.sqlstate() {
            Some(sqlstate) => Outcome::QueryFailed {
                sqlstate,
                message: r.error_message(),
            },
            None if !conn.is_ok() => Outcome::Lost(r.error_message()),
            None => Outcome::QueryFailed {
                sqlstate: "XX000".into(),
                message: r.error_message(),
            },
        }),
        None => Err(Outcome::Lost(conn.error_message())),
    }
}

/// Why a question got no rows, in a sentence fragment.
pub fn reason(outcome: &Outcome) -> String {
    match policy::classify(outcome) {
        policy::Verdict::Down(r) | policy::Verdict::Misconfigured(r) | policy::Verdict::Unknown(r) => r,
        policy::Verdict::Alive => "unexpected answer".into(),
    }
}

pub(crate) fn answered(rows: &[Vec<Option<String>>]) -> Outcome {
    let cell = |i: usize| rows.first().and_then(|r| r.get(i)).cloned().flatten();
    Outcome::Answered {
        in_recovery: cell(0).as_deref() == Some("t"),
        lsn: cell(1).as_deref().and_then(lsn::parse),
        timeline: cell(2).and_then(|t| t.parse().ok()),
        started: cell(3).and_then(|t| t.parse().ok()),
        fenced: cell(4).as_deref() == Some("t"),
    }
}
