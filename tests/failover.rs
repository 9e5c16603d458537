//! The primary really dies: the standby promotes, reports it, and accepts writes.

mod common;

use std::time::Duration;

use common::*;
use testbed::{wait_until, Node, Writer};

#[test]
fn kill_9_of_the_primary_promotes_the_standby_which_accepts_writes() {
    let (primary, standby) = pair("kill9", FAST, None);
    let writer = Writer::start(&primary, "load", Duration::from_millis(50));
    wait_until("some writes reach the standby", LONG, || {
        standby.psql("SELECT count(*) > 5 FROM load").as_deref() == Ok("t")
    });
    primary.kill9();
    wait_promoted(&standby);
    writer.stop();

    assert_eq!(status(&standby, "role"), "primary");
    wait_until("the worker reports the new role", LONG, || {
        state(&standby) == "primary"
    });
    assert_ne!(status(&standby, "promoted_at"), "");
    standby.query("INSERT INTO load VALUES (-1, now())");
    assert_eq!(standby.query("SELECT count(*) FROM load WHERE id = -1"), "1");

    let kinds: Vec<String> = events(&standby).into_iter().map(|(e, _)| e).collect();
    for expected in [
        "start",
        "first_contact",
        "check_failed",
        "decided",
        "promote_requested",
        "promoted",
        "role_changed",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} event in {kinds:?}"
        );
    }
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(
        pos("check_failed") < pos("decided")
            && pos("decided") < pos("promoted")
            && pos("promoted") < pos("role_changed"),
        "{kinds:?}"
    );
    assert!(has_event(&standby, "decided", "3 consecutive failed checks"));
    assert!(has_event(&standby, "promoted", "decision to writable"));
}

#[test]
fn a_frozen_primary_is_declared_dead_and_the_standby_promotes() {
    let (primary, standby) = pair("freeze", FAST, None);
    primary.freeze();
    wait_promoted(&standby);
    assert!(
        has_event(&standby, "check_failed", "timed out"),
        "{:#?}",
        events(&standby)
    );
    standby.query("CREATE TABLE written_after_freeze (x int)");
    primary.thaw();
}

#[test]
fn the_worker_on_a_primary_reports_primary_and_never_checks() {
    let primary = Node::primary("onprimary", FAST);
    primary.query("CREATE EXTENSION pg_promoter");
    wait_until("the worker reports its role", LONG, || {
        state(&primary) == "primary"
    });
    assert_eq!(status(&primary, "role"), "primary");
    assert_eq!(status(&primary, "last_check_at"), "");
    assert!(has_event(&primary, "role_changed", "nothing to watch"));
}

#[test]
fn a_terminated_worker_is_restarted_and_remembers_the_primary() {
    let (_primary, standby) = pair("restart", FAST, None);
    let pid = terminate_worker(&standby);
    wait_new_worker(&standby, &pid);
    assert_eq!(status(&standby, "primary_reached"), "t");
    let starts = events(&standby).iter().filter(|(e, _)| e == "start").count();
    assert_eq!(starts, 2);
    assert!(has_event(&standby, "stop", "shutdown requested"));
}

#[test]
fn at_default_settings_a_retrying_wal_receiver_does_not_hold_the_promotion_back() {
    // Defaults: a 5 s window, the same as wal_retrieve_retry_interval, at which a new WAL
    // receiver starts (and stamps itself as having just heard from the primary) while it is gone.
    let (primary, standby) = pair("defaults", &[], None);
    assert_eq!(status(&standby, "keep_alive_ms"), "1000");
    assert_eq!(status(&standby, "keepalives_count"), "5");
    primary.kill9();
    wait_promoted(&standby);
    assert!(has_event(&standby, "decided", "consecutive failed checks"));
}

#[test]
fn an_old_primary_restarted_as_a_standby_past_the_fork_reports_needs_rewind_with_the_command() {
    let (primary, standby) = pair("rewind", FAST, None);
    // The standby stops receiving (its check still watches the primary), and the primary writes
    // on: what it writes now is past the point where the standby's new timeline will fork.
    standby.append_conf(&format!(
        "pg_promoter.primary_conninfo = '{}'",
        primary.conninfo()
    ));
    standby.query("ALTER SYSTEM SET primary_conninfo = ''");
    standby.reload();
    wait_until("the standby's WAL receiver stops", LONG, || {
        standby
            .psql("SELECT count(*) FROM pg_stat_wal_receiver")
            .as_deref()
            == Ok("0")
    });
    primary.query("CREATE TABLE after_fork AS SELECT generate_series(1, 1000) AS x");
    let written = primary.query("SELECT pg_current_wal_lsn()");
    assert_eq!(standby.query("SELECT pg_promote()"), "t");
    // The old primary comes back as a standby of the new one, without pg_rewind.
    primary.stop_fast();
    std::fs::write(primary.data_dir().join("standby.signal"), "").unwrap();
    primary.append_conf(&format!("primary_conninfo = '{}'", standby.conninfo()));
    primary.start();
    wait_until("the old primary reports needs_rewind", LONG, || {
        state(&primary) == "needs_rewind"
    });
    let detail = events(&primary)
        .into_iter()
        .find(|(e, _)| e == "needs_rewind")
        .map(|(_, d)| d)
        .expect("a needs_rewind event");
    assert!(
        detail.contains("where the primary's timeline 2 forked off it"),
        "{detail}"
    );
    // "goes up to <position>, past <fork>": the fork comes before what was written after the
    // standby stopped receiving, and the position covers it.
    let lsns: Vec<&str> = detail
        .split([' ', ','])
        .filter(|w| w.contains('/') && w.chars().all(|c| c.is_ascii_hexdigit() || c == '/'))
        .collect();
    let [position, fork] = lsns[..] else {
        panic!("two WAL positions in: {detail}")
    };
    assert_eq!(
        standby.query(&format!(
            "SELECT '{fork}'::pg_lsn < '{written}' AND '{position}'::pg_lsn >= '{written}'"
        )),
        "t",
        "fork {fork}, position {position}, written {written}"
    );
    assert!(detail.contains("--write-recovery-conf"), "{detail}");
    let data_dir = primary.data_dir().display().to_string();
    assert!(
        detail.contains(&format!("pg_rewind --target-pgdata='{data_dir}'")),
        "{detail}"
    );
    assert_eq!(primary.in_recovery(), Some(true));
}

#[test]
fn an_old_primary_stopped_before_the_promotion_follows_the_new_timeline_without_rewind() {
    let (primary, standby) = pair("norewind", FAST, None);
    primary.query("CREATE TABLE before_stop AS SELECT 1 AS x");
    // A clean stop sends the shutdown checkpoint to the standby: nothing is past the fork.
    primary.stop_fast();
    wait_promoted(&standby);
    primary.append_conf(&format!("primary_conninfo = '{}'", standby.conninfo()));
    std::fs::write(primary.data_dir().join("standby.signal"), "").unwrap();
    primary.start();
    standby.query("CREATE TABLE on_new_timeline AS SELECT 2 AS x");
    wait_until("the old primary streams the new timeline", LONG, || {
        primary.psql("SELECT count(*) FROM on_new_timeline").as_deref() == Ok("1")
    });
    wait_until("its worker watches the new primary", LONG, || {
        state(&primary) == "watching"
    });
    assert_eq!(primary.in_recovery(), Some(true));
    assert!(
        !events(&primary).iter().any(|(e, _)| e == "needs_rewind"),
        "{:#?}",
        events(&primary)
    );
}
