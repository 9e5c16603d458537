//! The facts a result is worth nothing without: machine, versions, date, commit.

use std::process::Command;

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

pub fn facts() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .unwrap_or("");
    let postgres = testbed::bindir().join("postgres");
    let mut facts = vec![
        ("date", first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        ("commit", first_line("git", &["rev-parse", "--short", "HEAD"])),
        ("cpu", cpu.map(str::to_string)),
        (
            "cores",
            std::thread::available_parallelism().ok().map(|n| n.to_string()),
        ),
        ("memory_kb", Some(mem.to_string())),
        ("kernel", first_line("uname", &["-r"])),
        (
            "postgresql",
            first_line(&postgres.display().to_string(), &["--version"]),
        ),
    ];
    for (name, cmd, args) in [
        ("repmgr", "/usr/lib/postgresql/15/bin/repmgr", &["--version"][..]),
        ("patroni", "patroni", &["--version"][..]),
        ("etcd", "etcd", &["--version"][..]),
    ] {
        facts.push((name, first_line(cmd, args)));
    }
    facts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.unwrap_or_else(|| "not installed".into())))
        .collect()
}
