//! What a primary with members observes: one round over its peers and witnesses.

use policy::{Input, Settings};

use crate::check::members::{self, Pool};
use crate::pg::latch::Interrupted;

/// One round; `Err` when a shutdown interrupted it.
pub(super) fn observe(
    pool: &mut Pool,
    settings: &Settings,
    stop: &dyn Fn() -> bool,
) -> Result<Input, Interrupted> {
    members::round(pool, settings, stop).map(Input::Round)
}
