//! Talking to another server without ever blocking: connect with `PQconnectStartParams` and
//! `PQconnectPoll`, query with `PQsendQueryParams` and `PQconsumeInput`, every wait on the latch
//! with a deadline. The check keeps its connection between checks and remakes it only after a
//! failure; other questions (to witnesses, from `pg_promoter_probe()`) use a fresh one.

use std::ffi::{CStr, CString};
use std::time::Instant;

use policy::{conninfo, lsn, Outcome};

use crate::latch::{wait, Interrupted, Socket};
use crate::libpq::{self, Conn, PgResult, Poll};

/// Whether the server is in recovery, its WAL position (received, on a standby) and timeline
/// (exact on a primary, from its WAL file name; the WAL receiver's on a standby).
const CHECK_QUERY: &CStr = c"SELECT pg_catalog.pg_is_in_recovery(), \
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

    /// Runs one check, ending by `deadline`; `Err` only when `stop` interrupts it.
    pub fn check(
        &mut self,
        params: &[(String, String)],
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, Interrupted> {
        if let Some(mut conn) = self.conn.take() {
            match query(&mut conn, CHECK_QUERY, &[], deadline, stop)? {
                Ok(rows) => {
                    self.conn = Some(conn);
                    return Ok(answered(&rows));
                }
                // A kept connection can break while the primary is fine (it restarted, or an idle
                // connection was cut): only a fresh attempt speaks for the primary, if time remains.
                Err(outcome @ Outcome::TimedOut { .. }) => return Ok(outcome),
                Err(outcome) if Instant::now() >= deadline => return Ok(outcome),
                Err(_) => {}
            }
        }
        let mut conn = match connect(params, deadline, stop)? {
            Ok(conn) => conn,
            Err(outcome) => return Ok(outcome),
        };
        Ok(match query(&mut conn, CHECK_QUERY, &[], deadline, stop)? {
            Ok(rows) => {
                self.conn = Some(conn);
                answered(&rows)
            }
            Err(outcome) => outcome,
        })
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
    let mut conn = match connect(params, deadline, stop)? {
        Ok(conn) => conn,
        Err(outcome) => return Ok(Err(outcome)),
    };
    query(&mut conn, sql, &args, deadline, stop)
}

fn answered(rows: &[Vec<Option<String>>]) -> Outcome {
    let cell = |i: usize| rows.first().and_then(|r| r.get(i)).cloned().flatten();
    Outcome::Answered {
        in_recovery: cell(0).as_deref() == Some("t"),
        lsn: cell(1).as_deref().and_then(lsn::parse),
        timeline: cell(2).and_then(|t| t.parse().ok()),
        started: cell(3).and_then(|t| t.parse().ok()),
    }
}

fn connect(
    params: &[(String, String)],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<Result<Conn, Outcome>, Interrupted> {
    let mut conn = match Conn::start(params) {
        Ok(conn) => conn,
        Err(msg) => return Ok(Err(Outcome::ConnectFailed(msg))),
    };
    // libpq's protocol: after PQconnectStartParams, act as if polling asked to write.
    let mut socket = Socket::Writable(conn.socket());
    loop {
        if !wait(socket, deadline, stop)? {
            return Ok(Err(Outcome::TimedOut { connecting: true }));
        }
        // The socket can change between polls when several hosts are tried.
        socket = match conn.poll() {
            Poll::Read => Socket::Readable(conn.socket()),
            Poll::Write => Socket::Writable(conn.socket()),
            Poll::Ready => return Ok(Ok(conn)),
            Poll::Failed => return Ok(Err(Outcome::ConnectFailed(conn.error_message()))),
        };
    }
}

fn query(
    conn: &mut Conn,
    sql: &CStr,
    args: &[&CStr],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<Rows, Interrupted> {
    if let Err(msg) = conn.send_query(sql, args) {
        return Ok(Err(Outcome::Lost(msg)));
    }
    loop {
        match conn.flush() {
            Ok(false) => break,
            Ok(true) if wait(Socket::Writable(conn.socket()), deadline, stop)? => {}
            Ok(true) => return Ok(Err(Outcome::TimedOut { connecting: false })),
            Err(msg) => return Ok(Err(Outcome::Lost(msg))),
        }
    }
    // Read every result until libpq says none is left, waiting whenever one is incomplete
    // (PQgetResult on an incomplete result would block).
    let mut first: Option<PgResult> = None;
    loop {
        loop {
            match conn.consume() {
                Ok(false) => break,
                Ok(true) if wait(Socket::Readable(conn.socket()), deadline, stop)? => {}
                Ok(true) => return Ok(Err(Outcome::TimedOut { connecting: false })),
                Err(msg) => return Ok(Err(Outcome::Lost(msg))),
            }
        }
        match conn.next_result() {
            Some(result) => {
                first.get_or_insert(result);
            }
            None => break,
        }
    }
    Ok(match first {
        Some(r) if r.has_rows() => Ok((0..r.rows())
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
    })
}
