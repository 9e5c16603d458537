//! The small safe wrapper over libpq (through `pq-sys`): connections and results are freed on
//! drop, every string crosses the boundary once, and nothing here blocks. Waiting is the
//! caller's business (see `probe`), which is what keeps the worker responsive.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;

use pgrx::pg_sys;
use policy::schedule::Path;
use pq_sys as pq;

/// What `PQconnectPoll` asks for next.
pub enum Poll {
    Read,
    Write,
    Ready,
    Failed,
}

/// A connection being made or made. Holds one of PostgreSQL's external file descriptors for its
/// lifetime, as `libpq-be-fe-helpers.h` does, so the server's fd accounting stays right.
pub struct Conn {
    conn: NonNull<pq::PGconn>,
}

impl Conn {
    /// Starts a non-blocking connection with these parameters (`PQconnectStartParams`).
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

        // SAFETY: AcquireExternalFD only counts descriptors in this process.
        if !unsafe { pg_sys::AcquireExternalFD() } {
            return Err("out of file descriptors: cannot open a connection to the primary".into());
        }
        // SAFETY: both arrays are NULL-terminated and outlive the call; libpq copies the values.
        let raw = unsafe { pq::PQconnectStartParams(keys.as_ptr(), values.as_ptr(), 0) };
        let Some(conn) = NonNull::new(raw) else {
            // SAFETY: balances the AcquireExternalFD above.
            unsafe { pg_sys::ReleaseExternalFD() };
            return Err("out of memory while starting a connection".into());
        };
        let conn = Conn { conn };
        // SAFETY: a valid connection.
        if unsafe { pq::PQstatus(conn.conn.as_ptr()) } == pq::ConnStatusType::CONNECTION_BAD {
            return Err(conn.error_message());
        }
        Ok(conn)
    }

    pub fn poll(&mut self) -> Poll {
        // SAFETY: a valid connection.
        match unsafe { pq::PQconnectPoll(self.conn.as_ptr()) } {
            pq::PostgresPollingStatusType::PGRES_POLLING_READING => Poll::Read,
            pq::PostgresPollingStatusType::PGRES_POLLING_WRITING => Poll::Write,
            pq::PostgresPollingStatusType::PGRES_POLLING_OK => Poll::Ready,
            _ => Poll::Failed,
        }
    }

    pub fn is_ok(&self) -> bool {
        // SAFETY: a valid connection.
        unsafe { pq::PQstatus(self.conn.as_ptr()) == pq::ConnStatusType::CONNECTION_OK }
    }

    pub fn socket(&self) -> i32 {
        // SAFETY: a valid connection.
        unsafe { pq::PQsocket(self.conn.as_ptr()) }
    }

    /// How far what this connection sent last (its SYN, or a query) has got, as the kernel's
    /// TCP_INFO tells it; `Local` for a Unix socket.
    pub fn path(&self) -> Path {
        // SAFETY: tcp_info is plain data, zero is a valid value for every field.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are live and sized for the call; the socket belongs to libpq
        // and stays open meanwhile. On anything but TCP the call fails, which means Local.
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
            return Path::Local;
        }
        // The kernel's TCP states (include/net/tcp_states.h): 1 established, 2 SYN sent.
        const ESTABLISHED: u8 = 1;
        const SYN_SENT: u8 = 2;
        if info.tcpi_state == SYN_SENT || info.tcpi_unacked > 0 {
            let rtt_us = (info.tcpi_state == ESTABLISHED && info.tcpi_rtt > 0).then_some(info.tcpi_rtt);
            Path::Unacked { rtt_us }
        } else {
            Path::Delivered
        }
    }

    pub fn error_message(&self) -> String {
        // SAFETY: libpq returns a NUL-terminated string owned by the connection.
        let msg = unsafe { CStr::from_ptr(pq::PQerrorMessage(self.conn.as_ptr())) };
        msg.to_string_lossy().trim_end().to_string()
    }

    /// Sends a query with text parameters (`$1`, …) without waiting; `Err` if it could not even
    /// be queued. Parameters travel apart from the SQL, so no value needs quoting.
    pub fn send_query(&mut self, sql: &CStr, params: &[&CStr]) -> Result<(), String> {
        let values: Vec<*const c_char> = params.iter().map(|p| p.as_ptr()).collect();
        // SAFETY: a valid connection, a NUL-terminated query and `params.len()` NUL-terminated
        // values that outlive the call (libpq copies them); NULL types and formats mean text.
        let sent = unsafe {
            pq::PQsetnonblocking(self.conn.as_ptr(), 1) == 0
                && pq::PQsendQueryParams(
                    self.conn.as_ptr(),
                    sql.as_ptr(),
                    values.len() as i32,
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

    /// Pushes queued output; `Ok(true)` when more remains to be sent.
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
        unsafe {
            if pq::PQconsumeInput(self.conn.as_ptr()) == 0 {
                return Err(self.error_message());
            }
            Ok(pq::PQisBusy(self.conn.as_ptr()) == 1)
        }
    }

    /// The next result of the current query; call until `None`, as libpq requires.
    pub fn next_result(&mut self) -> Option<PgResult> {
        // SAFETY: a valid connection; the result is owned by the returned guard.
        NonNull::new(unsafe { pq::PQgetResult(self.conn.as_ptr()) }).map(PgResult)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the connection is valid and not used after this; the fd was acquired in start.
        unsafe {
            pq::PQfinish(self.conn.as_ptr());
            pg_sys::ReleaseExternalFD();
        }
    }
}

/// A query result, cleared on drop.
pub struct PgResult(NonNull<pq::PGresult>);

impl PgResult {
    pub fn rows(&self) -> i32 {
        // SAFETY: a valid result.
        unsafe { pq::PQntuples(self.0.as_ptr()) }
    }

    pub fn columns(&self) -> i32 {
        // SAFETY: a valid result.
        unsafe { pq::PQnfields(self.0.as_ptr()) }
    }

    pub fn has_rows(&self) -> bool {
        // SAFETY: a valid result.
        unsafe { pq::PQresultStatus(self.0.as_ptr()) == pq::ExecStatusType::PGRES_TUPLES_OK }
    }

    /// The text of a cell, `None` when NULL or out of range.
    pub fn value(&self, row: i32, col: i32) -> Option<String> {
        // SAFETY: a valid result; bounds and NULL are checked before reading.
        unsafe {
            let r = self.0.as_ptr();
            if row >= pq::PQntuples(r) || col >= pq::PQnfields(r) || pq::PQgetisnull(r, row, col) == 1 {
                return None;
            }
            Some(
                CStr::from_ptr(pq::PQgetvalue(r, row, col))
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    }

    pub fn sqlstate(&self) -> Option<String> {
        // SAFETY: a valid result; the field is NULL or a NUL-terminated string it owns.
        let p = unsafe { pq::PQresultErrorField(self.0.as_ptr(), pq::PG_DIAG_SQLSTATE.into()) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    pub fn error_message(&self) -> String {
        // SAFETY: a valid result; libpq returns a NUL-terminated string it owns.
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

/// Parses a conninfo exactly as libpq will when connecting, into its non-empty
/// `(keyword, value)` pairs, or libpq's own message about what is wrong.
pub fn parse_conninfo(conninfo: &CStr) -> Result<Vec<(String, String)>, String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: a NUL-terminated input; libpq allocates the options array or the error message.
    let opts = unsafe { pq::PQconninfoParse(conninfo.as_ptr(), &mut err) };
    if opts.is_null() {
        if err.is_null() {
            return Err("out of memory".into());
        }
        // SAFETY: libpq allocated this message; it is freed right after copying.
        let msg = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .trim_end()
            .to_string();
        unsafe { pq::PQfreemem(err.cast()) };
        return Err(msg);
    }
    let mut pairs = Vec::new();
    // SAFETY: the array ends with an entry whose keyword is NULL; it is freed once read.
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
