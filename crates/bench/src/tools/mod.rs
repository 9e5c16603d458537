//! The failover tools under test.

pub mod pg_promoter;
