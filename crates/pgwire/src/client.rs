//! A database client that never hangs: a [`Conn`] driven without blocking, every wait on its
//! socket bounded by a deadline, so a frozen or cut server costs its caller one timeout, not the
//! whole run. For test beds and benchmarks, not for the extension (which waits on its latch).
// poll(2) is the one call here that needs unsafe; everything of libpq goes through `Conn`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

use crate::conn::{parse_conninfo, Conn, Poll};

/// The rows of every statement that returned some, in order; a cell is `None` when NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// One connection, made when first needed, that runs one query at a time within a deadline.
/// Any failure (connecting, the query, a timeout) drops the connection, so the next call starts
/// afresh: nothing half-read or half-sent ever leaks into the next query.
pub struct Client {
    conninfo: String,
    conn: Option<Conn>,
}

impl Client {
    /// A client for `conninfo` (`key=value …` or a URI, as libpq takes it). Nothing is checked
    /// or connected until the first query; a bad conninfo is that query's error.
    pub fn new(conninfo: &str) -> Client {
        Client {
            conninfo: conninfo.to_string(),
            conn: None,
        }
    }

    /// Runs `sql` within `timeout` (connecting first if needed) through the simple query
    /// protocol, so it may hold several statements (run as one implicit transaction unless they
    /// say otherwise). `Err` with the first error if any statement fails; any failure drops the
    /// connection, so the next call starts afresh.
    pub fn exec(&mut self, sql: &str, timeout: Duration) -> Result<Rows, String> {
        self.run(sql, None, timeout)
    }

    /// Like [`Client::exec`], for one statement with text parameters (`$1`, …) sent apart from
    /// the SQL, so no value needs quoting.
    pub fn exec_params(&mut self, sql: &str, params: &[&str], timeout: Duration) -> Result<Rows, String> {
        self.run(sql, Some(params), timeout)
    }

    /// Whether a connection is kept for the next query (none after a failure).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn run(&mut self, sql: &str, params: Option<&[&str]>, timeout: Duration) -> Result<Rows, String> {
        let deadline = Instant::now() + timeout;
        let result = self.try_run(sql, params, deadline);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn try_run(&mut self, sql: &str, params: Option<&[&str]>, deadline: Instant) -> Result<Rows, String> {
        let sql = CString::new(sql).map_err(|_| "zero byte in query".to_string())?;
        let params = params
            .map(|ps| ps.iter().map(|p| CString::new(*p)).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|_| "zero byte in a query parameter".to_string())?;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            none => none.insert(connect(&self.conninfo, deadline)?),
        };
        match &params {
            None => conn.send_simple_query(&sql)?,
            Some(params) => {
                let params: Vec<_> = params.iter().map(CString::as_c_str).collect();
                conn.send_query(&sql, &params)?
            }
        }
        // A large query may not fit in the socket's buffer at once; the server may answer
        // meanwhile, and libpq must read that to let it go on.
        while conn.flush()? {
            wait(conn, Want::Either, deadline)?;
            conn.consume()?;
        }
        let mut rows = Rows::new();
        loop {
            while conn.consume()? {
                wait(conn, Want::Read, deadline)?;
            }
            if !conn.is_ok() {
                return Err(conn.error_message());
            }
            // Complete, so this does not block.
            let Some(res) = conn.next_result() else {
                break;
            };
            if res.has_rows() {
                rows.extend((0..res.rows()).map(|r| (0..res.columns()).map(|c| res.value(r, c)).collect()));
            } else if !res.is_ok() {
                // The connection is dropped, so the results after this one need not be read.
                let msg = res.error_message();
                return Err(if msg.is_empty() {
                    "unexpected result: neither rows nor a completed command (an empty query, COPY?)"
                        .to_string()
                } else {
                    msg
                });
            }
        }
        Ok(rows)
    }
}

/// Connects to `conninfo` without blocking past `deadline`. (libpq's own `connect_timeout` only
/// bounds blocking connections; the deadline bounds this one.)
fn connect(conninfo: &str, deadline: Instant) -> Result<Conn, String> {
    let conninfo = CString::new(conninfo).map_err(|_| "zero byte in conninfo".to_string())?;
    let mut conn = Conn::start(&parse_conninfo(&conninfo)?)?;
    // As libpq's manual says: wait until the socket is writable before the first poll.
    let mut want = Want::Write;
    loop {
        wait(&conn, want, deadline).map_err(|e| format!("connecting: {e}"))?;
        want = match conn.poll() {
            Poll::Ready => return Ok(conn),
            Poll::Read => Want::Read,
            Poll::Write => Want::Write,
            Poll::Failed => return Err(conn.error_message()),
        };
    }
}

#[derive(Clone, Copy)]
enum Want {
    Read,
    Write,
    Either,
}

/// Waits until `conn`'s socket is ready for `want` (or has an error or hang-up, which libpq will
/// then report), or `Err` once `deadline` has passed, not before. A signal does not end the wait
/// early: libpq must only be polled when the socket is ready.
fn wait(conn: &Conn, want: Want, deadline: Instant) -> Result<(), String> {
    let fd = conn.socket();
    if fd < 0 {
        return Err(format!("no socket: {}", conn.error_message()));
    }
    let events = match want {
        Want::Read => libc::POLLIN,
        Want::Write => libc::POLLOUT,
        Want::Either => libc::POLLIN | libc::POLLOUT,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        // Rounded up: poll(2) returning a little early would end the wait before its deadline.
        let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one live pollfd for the whole call, and its descriptor belongs to
        // `conn`, which the borrow keeps open meanwhile.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            // Time is up (checked again at the top: the clock decides, not poll's rounding).
            0 => continue,
            n if n > 0 => return Ok(()),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("poll: {err}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    }

    #[test]
    fn nobody_listening_fails_promptly() {
        // Bound and dropped at once: nobody listens there now.
        let port = free_port();
        let mut client = Client::new(&format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=30"
        ));
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        let err = client.exec("SELECT 1", timeout).unwrap_err();
        let took = start.elapsed();
        assert!(err.contains("refused"), "{err}");
        assert!(
            took < Duration::from_secs(2),
            "took {took:?} of a {timeout:?} timeout"
        );
        assert!(!client.is_connected());
        // And again: each call tries afresh.
        let err = client.exec("SELECT 1", timeout).unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn a_silent_server_costs_exactly_the_timeout() {
        // The kernel completes the handshake for the backlog, but nobody ever accepts or
        // answers: a server that is up but frozen.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = Client::new(&format!(
            "postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=30"
        ));
        for timeout in [Duration::from_millis(300), Duration::from_millis(800)] {
            let start = Instant::now();
            let err = client.exec("SELECT 1", timeout).unwrap_err();
            let took = start.elapsed();
            assert!(err.contains("timed out"), "{err}");
            assert!(took >= timeout, "gave up after {took:?}, before its {timeout:?}");
            assert!(
                took < timeout + Duration::from_millis(500),
                "took {took:?} for {timeout:?}"
            );
            assert!(!client.is_connected());
        }
        drop(listener);
    }

    #[test]
    fn a_bad_conninfo_or_query_is_an_error_not_a_panic() {
        let mut client = Client::new("garbage");
        let err = client.exec("SELECT 1", Duration::from_secs(1)).unwrap_err();
        assert_eq!(err, r#"missing "=" after "garbage" in connection info string"#);
        let mut client = Client::new("host=127.0.0.1\0");
        let err = client.exec("SELECT 1", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("zero byte"), "{err}");
        let mut client = Client::new("host=127.0.0.1");
        let err = client.exec("SELECT '\0'", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("zero byte"), "{err}");
        let err = client
            .exec_params("SELECT $1", &["\0"], Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("zero byte"), "{err}");
    }

    #[test]
    fn a_client_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Client>();
    }
}
