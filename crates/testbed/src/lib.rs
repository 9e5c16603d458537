//! Real PostgreSQL clusters on loopback for pg_promoter's tests, benchmarks
//! and demo: primaries and standbys ([`Node`]), ways to crash or hang them,
//! a fault-injecting TCP proxy ([`Proxy`]) to cut the network between them,
//! and polling helpers.

mod load;
mod node;
mod pg;
mod proxy;
mod wait;

pub use load::Writer;
pub use node::Node;
pub use pg::{bindir, free_port, psql_at};
pub use proxy::{Mode, Proxy};
pub use wait::{try_wait_until, wait_until};
