//! Timeline history files in `pg_wal`: which there are, and the placeholders that make a
//! promotion land on the timeline claimed in an election (`policy::timeline` says which).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use policy::timeline::{self, File as History, MARKER};

use super::local;

fn dir() -> PathBuf {
    PathBuf::from(local::data_dir()).join("pg_wal")
}

fn path(timeline: u32) -> PathBuf {
    dir().join(format!("{timeline:08X}.history"))
}

/// The history files in `pg_wal`: each timeline, and whether it is a placeholder.
pub fn files() -> Result<Vec<History>, String> {
    let dir = dir();
    let entries =
        fs::read_dir(&dir).map_err(|e| format!("could not open directory \"{}\": {e}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".history")) else {
            continue;
        };
        let Some(tli) = (hex.len() == 8)
            .then(|| u32::from_str_radix(hex, 16).ok())
            .flatten()
        else {
            continue;
        };
        let placeholder = fs::read_to_string(entry.path()).is_ok_and(|t| t.starts_with(MARKER));
        found.push((tli, placeholder));
    }
    found.sort_unstable();
    Ok(found)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Writes the placeholders that make the promotion of this server, recovering `from`, land on
/// `claim`; the ones written. Each is fsynced under a temporary name and linked into place: the
/// startup process never reads half a file, a crash never leaves an empty one, and a real file
/// that arrived meanwhile (the WAL receiver's) is never replaced.
pub fn claim(claim: u32, from: u32) -> Result<Vec<u32>, String> {
    let wanted = timeline::placeholders(claim, from, &files()?)?;
    let mut written = Vec::new();
    for n in wanted {
        let target = path(n);
        let temp = target.with_extension("history.pg_promoter");
        let placed = File::create(&temp)
            .and_then(|mut f| {
                f.write_all(timeline::placeholder(n, claim).as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| match fs::hard_link(&temp, &target) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                linked => linked.map(|()| true),
            });
        let _ = fs::remove_file(&temp);
        match placed {
            Ok(true) => written.push(n),
            Ok(false) => {}
            Err(e) => {
                forget(&written);
                return Err(format!("could not write file \"{}\": {e}", target.display()));
            }
        }
    }
    fsync_dir(&dir()).map_err(|e| format!("could not fsync directory \"{}\": {e}", dir().display()))?;
    Ok(written)
}

/// Removes these placeholders (a promotion that was not signalled after all).
pub fn forget(placeholders: &[u32]) {
    for n in placeholders {
        let _ = fs::remove_file(path(*n));
    }
}

/// Undoes a promotion that did not happen, each time the postmaster makes shared memory (at its
/// start, and after a crash of any process, before the startup process recovers): the
/// placeholders with no real history above them (`policy::timeline::stale`), which a standby
/// would take as its target timeline and refuse to recover, and then the `promote` signal file
/// of that promotion, which would otherwise promote past the claim. Returns the placeholders
/// removed, and whether there was a signal file.
pub fn undo_unfinished_promotion() -> Result<(Vec<u32>, bool), String> {
    let stale = timeline::stale(&files()?);
    if stale.is_empty() {
        return Ok((stale, false));
    }
    forget(&stale);
    let signal = fs::remove_file(PathBuf::from(local::data_dir()).join("promote")).is_ok();
    Ok((stale, signal))
}
