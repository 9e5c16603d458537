//! Safety: bounded data loss, witnesses, promote hooks and synchronous replication.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use testbed::{free_port, wait_until, Mode, Node, Proxy, Writer};

fn with(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut s: Vec<(&str, String)> = FAST.iter().map(|(k, v)| (*k, v.to_string())).collect();
    s.extend(extra.iter().cloned());
    s
}

fn as_refs<'a>(s: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    s.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn lag_above_the_bound_refuses_promotion_and_shows_the_estimated_loss() {
    let settings = with(&[("pg_promoter.max_lag_on_failover", "'1MB'".into())]);
    let primary = Node::primary("lag-p", &as_refs(&settings));
    primary.query("CREATE EXTENSION pg_promoter; CREATE TABLE big (x text)");
    // Replication runs through a proxy, the check goes straight to the primary.
    let replication = Proxy::start(primary.port());
    let mut settings = settings;
    settings.push((
        "pg_promoter.primary_conninfo",
        format!("'{}'", primary.conninfo()),
    ));
    let standby = Node::standby("lag-s", &primary, replication.port(), &as_refs(&settings));
    wait_until("watching", LONG, || state(&standby) == "watching");
    replication.set_mode(Mode::Blackhole);
    primary.query("INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 5000)");
    wait_until("the estimate passes the bound", LONG, || {
        status(&standby, "estimated_loss_bytes")
            .parse::<i64>()
            .unwrap_or(0)
            > 1 << 20
    });
    assert_eq!(status(&standby, "max_lag_on_failover"), (1 << 20).to_string());
    primary.kill9();
    wait_until("the lag refusal", LONG, || {
        has_event(&standby, "refused", "estimated data loss")
    });
    assert!(has_event(
        &standby,
        "refused",
        "exceeds pg_promoter.max_lag_on_failover (1048576 bytes)"
    ));
    assert_stays_standby(&standby, Duration::from_secs(2));
    // Without force, a manual promotion respects the bound too.
    let err = standby.psql("SELECT pg_promoter_promote()").unwrap_err();
    assert!(err.contains("DETAIL:  Estimated data loss"), "{err}");
    // A restarted worker never reaches the primary, yet keeps its last position: still refused.
    let old = terminate_worker(&standby);
    wait_new_worker(&standby, &old);
    let refused_again = || {
        let events = events(&standby);
        let start = events.iter().rposition(|(e, _)| e == "start").unwrap_or(0);
        events[start..].iter().any(|(e, d)| {
            e == "refused" && d.contains("exceeds pg_promoter.max_lag_on_failover (1048576 bytes)")
        })
    };
    wait_until("the restarted worker refuses for the lag", LONG, refused_again);
    assert_stays_standby(&standby, Duration::from_secs(2));
}

#[test]
fn lag_under_the_bound_promotes_and_the_decision_states_the_loss() {
    let (primary, standby) = pair("lag-ok", FAST, None);
    let writer = Writer::start(&primary, "load", Duration::from_millis(20));
    wait_until("writes replicate", LONG, || {
        standby.psql("SELECT count(*) > 5 FROM load").as_deref() == Ok("t")
    });
    let loss: i64 = status(&standby, "estimated_loss_bytes").parse().unwrap();
    assert!(loss < 16 << 20, "{loss}");
    primary.kill9();
    wait_promoted(&standby);
    writer.stop();
    assert!(has_event(&standby, "decided", "estimated data loss"));
}

#[test]
fn a_failing_pre_promote_command_blocks_promotion_until_it_succeeds() {
    let settings = with(&[
        (
            "pg_promoter.pre_promote_command",
            "'echo fencing %h:%p; exit 3'".into(),
        ),
        ("pg_promoter.command_timeout", "'1s'".into()),
    ]);
    let (primary, standby) = pair("prefail", &as_refs(&settings), None);
    let port = primary.port();
    primary.kill9();
    wait_until("the command fails", LONG, || {
        has_event(&standby, "command", "failed with exit code 3")
    });
    assert!(has_event(
        &standby,
        "command",
        &format!("fencing 127.0.0.1:{port}")
    ));
    assert!(has_event(&standby, "promote_failed", "promotion aborted"));
    assert_stays_standby(&standby, Duration::from_secs(2));
    standby.append_conf("pg_promoter.pre_promote_command = 'true'");
    standby.reload();
    wait_promoted(&standby);
    assert!(has_event(&standby, "command", "pre_promote_command succeeded"));
}

#[test]
fn a_hanging_pre_promote_command_is_killed_at_the_timeout() {
    let settings = with(&[
        (
            "pg_promoter.pre_promote_command",
            "'sleep 31.7 & sleep 31.7'".into(),
        ),
        ("pg_promoter.command_timeout", "'500ms'".into()),
        ("pg_promoter.enabled", "on".into()),
    ]);
    let (primary, standby) = pair("prehang", &as_refs(&settings), None);
    primary.kill9();
    wait_until("the command times out", LONG, || {
        has_event(&standby, "command", "timed out and was killed")
    });
    assert_eq!(standby.in_recovery(), Some(true));
    // The whole process group went, the background sleep too.
    wait_until("no sleep is left", LONG, || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "sleep 31.7"])
            .output()
            .unwrap();
        out.stdout.is_empty()
    });
}

#[test]
fn the_post_promote_command_runs_once_with_its_placeholders_filled() {
    let settings = with(&[(
        "pg_promoter.post_promote_command",
        // Placeholders are shell-quoted already: they stand outside any quotes.
        "'echo dir=%d tl=%t host=%h port=%p >> %d/post_promote.out'".into(),
    )]);
    let (primary, standby) = pair("post", &as_refs(&settings), None);
    let port = primary.port();
    primary.kill9();
    wait_promoted(&standby);
    let out = standby.data_dir().join("post_promote.out");
    wait_until("the command ran", LONG, || out.exists());
    std::thread::sleep(Duration::from_secs(1));
    let text = fs::read_to_string(&out).unwrap();
    let dir = standby.data_dir().display().to_string();
    assert_eq!(text, format!("dir={dir} tl=2 host=127.0.0.1 port={port}\n"));
    assert!(has_event(&standby, "command", "post_promote_command succeeded"));
}

#[test]
fn a_manual_promotion_whose_recovery_ends_after_the_wait_gets_its_post_promote_command_once() {
    let settings = with(&[
        (
            "pg_promoter.pre_promote_command",
            "'echo pre >> %d/pre.out'".into(),
        ),
        (
            "pg_promoter.post_promote_command",
            "'echo post >> %d/post.out'".into(),
        ),
        ("pg_promoter.enabled", "off".into()),
    ]);
    let (_primary, standby) = pair("latemanual", &as_refs(&settings), None);
    // A startup process that cannot run: the promotion is requested but recovery cannot end.
    let startup = standby.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'");
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &startup]).status();
        assert!(ok.expect("kill runs").success(), "kill {sig} {startup}");
    };
    kill("-STOP");
    // The call waits for recovery to end, gives up after its wait (60 s), and says so.
    let waited = psql_with(&standby, "", "SELECT pg_promoter_promote()");
    if waited.as_deref() != Ok("f") {
        kill("-CONT");
        panic!("the request should give up waiting: {waited:?}");
    }
    assert!(has_event(
        &standby,
        "promote_failed",
        "post_promote_command runs when it ends"
    ));
    // A second request would run the pre-promote command again: refused unless forced.
    let again = standby.psql("SELECT pg_promoter_promote()");
    kill("-CONT");
    let err = again.unwrap_err();
    assert!(err.contains("recovery has not ended"), "{err}");
    wait_until("recovery ends", LONG, || standby.in_recovery() == Some(false));
    let post = standby.data_dir().join("post.out");
    wait_until("the worker runs the post-promote command", LONG, || post.exists());
    assert!(has_event(
        &standby,
        "role_changed",
        "post_promote_command runs now"
    ));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fs::read_to_string(&post).unwrap(), "post\n");
    assert_eq!(
        fs::read_to_string(standby.data_dir().join("pre.out")).unwrap(),
        "pre\n"
    );
}

#[test]
fn a_manual_promotion_runs_the_same_hooks_and_a_failing_pre_command_stops_it() {
    let settings = with(&[
        (
            "pg_promoter.pre_promote_command",
            "'echo fencing %h:%p; exit 3'".into(),
        ),
        (
            "pg_promoter.post_promote_command",
            "'echo tl=%t >> %d/post_promote.out'".into(),
        ),
        ("pg_promoter.enabled", "off".into()),
    ]);
    let (primary, standby) = pair("manualhooks", &as_refs(&settings), None);
    let port = primary.port();
    let err = standby.psql("SELECT pg_promoter_promote()").unwrap_err();
    assert!(err.contains("cannot promote this server"), "{err}");
    assert!(err.contains("pre_promote_command failed"), "{err}");
    assert!(has_event(
        &standby,
        "command",
        &format!("fencing 127.0.0.1:{port}")
    ));
    assert!(has_event(&standby, "promote_failed", "promotion aborted"));
    assert_eq!(standby.in_recovery(), Some(true));

    standby.append_conf("pg_promoter.pre_promote_command = 'true'");
    standby.reload();
    // The backend reads its own settings: wait until it has the reloaded value.
    wait_until("the reload reaches new sessions", LONG, || {
        standby.psql("SHOW pg_promoter.pre_promote_command").as_deref() == Ok("true")
    });
    assert_eq!(standby.query("SELECT pg_promoter_promote()"), "t");
    assert_eq!(standby.in_recovery(), Some(false));
    assert!(has_event(&standby, "command", "pre_promote_command succeeded"));
    // The call returns once the whole sequence ran, the post-promote command included.
    assert!(has_event(&standby, "command", "post_promote_command succeeded"));
    let out = standby.data_dir().join("post_promote.out");
    assert_eq!(fs::read_to_string(&out).unwrap(), "tl=2\n");
    assert!(has_event(&standby, "promoted", "request to writable"));
    wait_until("the worker sees the role change", LONG, || {
        has_event(&standby, "role_changed", "(pg_promoter_promote())")
    });
}

/// A witness: any server with the extension created, no preload, no replication.
fn witness(name: &str) -> Node {
    let w = Node::primary(name, &[("shared_preload_libraries", "''")]);
    w.query("CREATE EXTENSION pg_promoter");
    w
}

#[test]
fn with_a_witness_that_is_down_a_dead_primary_is_not_failed_over() {
    let nowhere = format!("'host=127.0.0.1 port={} user=postgres'", free_port());
    let settings = with(&[("pg_promoter.witness_conninfo", nowhere)]);
    let primary = Node::primary("nowitness-p", &as_refs(&settings));
    primary.query("CREATE EXTENSION pg_promoter");
    let standby = Node::standby("nowitness-s", &primary, primary.port(), &as_refs(&settings));
    // The primary reaches no majority of itself and the witness, so it fences itself: its
    // standby counts it down from the start (it takes no ordinary write), and promotes no more
    // than once it is dead.
    wait_until("the standby sees the primary fenced", LONG, || {
        has_event(&standby, "check_failed", "the primary answered fenced")
    });
    assert_eq!(primary.query("SHOW pg_promoter.fenced"), "on");
    primary.kill9();
    wait_until("the quorum refusal", LONG, || {
        has_event(&standby, "refused", "no majority")
    });
    assert!(has_event(&standby, "refused", "1 of 3 members"));
    assert!(has_event(
        &standby,
        "witness_vote",
        "witness witness1: cannot ask it"
    ));
    assert_stays_standby(&standby, Duration::from_secs(3));
    let log = standby.log();
    assert!(
        log.lines()
            .any(|l| l.contains("pg_promoter: refused: not promoting") && l.contains("no majority")),
        "{}",
        standby.log_tail(30)
    );
}

#[test]
fn with_a_witness_that_cannot_reach_the_primary_either_the_standby_promotes() {
    // The witness logs every statement: the primary's password must not be among them.
    let w = Node::primary(
        "witness-ok",
        &[("shared_preload_libraries", "''"), ("log_statement", "'all'")],
    );
    w.query("CREATE EXTENSION pg_promoter");
    let settings = with(&[("pg_promoter.witness_conninfo", format!("'w1: {}'", w.conninfo()))]);
    let (primary, standby) = pair("witnessed", &as_refs(&settings), None);
    // Trust authentication ignores the password; the check sends it all the same.
    standby.append_conf(&format!(
        "pg_promoter.primary_conninfo = '{} password=witnesssecret'",
        primary.conninfo()
    ));
    standby.reload();
    wait_until("the check uses the conninfo with a password", LONG, || {
        status(&standby, "primary_conninfo").contains("password=********")
    });
    primary.kill9();
    wait_promoted(&standby);
    assert!(has_event(
        &standby,
        "witness_vote",
        "witness w1: cannot reach the primary either"
    ));
    assert!(has_event(&standby, "decided", "2 of 3 members agree"));
    let log = w.log();
    assert!(
        log.contains("pg_promoter_probe"),
        "the witness logged its statements"
    );
    assert!(
        !log.contains("witnesssecret"),
        "the primary's password reached the witness's log"
    );
}

#[test]
fn pg_promoter_probe_reports_role_timeline_position_and_errors() {
    let w = witness("probe-w");
    let target = Node::primary("probe-t", &[("shared_preload_libraries", "''")]);
    let row = w.query(&format!(
        "SELECT reachable, role, timeline, lsn IS NOT NULL, error IS NULL FROM pg_promoter_probe('{}')",
        target.conninfo()
    ));
    assert_eq!(row, "t|primary|1|t|t");
    let dead = w.query(&format!(
        "SELECT reachable, role IS NULL, error FROM pg_promoter_probe('host=127.0.0.1 port={} user=postgres', '2s')",
        free_port()
    ));
    // libpq words it by version ("could not connect to server: Connection refused" before 14).
    assert!(
        dead.starts_with("f|t|") && dead.contains("Connection refused"),
        "{dead}"
    );
    let err = w
        .psql("SELECT * FROM pg_promoter_probe('host=x port', '1s')")
        .unwrap_err();
    assert!(err.contains("invalid connection string"), "{err}");
    let err = w
        .psql("SELECT * FROM pg_promoter_probe('host=x', '-1s')")
        .unwrap_err();
    assert!(err.contains("timeout must be between"), "{err}");
    // A frozen server: the probe ends at its timeout, and can be cancelled like any query.
    target.freeze();
    let row = w.query(&format!(
        "SELECT reachable, error FROM pg_promoter_probe('{}', '300ms')",
        target.conninfo()
    ));
    assert_eq!(row, "f|timed out while connecting");
    let err = w
        .psql(&format!(
            "SET statement_timeout = '200ms'; SELECT * FROM pg_promoter_probe('{}', '1min')",
            target.conninfo()
        ))
        .unwrap_err();
    assert!(
        err.contains("canceling statement due to statement timeout"),
        "{err}"
    );
    target.thaw();
}

#[test]
fn with_synchronous_replication_no_acknowledged_commit_is_lost_over_ten_failovers() {
    for round in 0..10 {
        let (primary, standby) = pair(&format!("sync{round}"), FAST, None);
        // Synchronous once the standby streams (before, every commit would wait forever).
        primary.append_conf("synchronous_standby_names = '*'");
        primary.reload();
        wait_until("the standby is synchronous", LONG, || {
            primary.query("SELECT sync_state FROM pg_stat_replication") == "sync"
        });
        let writer = Writer::start(&primary, "acked", Duration::from_millis(5));
        wait_until("commits flow", LONG, || writer.acked() > 20);
        // A random moment relative to the commits and the checks.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_millis(u64::from(nanos % 300)));
        primary.kill9();
        let acked = writer.stop();
        wait_promoted(&standby);
        let present: u64 = standby
            .query(&format!("SELECT count(*) FROM acked WHERE id <= {acked}"))
            .parse()
            .unwrap();
        assert_eq!(
            present, acked,
            "round {round}: acknowledged commits missing on the new primary"
        );
    }
}
