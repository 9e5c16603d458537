//! The small safe wrapper over libpq (through `pq-sys`): connections and results are freed on
//! drop, every string crosses the boundary once, and nothing here blocks. Waiting is the
//! caller's business (the extension's probe waits on its latch, [`crate::Client`] with poll(2)),
//! which is what keeps the caller responsive.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;

use pq_sys as pq;

/// What `PQconnectPoll` asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Wait until the socket is readable, then poll again.
    Read,
    /// Wait until the socket is writable, then poll again.
    Write,
    /// Connected.
    Ready,
    /// Failed for good; [`Conn::error_message`] says why.
    Failed,
}

/// How far what a connection sent last (its SYN, or a query) has got, as the kernel's TCP_INFO
/// tells it: whether a silent server is slow to answer or was never reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not TCP (a Unix socket) or nothing known: no network path to speak of.
    Local,
    /// The SYN or some data is not acknowledged yet by the peer's kernel; `rtt_us` is the
    /// smoothed round-trip time once the connection is established.
    Unacked { rtt_us: Option<u32> },
    /// Everything sent was acknowledged: the peer's kernel has it, so silence is the server's.
    Delivered,
}

/// A connection being made or made: one socket of this process for its lifetime, closed on drop.
///
/// Nothing here knows about the PostgreSQL server it may run in: a caller inside a server (the
/// extension) must hold one of the server's external file descriptors for each `Conn`
/// (`AcquireExternalFD` before [`Conn::start`], `ReleaseExternalFD` after the drop), as
/// `libpq-be-fe-helpers.h` does, so the server's fd accounting stays right.
pub struct Conn {
    conn: NonNull<pq::PGconn>,
}

// SAFETY: libpq lets a PGconn be used from any thread as long as no two threads use it at the
// same time ("Behavior in Threaded Programs" in the libpq manual; Debian's libpq is built
// thread-safe). `Conn` owns its PGconn alone and is not `Sync` (it holds a `NonNull`), so
// moving it to another thread hands the connection over whole: one user at a time.
unsafe impl Send for Conn {}

impl Conn {
    /// Starts a non-blocking connection with these parameters (`PQconnectStartParams`).
    /// `Err` if libpq rejects them at once (a bad value, no memory); otherwise drive it with
    /// [`Conn::poll`], first waiting until the socket is writable.
    pub fn start(params: &[(String, String)]) -> Result<Conn, String> {
        let owned: Vec<(CString, CString)> = params
            .iter()
            .map(|(k, v)| Ok((CString::new(k.as_str())?, CString::new(v.as_str())?)))
            .collect::<Result<_, std::ffi::NulError>>()
            .map_err(|_| "connection parameter contains a zero byte".to_string())?;
        let mut keys: Vec<*const c_char> = owned.iter().map(|(k, _)| k.as_ptr()).collect();
        let mut values: Vec<*const c_char> = owned.iter().map(|(_, v)| v.as_ptr()).collect();
        keys.push(std::ptr::null());
        values.push(std::ptr::null());

        // SAFETY: both arrays are NULL-terminated and outlive the call; libpq copies the values.
        let raw = unsafe { pq::PQconnectStartParams(keys.as_ptr(), values.as_ptr(), 0) };
        let Some(conn) = NonNull::new(raw) else {
            return Err("out of memory while starting a connection".into());
        };
        let conn = Conn { conn };
        // SAFETY: a valid connection.
        if unsafe { pq::PQstatus(conn.conn.as_ptr()) } == pq::ConnStatusType::CONNECTION_BAD {
            return Err(conn.error_message());
        }
        Ok(conn)
    }

    /// One step of connecting (`PQconnectPoll`); call when the socket is ready for what the
    /// previous step asked. The socket may change between steps (another host, another try).
    pub fn poll(&mut self) -> Poll {
        // SAFETY: a valid connection.
        match unsafe { pq::PQconnectPoll(self.conn.as_ptr()) } {
            pq::PostgresPollingStatusType::PGRES_POLLING_READING => Poll::Read,
            pq::PostgresPollingStatusType::PGRES_POLLING_WRITING => Poll::Write,
            pq::PostgresPollingStatusType::PGRES_POLLING_OK => Poll::Ready,
            _ => Poll::Failed,
        }
    }

    /// Connected and not broken since (`PQstatus` is `CONNECTION_OK`).
    pub fn is_ok(&self) -> bool {
        // SAFETY: a valid connection.
        unsafe { pq::PQstatus(self.conn.as_ptr()) == pq::ConnStatusType::CONNECTION_OK }
    }

    /// The connection's socket, to wait on; -1 when there is none.
    pub fn socket(&self) -> i32 {
        // SAFETY: a valid connection.
        unsafe { pq::PQsocket(self.conn.as_ptr()) }
    }

    /// How far what this connection sent last (its SYN, or a query) has got, as the kernel's
    /// TCP_INFO tells it; `Local` for a Unix socket.
    pub fn progress(&self) -> Progress {
        // SAFETY: tcp_info is plain data, zero is a valid value for every field.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are live and sized for the call; the socket belongs to libpq
        // and stays open meanwhile. On anything but TCP (or no socket) the call fails, which
        // means Local.
        let rc = unsafe {
            libc::getsockopt(
                self.socket(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Progress::Local;
        }
        // The kernel's TCP states (include/net/tcp_states.h): 1 established, 2 SYN sent.
        const ESTABLISHED: u8 = 1;
        const SYN_SENT: u8 = 2;
        if info.tcpi_state == SYN_SENT || info.tcpi_unacked > 0 {
            let rtt_us = (info.tcpi_state == ESTABLISHED && info.tcpi_rtt > 0).then_some(info.tcpi_rtt);
            Progress::Unacked { rtt_us }
        } else {
            Progress::Delivered
        }
    }

    /// libpq's last message about this connection, without the trailing newline.
    pub fn error_message(&self) -> String {
        // SAFETY: libpq returns a NUL-terminated string owned by the connection, copied at once.
        let msg = unsafe { CStr::from_ptr(pq::PQerrorMessage(self.conn.as_ptr())) };
        msg.to_string_lossy().trim_end().to_string()
    }

    /// Sends a query with text parameters (`$1`, …) without waiting; `Err` if it could not even
    /// be queued. Parameters travel apart from the SQL, so no value needs quoting. One statement
    /// only (the extended protocol); see [`Conn::send_simple_query`] for several.
    pub fn send_query(&mut self, sql: &CStr, params: &[&CStr]) -> Result<(), String> {
        let values: Vec<*const c_char> = params.iter().map(|p| p.as_ptr()).collect();
        let count = i32::try_from(values.len()).map_err(|_| "too many parameters".to_string())?;
        // SAFETY: a valid connection, a NUL-terminated query and `params.len()` NUL-terminated
        // values that outlive the call (libpq copies them); NULL types and formats mean text.
        let sent = unsafe {
            pq::PQsetnonblocking(self.conn.as_ptr(), 1) == 0
                && pq::PQsendQueryParams(
                    self.conn.as_ptr(),
                    sql.as_ptr(),
                    count,
                    std::ptr::null(),
                    values.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                ) == 1
        };
        if sent {
            Ok(())
        } else {
            Err(self.error_message())
        }
    }

    /// Sends SQL without parameters through the simple query protocol (`PQsendQuery`), without
    /// waiting: it may hold several statements separated by semicolons, run as one implicit
    /// transaction unless they say otherwise, each giving its own result.
    pub fn send_simple_query(&mut self, sql: &CStr) -> Result<(), String> {
        // SAFETY: a valid connection and a NUL-terminated query that libpq copies.
        let sent = unsafe {
            pq::PQsetnonblocking(self.conn.as_ptr(), 1) == 0
                && pq::PQsendQuery(self.conn.as_ptr(), sql.as_ptr()) == 1
        };
        if sent {
            Ok(())
        } else {
            Err(self.error_message())
        }
    }

    /// Pushes queued output; `Ok(true)` when more remains to be sent (wait until the socket is
    /// writable, or readable, then [`Conn::consume`] and flush again).
    pub fn flush(&mut self) -> Result<bool, String> {
        // SAFETY: a valid connection.
        match unsafe { pq::PQflush(self.conn.as_ptr()) } {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error_message()),
        }
    }

    /// Reads what the socket has; `Ok(true)` while a result is still incomplete.
    pub fn consume(&mut self) -> Result<bool, String> {
        // SAFETY: a valid connection.
        if unsafe { pq::PQconsumeInput(self.conn.as_ptr()) } == 0 {
            return Err(self.error_message());
        }
        // SAFETY: a valid connection.
        Ok(unsafe { pq::PQisBusy(self.conn.as_ptr()) } == 1)
    }

    /// The next result of the current query; call until `None`, as libpq requires, and only
    /// when [`Conn::consume`] said the result is complete, or this blocks.
    pub fn next_result(&mut self) -> Option<PgResult> {
        // SAFETY: a valid connection; the result is owned by the returned guard.
        NonNull::new(unsafe { pq::PQgetResult(self.conn.as_ptr()) }).map(PgResult)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the connection is valid and not used after this.
        unsafe { pq::PQfinish(self.conn.as_ptr()) }
    }
}

/// A query result, cleared on drop.
pub struct PgResult(NonNull<pq::PGresult>);

// SAFETY: a PGresult is read-only once made and independent of its connection, so libpq lets
// it be passed freely between threads ("Behavior in Threaded Programs"); `PgResult` owns it.
unsafe impl Send for PgResult {}

impl PgResult {
    /// Rows in the result (0 unless it has rows).
    pub fn rows(&self) -> i32 {
        // SAFETY: a valid result.
        unsafe { pq::PQntuples(self.0.as_ptr()) }
    }

    /// Columns in the result (0 unless it has rows).
    pub fn columns(&self) -> i32 {
        // SAFETY: a valid result.
        unsafe { pq::PQnfields(self.0.as_ptr()) }
    }

    /// A query that returned rows (possibly none): `PGRES_TUPLES_OK`.
    pub fn has_rows(&self) -> bool {
        // SAFETY: a valid result.
        unsafe { pq::PQresultStatus(self.0.as_ptr()) == pq::ExecStatusType::PGRES_TUPLES_OK }
    }

    /// The statement succeeded, with rows or without (`PGRES_TUPLES_OK`, `PGRES_COMMAND_OK`);
    /// anything else (an error, an empty query, a COPY) is not a success.
    pub fn is_ok(&self) -> bool {
        // SAFETY: a valid result.
        let status = unsafe { pq::PQresultStatus(self.0.as_ptr()) };
        matches!(
            status,
            pq::ExecStatusType::PGRES_TUPLES_OK | pq::ExecStatusType::PGRES_COMMAND_OK
        )
    }

    /// The text of a cell, `None` when NULL or out of range.
    pub fn value(&self, row: i32, col: i32) -> Option<String> {
        let r = self.0.as_ptr();
        if row < 0 || col < 0 || row >= self.rows() || col >= self.columns() {
            return None;
        }
        // SAFETY: a valid result, and the cell is in range (checked above).
        if unsafe { pq::PQgetisnull(r, row, col) } == 1 {
            return None;
        }
        // SAFETY: an in-range, non-NULL cell: a NUL-terminated string the result owns, copied
        // at once.
        let text = unsafe { CStr::from_ptr(pq::PQgetvalue(r, row, col)) };
        Some(text.to_string_lossy().into_owned())
    }

    /// The error's SQLSTATE, `None` when the result is no error (or libpq made it itself
    /// without one, as for a lost connection).
    pub fn sqlstate(&self) -> Option<String> {
        // SAFETY: a valid result; the field is NULL or a NUL-terminated string it owns.
        let p = unsafe { pq::PQresultErrorField(self.0.as_ptr(), pq::PG_DIAG_SQLSTATE.into()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: not NULL, so a NUL-terminated string owned by the result, copied at once.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// The error's message without the trailing newline; empty when the result is no error.
    pub fn error_message(&self) -> String {
        // SAFETY: a valid result; libpq returns a NUL-terminated string it owns, copied at once.
        let msg = unsafe { CStr::from_ptr(pq::PQresultErrorMessage(self.0.as_ptr())) };
        msg.to_string_lossy().trim_end().to_string()
    }
}

impl Drop for PgResult {
    fn drop(&mut self) {
        // SAFETY: the result is valid and not used after this.
        unsafe { pq::PQclear(self.0.as_ptr()) }
    }
}

/// Parses a conninfo (`key=value …` or a `postgresql://` URI) exactly as libpq will when
/// connecting, into its non-empty `(keyword, value)` pairs, or libpq's own message about what
/// is wrong. Defaults and environment variables are not applied: [`Conn::start`] does that.
pub fn parse_conninfo(conninfo: &CStr) -> Result<Vec<(String, String)>, String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: a NUL-terminated input; libpq allocates the options array or the error message.
    let opts = unsafe { pq::PQconninfoParse(conninfo.as_ptr(), &mut err) };
    if opts.is_null() {
        if err.is_null() {
            return Err("out of memory".into());
        }
        // SAFETY: libpq allocated this NUL-terminated message; it is copied here.
        let msg = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .trim_end()
            .to_string();
        // SAFETY: the message came from libpq, is freed once, and is not used after this.
        unsafe { pq::PQfreemem(err.cast()) };
        return Err(msg);
    }
    let mut pairs = Vec::new();
    // SAFETY: the array ends with an entry whose keyword is NULL, every keyword and value is
    // NULL or NUL-terminated; the array is freed once, after it is read.
    unsafe {
        let mut opt = opts;
        while !(*opt).keyword.is_null() {
            if !(*opt).val.is_null() {
                let key = CStr::from_ptr((*opt).keyword).to_string_lossy().into_owned();
                let val = CStr::from_ptr((*opt).val).to_string_lossy().into_owned();
                pairs.push((key, val));
            }
            opt = opt.add(1);
        }
        pq::PQconninfoFree(opts);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(conninfo: &CStr) -> Vec<(String, String)> {
        let mut p = parse_conninfo(conninfo).unwrap_or_else(|e| panic!("{conninfo:?}: {e}"));
        p.sort();
        p
    }

    fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut p: Vec<_> = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.sort();
        p
    }

    #[test]
    fn parse_conninfo_accepts_key_value_pairs() {
        assert_eq!(
            pairs(c"host=10.0.0.1 port=5433 user=me dbname='my db' connect_timeout=2"),
            kv(&[
                ("host", "10.0.0.1"),
                ("port", "5433"),
                ("user", "me"),
                ("dbname", "my db"),
                ("connect_timeout", "2"),
            ])
        );
        // Nothing given, nothing returned: defaults are applied when connecting.
        assert_eq!(pairs(c""), kv(&[]));
    }

    #[test]
    fn parse_conninfo_accepts_uris() {
        assert_eq!(
            pairs(c"postgresql://me@db.example:5433/app?connect_timeout=3&application_name=x"),
            kv(&[
                ("host", "db.example"),
                ("port", "5433"),
                ("user", "me"),
                ("dbname", "app"),
                ("connect_timeout", "3"),
                ("application_name", "x"),
            ])
        );
        assert_eq!(pairs(c"postgres://[::1]/"), kv(&[("host", "::1")]));
    }

    #[test]
    fn parse_conninfo_rejects_garbage_with_libpqs_message() {
        let err = parse_conninfo(c"garbage").unwrap_err();
        assert_eq!(err, r#"missing "=" after "garbage" in connection info string"#);
        let err = parse_conninfo(c"host=h nosuchoption=1").unwrap_err();
        assert_eq!(err, r#"invalid connection option "nosuchoption""#);
        let err = parse_conninfo(c"host='unterminated").unwrap_err();
        assert_eq!(err, "unterminated quoted string in connection info string");
        let err = parse_conninfo(c"postgresql://[::1/db").unwrap_err();
        assert!(err.contains("IPv6 host address"), "{err}");
    }

    #[test]
    fn start_rejects_what_libpq_rejects_at_once() {
        let zero = Conn::start(&[("host".into(), "a\0b".into())]).err().unwrap();
        assert!(zero.contains("zero byte"), "{zero}");
        // A port that is not a number fails before any socket is made.
        let params = [
            ("host".into(), "127.0.0.1".into()),
            ("port".into(), "notaport".into()),
        ];
        let err = Conn::start(&params).err().unwrap();
        assert!(err.contains("notaport"), "{err}");
    }

    #[test]
    fn a_connection_and_a_result_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Conn>();
        send::<PgResult>();
    }
}
