//! Whether a standby can follow its primary's timeline: a standby whose replay went past the
//! point where the primary's timeline forked off its own cannot stream from it (PostgreSQL
//! refuses), and must be rewound with pg_rewind first.

use crate::lsn;

/// The point where `timeline` ends in a timeline history file's text (the primary's
/// `<tli>.history`): `None` when the file does not name it (the timelines share no history).
pub fn switchpoint(history: &str, timeline: u32) -> Option<u64> {
    history
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let tli: u32 = fields.next()?.parse().ok()?;
            (tli == timeline)
                .then(|| fields.next().and_then(lsn::parse))
                .flatten()
        })
}

/// Why a standby at `position` on `timeline` cannot follow a primary on `primary_timeline`,
/// whose history says `history`; `None` when it can.
pub fn diverged(history: &str, timeline: u32, position: u64, primary_timeline: u32) -> Option<String> {
    if primary_timeline <= timeline {
        return None;
    }
    match switchpoint(history, timeline) {
        Some(fork) if position > fork => Some(format!(
            "this standby replayed timeline {timeline} up to {}, past {}, where the primary's timeline \
             {primary_timeline} forked off it",
            lsn::format(position),
            lsn::format(fork)
        )),
        Some(_) => None,
        None => Some(format!(
            "the primary's timeline {primary_timeline} does not descend from this standby's timeline {timeline}"
        )),
    }
}

/// The commands that rejoin this server to the primary at `source` (a conninfo, password
/// already masked), as a standby.
pub fn command(data_dir: &str, source: &str) -> String {
    format!(
        "pg_ctl -D '{data_dir}' stop -m fast && pg_rewind --target-pgdata='{data_dir}' \
         --source-server='{source}' --progress && touch '{data_dir}/standby.signal' && \
         pg_ctl -D '{data_dir}' start"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str =
        "1\t0/3000148\tno recovery target specified\n\n2\t0/5000060\tno recovery target specified\n";

    #[test]
    fn the_switchpoint_of_each_timeline_is_read_from_the_history() {
        assert_eq!(switchpoint(HISTORY, 1), Some(0x3000148));
        assert_eq!(switchpoint(HISTORY, 2), Some(0x5000060));
        assert_eq!(switchpoint(HISTORY, 3), None);
        assert_eq!(switchpoint("# comment\n", 1), None);
    }

    #[test]
    fn a_standby_past_the_fork_cannot_follow() {
        assert_eq!(
            diverged(HISTORY, 1, 0x3000148, 3),
            None,
            "at the fork exactly: it can"
        );
        let why = diverged(HISTORY, 1, 0x3000200, 3).unwrap();
        assert!(why.contains("up to 0/3000200, past 0/3000148"), "{why}");
        assert_eq!(diverged(HISTORY, 2, 0x9000000, 2), None, "same timeline");
        assert!(diverged(HISTORY, 5, 0, 7).unwrap().contains("does not descend"));
        assert!(command("/d", "host=a").contains("pg_rewind --target-pgdata='/d' --source-server='host=a'"));
    }
}
