//! The primary is alive, or back in time: the standby must stay a standby.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use testbed::{wait_until, Mode, Proxy, Writer};

#[test]
fn a_healthy_primary_checked_every_100ms_is_never_failed_over() {
    let settings = [
        ("pg_promoter.keep_alive", "'100ms'"),
        ("pg_promoter.keepalives_count", "2"),
    ];
    let (primary, standby) = pair("healthy", &settings, None);
    let session = "SELECT count(*), min(backend_start) FROM pg_stat_activity \
                   WHERE application_name = 'pg_promoter'";
    let first = primary.query(session);
    let writer = Writer::start(&primary, "load", Duration::from_millis(20));
    assert_stays_standby(&standby, Duration::from_secs(8));
    assert!(writer.stop() > 10);
    assert_eq!(status(&standby, "consecutive_failures"), "0");
    assert!(!has_event(&standby, "decided", ""));
    // 80 checks on one connection: the primary sees a single pg_promoter session, the same one,
    // unless a check failed (a 100 ms deadline can pass on a starved machine; the connection is
    // then remade, by design). A replacement without a failed check is the bug this catches.
    assert!(first.starts_with("1|"), "{first}");
    let last = primary.query(session);
    assert!(last.starts_with("1|"), "{last}");
    if last != first {
        assert!(
            has_event(&standby, "check_failed", ""),
            "the check's connection was replaced with no failed check: {first} then {last}"
        );
    }
}

#[test]
fn a_primary_restarting_within_the_window_is_not_failed_over() {
    let settings = [
        ("pg_promoter.keep_alive", "'1s'"),
        ("pg_promoter.keepalives_count", "5"),
    ];
    let (primary, standby) = pair("restart-window", &settings, None);
    primary.restart();
    wait_until("the check reaches the restarted primary", LONG, || {
        state(&standby) == "watching" && status(&standby, "consecutive_failures") == "0"
    });
    assert_stays_standby(&standby, Duration::from_secs(3));
    assert!(!has_event(&standby, "decided", ""));
}

#[test]
fn a_cut_check_path_while_wal_still_streams_does_not_promote() {
    let primary_direct;
    let check_proxy;
    let (primary, standby) = {
        let p = testbed::Node::primary("checkcut-p", FAST);
        p.query("CREATE EXTENSION pg_promoter");
        check_proxy = Proxy::start(p.port());
        primary_direct = p.port();
        let conninfo = format!("'host=127.0.0.1 port={} user=postgres'", check_proxy.port());
        let mut settings = FAST.to_vec();
        settings.push(("pg_promoter.primary_conninfo", conninfo.as_str()));
        let s = testbed::Node::standby("checkcut-s", &p, primary_direct, &settings);
        wait_until("the worker watches", LONG, || state(&s) == "watching");
        (p, s)
    };
    // WAL keeps flowing on the replication link, which the proxy does not carry.
    let writer = Writer::start(&primary, "load", Duration::from_millis(50));
    check_proxy.set_mode(Mode::Blackhole);
    wait_until(
        "the worker refuses because the WAL receiver is alive",
        LONG,
        || has_event(&standby, "refused", "WAL receiver heard from the primary"),
    );
    assert_stays_standby(&standby, Duration::from_secs(3));
    assert_eq!(state(&standby), "refusing");
    writer.stop();
    check_proxy.set_mode(Mode::Pass);
    wait_until("the check path is back", LONG, || state(&standby) == "watching");
    assert!(has_event(&standby, "primary_back", "answered again"));
}

#[test]
fn a_wrong_password_means_alive_but_misconfigured_and_never_promotes() {
    let primary = testbed::Node::primary("badpass-p", FAST);
    primary.query("CREATE EXTENSION pg_promoter");
    primary.query("CREATE ROLE checker LOGIN PASSWORD 'right-secret'");
    let hba = primary.data_dir().join("pg_hba.conf");
    let rules = fs::read_to_string(&hba).unwrap();
    fs::write(
        &hba,
        format!("host all checker 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    primary.reload();
    let conninfo = format!(
        "'host=127.0.0.1 port={} user=checker password=wrong-secret'",
        primary.port()
    );
    let mut settings = FAST.to_vec();
    settings.push(("pg_promoter.primary_conninfo", conninfo.as_str()));
    let standby = testbed::Node::standby("badpass-s", &primary, primary.port(), &settings);

    wait_until("the worker finds the primary misconfigured", LONG, || {
        state(&standby) == "misconfigured"
    });
    assert!(status(&standby, "last_error").contains("password authentication failed"));
    assert_eq!(status(&standby, "consecutive_failures"), "0");
    // How long it has only refused is shown, and it grows.
    let since = "SELECT (now() - refusing_since) > interval '1 second' FROM pg_promoter_status";
    assert!(!status(&standby, "refusing_since").is_empty());
    wait_until("refusing_since stays put while checks go on", LONG, || {
        standby.query(since) == "t"
    });
    assert!(status(&standby, "primary_conninfo").contains("password=********"));
    assert!(has_event(
        &standby,
        "misconfigured",
        "password authentication failed"
    ));
    assert_stays_standby(&standby, Duration::from_secs(2));
    assert!(standby
        .log()
        .contains("WARNING:  pg_promoter: the primary is alive but refuses the check"));
    assert!(
        !standby.log().contains("wrong-secret"),
        "a password reached the log"
    );
    assert!(!standby
        .query("SELECT detail FROM pg_promoter_events()")
        .contains("wrong-secret"));
}
