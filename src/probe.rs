//! One check of the primary, without ever blocking: connect with `PQconnectStartParams` and
//! `PQconnectPoll`, query with `PQsendQuery` and `PQconsumeInput`, every wait on the latch with
//! the check's deadline. The connection is kept between checks and remade only after a failure.

use std::ffi::CStr;
use std::time::Instant;

use policy::{lsn, Outcome};

use crate::latch::{wait, Interrupted, Socket};
use crate::libpq::{Conn, PgResult, Poll};

/// Whether the primary is in recovery, and its WAL position (received, if it is a standby).
const CHECK_QUERY: &CStr = c"SELECT pg_catalog.pg_is_in_recovery(), \
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_receive_lsn() \
    ELSE pg_catalog.pg_current_wal_lsn() END";

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
            let outcome = query(&mut conn, deadline, stop)?;
            if matches!(outcome, Outcome::Answered { .. }) {
                self.conn = Some(conn);
                return Ok(outcome);
            }
            // A kept connection can break while the primary is fine (it restarted, or an idle
            // connection was cut): only a fresh attempt speaks for the primary, if time remains.
            if matches!(outcome, Outcome::TimedOut { .. }) || Instant::now() >= deadline {
                return Ok(outcome);
            }
        }
        let mut conn = match connect(params, deadline, stop)? {
            Ok(conn) => conn,
            Err(outcome) => return Ok(outcome),
        };
        let outcome = query(&mut conn, deadline, stop)?;
        if matches!(outcome, Outcome::Answered { .. }) {
            self.conn = Some(conn);
        }
        Ok(outcome)
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

fn query(conn: &mut Conn, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<Outcome, Interrupted> {
    if let Err(msg) = conn.send_query(CHECK_QUERY) {
        return Ok(Outcome::Lost(msg));
    }
    loop {
        match conn.flush() {
            Ok(false) => break,
            Ok(true) if wait(Socket::Writable(conn.socket()), deadline, stop)? => {}
            Ok(true) => return Ok(Outcome::TimedOut { connecting: false }),
            Err(msg) => return Ok(Outcome::Lost(msg)),
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
                Ok(true) => return Ok(Outcome::TimedOut { connecting: false }),
                Err(msg) => return Ok(Outcome::Lost(msg)),
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
        Some(r) if r.has_rows() => Outcome::Answered {
            in_recovery: r.value(0, 0).as_deref() == Some("t"),
            lsn: r.value(0, 1).as_deref().and_then(lsn::parse),
        },
        Some(r) => match r.sqlstate() {
            Some(sqlstate) => Outcome::QueryFailed {
                sqlstate,
                message: r.error_message(),
            },
            None if !conn.is_ok() => Outcome::Lost(r.error_message()),
            None => Outcome::QueryFailed {
                sqlstate: "XX000".into(),
                message: r.error_message(),
            },
        },
        None => Outcome::Lost(conn.error_message()),
    })
}
