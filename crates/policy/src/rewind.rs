//! Whether a standby can follow its primary's timeline: a standby whose WAL went past the point
//! where the primary's timeline forked off its own cannot stream from it (PostgreSQL refuses, or
//! worse, on a timeline that only shares its number), and must be rewound with pg_rewind first.

use std::cmp::Ordering;

use crate::lsn;

/// What the shell read for one comparison: the primary's history of its timeline, this
/// standby's own history of the timeline it replays (`None` when it has none: timeline 1, or
/// the file is missing), and what the rejoin command needs (password masked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histories {
    pub primary_timeline: u32,
    pub primary: String,
    pub timeline: u32,
    pub own: Option<String>,
    pub data_dir: String,
    pub source: String,
    /// This server's `primary_slot_name`, kept by the rejoin command.
    pub slot: Option<String>,
}

/// The entries of a timeline history file: each ancestor timeline and where it ended.
fn entries(history: &str) -> Vec<(u32, u64)> {
    history
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?.parse().ok()?, lsn::parse(fields.next()?)?))
        })
        .collect()
}

/// The point where `timeline` ends in a timeline history file's text (the primary's
/// `<tli>.history`): `None` when the file does not name it (the timelines share no history).
pub fn switchpoint(history: &str, timeline: u32) -> Option<u64> {
    entries(history)
        .into_iter()
        .find_map(|(tli, end)| (tli == timeline).then_some(end))
}

/// Where two histories of timelines with one number part: `None` when they are the same.
/// Up to the first entry where they differ they share their WAL; at that entry both left the
/// same ancestor (they share it up to the earlier end) or came from different ones (they share
/// up to the previous entry's end, or nothing).
fn parting(mine: &[(u32, u64)], theirs: &[(u32, u64)]) -> Option<u64> {
    let i = mine.iter().zip(theirs).take_while(|(a, b)| a == b).count();
    match (mine.get(i), theirs.get(i)) {
        (None, None) => None,
        (Some(a), Some(b)) if a.0 == b.0 => Some(a.1.min(b.1)),
        _ => Some(i.checked_sub(1).map_or(0, |p| mine[p].1)),
    }
}

/// Where this standby's own history parts from the primary's record of the same ancestors
/// (those below this standby's timeline), when it does.
fn ancestry_parts(h: &Histories) -> Option<u64> {
    let own = entries(h.own.as_deref()?);
    let theirs: Vec<(u32, u64)> = entries(&h.primary)
        .into_iter()
        .filter(|(tli, _)| *tli < h.timeline)
        .collect();
    parting(&own, &theirs)
}

/// Why a standby at `position` (its furthest WAL, received or replayed) cannot follow the
/// primary the histories were read from; `None` when it can.
pub fn diverged(h: &Histories, position: u64) -> Option<String> {
    let (timeline, primary_timeline) = (h.timeline, h.primary_timeline);
    match primary_timeline.cmp(&timeline) {
        Ordering::Less => Some(format!(
            "the primary is on timeline {primary_timeline}, older than this standby's timeline {timeline}, \
             so it cannot stream from it (is the primary an old one?)"
        )),
        Ordering::Greater => match switchpoint(&h.primary, timeline) {
            // The primary's ancestors below this standby's timeline must be this standby's
            // own: PostgreSQL compares only the numbers.
            Some(_) if ancestry_parts(h).is_some_and(|at| position > at) => Some(format!(
                "the primary's timeline {primary_timeline} descends from another timeline {timeline} than \
                 this standby's (their histories part at {}), and this standby's WAL goes up to {}",
                lsn::format(ancestry_parts(h).unwrap_or(0)),
                lsn::format(position)
            )),
            Some(fork) if position > fork => Some(format!(
                "this standby's WAL on timeline {timeline} goes up to {}, past {}, where the primary's \
                 timeline {primary_timeline} forked off it",
                lsn::format(position),
                lsn::format(fork)
            )),
            Some(_) => None,
            None => Some(format!(
                "the primary's timeline {primary_timeline} does not descend from this standby's timeline {timeline}"
            )),
        },
        Ordering::Equal => {
            let own = h.own.as_deref()?;
            let fork = parting(&entries(own), &entries(&h.primary))?;
            (position > fork).then(|| {
                format!(
                    "this standby's timeline {timeline} and the primary's are two timelines with one number \
                     (their histories part at {}), and this standby's WAL goes up to {}",
                    lsn::format(fork),
                    lsn::format(position)
                )
            })
        }
    }
}

/// The commands that rejoin this server to the primary at `h.source` as a standby. pg_rewind
/// copies the source's `postgresql.auto.conf`, where the leader's own `primary_conninfo` and
/// `primary_slot_name` may stand: `--write-recovery-conf` sets the conninfo to the source (and
/// `standby.signal`), and the appended lines put back this server's slot and the check's
/// conninfo (ALTER SYSTEM's file reads later lines over earlier ones).
pub fn command(h: &Histories) -> String {
    // Inside single quotes for the shell; a single quote itself closes, escapes and reopens.
    let quoted = |s: &str| s.replace('\'', "'\\''");
    let (data_dir, source) = (quoted(&h.data_dir), quoted(&h.source));
    // The slot's value is itself quoted for postgresql.auto.conf (doubled quotes), in a
    // double-quoted shell word.
    let slot = quoted(&h.slot.as_deref().unwrap_or("").replace('\'', "''"));
    format!(
        "pg_ctl -D '{data_dir}' stop -m fast && pg_rewind --target-pgdata='{data_dir}' \
         --source-server='{source}' --write-recovery-conf --progress && \
         printf '%s\\n' \"primary_slot_name = '{slot}'\" \"pg_promoter.primary_conninfo = ''\" \
         >> '{data_dir}/postgresql.auto.conf' && pg_ctl -D '{data_dir}' start"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str =
        "1\t0/3000148\tno recovery target specified\n\n2\t0/5000060\tno recovery target specified\n";

    fn read(primary_timeline: u32, primary: &str, timeline: u32, own: Option<&str>) -> Histories {
        Histories {
            primary_timeline,
            primary: primary.into(),
            timeline,
            own: own.map(str::to_string),
            data_dir: "/d".into(),
            source: "host=a".into(),
            slot: Some("s2".into()),
        }
    }

    #[test]
    fn the_switchpoint_of_each_timeline_is_read_from_the_history() {
        assert_eq!(switchpoint(HISTORY, 1), Some(0x3000148));
        assert_eq!(switchpoint(HISTORY, 2), Some(0x5000060));
        assert_eq!(switchpoint(HISTORY, 3), None);
        assert_eq!(switchpoint("# comment\n", 1), None);
    }

    #[test]
    fn a_standby_past_the_fork_of_a_newer_timeline_cannot_follow() {
        assert_eq!(
            diverged(&read(3, HISTORY, 1, None), 0x3000148),
            None,
            "at the fork exactly: it can"
        );
        let why = diverged(&read(3, HISTORY, 1, None), 0x3000200).unwrap();
        assert!(why.contains("goes up to 0/3000200, past 0/3000148"), "{why}");
        assert!(diverged(&read(7, HISTORY, 5, None), 0)
            .unwrap()
            .contains("does not descend"));
    }

    #[test]
    fn a_primary_on_an_older_timeline_cannot_be_followed() {
        let why = diverged(&read(1, "", 2, Some("1\t0/3000148\n")), 0).unwrap();
        assert!(
            why.contains("timeline 1, older than this standby's timeline 2"),
            "{why}"
        );
    }

    #[test]
    fn two_timelines_with_one_number_part_where_their_histories_do() {
        let mine = "1\t0/3000148\tx\n";
        assert_eq!(
            diverged(&read(2, mine, 2, Some(mine)), 0x9000000),
            None,
            "the same timeline"
        );
        assert_eq!(
            diverged(&read(1, "", 1, None), 0x9000000),
            None,
            "timeline 1 has no history"
        );
        // Both left timeline 1, at different points: they share it up to the earlier one.
        let theirs = "1\t0/4000000\tx\n";
        assert_eq!(diverged(&read(2, theirs, 2, Some(mine)), 0x3000148), None);
        let why = diverged(&read(2, theirs, 2, Some(mine)), 0x3000200).unwrap();
        assert!(why.contains("part at 0/3000148"), "{why}");
        // Different ancestors after a shared one: they share up to the shared one's end.
        let a = "1\t0/3000000\tx\n2\t0/5000000\tx\n";
        let b = "1\t0/3000000\tx\n3\t0/5000000\tx\n";
        assert_eq!(parting(&entries(a), &entries(b)), Some(0x3000000));
        assert_eq!(parting(&entries("2\t0/1\n"), &entries("3\t0/1\n")), Some(0));
    }

    #[test]
    fn the_rejoin_command_rewinds_writes_the_recovery_settings_and_keeps_its_slot() {
        let cmd = command(&read(2, HISTORY, 1, None));
        assert!(
            cmd.contains("pg_rewind --target-pgdata='/d' --source-server='host=a' --write-recovery-conf"),
            "{cmd}"
        );
        assert!(cmd.contains("\"primary_slot_name = 's2'\""), "{cmd}");
        assert!(
            cmd.contains(">> '/d/postgresql.auto.conf' && pg_ctl -D '/d' start"),
            "{cmd}"
        );
        let mut quoted = read(2, HISTORY, 1, None);
        quoted.source = "host=a password='********'".into();
        let cmd = command(&quoted);
        assert!(
            cmd.contains(r"--source-server='host=a password='\''********'\'''"),
            "{cmd}"
        );
    }

    #[test]
    fn a_newer_primary_timeline_must_descend_from_this_standbys_own_history() {
        // This standby's timeline 2 left timeline 1 at 0/3000000; the primary's timeline 3
        // descends from another timeline 2, which left timeline 1 at 0/2000000.
        let own = "1\t0/3000000\tx\n";
        let theirs = "1\t0/2000000\tx\n2\t0/9000000\tx\n";
        let why = diverged(&read(3, theirs, 2, Some(own)), 0x2500000).unwrap();
        assert!(why.contains("descends from another timeline 2"), "{why}");
        assert_eq!(
            diverged(&read(3, theirs, 2, Some(own)), 0x2000000),
            None,
            "not past the parting"
        );
        let same = "1\t0/3000000\tx\n2\t0/9000000\tx\n";
        assert_eq!(
            diverged(&read(3, same, 2, Some(own)), 0x5000000),
            None,
            "its own ancestry"
        );
    }
}
