//! The failover tools under test.

pub mod auto_failover;
pub mod common;
pub mod patroni;
pub mod pg_promoter;
pub mod repmgr;
