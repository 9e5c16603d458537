//! Real PostgreSQL clusters on loopback for pg_promoter's tests, benchmarks
//! and demo: primaries and standbys ([`Node`]), ways to crash or hang them,
//! a fault-injecting TCP proxy ([`Proxy`]) to cut the network between them,
//! simulated hosts ([`Net`], [`Host`]) for cuts between some servers but not
//! others, and polling helpers.

mod load;
mod net;
mod node;
mod pg;
mod procs;
mod proxy;
mod wait;

pub use load::Writer;
pub use net::{Host, Net, Resolver};
pub use node::Node;
pub use pg::{bindir, free_port, psql_at, run, Output};
pub use procs::{procs, Proc};
pub use proxy::{Mode, Proxy};
pub use wait::{try_wait_until, wait_until};
