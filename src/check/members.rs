//! A primary's round: one check of every peer and witness, so the policy can tell whether this
//! server still reaches a majority and whether a newer primary exists.

use std::time::Instant;

use policy::primary::Answer;
use policy::{Outcome, Settings};

use super::probe;
use crate::pg::latch::Interrupted;

/// Checks every member once, in turn. The round shares one check's deadline, split evenly, so
/// rounds keep the fixed rate.
pub fn round(settings: &Settings, stop: &dyn Fn() -> bool) -> Result<Vec<Answer>, Interrupted> {
    let members: Vec<_> = (settings.peers.iter().map(|m| (m, true)))
        .chain(settings.witnesses.iter().map(|m| (m, false)))
        .collect();
    let share = settings.check_timeout / members.len().max(1) as u32;
    let mut answers = Vec::with_capacity(members.len());
    for (member, peer) in members {
        let outcome = match probe::params(&member.conninfo) {
            Ok(params) => probe::check_once(&params, Instant::now() + share, stop)?,
            Err(e) => Outcome::ConnectFailed(e),
        };
        answers.push(Answer {
            name: member.name.clone(),
            peer,
            outcome,
        });
    }
    Ok(answers)
}
