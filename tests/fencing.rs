//! A primary that may be stale fences itself: ordinary clients can neither connect nor commit.

mod common;

use common::*;
use testbed::{wait_until, Node};

#[test]
fn an_old_primary_coming_back_after_a_failover_fences_itself_for_good() {
    let settings = [
        ("pg_promoter.keep_alive", "'200ms'"),
        ("pg_promoter.keepalives_count", "3"),
        ("max_prepared_transactions", "5"),
        ("autovacuum_naptime", "'1s'"),
    ];
    let (primary, standby) = pair("return", &settings, None);
    primary.query("CREATE ROLE app LOGIN; CREATE TABLE t (x int); GRANT ALL ON t TO app");
    wait_until("the role reaches the standby", LONG, || {
        standby
            .psql("SELECT count(*) FROM pg_roles WHERE rolname = 'app'")
            .as_deref()
            == Ok("1")
    });
    // Prepared before the failover, to be committed on the old primary once it is fenced.
    psql_as(
        &primary,
        "app",
        "BEGIN; INSERT INTO t VALUES (7); PREPARE TRANSACTION 'p1'",
    )
    .expect("prepared");
    primary.kill9();
    wait_promoted(&standby);

    // The old primary learns of its peer (the same list would do on every node) and restarts.
    primary.append_conf(&format!("pg_promoter.peers = 'new: {}'", standby.conninfo()));
    start_after_crash(&primary);
    // At once, before the worker's first check of its peers: the connection is held, then refused.
    let err = psql_as(&primary, "app", "INSERT INTO t VALUES (0)").unwrap_err();
    assert!(
        err.contains("FATAL:  this server is fenced by pg_promoter"),
        "{err}"
    );
    wait_until("the old primary fences itself", LONG, || {
        status(&primary, "fenced") == "t"
    });
    assert_eq!(status(&primary, "state"), "fenced");
    assert!(status(&primary, "fence_reason")
        .contains("new is a primary on timeline 2, newer than this server's 1"));
    assert!(has_event(
        &primary,
        "fenced",
        "rejoin it with pg_rewind or a new base backup"
    ));
    // What the other nodes' checks read: a primary that answers fenced counts as down.
    assert_eq!(primary.query("SHOW pg_promoter.fenced"), "on");
    assert_eq!(standby.query("SHOW pg_promoter.fenced"), "off");
    let err = primary.psql("SET pg_promoter.fenced = off").unwrap_err();
    assert!(err.contains("cannot be changed"), "{err}");
    let probe = standby.query(&format!(
        "SELECT reachable, role, error FROM pg_promoter_probe('{}')",
        primary.conninfo()
    ));
    assert_eq!(
        probe, "f|primary|the primary answered fenced: it takes no ordinary writes",
        "{probe}"
    );

    let err = psql_as(&primary, "app", "INSERT INTO t VALUES (1)").unwrap_err();
    assert!(
        err.contains("FATAL:  this server is fenced by pg_promoter"),
        "{err}"
    );
    assert!(err.contains("pg_rewind"), "{err}");
    // A superuser may connect to diagnose, but an ordinary role cannot commit even through it.
    let err = primary
        .psql("SET ROLE app; INSERT INTO t VALUES (2)")
        .unwrap_err();
    assert!(err.contains("this server is fenced"), "{err}");
    // COMMIT PREPARED writes its commit record before any pre-commit check: refused at its start.
    let err = primary.psql("SET ROLE app; COMMIT PREPARED 'p1'").unwrap_err();
    assert!(
        err.contains("cannot commit a prepared transaction: this server is fenced"),
        "{err}"
    );
    assert_eq!(primary.query("SELECT count(*) FROM t"), "0");
    // Autovacuum goes on: its launcher reads the database list in transactions of its own, as
    // no role, and ending it would make the postmaster restart the whole server.
    let worker = status(&primary, "worker_pid");
    primary.query("CREATE TABLE av AS SELECT generate_series(1, 1000) AS x");
    let analyzed = "SELECT coalesce(sum(autoanalyze_count), 0) FROM pg_stat_user_tables WHERE relname = 'av'";
    let done = testbed::try_wait_until(LONG, || primary.psql(analyzed).is_ok_and(|n| n != "0"));
    let log = primary.log();
    assert!(
        done.is_some(),
        "autovacuum analyzed nothing while fenced; log:\n{log}"
    );
    assert!(
        !log.contains("terminating any other active server processes"),
        "{log}"
    );
    assert_eq!(status(&primary, "worker_pid"), worker, "the server was restarted");
    assert_eq!(status(&primary, "fenced"), "t");

    // For good: a restart stays fenced, even with the new primary out of reach.
    standby.stop_fast();
    primary.restart();
    wait_until("fenced again at once", LONG, || status(&primary, "fenced") == "t");
    assert!(status(&primary, "fence_reason").contains("fenced by an earlier run"));
    assert!(psql_as(&primary, "app", "SELECT 1").is_err());
    let marker = primary.data_dir().join("pg_promoter.fenced");
    assert!(marker.exists());
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .starts_with("system_identifier="),
        "the marker is bound to this cluster and timeline"
    );

    // Rejoined as a standby: the marker no longer applies, and is removed.
    primary.stop_fast();
    std::fs::write(primary.data_dir().join("standby.signal"), "").unwrap();
    primary.start();
    wait_until("the marker is removed", LONG, || !marker.exists());
    assert!(has_event(&primary, "unfenced", "this server is a standby now"));
}

#[test]
fn a_primary_whose_peers_answer_is_not_fenced() {
    let primary = Node::primary("open-p", FAST);
    primary.query("CREATE EXTENSION pg_promoter; CREATE ROLE app LOGIN");
    let standby = Node::standby("open-s", &primary, primary.port(), FAST);
    // The same list on both nodes: each recognises itself in it.
    let peers = format!(
        "pg_promoter.peers = 'p: {}; s: {}'",
        primary.conninfo(),
        standby.conninfo()
    );
    for node in [&primary, &standby] {
        node.append_conf(&peers);
        node.reload();
    }
    wait_until("the standby watches", LONG, || state(&standby) == "watching");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(status(&primary, "fenced"), "f");
    assert_eq!(psql_as(&primary, "app", "SELECT 1").as_deref(), Ok("1"));
    assert!(!has_event(&primary, "fenced", ""));
}

#[test]
fn a_running_primary_whose_standby_was_promoted_by_hand_shuts_down_with_fence_action_shutdown() {
    let (primary, standby) = pair("fence-stop", FAST, None);
    primary.append_conf(&format!("pg_promoter.peers = 'standby: {}'", standby.conninfo()));
    primary.append_conf("pg_promoter.fence_action = shutdown");
    primary.reload();
    // A split brain made by hand: the standby is promoted while the primary runs.
    assert_eq!(standby.query("SELECT pg_promoter_promote()"), "t");
    wait_until("the old primary shuts down", LONG, || !primary.is_running());
    let log = primary.log();
    assert!(
        log.contains("standby is a primary on timeline 2, newer than this server's 1"),
        "{log}"
    );
    assert!(log.contains("pg_promoter: fenced: standby is a primary on timeline 2"));
    assert!(log.contains("fence_action is shutdown: fast shutdown requested"));
    assert!(log.contains("received fast shutdown request"));
}

#[test]
fn two_nodes_with_peers_keep_taking_ordinary_writes_with_the_other_node_gone() {
    let (primary, standby) = pair("two", FAST, None);
    primary.query("CREATE ROLE app LOGIN; CREATE TABLE t (x int); GRANT ALL ON t TO app");
    // The documented two-node setup: the same peer list on both nodes, no witness.
    let peers = format!(
        "pg_promoter.peers = 'p: {}; s: {}'",
        primary.conninfo(),
        standby.conninfo()
    );
    for node in [&primary, &standby] {
        node.append_conf(&peers);
        node.reload();
    }
    wait_until("the role reaches the standby", LONG, || {
        standby
            .psql("SELECT count(*) FROM pg_roles WHERE rolname = 'app'")
            .as_deref()
            == Ok("1")
    });
    // The standby is down for many rounds (200 ms x 3 settings): the primary stays open.
    standby.stop_fast();
    inserts_every_300ms(&primary, 0..10);
    assert_eq!(status(&primary, "fenced"), "f");
    assert!(!has_event(&primary, "fenced", ""));

    // A failover: the new primary stays open with the old one gone.
    standby.start();
    wait_until("the standby watches again", LONG, || {
        state(&standby) == "watching"
    });
    wait_until("the rows reach the standby", LONG, || {
        standby.psql("SELECT count(*) FROM t").as_deref() == Ok("10")
    });
    primary.kill9();
    wait_promoted(&standby);
    inserts_every_300ms(&standby, 10..20);
    assert_eq!(status(&standby, "fenced"), "f");
    assert!(!has_event(&standby, "fenced", ""));
    assert_eq!(standby.query("SELECT count(*) FROM t"), "20");
}

/// One ordinary insert every 300 ms (longer than a 200 ms x 3 round), each acknowledged.
fn inserts_every_300ms(node: &Node, ids: std::ops::Range<i32>) {
    for i in ids {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let insert = format!("INSERT INTO t VALUES ({i})");
        assert_eq!(
            psql_as(node, "app", &insert).as_deref(),
            Ok("INSERT 0 1"),
            "insert {i}"
        );
    }
}

#[test]
fn a_standby_promoted_with_members_takes_ordinary_logins_at_once() {
    // Rounds ten seconds apart, a hold of one second: a login held for the new primary's first
    // round would be refused.
    let settings = [
        ("pg_promoter.keep_alive", "'10s'"),
        ("pg_promoter.startup_hold_timeout", "'1s'"),
    ];
    let (primary, standby) = pair("nohold", &settings, None);
    primary.query("CREATE ROLE app LOGIN; CREATE TABLE t (x int); GRANT ALL ON t TO app");
    let peers = format!(
        "pg_promoter.peers = 'p: {}; s: {}'",
        primary.conninfo(),
        standby.conninfo()
    );
    for node in [&primary, &standby] {
        node.append_conf(&peers);
        node.reload();
    }
    wait_until("the role and table reach the standby", LONG, || {
        standby.psql("SELECT count(*) FROM t").as_deref() == Ok("0")
    });
    primary.kill9();
    assert_eq!(standby.query("SELECT pg_promote()"), "t");
    psql_as(&standby, "app", "INSERT INTO t VALUES (1)").expect("an ordinary commit at once");
}

#[test]
fn a_check_login_named_pg_promoter_is_not_held_at_a_restart_and_commits_nothing_before_the_first_round() {
    // The primary's first round waits five seconds on a witness that never answers, and
    // ordinary logins are held one second at most: a held check would be refused.
    let silent = testbed::Proxy::start(testbed::free_port());
    silent.set_mode(testbed::Mode::Blackhole);
    let witness = format!("'w: host=127.0.0.1 port={} user=postgres'", silent.port());
    let settings = [
        ("pg_promoter.keep_alive", "'5s'"),
        ("pg_promoter.check_timeout", "'5s'"),
        ("pg_promoter.startup_hold_timeout", "'1s'"),
        ("pg_promoter.witness_conninfo", witness.as_str()),
    ];
    let primary = Node::primary("unheld-p", &settings);
    primary.query(
        "CREATE EXTENSION pg_promoter; CREATE ROLE app LOGIN; CREATE TABLE t (x int); GRANT ALL ON t TO app",
    );
    primary.restart();
    let as_check = |sql: &str| psql_with(&primary, "user=app application_name=pg_promoter", sql);
    assert_eq!(as_check("SELECT pg_is_in_recovery()").as_deref(), Ok("f"));
    let err = as_check("INSERT INTO t VALUES (1)").unwrap_err();
    assert!(err.contains("has not yet checked"), "{err}");
    let err = psql_as(&primary, "app", "SELECT 1").unwrap_err();
    assert!(
        err.contains("has not yet checked"),
        "an ordinary login is still held: {err}"
    );
    assert_eq!(primary.query("SELECT count(*) FROM t"), "0");
}
