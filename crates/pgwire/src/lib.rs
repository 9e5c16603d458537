//! A small non-blocking wrapper over libpq (through `pq-sys`), shared by pg_promoter, its test
//! bed and its benchmarks, with nothing of pgrx in it:
//!
//! - [`Conn`] and [`PgResult`]: a connection driven step by step, which never blocks, and its
//!   results, both freed on drop. Waiting is the caller's business: the extension waits on its
//!   latch, [`Client`] with poll(2).
//! - [`Client`]: a connection that runs one query at a time within a deadline, so a frozen or
//!   cut server costs its caller one timeout, never a hang.
//! - [`parse_conninfo`]: a conninfo checked and split exactly as libpq will when connecting.

mod client;
mod conn;

pub use client::{Client, Rows};
pub use conn::{parse_conninfo, Conn, PgResult, Poll, Progress};
