//! pg_promoter's functional core: every decision the worker makes, as pure functions over values.
//!
//! Nothing here reads a clock, sleeps, or touches PostgreSQL. The shell (the pgrx crate) gathers
//! facts, feeds them to [`machine::step`] and carries out what it returns, so every rule is
//! unit-tested here with plain `cargo test`.
#![forbid(unsafe_code)]

pub mod classify;
pub mod conninfo;
pub mod event;
pub mod fixed;
pub mod hook;
pub mod leader;
pub mod leading;
pub mod lsn;
pub mod machine;
pub mod members;
pub mod primary;
pub mod resolve;
pub mod rewind;
pub mod ring;
pub mod schedule;
pub mod settings;
pub mod standby;
pub mod text;
pub mod time;
pub mod timeline;

pub use classify::{classify, Outcome, Verdict};
pub use event::{Event, EventKind};
pub use machine::{step, Action, Input, Local, Node, Step, Transition};
pub use settings::{FenceMode, Settings};
pub use standby::{Phase, Promotion};
