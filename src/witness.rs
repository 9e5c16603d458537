//! Asking the witnesses whether they can reach the primary: each runs `pg_promoter_probe()`
//! against the primary's conninfo, with the worker's own non-blocking code, and answers.

use std::time::{Duration, Instant};

use policy::members::Member;
use policy::{classify, Votes};

use crate::latch::Interrupted;
use crate::probe;

const ASK: &std::ffi::CStr = c"SELECT reachable, error FROM pg_promoter_probe($1, $2::interval)";

/// One witness's answer, with a sentence for the event.
pub struct Answer {
    pub name: String,
    pub gone: Option<bool>,
    pub detail: String,
}

/// Asks every witness in turn. Each witness probes the primary for half of `timeout`, so its
/// answer arrives within our own deadline of `timeout` even when the primary never answers.
pub fn ask(
    witnesses: &[Member],
    primary_conninfo: &str,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<Answer>, Interrupted> {
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
                            _ => (None, "gave no answer".to_string()),
                        },
                        Err(outcome) => (None, format!("cannot ask it: {}", reason(&outcome))),
                    }
                }
            };
            Ok(Answer {
                name: w.name.clone(),
                gone,
                detail,
            })
        })
        .collect()
}

pub fn tally(answers: &[Answer]) -> Votes {
    let count = |v: Option<bool>| answers.iter().filter(|a| a.gone == v).count();
    Votes {
        gone: count(Some(true)),
        alive: count(Some(false)),
        unreachable: count(None),
    }
}

fn reason(outcome: &policy::Outcome) -> String {
    match classify(outcome) {
        policy::Verdict::Down(r) | policy::Verdict::Misconfigured(r) => r,
        policy::Verdict::Alive => "unexpected answer".into(),
    }
}
