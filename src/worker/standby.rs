//! What a standby observes: one check of the primary, published as soon as it ends.

use std::time::Instant;

use policy::fixed::FixedText;
use policy::{Input, Outcome};

use super::{stop_requested, Worker};
use crate::pg::latch::Interrupted;
use crate::pg::{local, shmem};

/// Checks the primary; `Err` when a shutdown interrupted the check.
pub(super) fn observe(worker: &mut Worker) -> Result<Input, Interrupted> {
    let params = match &worker.params {
        Ok(params) => params,
        Err(reason) => {
            shmem::update(|s| s.status.last_error = FixedText::new(reason));
            return Ok(Input::Tick);
        }
    };
    let started = Instant::now();
    let deadline = started + worker.node.settings.check_timeout;
    let outcome = worker.probe.check(params, deadline, &stop_requested)?;
    let took = started.elapsed();
    let now = local::now();
    shmem::update(|s| {
        let st = &mut s.status;
        st.last_check_at = Some(now);
        st.last_check_us = Some(took.as_micros() as i64);
        st.longest_check_us = st.last_check_us.max(st.longest_check_us);
        if let Outcome::Answered {
            in_recovery, fenced, ..
        } = outcome
        {
            st.last_success_at = Some(now);
            st.primary_in_recovery = Some(in_recovery);
            st.primary_fenced = fenced && !in_recovery;
        }
    });
    Ok(Input::Checked(outcome))
}
