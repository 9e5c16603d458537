//! A database client that never hangs: libpq driven without blocking, every step bounded by a
//! deadline, so a frozen or cut server costs a trial one timeout, not the whole run.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use pq_sys as pq;

pub type Rows = Vec<Vec<Option<String>>>;

pub struct Client {
    conninfo: CString,
    conn: Option<Conn>,
}

struct Conn(*mut pq::PGconn);

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: a connection from PQconnectStart, finished once.
        unsafe { pq::PQfinish(self.0) }
    }
}

// SAFETY: a connection is used by one thread at a time (the Client owns it).
unsafe impl Send for Conn {}

impl Client {
    pub fn new(conninfo: &str) -> Client {
        Client {
            conninfo: CString::new(conninfo).expect("no zero byte in a conninfo"),
            conn: None,
        }
    }

    /// Runs `sql` within `timeout` (connecting first if needed); any failure drops the
    /// connection, so the next call starts afresh.
    pub fn exec(&mut self, sql: &str, timeout: Duration) -> Result<Rows, String> {
        let deadline = Instant::now() + timeout;
        let result = self.try_exec(sql, deadline);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn try_exec(&mut self, sql: &str, deadline: Instant) -> Result<Rows, String> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.conninfo, deadline)?);
        }
        let conn = self.conn.as_ref().expect("connected").0;
        let sql = CString::new(sql).map_err(|_| "zero byte in query".to_string())?;
        // SAFETY: a valid connection and NUL-terminated query.
        if unsafe { pq::PQsendQuery(conn, sql.as_ptr()) } != 1 {
            return Err(error(conn));
        }
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            // SAFETY: a valid connection.
            while unsafe { pq::PQconsumeInput(conn) == 1 && pq::PQisBusy(conn) == 1 } {
                wait(conn, libc::POLLIN, deadline)?;
            }
            // SAFETY: as above; a consumeInput failure leaves the connection bad.
            if unsafe { pq::PQstatus(conn) } != pq::ConnStatusType::CONNECTION_OK {
                return Err(error(conn));
            }
            // SAFETY: not busy, so PQgetResult does not block; each result is cleared.
            let res = unsafe { pq::PQgetResult(conn) };
            if res.is_null() {
                break;
            }
            unsafe {
                match pq::PQresultStatus(res) {
                    pq::ExecStatusType::PGRES_TUPLES_OK => {
                        for r in 0..pq::PQntuples(res) {
                            let row = (0..pq::PQnfields(res))
                                .map(|c| {
                                    (pq::PQgetisnull(res, r, c) == 0).then(|| {
                                        CStr::from_ptr(pq::PQgetvalue(res, r, c))
                                            .to_string_lossy()
                                            .into_owned()
                                    })
                                })
                                .collect();
                            rows.push(row);
                        }
                    }
                    pq::ExecStatusType::PGRES_COMMAND_OK => {}
                    _ => {
                        let msg = CStr::from_ptr(pq::PQresultErrorMessage(res)).to_string_lossy();
                        failure.get_or_insert(msg.trim().to_string());
                    }
                }
                pq::PQclear(res);
            }
        }
        failure.map_or(Ok(rows), Err)
    }
}

fn connect(conninfo: &CStr, deadline: Instant) -> Result<Conn, String> {
    // SAFETY: a NUL-terminated conninfo; the connection is owned by the returned guard.
    let conn = Conn(unsafe { pq::PQconnectStart(conninfo.as_ptr()) });
    if conn.0.is_null() {
        return Err("out of memory".into());
    }
    let mut events = libc::POLLOUT;
    loop {
        // SAFETY: a valid connection.
        if unsafe { pq::PQstatus(conn.0) } == pq::ConnStatusType::CONNECTION_BAD {
            return Err(error(conn.0));
        }
        wait(conn.0, events, deadline)?;
        // SAFETY: a valid connection.
        events = match unsafe { pq::PQconnectPoll(conn.0) } {
            pq::PostgresPollingStatusType::PGRES_POLLING_OK => {
                // SAFETY: a valid connection; results are read without blocking from now on.
                unsafe { pq::PQsetnonblocking(conn.0, 1) };
                return Ok(conn);
            }
            pq::PostgresPollingStatusType::PGRES_POLLING_READING => libc::POLLIN,
            pq::PostgresPollingStatusType::PGRES_POLLING_WRITING => libc::POLLOUT,
            _ => return Err(error(conn.0)),
        };
    }
}

fn wait(conn: *mut pq::PGconn, events: libc::c_short, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".into());
    }
    // SAFETY: a valid connection's socket, polled once.
    let mut fd = libc::pollfd {
        fd: unsafe { pq::PQsocket(conn) },
        events,
        revents: 0,
    };
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    match unsafe { libc::poll(&mut fd, 1, ms) } {
        0 => Err("timed out".into()),
        n if n < 0 => Err(std::io::Error::last_os_error().to_string()),
        _ => Ok(()),
    }
}

fn error(conn: *mut pq::PGconn) -> String {
    // SAFETY: libpq returns a NUL-terminated string owned by the connection.
    unsafe { CStr::from_ptr(pq::PQerrorMessage(conn)) }
        .to_string_lossy()
        .trim()
        .to_string()
}
