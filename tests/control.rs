//! The DBA's levers: pause and resume, manual promotion, reloads, and a prompt shutdown.

mod common;

use std::time::Duration;

use common::*;
use testbed::{wait_until, Mode, Proxy};

#[test]
fn pause_prevents_promotion_and_resume_allows_it() {
    let (primary, standby) = pair("pause", FAST, None);
    assert_eq!(standby.query("SELECT pg_promoter_pause()"), "t");
    assert_eq!(standby.query("SELECT pg_promoter_pause()"), "f", "already paused");
    assert_eq!(status(&standby, "paused"), "t");
    primary.kill9();
    wait_until("the worker refuses because it is paused", LONG, || {
        has_event(&standby, "refused", "paused")
    });
    assert_stays_standby(&standby, Duration::from_secs(2));
    assert_eq!(standby.query("SELECT pg_promoter_resume()"), "t");
    wait_promoted(&standby);
    assert!(has_event(&standby, "paused", "pg_promoter_pause()"));
    assert!(has_event(&standby, "resumed", "pg_promoter_resume()"));
}

#[test]
fn a_standby_that_never_reached_its_primary_does_not_promote_unless_forced() {
    let (primary, standby) = pair("never", FAST, None);
    // The standby restarts while the primary is down: its new worker never reaches it.
    primary.stop_fast();
    standby.restart();
    wait_until("the worker refuses: never reached", LONG, || {
        has_event(
            &standby,
            "refused",
            "has not been reached since the worker started",
        )
    });
    assert_eq!(status(&standby, "primary_reached"), "f");
    assert_stays_standby(&standby, Duration::from_secs(2));

    let err = standby.psql("SELECT pg_promoter_promote()").unwrap_err();
    assert!(err.contains("cannot promote this server"), "{err}");
    assert!(err.contains("has not been reached"), "{err}");
    assert_eq!(standby.query("SELECT pg_promoter_promote(force => true)"), "t");
    assert_eq!(standby.in_recovery(), Some(false));
    assert!(has_event(&standby, "promoted", "request to writable"));
    let err = standby.psql("SELECT pg_promoter_promote(true)").unwrap_err();
    assert!(err.contains("not in recovery"), "{err}");
}

#[test]
fn a_reloaded_conninfo_is_used_at_the_next_check() {
    let settings = [
        ("pg_promoter.keep_alive", "'200ms'"),
        ("pg_promoter.enabled", "off"),
    ];
    let (primary, standby) = pair("reload", &settings, None);
    let proxy = Proxy::start(primary.port());
    proxy.set_mode(Mode::Refuse);
    standby.append_conf(&format!(
        "pg_promoter.primary_conninfo = 'host=127.0.0.1 port={} user=postgres password=hunter2'",
        proxy.port()
    ));
    // A member list holds conninfos too: its reload line is masked as well.
    standby.append_conf("pg_promoter.witness_conninfo = 'w: host=127.0.0.1 port=1 password=witnesssecret'");
    standby.reload();
    wait_until("checks go through the refusing proxy", LONG, || {
        status(&standby, "last_error").contains("refused") && status(&standby, "consecutive_failures") != "0"
    });
    assert!(status(&standby, "primary_conninfo").contains(&format!("port={}", proxy.port())));
    assert!(has_event(&standby, "reload", "primary_conninfo"));
    assert!(!standby.log().contains("hunter2"), "a password reached the log");
    wait_until("the member list's reload is logged", LONG, || {
        standby.log().contains(
            "\"pg_promoter.witness_conninfo\" changed to \"w: host=127.0.0.1 port=1 password=********\"",
        )
    });
    assert!(
        !standby.log().contains("witnesssecret"),
        "a member's password reached the log"
    );
    // SHOW masks it; pg_settings, whose reset_val would not, does not list it.
    let shown = standby.query("SHOW pg_promoter.witness_conninfo");
    assert!(
        shown.contains("password=********") && !shown.contains("witnesssecret"),
        "{shown}"
    );
    assert_eq!(
        standby.query(
            "SELECT count(*) FROM pg_settings WHERE name IN \
             ('pg_promoter.primary_conninfo', 'pg_promoter.peers', 'pg_promoter.witness_conninfo')"
        ),
        "0"
    );
    // enabled = off: counted and refused, never promoted.
    wait_until("the refusal names the setting", LONG, || {
        has_event(&standby, "refused", "enabled is off")
    });
    proxy.set_mode(Mode::Pass);
    wait_until("the new path works", LONG, || {
        status(&standby, "consecutive_failures") == "0"
    });
    assert_eq!(standby.in_recovery(), Some(true));
}

#[test]
fn a_malformed_conninfo_is_rejected_and_the_worker_keeps_the_last_good_one() {
    let (primary, standby) = pair("malformed", FAST, None);
    let pid = status(&standby, "worker_pid");
    let good = status(&standby, "primary_conninfo");

    let err = primary
        .psql("ALTER SYSTEM SET pg_promoter.primary_conninfo = 'host=x port'")
        .unwrap_err();
    assert!(
        err.contains("invalid value for parameter \"pg_promoter.primary_conninfo\""),
        "{err}"
    );
    assert!(err.contains("DETAIL:  missing \"=\" after \"port\""), "{err}");
    let err = primary
        .psql("ALTER SYSTEM SET pg_promoter.primary_conninfo = 'password=s3cret nonsense'")
        .unwrap_err();
    assert!(!err.contains("s3cret"), "the password was echoed: {err}");

    standby.append_conf("pg_promoter.primary_conninfo = 'host=127.0.0.1 port'");
    standby.reload();
    wait_until("the server logs the rejection", LONG, || {
        standby
            .log()
            .contains("invalid value for parameter \"pg_promoter.primary_conninfo\"")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(status(&standby, "worker_pid"), pid);
    assert_eq!(status(&standby, "primary_conninfo"), good);
    assert_eq!(state(&standby), "watching");
}

#[test]
fn a_standby_shuts_down_promptly_while_its_check_hangs_on_a_frozen_primary() {
    // One check may last 30 s: a worker blocked in libpq would hold the shutdown that long.
    let settings = [
        ("pg_promoter.keep_alive", "'30s'"),
        ("pg_promoter.keepalives_count", "10"),
    ];
    let (primary, standby) = pair("stop-frozen", &settings, None);
    primary.freeze();
    // A new worker starts with a check (a fresh connection) against the frozen primary.
    let pid = terminate_worker(&standby);
    wait_new_worker(&standby, &pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state(&standby),
        "starting",
        "the first check must still be running"
    );
    let took = standby.stop_fast();
    primary.thaw();
    assert!(took < Duration::from_secs(10), "fast shutdown took {took:?}");
    eprintln!("fast shutdown during a hanging check took {took:?}");
    assert!(standby.log().contains("pg_promoter: stop: worker stopping"));
}
