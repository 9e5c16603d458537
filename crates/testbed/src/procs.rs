//! The machine's live processes, as /proc shows them: what waits for a server's processes to
//! be gone and what measures a daemon's cost both read this.

use std::fs;
use std::path::PathBuf;

/// One live (not zombie) process.
pub struct Proc {
    pub pid: i32,
    /// The executable's name (`comm`).
    pub comm: String,
    pub pgrp: i32,
    /// Its working directory, when readable.
    pub cwd: Option<PathBuf>,
}

/// Every live process.
pub fn procs() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|p| {
            let pid: i32 = p.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(p.path().join("stat")).ok()?;
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_string();
            let mut fields = rest.split_whitespace();
            let zombie = fields.next()? == "Z";
            let pgrp: i32 = fields.nth(1)?.parse().ok()?;
            let cwd = fs::read_link(p.path().join("cwd")).ok();
            (!zombie).then_some(Proc { pid, comm, pgrp, cwd })
        })
        .collect()
}
