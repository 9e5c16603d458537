//! Timeline history files in `pg_wal`: which there are, and the placeholders that make a
//! promotion land on the timeline claimed in an election (`policy::timeline` says which).

use std::fs;
use std::path::PathBuf;

use policy::timeline::{self, File, MARKER};

use super::local;

fn dir() -> PathBuf {
    PathBuf::from(local::data_dir()).join("pg_wal")
}

fn path(timeline: u32) -> PathBuf {
    dir().join(format!("{timeline:08X}.history"))
}

/// The history files in `pg_wal`: each timeline, and whether it is a placeholder.
pub fn files() -> Result<Vec<File>, String> {
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

/// Writes the placeholders that make the promotion of this server, recovering `from`, land on
/// `claim`; the ones written.
pub fn claim(claim: u32, from: u32) -> Result<Vec<u32>, String> {
    let wanted = timeline::placeholders(claim, from, &files()?)?;
    let mut written = Vec::new();
    for n in wanted {
        let target = path(n);
        // Renamed into place, so that the startup process never reads half a file.
        let temp = target.with_extension("history.pg_promoter");
        if let Err(e) =
            fs::write(&temp, timeline::placeholder(n, claim)).and_then(|()| fs::rename(&temp, &target))
        {
            forget(&written);
            return Err(format!("could not write file \"{}\": {e}", target.display()));
        }
        written.push(n);
    }
    Ok(written)
}

/// Removes these placeholders (a promotion that was not signalled after all).
pub fn forget(placeholders: &[u32]) {
    for n in placeholders {
        let _ = fs::remove_file(path(*n));
    }
}

/// Removes the placeholders a promotion that did not happen left (`policy::timeline::stale`).
pub fn remove_stale() -> Result<Vec<u32>, String> {
    let stale = timeline::stale(&files()?);
    forget(&stale);
    Ok(stale)
}
