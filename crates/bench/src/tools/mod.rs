//! The failover tools under test.

pub mod auto_failover;
mod common;
pub mod patroni;
pub mod pg_promoter;
pub mod repmgr;
