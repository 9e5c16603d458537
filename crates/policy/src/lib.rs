//! pg_promoter's functional core: every decision the worker makes, as pure functions over values.
//!
//! Nothing here reads a clock, sleeps, or touches PostgreSQL. The shell (the pgrx crate) gathers
//! facts, calls these functions and carries out what they return, so every rule is unit-tested
//! here with plain `cargo test`.

pub mod classify;
pub mod command;
pub mod conninfo;
pub mod decide;
pub mod event;
pub mod fence;
pub mod fixed;
pub mod lsn;
pub mod members;
pub mod ring;
pub mod schedule;
pub mod text;
pub mod time;

pub use classify::{classify, Outcome, Verdict};
pub use decide::{decide, Action, Facts, Guard, Phase, Settings, State, Votes};
pub use event::{Event, EventKind};
