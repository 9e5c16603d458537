//! Shows pg_promoter at work: a standby watches its primary, the primary is
//! killed, the standby promotes itself and takes writes.
//!
//! Needs the pg_promoter extension installed into the PostgreSQL 15 that
//! `testbed::bindir()` points at. Run with `cargo run -p testbed --bin demo`.

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use testbed::{wait_until, Node};

/// Quick failure detection, so the demo is over in seconds.
const SETTINGS: &[(&str, &str)] = &[
    ("pg_promoter.keep_alive", "'500ms'"),
    ("pg_promoter.keepalives_count", "4"),
];

/// Prints steps stamped with the time since the demo started.
struct Clock(Instant);

impl Clock {
    fn say(&self, msg: &str) {
        println!("[{:>6.2}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

fn main() -> ExitCode {
    let clock = Clock(Instant::now());
    // Outside the unwinding closure, so its log can be shown after a failure.
    let mut standby = None;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(&clock, &mut standby)));
    if outcome.is_ok() {
        clock.say("done");
        return ExitCode::SUCCESS;
    }
    // The panic message itself was already printed by the panic hook.
    eprintln!("\ndemo failed");
    if let Some(standby) = &standby {
        eprintln!("--- {} log tail ---\n{}", standby.name(), standby.log_tail(40));
    }
    ExitCode::FAILURE
}

fn run(clock: &Clock, standby_slot: &mut Option<Node>) {
    clock.say("1. creating the primary");
    let primary = Node::primary("demo_primary", SETTINGS);
    primary.query("CREATE EXTENSION pg_promoter");
    primary.query(
        "CREATE TABLE demo(id bigserial PRIMARY KEY, at timestamptz DEFAULT now());
         INSERT INTO demo (at) SELECT now() FROM generate_series(1, 3)",
    );
    clock.say(&format!(
        "   primary up on port {}, pg_promoter installed, demo has {} rows",
        primary.port(),
        primary.query("SELECT count(*) FROM demo")
    ));

    clock.say("2. creating a standby streaming from it");
    let standby = standby_slot.insert(Node::standby("demo_standby", &primary, primary.port(), SETTINGS));
    let took = wait_until(
        "the standby's pg_promoter is watching",
        Duration::from_secs(30),
        || standby.psql("SELECT state FROM pg_promoter_status()").as_deref() == Ok("watching"),
    );
    clock.say(&format!(
        "   standby up on port {}, pg_promoter watching after {took:.2?}",
        standby.port()
    ));
    let status =
        standby.query("SELECT role, state, consecutive_failures, primary_conninfo FROM pg_promoter_status()");
    let labels = ["role", "state", "consecutive_failures", "primary_conninfo"];
    for (label, value) in labels.iter().zip(status.splitn(labels.len(), '|')) {
        println!("           {label:<22} {value}");
    }

    clock.say("3. kill -9 of the primary's postmaster");
    let killed = Instant::now();
    primary.kill9();
    wait_until("the standby is promoted", Duration::from_secs(60), || {
        standby.in_recovery() == Some(false)
    });
    clock.say(&format!(
        "   standby promoted {:.2?} after the kill",
        killed.elapsed()
    ));

    clock.say("4. writing to the new primary");
    // A bare INSERT .. RETURNING would also print psql's command tag.
    let id = standby.query("WITH r AS (INSERT INTO demo DEFAULT VALUES RETURNING id) SELECT id FROM r");
    clock.say(&format!(
        "   inserted row {id}; demo now has {} rows",
        standby.query("SELECT count(*) FROM demo")
    ));

    clock.say("5. pg_promoter's event timeline on the new primary");
    let events = standby
        .query("SELECT to_char(at, 'HH24:MI:SS.MS'), event, detail FROM pg_promoter_events() ORDER BY seq");
    let rows: Vec<Vec<&str>> = std::iter::once("time|event|detail")
        .chain(events.lines())
        .map(|line| line.splitn(3, '|').collect())
        .collect();
    let widths: Vec<usize> = (0..2)
        .map(|col| {
            rows.iter()
                .filter_map(|r| r.get(col))
                .map(|c| c.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let cell = |col: usize| row.get(col).copied().unwrap_or("");
        let line = format!(
            "           {:<w0$}  {:<w1$}  {}",
            cell(0),
            cell(1),
            cell(2),
            w0 = widths[0],
            w1 = widths[1]
        );
        println!("{}", line.trim_end());
    }
}
