//! Asking the witnesses whether they can reach the primary: each runs `pg_promoter_probe()`
//! against the primary's conninfo, with the worker's own non-blocking code, and answers.

use std::time::{Duration, Instant};

use policy::machine::WitnessAnswer;
use policy::members::Member;

use super::probe;
use crate::pg::latch::Interrupted;

const ASK: &std::ffi::CStr = c"SELECT reachable, error FROM pg_promoter_probe($1, $2::interval)";

/// Asks every witness in turn. Each witness probes the primary for half of `timeout`, so its
/// answer arrives within our own deadline of `timeout` even when the primary never answers.
pub fn ask(
    witnesses: &[Member],
    primary_conninfo: &str,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<WitnessAnswer>, Interrupted> {
    let probe_timeout = format!("{} ms", (timeout.as_millis() / 2).max(1));
    witnesses
        .iter()
        .map(|w| {
            let (gone, detail) = match probe::params(&w.conninfo) {
                Err(e) => (None, format!("cannot ask it: {e}")),
                Ok(params) => {
                    let deadline = Instant::now() + timeout;
                    match probe::ask(&params, ASK, &[primary_conninfo, &probe_timeout], deadline, stop)? {
                        Ok(rows) => match rows
                            .first()
                            .map(|r| (r.first().cloned().flatten(), r.get(1).cloned().flatten()))
                        {
                            Some((Some(reachable), error)) if reachable == "f" => (
                                Some(true),
                                format!("cannot reach the primary either: {}", error.unwrap_or_default()),
                            ),
                            Some((Some(_), _)) => (Some(false), "still reaches the primary".to_string()),
                            // Its lookup of the primary's name failed too: no vote either way.
                            Some((None, Some(error))) => (None, format!("cannot tell: {error}")),
                            _ => (None, "gave no answer".to_string()),
                        },
                        Err(outcome) => (None, format!("cannot ask it: {}", probe::reason(&outcome))),
                    }
                }
            };
            Ok(WitnessAnswer {
                name: w.name.clone(),
                gone,
                detail,
            })
        })
        .collect()
}
