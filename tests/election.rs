//! Leadership with three nodes and more: a primary and standbys with the same `peers` list elect
//! one leader, which alone takes ordinary commits, and the other standbys follow it.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use testbed::{wait_until, Net, Node, Writer};

/// A primary and `standbys` standbys streaming from it, 200 ms x 3, with one `peers` list
/// naming them `p`, `s1`, `s2`, ... (and the witness, if any); on loopback, or each on its own
/// simulated host of `net`. Returns once the primary leads and takes ordinary commits from role
/// `app`.
/// FAST, and prepared transactions allowed (a standby takes its primary's setting).
const SETTINGS: &[(&str, &str)] = &[
    ("pg_promoter.keep_alive", "'200ms'"),
    ("pg_promoter.keepalives_count", "3"),
    ("max_prepared_transactions", "5"),
];

fn cluster(name: &str, standbys: usize, witness: Option<&Node>, net: Option<&Net>) -> Vec<Node> {
    let primary = match net {
        Some(net) => Node::primary_on(&net.host("p"), &format!("{name}-p"), SETTINGS),
        None => Node::primary(&format!("{name}-p"), SETTINGS),
    };
    primary.query("CREATE EXTENSION pg_promoter; CREATE ROLE app LOGIN");
    let mut nodes = vec![primary];
    for i in 1..=standbys {
        let label = format!("{name}-s{i}");
        let standby = match net {
            Some(net) => Node::standby_on(&net.host(&format!("s{i}")), &label, &nodes[0], SETTINGS),
            None => Node::standby(&label, &nodes[0], nodes[0].port(), SETTINGS),
        };
        nodes.push(standby);
    }
    let mut entries: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let label = if i == 0 { "p".to_string() } else { format!("s{i}") };
            format!("{label}: {}", n.conninfo())
        })
        .collect();
    entries.sort();
    let mut lines = vec![format!("pg_promoter.peers = '{}'", entries.join("; "))];
    if let Some(w) = witness {
        lines.push(format!("pg_promoter.witness_conninfo = 'w: {}'", w.conninfo()));
    }
    for node in &nodes {
        for line in &lines {
            node.append_conf(line);
        }
        node.reload();
    }
    wait_until("the primary leads", LONG, || {
        status(&nodes[0], "leader") == "p" && status(&nodes[0], "fenced") == "f"
    });
    nodes[0].query("CREATE TABLE t (id int PRIMARY KEY); GRANT ALL ON t TO app");
    wait_until("an ordinary commit succeeds on the primary", LONG, || {
        psql_as(&nodes[0], "app", "INSERT INTO t VALUES (0)").is_ok()
    });
    for s in &nodes[1..] {
        let watching = testbed::try_wait_until(LONG, || state(s) == "watching");
        assert!(
            watching.is_some(),
            "{} does not watch: state {}; events:\n{:#?}\nlog:\n{}",
            s.name(),
            state(s),
            events(s),
            s.log_tail(30)
        );
    }
    nodes
}

/// A witness: a small server with the library preloaded and the extension created.
fn witness(name: &str) -> Node {
    let w = Node::primary(&format!("{name}-w"), FAST);
    w.query("CREATE EXTENSION pg_promoter");
    w
}

fn count(node: &Node) -> Option<i64> {
    node.psql("SELECT count(*) FROM t").ok()?.parse().ok()
}

fn promoted(nodes: &[Node]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].in_recovery() == Some(false))
        .collect()
}

/// Kills the primary, then checks: one standby promotes, the others follow it and end with
/// every row the winner has.
fn kill_the_primary_and_check(nodes: &[Node], phase: Duration) {
    for i in 1..=20 {
        psql_as(&nodes[0], "app", &format!("INSERT INTO t VALUES ({i})")).expect("ordinary insert");
    }
    // A random moment against the workers' schedules.
    thread::sleep(phase);
    nodes[0].kill9();
    let standbys = &nodes[1..];
    wait_until("a standby is promoted", LONG, || !promoted(standbys).is_empty());
    let winner = promoted(standbys)[0];
    let w = &standbys[winner];
    wait_until("the winner takes ordinary commits", LONG, || {
        psql_as(w, "app", "INSERT INTO t VALUES (100)").is_ok()
    });
    for i in 101..=110 {
        psql_as(w, "app", &format!("INSERT INTO t VALUES ({i})")).expect("insert on the winner");
    }
    let rows = count(w).expect("the winner answers");
    for (i, s) in standbys.iter().enumerate().filter(|(i, _)| *i != winner) {
        let followed = testbed::try_wait_until(LONG, || count(s) == Some(rows));
        assert!(
            followed.is_some(),
            "standby {i} does not follow the winner with every row ({rows}): it has {:?}; events:\n{:#?}\nlog:\n{}\n\
             the winner's slots: {:?}; its log:\n{}",
            count(s),
            events(s),
            s.log_tail(30),
            w.psql("SELECT slot_name, active, restart_lsn FROM pg_replication_slots"),
            w.log_tail(40)
        );
        assert_eq!(s.in_recovery(), Some(true), "standby {i} stays a standby");
        assert!(has_event(s, "following", "following"), "{:#?}", events(s));
    }
    // Still only one: the losers never promoted meanwhile.
    assert_eq!(
        promoted(standbys),
        vec![winner],
        "{:#?}",
        standbys.iter().map(events).collect::<Vec<_>>()
    );
    assert!(
        has_event(w, "elected", "elected leader of term"),
        "{:#?}",
        events(w)
    );
}

#[test]
fn three_nodes_one_standby_wins_and_the_other_follows_ten_times() {
    for run in 0..10u64 {
        let nodes = cluster(&format!("el3-{run}"), 2, None, None);
        // Phases spread over a check interval and more (200 ms x 3 settings).
        let phase = Duration::from_millis((run * 137) % 600);
        kill_the_primary_and_check(&nodes, phase);
    }
}

#[test]
fn the_most_advanced_standby_wins_and_the_other_catches_up_from_it() {
    let nodes = cluster("el-adv", 2, None, None);
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    // s2 stops receiving WAL (its check still watches the primary directly).
    s2.append_conf(&format!("pg_promoter.primary_conninfo = '{}'", p.conninfo()));
    s2.query("ALTER SYSTEM SET primary_conninfo = ''");
    s2.reload();
    wait_until("s2's WAL receiver stops", LONG, || {
        s2.psql("SELECT count(*) FROM pg_stat_wal_receiver").as_deref() == Ok("0")
    });
    for i in 1..=50 {
        psql_as(p, "app", &format!("INSERT INTO t VALUES ({i})")).expect("ordinary insert");
    }
    let rows = count(p).unwrap();
    wait_until("s1 has every row", LONG, || count(s1) == Some(rows));
    assert!(count(s2).unwrap() < rows, "s2 is behind");
    p.kill9();
    wait_promoted(s1);
    wait_until("s2 follows s1 and catches up", LONG, || count(s2) == Some(rows));
    psql_as(s1, "app", "INSERT INTO t VALUES (1000)").expect("an ordinary commit on s1");
    wait_until("s2 streams from s1", LONG, || count(s2) == Some(rows + 1));
    assert_eq!(s2.in_recovery(), Some(true));
    assert!(has_event(s2, "following", "following s1"), "{:#?}", events(s2));
}

#[test]
fn where_members_use_slots_the_winner_creates_them_and_the_loser_streams_through_its_own() {
    let nodes = cluster("el-slot", 2, None, None);
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    p.query("SELECT pg_create_physical_replication_slot(name, true) FROM (VALUES ('s1'), ('s2')) v(name)");
    for (s, name) in [(s1, "s1"), (s2, "s2")] {
        s.query(&format!("ALTER SYSTEM SET primary_slot_name = '{name}'"));
        s.reload();
    }
    wait_until("both standbys stream through their slots", LONG, || {
        p.query("SELECT count(*) FROM pg_replication_slots WHERE active") == "2"
    });
    kill_the_primary_and_check(&nodes, Duration::from_millis(100));
    let winner = if s1.in_recovery() == Some(false) { s1 } else { s2 };
    let loser = if std::ptr::eq(winner, s1) { "s2" } else { "s1" };
    assert!(
        has_event(winner, "following", "replication slots ready for the followers"),
        "{:#?}",
        events(winner)
    );
    wait_until("the loser streams through its slot on the winner", LONG, || {
        slot_active(winner, loser)
    });
    // The dead old primary's slot keeps no WAL on the winner.
    assert_eq!(
        winner.query("SELECT restart_lsn IS NULL FROM pg_replication_slots WHERE slot_name = 'p'"),
        "t"
    );
}

fn slot_active(node: &Node, slot: &str) -> bool {
    node.psql(&format!(
        "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .as_deref()
        == Ok("t")
}

#[test]
fn a_follower_that_uses_a_slot_makes_its_own_on_a_winner_that_uses_none() {
    let nodes = cluster("el-ownslot", 2, None, None);
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    p.query("SELECT pg_create_physical_replication_slot('s2', true)");
    s2.query("ALTER SYSTEM SET primary_slot_name = 's2'");
    s2.reload();
    // s1 streams without a slot, and wins a tie by its priority.
    s1.append_conf("pg_promoter.priority = 10");
    s1.reload();
    wait_until("s2 streams through its slot", LONG, || slot_active(p, "s2"));
    wait_until("s1 has its new priority", LONG, || {
        s1.psql("SHOW pg_promoter.priority").as_deref() == Ok("10")
    });
    kill_the_primary_and_check(&nodes, Duration::from_millis(100));
    assert_eq!(s1.in_recovery(), Some(false), "s1 won the tie: {:#?}", events(s1));
    assert!(
        !has_event(s1, "following", "replication slots ready"),
        "{:#?}",
        events(s1)
    );
    let streams = testbed::try_wait_until(LONG, || slot_active(s1, "s2"));
    assert!(
        streams.is_some(),
        "s1's slots: {:?}\ns1's log:\n{}",
        s1.psql("SELECT slot_name, active, restart_lsn FROM pg_replication_slots"),
        s1.log_tail(40)
    );
}

#[test]
fn a_standby_promoted_by_hand_while_the_primary_leads_takes_no_ordinary_commit() {
    let nodes = cluster("el-man", 2, None, None);
    let (p, s1) = (&nodes[0], &nodes[1]);
    assert_eq!(s1.query("SELECT pg_promote()"), "t");
    wait_until("s1 has left recovery", LONG, || s1.in_recovery() == Some(false));
    // It stands to lead, and the members holding p's lease refuse it (its own member first): no
    // ordinary commit; once p has renewed that grant past one lease, it is fenced for good.
    let stood = testbed::try_wait_until(LONG, || has_event(s1, "election_lost", "term"));
    assert!(stood.is_some(), "{:#?}", events(s1));
    for i in 0..5 {
        let insert = psql_as(s1, "app", &format!("INSERT INTO t VALUES ({})", 500 + i));
        assert!(
            insert.as_ref().is_err_and(|e| {
                e.contains("holds no valid pg_promoter lease") || e.contains("fenced by pg_promoter")
            }),
            "an ordinary commit on the second primary: {insert:?}"
        );
        psql_as(p, "app", &format!("INSERT INTO t VALUES ({})", 600 + i)).expect("p takes ordinary commits");
        thread::sleep(Duration::from_millis(200));
    }
    let fenced = testbed::try_wait_until(LONG, || state(s1) == "fenced");
    assert!(fenced.is_some(), "{:#?}", events(s1));
    assert!(
        has_event(s1, "fenced", "own member has renewed p"),
        "{:#?}",
        events(s1)
    );
    assert_eq!(
        s1.query("SELECT count(*) FROM t WHERE id >= 500 AND id < 600"),
        "0"
    );
}

#[test]
fn lease_rounds_and_checks_open_no_connection_per_round() {
    let nodes = cluster("el-conn", 2, None, None);
    // Sessions opened on each node (PostgreSQL 14 and later count them), over 5 s: 50 lease
    // rounds of the primary and 25 checks of each standby at 200 ms x 3. Each reading opens
    // one session of its own.
    let sessions = |n: &Node| -> i64 {
        n.query("SELECT sum(sessions) FROM pg_stat_database")
            .parse()
            .unwrap()
    };
    thread::sleep(Duration::from_secs(1));
    let before: Vec<i64> = nodes.iter().map(sessions).collect();
    thread::sleep(Duration::from_secs(5));
    let after: Vec<i64> = nodes.iter().map(sessions).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a - b <= 3,
            "node {i}: {} sessions opened in 5 s (rounds must reuse their connections)",
            a - b
        );
    }
}

#[test]
fn five_members_one_winner_and_every_other_standby_follows() {
    let w = witness("el5");
    let nodes = cluster("el5", 3, Some(&w), None);
    kill_the_primary_and_check(&nodes, Duration::from_millis(250));
}

#[test]
fn a_standby_cut_alone_from_the_primary_does_not_promote() {
    let net = Net::new("elcut");
    let nodes = cluster("el-cut", 2, None, Some(&net));
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    let writer = Writer::start_as(p, "app", "load", Duration::from_millis(50));
    wait_until("ordinary commits flow", LONG, || writer.acked() > 5);
    net.cut(s1.host().unwrap(), p.host().unwrap());
    wait_until("s1 stands and loses", LONG, || {
        has_event(s1, "election_lost", "lost")
    });
    // s2 still sees the primary, and granted it the lease that holds.
    assert!(
        has_event(s2, "vote_refused", "to s1 in term"),
        "s2: {:#?}\ns1: {:#?}",
        events(s2),
        events(s1)
    );
    assert_stays_standby(s1, Duration::from_secs(3));
    let before = writer.acked();
    thread::sleep(Duration::from_secs(1));
    assert!(
        writer.acked() > before,
        "the primary takes ordinary commits throughout"
    );
    assert_eq!(status(p, "fenced"), "f");
    assert!(writer.stop() > 20);
    assert_eq!(s2.in_recovery(), Some(true));
}

#[test]
fn a_frozen_primary_commits_nothing_after_its_lease_even_what_was_in_flight() {
    let nodes = cluster("el-frz", 2, None, None);
    let p = &nodes[0];
    // A transaction opened before the freeze, committed after it.
    let conninfo = format!("{} user=app", p.conninfo());
    let mut open = std::process::Command::new(testbed::bindir().join("psql"))
        .args([conninfo.as_str(), "-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    {
        use std::io::Write;
        let stdin = open.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; INSERT INTO t VALUES (999);").unwrap();
        stdin.flush().unwrap();
    }
    let backend = || {
        p.query("SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND state = 'idle in transaction'")
    };
    wait_until("the transaction is open", LONG, || !backend().is_empty());
    let pid = backend();
    p.freeze();
    wait_until("a standby is promoted", LONG, || {
        !promoted(&nodes[1..]).is_empty()
    });
    // The COMMIT waits in the socket for the backend.
    {
        use std::io::Write;
        let stdin = open.stdin.as_mut().unwrap();
        writeln!(stdin, "COMMIT;").unwrap();
        stdin.flush().unwrap();
    }
    // The backend runs first: whatever its worker would do once it runs again cannot come first.
    thread::sleep(Duration::from_millis(300));
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    thread::sleep(Duration::from_millis(500));
    p.thaw();
    drop(open.stdin.take());
    let out = open.wait_with_output().expect("psql ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot commit: this server holds no valid pg_promoter lease"),
        "the commit in flight did not meet the lease check: {err}"
    );
    wait_until("the old primary answers again", LONG, || {
        p.psql("SELECT 1").is_ok()
    });
    assert_eq!(p.query("SELECT count(*) FROM t WHERE id = 999"), "0");
}

#[test]
fn commit_prepared_outside_the_lease_is_refused_before_its_commit_record() {
    let nodes = cluster("el-2pc", 2, None, None);
    let p = &nodes[0];
    psql_as(
        p,
        "app",
        "BEGIN; INSERT INTO t VALUES (500); PREPARE TRANSACTION 'x'",
    )
    .expect("prepared in the lease");
    // The worker stops renewing (as if the primary were cut), and the lease runs out; the fence
    // that would follow is the worker's to raise, so sessions stay open meanwhile.
    let signal = |sig: &str| signal_worker(p, sig);
    signal("-STOP");
    thread::sleep(Duration::from_secs(1));
    let refused = psql_as(p, "app", "COMMIT PREPARED 'x'");
    signal("-CONT");
    let err = refused.expect_err("COMMIT PREPARED outside the lease");
    assert!(err.contains("holds no valid pg_promoter lease"), "{err}");
    assert_eq!(p.query("SELECT count(*) FROM t WHERE id = 500"), "0");
    assert_eq!(
        p.query("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'x'"),
        "1"
    );
    // Once the lease is renewed, the same statement commits.
    wait_until("COMMIT PREPARED within the lease", LONG, || {
        psql_as(p, "app", "COMMIT PREPARED 'x'").is_ok()
    });
    assert_eq!(p.query("SELECT count(*) FROM t WHERE id = 500"), "1");
}

#[test]
fn a_logical_replication_worker_applies_nothing_outside_the_lease() {
    let publisher = Node::primary("el-pub", &[("wal_level", "logical")]);
    publisher.query(
        "CREATE TABLE lr (x int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE lr; INSERT INTO lr VALUES (1)",
    );
    let nodes = cluster("el-lr", 2, None, None);
    let p = &nodes[0];
    p.query("CREATE TABLE lr (x int PRIMARY KEY)");
    // As a superuser, as subscriptions usually are: the exemption must not cover it.
    p.query(&format!(
        "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub",
        publisher.conninfo()
    ));
    let count = || p.psql("SELECT count(*) FROM lr").unwrap_or_default();
    wait_until("the subscription copied the table", LONG, || count() == "1");
    let signal = |sig: &str| signal_worker(p, sig);
    signal("-STOP");
    thread::sleep(Duration::from_secs(1));
    publisher.query("INSERT INTO lr VALUES (2)");
    let applied = testbed::try_wait_until(Duration::from_secs(3), || count() == "2");
    signal("-CONT");
    assert!(applied.is_none(), "a row was applied outside the lease");
    assert!(
        p.log().contains("holds no valid pg_promoter lease"),
        "{}",
        p.log_tail(20)
    );
    wait_until("applied once the lease is renewed", LONG, || count() == "2");
}

#[test]
fn a_commit_whose_lease_runs_out_before_it_ends_is_not_acknowledged() {
    let nodes = cluster("ackheld", 2, None, None);
    let p = &nodes[0];
    p.query("CREATE TABLE w (x int); GRANT ALL ON w TO app");
    // A synchronous standby that never comes: a commit waits after its record is written, past
    // the pre-commit check.
    p.append_conf("synchronous_standby_names = 'nobody'");
    p.reload();
    wait_until("the setting is in force", LONG, || {
        p.query("SHOW synchronous_standby_names") == "nobody"
    });
    let conninfo = format!("{} user=app", p.conninfo());
    let waiting = std::thread::spawn(move || {
        std::process::Command::new(testbed::bindir().join("psql"))
            .arg(conninfo)
            .args(["-X", "-At", "-c", "INSERT INTO t VALUES (42)"])
            .output()
            .expect("psql runs")
    });
    let waits = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND wait_event = 'SyncRep'";
    wait_until("the commit waits for its synchronous standby", LONG, || {
        p.query(waits) == "1"
    });
    // The primary's worker stops: nothing renews the lease, and nothing fences the server.
    signal_worker(p, "-STOP");
    let probe = "SET synchronous_commit = local; INSERT INTO w VALUES (1)";
    wait_until("the lease has run out", LONG, || {
        psql_as(p, "app", probe).is_err_and(|e| e.contains("no valid pg_promoter lease"))
    });
    // PostgreSQL acknowledges a commit whose synchronous wait is cancelled: not this one.
    p.query("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'app' AND wait_event = 'SyncRep'");
    let out = waiting.join().expect("the waiting client");
    signal_worker(p, "-CONT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the commit was acknowledged after the lease ran out: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("server closed the connection"), "{stderr}");
    assert!(p.log().contains("its acknowledgement is withheld"));
    // Done here all the same (a commit cannot be undone): what the client was not told.
    assert_eq!(p.query("SELECT count(*) FROM t WHERE id = 42"), "1");
}

/// The timeline new WAL is written on (a primary's).
fn timeline(node: &Node) -> u32 {
    node.query("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
        .parse()
        .unwrap()
}

/// The chaos run's seed 3: the winner of one term promotes, acknowledges a commit and is cut
/// off alone before the other standby ever streams from it; the other standby, elected next,
/// must not promote onto the same timeline number (two histories with one number, which
/// pg_rewind and the needs_rewind check cannot tell apart).
#[test]
fn a_second_winner_never_reuses_the_timeline_number_of_the_first() {
    let net = Net::new("eltli");
    let nodes = cluster("el-tli", 2, None, Some(&net));
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    // s1 wins first (s2 does not stand), and s2 cannot stream from it: it never fetches s1's
    // history of the timeline it promotes onto.
    s2.append_conf("pg_promoter.priority = 0");
    s2.reload();
    let hba = s1.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    let reject = format!("host replication all {}/32 reject\n", s2.host().unwrap().ip());
    std::fs::write(&hba, format!("{reject}{rules}")).unwrap();
    s1.reload();
    p.freeze();
    wait_until("s1 is promoted", LONG, || s1.in_recovery() == Some(false));
    wait_until("s1 takes an ordinary commit", LONG, || {
        psql_as(s1, "app", "INSERT INTO t VALUES (1)").is_ok()
    });
    let first = timeline(s1);
    // p comes back while s1 leads, learns of s1's term and is fenced for good. Thawed only once
    // s1 is cut off, p (on timeline 1 like s2, and holding its own member's grant again) could
    // as well win the next term as s2: CI saw it, once.
    p.thaw();
    wait_until("p is fenced for good", LONG, || {
        status(p, "fence_reason").contains("was failed over from")
    });
    net.isolate(s1.host().unwrap());
    s2.append_conf("pg_promoter.priority = 1");
    s2.reload();
    let promoted = testbed::try_wait_until(LONG, || s2.in_recovery() == Some(false));
    assert!(
        promoted.is_some(),
        "s2 was not promoted; its events:\n{:#?}\nits log:\n{}\np's events:\n{:#?}\np's log:\n{}",
        events(s2),
        s2.log_tail(30),
        events(p),
        p.log_tail(60)
    );
    let second = timeline(s2);
    assert!(
        second > first,
        "s2 promoted onto timeline {second}, s1 onto {first}; s2's events:\n{:#?}",
        events(s2)
    );
    // Its history descends from timeline 1 (where it was), not from s1's timeline; the number
    // s1 took is a placeholder here.
    let history = s2.query(&format!("SELECT pg_read_file('pg_wal/{second:08X}.history')"));
    assert!(history.starts_with("1\t"), "{history}");
    let placeholder = s2.query(&format!("SELECT pg_read_file('pg_wal/{first:08X}.history')"));
    assert!(
        placeholder.starts_with("# pg_promoter placeholder"),
        "{placeholder}"
    );
    assert!(has_event(
        s2,
        "vote_granted",
        &format!("claiming timeline {first}")
    ));
    assert!(
        has_event(s2, "promoted", &format!("onto timeline {second}")),
        "{:#?}",
        events(s2)
    );
    wait_until("s2 takes ordinary commits", LONG, || {
        psql_as(s2, "app", "INSERT INTO t VALUES (2)").is_ok()
    });
}

/// A synchronous commit of a leader promoted onto timeline 2 is on its standby s2 alone once
/// that leader is cut off. The old primary p, back on timeline 1, lacks it: it must not lead
/// again. s2 refuses it for its newer timeline (a standby votes for a primary whatever their
/// positions, which are read at different times), and s2 is elected instead.
#[test]
fn an_old_primary_back_on_an_older_timeline_is_refused_by_a_standby_with_newer_commits() {
    let net = Net::new("elold");
    let nodes = cluster("el-old", 2, None, Some(&net));
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    s2.append_conf("pg_promoter.priority = 0");
    s2.reload();
    p.freeze();
    wait_until("s1 is promoted", LONG, || s1.in_recovery() == Some(false));
    s1.append_conf("synchronous_standby_names = '*'");
    s1.reload();
    wait_until("s2 streams from s1, synchronously", LONG, || {
        s1.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
            .as_deref()
            == Ok("1")
    });
    wait_until("s1 acknowledges an ordinary commit", LONG, || {
        psql_as(s1, "app", "INSERT INTO t VALUES (1)").is_ok()
    });
    net.isolate(s1.host().unwrap());
    // s2 stands and loses while p is frozen: its member takes terms that no leader holds, so no
    // member names s1's term to p once thawed (which would fence p for good at once).
    s2.append_conf("pg_promoter.priority = 1");
    s2.reload();
    let term = |n: &Node| status(n, "term").parse::<i64>().unwrap_or(0);
    wait_until("s2 stood in a term of its own", LONG, || term(s2) > 2);
    s2.append_conf("pg_promoter.priority = 0");
    s2.reload();
    // No request of s2's is still waiting for p's answer when p is thawed (that would elect s2
    // at once): its last election ended, and it stands no more.
    wait_until("s2 lost its last election and stands no more", LONG, || {
        let events = events(s2);
        let last = events.iter().rposition(|(e, _)| e == "election_started");
        last.is_some_and(|i| {
            let after = &events[i..];
            after.iter().any(|(e, _)| e == "election_lost")
                && after
                    .iter()
                    .any(|(e, d)| e == "refused" && d.contains("priority is 0"))
        })
    });
    p.thaw();
    let refused = testbed::try_wait_until(LONG, || {
        has_event(p, "election_lost", "s2 ranks higher (timeline 2")
    });
    assert!(
        refused.is_some(),
        "p was not refused for its timeline; p's events:\n{:#?}\ns2's events:\n{:#?}",
        events(p),
        events(s2)
    );
    assert!(psql_as(p, "app", "INSERT INTO t VALUES (2)").is_err());
    s2.append_conf("pg_promoter.priority = 1");
    s2.reload();
    let promoted = testbed::try_wait_until(LONG, || s2.in_recovery() == Some(false));
    assert!(
        promoted.is_some(),
        "s2 was not promoted; its events:\n{:#?}\np's events:\n{:#?}",
        events(s2),
        events(p)
    );
    wait_until("s2 takes ordinary commits", LONG, || {
        psql_as(s2, "app", "INSERT INTO t VALUES (3)").is_ok()
    });
    assert_eq!(s2.query("SELECT count(*) FROM t WHERE id = 1"), "1");
    assert_eq!(p.in_recovery(), Some(false));
    assert!(psql_as(p, "app", "INSERT INTO t VALUES (4)").is_err());
}

/// A standby that stops between its placeholder history files and the end of its promotion
/// would take the newest placeholder as its target timeline and refuse to recover (FATAL:
/// requested timeline 2 is not a child of this server's history): the library removes such
/// placeholders each time the postmaster makes shared memory, at a start and after a crash.
#[test]
fn placeholders_of_a_promotion_that_did_not_happen_go_at_the_next_start_or_crash() {
    let p = Node::primary("el-ph-p", FAST);
    p.query("CREATE EXTENSION pg_promoter");
    let s = Node::standby("el-ph-s", &p, p.port(), FAST);
    let placeholder = || {
        let file = s.data_dir().join("pg_wal/00000002.history");
        std::fs::write(&file, "# pg_promoter placeholder: timeline 2 was claimed\n").unwrap();
        file
    };
    let streaming = || s.psql("SELECT status FROM pg_stat_wal_receiver").as_deref() == Ok("streaming");
    let file = placeholder();
    s.restart();
    assert!(!file.exists(), "the placeholder stays; log:\n{}", s.log_tail(20));
    assert!(s
        .log()
        .contains("removed the placeholder history files 00000002.history, left by a promotion"));
    wait_until("the standby recovers and streams", LONG, streaming);
    // A crash: the postmaster starts every process again, the startup process first.
    let file = placeholder();
    let worker = status(&s, "worker_pid");
    let killed = std::process::Command::new("kill").args(["-9", &worker]).status();
    assert!(killed.expect("kill runs").success());
    wait_until("a new worker runs", LONG, || {
        let pid = status(&s, "worker_pid");
        !pid.is_empty() && pid != worker
    });
    assert!(!file.exists(), "the placeholder stays; log:\n{}", s.log_tail(20));
    wait_until("the standby recovers and streams", LONG, streaming);
    assert_eq!(s.in_recovery(), Some(true));
}

/// A primary and two standbys on hosts of `net`, the primary isolated until a standby is
/// promoted: the nodes, and the index of the one promoted.
fn isolated_primary_replaced(name: &str, net: &Net) -> (Vec<Node>, usize) {
    let nodes = cluster(name, 2, None, Some(net));
    net.isolate(nodes[0].host().unwrap());
    wait_until("a standby is promoted", LONG, || {
        !promoted(&nodes[1..]).is_empty()
    });
    let w = 1 + promoted(&nodes[1..])[0];
    (nodes, w)
}

#[test]
fn a_primary_isolated_past_its_lease_is_fenced_or_follows_once_healed() {
    let net = Net::new("elheal");
    let (nodes, w) = isolated_primary_replaced("elheal", &net);
    let (p, winner) = (&nodes[0], &nodes[w]);
    // The old primary's term past the winner's, as its own candidacies took it in the chaos run
    // (seed 1095): once healed, no refusal it gets names a newer term, and it must still end
    // fenced for good.
    let term = |n: &Node| status(n, "term").parse::<i64>().unwrap_or(0);
    let ahead = term(winner) + 10;
    p.query(&format!(
        "SELECT granted FROM pg_promoter_vote({ahead}, 'p', 1, '0/0', 1, true)"
    ));
    assert!(term(p) >= ahead, "term {} on the old primary", term(p));
    net.heal_all();
    let settled = testbed::try_wait_until(LONG, || {
        let state = state(p);
        state == "fenced" || state == "needs_rewind" || p.in_recovery() == Some(true)
    });
    assert!(
        settled.is_some(),
        "the old primary neither fenced itself nor followed: state {}, fenced {}; events:\n{:#?}\nlog:\n{}",
        state(p),
        status(p, "fenced"),
        events(p),
        p.log_tail(40)
    );
}

/// An old primary restarted while cut off (killed and started again, as a service manager
/// would): its worker has held no lease since, so no lapse fences it; once healed, its own member grants the new leader's lease, so it cannot even stand (the
/// chaos run's seed 3, replayed beside other schedules, ended so: a primary that neither took
/// writes nor said why). It must end fenced for good.
#[test]
fn an_old_primary_restarted_while_cut_off_is_fenced_for_good_once_healed() {
    let net = Net::new("elrst");
    let (nodes, w) = isolated_primary_replaced("elrst", &net);
    let (p, winner) = (&nodes[0], &nodes[w]);
    p.kill9();
    p.start_after_kill();
    net.heal_all();
    let fenced = testbed::try_wait_until(LONG, || state(p) == "fenced");
    assert!(
        fenced.is_some(),
        "the old primary is not fenced: state {}; events:\n{:#?}\nlog:\n{}",
        state(p),
        events(p),
        p.log_tail(30)
    );
    assert!(has_event(p, "fenced", "failed over from"), "{:#?}", events(p));
    assert!(psql_as(p, "app", "INSERT INTO t VALUES (900)").is_err());
    wait_until("the winner takes ordinary commits", LONG, || {
        psql_as(winner, "app", "INSERT INTO t VALUES (901)").is_ok()
    });
}

/// The chaos of a CI run (smoke seed 3): a standby cut off while the others failed over stood
/// alone into terms past the winner's. Healed, its check reached the old primary, fenced for good
/// but answering, and took it for alive: it stood no more, and its member refused the winner's
/// leases as stale, so it never learnt of the winner. A primary that answers fenced is down: the
/// standby stands, is refused for the winner's lease, and follows the winner.
#[test]
fn a_standby_cut_off_during_a_failover_follows_the_winner_not_the_fenced_old_primary() {
    let net = Net::new("elfnc");
    let nodes = cluster("el-fnc", 2, None, Some(&net));
    let (p, s1, s2) = (&nodes[0], &nodes[1], &nodes[2]);
    net.isolate(s1.host().unwrap());
    // p's worker stops, its server answers: its lease lapses, and its member votes for s2, which
    // is promoted by hand and stands as a primary (the chaos run froze p instead, and s2 won the
    // race to p's member once p was thawed).
    signal_worker(p, "-STOP");
    wait_until("p's lease lapses", LONG, || {
        psql_as(p, "app", "INSERT INTO t VALUES (1)").is_err()
    });
    assert_eq!(s2.query("SELECT pg_promoter_promote()"), "t");
    let term = |n: &Node| status(n, "term").parse::<i64>().unwrap_or(0);
    let elected = testbed::try_wait_until(LONG, || psql_as(s2, "app", "INSERT INTO t VALUES (2)").is_ok());
    assert!(
        elected.is_some(),
        "s2 does not lead; its events:\n{:#?}",
        events(s2)
    );
    let won = term(s2);
    wait_until(
        "s1's lone candidacies take it past the winner's term",
        LONG,
        || term(s1) > won + 1,
    );
    signal_worker(p, "-CONT");
    let fenced = testbed::try_wait_until(LONG, || state(p) == "fenced");
    assert!(fenced.is_some(), "p is not fenced; its events:\n{:#?}", events(p));
    net.heal_all();
    for i in 3..=10 {
        psql_as(s2, "app", &format!("INSERT INTO t VALUES ({i})")).expect("s2 takes ordinary commits");
    }
    let rows = count(s2);
    let followed = testbed::try_wait_until(LONG, || count(s1) == rows);
    assert!(
        followed.is_some(),
        "s1 does not follow s2 with every row ({rows:?}): it has {:?}; its events:\n{:#?}\nlog:\n{}",
        count(s1),
        events(s1),
        s1.log_tail(30)
    );
    // Whether its first check after the heal met p fenced, or still timed out, depends on when
    // the cut ends: the outcome above is what the rule must give (without it, s1 never follows).
    assert_eq!(s1.in_recovery(), Some(true));
    assert!(psql_as(p, "app", "INSERT INTO t VALUES (900)").is_err());
}

#[test]
fn a_standby_started_on_the_old_primary_follows_the_leader() {
    let net = Net::new("elold");
    let (nodes, w) = isolated_primary_replaced("elold", &net);
    let p = &nodes[0];
    let (winner, other) = (&nodes[w], &nodes[3 - w]);
    let sender = "SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'";
    wait_until("the other standby follows the winner", LONG, || {
        other.query(sender) == winner.address()
    });
    net.heal_all();
    wait_until("the old primary is fenced", LONG, || state(p) == "fenced");
    // The other standby starts again pointed at the old primary (its configuration from before
    // the failover, as a restore would leave it): it must not stay there.
    other.stop_fast();
    let auto = other.data_dir().join("postgresql.auto.conf");
    let kept: String = std::fs::read_to_string(&auto)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("primary_conninfo"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&auto, format!("{kept}primary_conninfo = '{}'\n", p.conninfo())).unwrap();
    other.start();
    wait_until("it follows the leader it knows", LONG, || {
        other.query(sender) == winner.address()
    });
    assert!(has_event(other, "following", ""), "{:#?}", events(other));
}
