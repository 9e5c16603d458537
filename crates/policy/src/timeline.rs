//! Which timeline a promotion lands on. PostgreSQL's promotion takes the timeline after the
//! newest one it finds a history file of, probing upward from the timeline it recovers and
//! stopping at the first number without one (`findNewestTimeLine`). A winner of an election must
//! land on the timeline it claimed (`leader::claim`), which other members may know was used
//! elsewhere, so it leaves a placeholder history file for each lower number it has none of.
//!
//! A placeholder holds comments only: PostgreSQL reads it as a timeline with no ancestors, never
//! one to follow (a rescan logs that it is not a child of the current one), only a number taken.
//! It stays once the claimed timeline exists: the walsender serves it to standbys that start
//! below it and ask for every number up to the primary's. One with no real history file above it
//! is a promotion that never happened, removed at the next start, since a standby whose newest
//! history file is a placeholder takes it as its target and refuses to recover.

/// The first line of every placeholder, how one is told from PostgreSQL's own files.
pub const MARKER: &str = "# pg_promoter placeholder";

/// A history file in `pg_wal`: its timeline, and whether it is a placeholder.
pub type File = (u32, bool);

/// The newest timeline this server has a history file of (placeholders included), or
/// `current` when that is newer: what its promotion would otherwise go past.
pub fn newest(current: u32, files: &[File]) -> u32 {
    files.iter().map(|(t, _)| *t).fold(current, u32::max)
}

/// The placeholders that make the promotion of a server recovering timeline `from` pick
/// `claim`: one for each number between them with no history file. Refused when `claim` has
/// one already (PostgreSQL would go past it).
pub fn placeholders(claim: u32, from: u32, files: &[File]) -> Result<Vec<u32>, String> {
    let has = |n: u32| files.iter().any(|(t, _)| *t == n);
    if has(claim) {
        return Err(format!(
            "timeline {claim}, claimed in the election, has a history file here already: the \
             promotion would land on another number"
        ));
    }
    if claim <= from {
        return Err(format!(
            "timeline {claim}, claimed in the election, is not above timeline {from}, which this \
             server recovers"
        ));
    }
    Ok((from + 1..claim).filter(|n| !has(*n)).collect())
}

/// A placeholder's text.
pub fn placeholder(timeline: u32, claim: u32) -> String {
    format!(
        "{MARKER}: timeline {timeline} was claimed in an election by another member, and this\n\
         # server has no history of it. It makes the promotion to timeline {claim} skip the number.\n"
    )
}

/// The placeholders with no real history file above them: left by a promotion that did not
/// happen (a crash between the placeholders and the end of recovery).
pub fn stale(files: &[File]) -> Vec<u32> {
    let real = files
        .iter()
        .filter(|(_, p)| !p)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(1);
    files
        .iter()
        .filter(|(t, p)| *p && *t > real)
        .map(|(t, _)| *t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholders_fill_the_numbers_below_the_claim_that_have_no_history() {
        // On timeline 1, claiming 4, with a real history of 3 (fetched from a primary): 2 only.
        assert_eq!(placeholders(4, 1, &[(3, false)]), Ok(vec![2]));
        assert_eq!(placeholders(2, 1, &[]), Ok(vec![]), "the next number needs none");
        assert_eq!(placeholders(5, 2, &[(2, false)]), Ok(vec![3, 4]));
        assert!(placeholders(3, 1, &[(3, false)])
            .unwrap_err()
            .contains("has a history file here already"));
        assert!(placeholders(2, 2, &[])
            .unwrap_err()
            .contains("not above timeline 2"));
        assert_eq!(newest(1, &[(3, false), (5, true)]), 5);
        assert_eq!(newest(6, &[(3, false)]), 6);
    }

    #[test]
    fn placeholders_below_a_real_history_stay_and_those_above_every_one_go() {
        // Promoted onto 4 over placeholders 2 and 3: they stay, they mark numbers taken.
        assert!(stale(&[(2, true), (3, true), (4, false)]).is_empty());
        // A crash before recovery ended: 2 and 3 have nothing real above them.
        assert_eq!(stale(&[(2, true), (3, true)]), vec![2, 3]);
        assert_eq!(stale(&[(2, false), (3, true), (4, true)]), vec![3, 4]);
        assert!(placeholder(2, 3).starts_with(MARKER));
        // PostgreSQL skips comment lines: every line of a placeholder is one.
        assert!(placeholder(2, 3).lines().all(|l| l.starts_with('#')));
    }
}
