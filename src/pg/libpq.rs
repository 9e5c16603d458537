//! libpq inside a server: `pgwire`'s connection, plus one of PostgreSQL's external file
//! descriptors held for its lifetime, as `libpq-be-fe-helpers.h` does, so the server's fd
//! accounting stays right.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};

use pgrx::pg_sys;
pub use pgwire::{parse_conninfo, PgResult, Poll, Progress};

/// One of the server's external descriptors, released on drop.
struct ExternalFd;

impl ExternalFd {
    fn acquire() -> Option<ExternalFd> {
        // SAFETY: AcquireExternalFD only counts descriptors in this process.
        unsafe { pg_sys::AcquireExternalFD() }.then_some(ExternalFd)
    }
}

impl Drop for ExternalFd {
    fn drop(&mut self) {
        // SAFETY: balances the AcquireExternalFD of `acquire`.
        unsafe { pg_sys::ReleaseExternalFD() }
    }
}

/// A `pgwire::Conn` that holds its descriptor; fields drop in order: the connection is closed
/// before the descriptor is given back.
pub struct Conn {
    conn: pgwire::Conn,
    _fd: ExternalFd,
}

impl Conn {
    /// Starts a non-blocking connection (`PQconnectStartParams`).
    pub fn start(params: &[(String, String)]) -> Result<Conn, String> {
        let fd = ExternalFd::acquire().ok_or("out of file descriptors: cannot open a connection")?;
        Ok(Conn {
            conn: pgwire::Conn::start(params)?,
            _fd: fd,
        })
    }
}

impl Deref for Conn {
    type Target = pgwire::Conn;
    fn deref(&self) -> &pgwire::Conn {
        &self.conn
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut pgwire::Conn {
        &mut self.conn
    }
}
