//! The failover tools under test.

pub mod patroni;
pub mod pg_promoter;
pub mod repmgr;
