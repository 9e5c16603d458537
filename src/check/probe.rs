//! Talking to another server without ever blocking: connect with `PQconnectStartParams` and
//! `PQconnectPoll`, query with `PQsendQueryParams` and `PQconsumeInput`, every wait on the latch
//! with a deadline. The check keeps its connection between checks and remakes it only after a
//! failure, and adds fresh attempts while the network loses what it sent. Rounds over the
//! members keep theirs too (`members`); a witness's question and `pg_promoter_probe()` use a
//! fresh one.

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use policy::schedule::{self, Path};
use policy::{conninfo, lsn, Outcome};

use crate::pg::latch::{wait, wait_any, Interrupted, Socket};
use crate::pg::libpq::{self, Conn, PgResult, Poll, Progress};

/// Whether the server is in recovery, its WAL position (received, on a standby) and timeline
/// (exact on a primary, from its WAL file name; the WAL receiver's on a standby).
pub const CHECK_QUERY: &CStr = c"SELECT pg_catalog.pg_is_in_recovery(), \
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_receive_lsn() \
    ELSE pg_catalog.pg_current_wal_lsn() END, \
    CASE WHEN pg_catalog.pg_is_in_recovery() \
    THEN (SELECT received_tli FROM pg_catalog.pg_stat_get_wal_receiver()) \
    ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
    (extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::int8";

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
            let paths: Vec<Path> = attempts.iter().map(|a| path(&a.conn)).collect();
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
                let connecting = attempts.iter().all(|a| a.stage == Stage::Connecting);
                return Ok(Outcome::TimedOut { connecting });
            };
            match attempts[i].advance() {
                None => {}
                Some(Ok(rows)) => {
                    self.conn = Some(attempts.swap_remove(i).conn);
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
            let connecting = attempt.stage == Stage::Connecting;
            return Ok(Err(Outcome::TimedOut { connecting }));
        }
        if let Some(rows) = attempt.advance() {
            return Ok(rows);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Connecting,
    /// Connected, the query not sent yet (a kept connection, writable at once).
    Idle,
    Sending,
    Reading,
}

/// One connection asking one query, moved forward each time its socket is ready and never
/// blocking in between.
pub(crate) struct Attempt {
    pub(crate) conn: Conn,
    pub(crate) stage: Stage,
    /// What to wait for before the next `advance`.
    pub(crate) socket: Socket,
    /// On a kept connection, as opposed to a fresh one.
    pub(crate) reused: bool,
    sql: CString,
    args: Vec<CString>,
    first: Option<PgResult>,
}

impl Attempt {
    pub(crate) fn fresh(params: &[(String, String)], sql: &CStr, args: &[&CStr]) -> Result<Attempt, Outcome> {
        let conn = Conn::start(params).map_err(Outcome::ConnectFailed)?;
        // libpq's protocol: after PQconnectStartParams, act as if polling asked to write.
        let socket = Socket::Writable(conn.socket());
        Ok(Attempt::new(conn, Stage::Connecting, socket, false, sql, args))
    }

    /// The query goes out at the first `advance`, so that even an answer that arrives at once
    /// goes the one way every answer goes.
    pub(crate) fn reuse(conn: Conn, sql: &CStr, args: &[&CStr]) -> Attempt {
        let socket = Socket::Writable(conn.socket());
        Attempt::new(conn, Stage::Idle, socket, true, sql, args)
    }

    fn new(conn: Conn, stage: Stage, socket: Socket, reused: bool, sql: &CStr, args: &[&CStr]) -> Attempt {
        Attempt {
            conn,
            stage,
            socket,
            reused,
            sql: sql.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            first: None,
        }
    }

    /// Goes as far as it can now that its socket is ready: `None` to wait again, or the end.
    pub(crate) fn advance(&mut self) -> Option<Rows> {
        match self.stage {
            Stage::Connecting => match self.conn.poll() {
                // The socket can change between polls when several hosts are tried.
                Poll::Read => self.wait_for(Socket::Readable(self.conn.socket())),
                Poll::Write => self.wait_for(Socket::Writable(self.conn.socket())),
                Poll::Ready => self.send(),
                Poll::Failed => Some(Err(Outcome::ConnectFailed(self.conn.error_message()))),
            },
            Stage::Idle => self.send(),
            Stage::Sending => self.flush(),
            Stage::Reading => self.read(),
        }
    }

    /// Queues the query, then pushes it out.
    fn send(&mut self) -> Option<Rows> {
        let args: Vec<&CStr> = self.args.iter().map(|a| a.as_c_str()).collect();
        if let Err(msg) = self.conn.send_query(&self.sql, &args) {
            return Some(Err(Outcome::Lost(msg)));
        }
        self.stage = Stage::Sending;
        self.flush()
    }

    fn flush(&mut self) -> Option<Rows> {
        match self.conn.flush() {
            Ok(false) => {
                self.stage = Stage::Reading;
                self.read()
            }
            Ok(true) => self.wait_for(Socket::Writable(self.conn.socket())),
            Err(msg) => Some(Err(Outcome::Lost(msg))),
        }
    }

    /// Reads every result until libpq says none is left, waiting whenever one is incomplete
    /// (PQgetResult on an incomplete result would block).
    fn read(&mut self) -> Option<Rows> {
        loop {
            match self.conn.consume() {
                Ok(true) => return self.wait_for(Socket::Readable(self.conn.socket())),
                Ok(false) => {}
                Err(msg) => return Some(Err(Outcome::Lost(msg))),
            }
            match self.conn.next_result() {
                Some(result) => {
                    self.first.get_or_insert(result);
                }
                None => return Some(rows(self.first.take(), &self.conn)),
            }
        }
    }

    fn wait_for(&mut self, socket: Socket) -> Option<Rows> {
        self.socket = socket;
        None
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
        policy::Verdict::Down(r) | policy::Verdict::Misconfigured(r) => r,
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
    }
}
