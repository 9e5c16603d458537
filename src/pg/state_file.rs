//! The leadership state file, `pg_promoter.state` in the data directory: written to a temporary
//! file, fsynced, renamed over the old one, and the directory fsynced, so that a crash leaves the
//! old state or the new one, never a mix or nothing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use policy::leader::{decode, encode, Durable};

use super::local;

pub const FILE: &str = "pg_promoter.state";

fn path() -> PathBuf {
    PathBuf::from(local::data_dir()).join(FILE)
}

/// What the file says: `Ok(None)` when there is none yet (a new member starts at term 0).
pub fn read() -> Result<Option<(Option<String>, Durable)>, String> {
    match fs::read_to_string(path()) {
        Ok(text) => decode(&text)
            .map(Some)
            .map_err(|e| format!("file \"{}\" is corrupt: {e}", path().display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("could not read file \"{}\": {e}", path().display())),
    }
}

/// Writes the state durably before anything that depends on it is answered.
pub fn write(member: &str, durable: &Durable) -> Result<(), String> {
    let target = path();
    let temp = target.with_extension("state.tmp");
    let fail = |what: &str, e: std::io::Error| format!("could not {what} file \"{}\": {e}", temp.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| fail("open", e))?;
    file.write_all(encode(member, durable).as_bytes())
        .map_err(|e| fail("write", e))?;
    file.sync_all().map_err(|e| fail("fsync", e))?;
    drop(file);
    fs::rename(&temp, &target).map_err(|e| fail("rename", e))?;
    let dir = target.parent().expect("a data directory");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("could not fsync directory \"{}\": {e}", dir.display()))
}
