//! Network partitions between simulated hosts: a primary, a standby and a witness, each in its
//! own network namespace, links cut one by one. Three members: leadership runs (terms, votes,
//! leases), and the witness has the library preloaded to answer votes and leases.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use testbed::{wait_until, Net, Node, Writer};

struct Cluster {
    net: Net,
    primary: Node,
    standby: Node,
    witness: Node,
}

/// keepalives_count 4: a lease of 3 checks (900 ms), the standby needs 4 failures.
fn cluster(name: &str) -> Cluster {
    let net = Net::new(name);
    let (hp, hs, hw) = (net.host("p"), net.host("s"), net.host("w"));
    let witness = Node::primary_on(&hw, &format!("{name}-w"), &[]);
    witness.query("CREATE EXTENSION pg_promoter");
    let members = format!("'w: {}'", witness.conninfo());
    let settings = [
        ("pg_promoter.keep_alive", "'300ms'"),
        ("pg_promoter.keepalives_count", "4"),
        ("pg_promoter.witness_conninfo", members.as_str()),
    ];
    let primary = Node::primary_on(&hp, &format!("{name}-p"), &settings);
    primary.query("CREATE EXTENSION pg_promoter; CREATE ROLE app LOGIN");
    let standby = Node::standby_on(&hs, &format!("{name}-s"), &primary, &settings);
    // The same peer list on both nodes; each skips its own entry.
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
    wait_until("the primary leads", LONG, || status(&primary, "leader") == "p");
    Cluster {
        net,
        primary,
        standby,
        witness,
    }
}

#[test]
fn a_standby_cut_from_the_primary_does_not_promote_while_the_witness_holds_the_lease() {
    let c = cluster("part-s");
    let writer = Writer::start_as(&c.primary, "app", "load", Duration::from_millis(50));
    c.net.cut(c.standby.host().unwrap(), c.primary.host().unwrap());
    wait_until("the witness refuses the standby its vote", LONG, || {
        has_event(&c.witness, "vote_refused", "its lease to p holds")
    });
    wait_until("the standby loses its election", LONG, || {
        has_event(&c.standby, "election_lost", "1 of 3 votes")
    });
    assert_stays_standby(&c.standby, Duration::from_secs(3));
    // The primary still reaches the witness: 2 of 3 renew its lease, it stays open for its
    // ordinary clients.
    assert_eq!(status(&c.primary, "fenced"), "f");
    let before = writer.acked();
    thread::sleep(Duration::from_secs(1));
    assert!(writer.acked() > before, "ordinary commits go on");
    assert!(writer.stop() > 10);
}

#[test]
fn a_primary_cut_from_everyone_stops_committing_before_the_new_leader_starts() {
    let c = cluster("part-p");
    let writer = Writer::start_as(&c.primary, "app", "load", Duration::from_millis(20));
    wait_until("ordinary commits flow", LONG, || writer.acked() > 10);
    // A superuser's session, open when the fence comes: the fence says superusers are not held.
    let mut superuser = std::process::Command::new(testbed::bindir().join("psql"))
        .arg(c.primary.conninfo())
        .args(["-X", "-c", "SELECT pg_sleep(600)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql starts");
    wait_until("the superuser's session is open", LONG, || {
        c.primary
            .psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'")
            .as_deref()
            == Ok("1")
    });
    c.net.isolate(c.primary.host().unwrap());
    wait_promoted(&c.standby);
    let after = Writer::start_as(&c.standby, "app", "load2", Duration::from_millis(20));
    wait_until("the new primary takes ordinary commits", LONG, || {
        after.acked() > 5
    });
    wait_until("the old primary is fenced", LONG, || {
        status(&c.primary, "fenced") == "t"
    });
    let last_old = writer.last_acked().expect("the old primary acknowledged commits");
    let acked = writer.stop();
    assert!(
        has_event(&c.standby, "elected", "2 of 3 votes"),
        "{:#?}",
        events(&c.standby)
    );
    assert!(
        has_event(&c.primary, "lease_lost", "not renewed"),
        "{:#?}",
        events(&c.primary)
    );
    assert!(
        has_event(&c.primary, "fenced", "superuser session(s) were connected"),
        "{:#?}",
        events(&c.primary)
    );
    let _ = superuser.kill();
    let _ = superuser.wait();

    // Compared by the clients' clocks (one machine): the old primary's last ordinary commit was
    // acknowledged before the new primary's first was even sent.
    let first_new = after.first_sent().expect("the new primary acknowledged commits");
    assert!(
        last_old < first_new,
        "the old primary acknowledged a commit at {last_old:?}, after the new one's first was sent at {first_new:?}"
    );
    after.stop();
    // Every acknowledged commit is there; one more may be, whose acknowledgement the cut lost.
    let rows: u64 = c.primary.query("SELECT count(*) FROM load").parse().unwrap();
    assert!(
        rows == acked || rows == acked + 1,
        "{rows} rows, {acked} acknowledged"
    );
    let err = psql_as(&c.primary, "app", "SELECT 1").unwrap_err();
    assert!(err.contains("this server is fenced by pg_promoter"), "{err}");

    // A partial heal, towards the witness only: the witness took the newer term, so it refuses
    // the old leader and tells it who leads; the old primary stays fenced, now for good.
    let (hp, hw) = (c.primary.host().unwrap(), c.witness.host().unwrap());
    c.net.heal(hp, hw);
    wait_until("the fence becomes permanent", LONG, || {
        status(&c.primary, "fence_reason").contains("s leads term")
    });
    assert!(psql_as(&c.primary, "app", "SELECT 1").is_err());
    c.net.heal_all();
    thread::sleep(Duration::from_secs(1));
    assert!(psql_as(&c.primary, "app", "SELECT 1").is_err());
    assert_eq!(status(&c.primary, "fenced"), "t");
}

#[test]
fn an_isolated_primary_ends_ordinary_sessions_unfences_when_the_majority_is_back_and_stays_closed_across_a_crash(
) {
    let c = cluster("part-u");
    // The standby is told not to promote: the cut is a blip the primary must survive.
    c.standby.append_conf("pg_promoter.enabled = off");
    c.standby.reload();
    let conninfo = format!("{} user=app", c.primary.conninfo());
    let session = std::process::Command::new(testbed::bindir().join("psql"))
        .args([conninfo.as_str(), "-X", "-At", "-c", "SELECT pg_sleep(120)"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    wait_until("the ordinary session runs", LONG, || {
        c.primary
            .query("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
            == "1"
    });
    c.net.isolate(c.primary.host().unwrap());
    wait_until("the primary fences itself", LONG, || {
        status(&c.primary, "fenced") == "t"
    });
    let out = session.wait_with_output().expect("psql ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("terminating connection due to administrator command"),
        "{err}"
    );
    assert!(has_event(&c.primary, "fenced", "ordinary connections refused"));
    assert!(has_event(&c.primary, "lease_lost", "not renewed"));

    c.net.heal_all();
    wait_until("the fence is lifted", LONG, || {
        status(&c.primary, "fenced") == "f"
    });
    // A majority renewing the lease lifts the fence.
    assert!(has_event(&c.primary, "unfenced", "renewed: fence lifted"));
    assert_eq!(psql_as(&c.primary, "app", "SELECT 1").as_deref(), Ok("1"));

    // Cut again, then kill -9 of the worker: the postmaster restarts the whole server (a crash),
    // and the fence holds across it: with no lease, no ordinary commit.
    c.net.isolate(c.primary.host().unwrap());
    wait_until("the primary fences itself again", LONG, || {
        status(&c.primary, "fenced") == "t"
    });
    let pid = status(&c.primary, "worker_pid");
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    wait_until("a new worker runs", LONG, || {
        let now = status(&c.primary, "worker_pid");
        !now.is_empty() && now != pid
    });
    for _ in 0..5 {
        let insert = psql_as(&c.primary, "app", "CREATE TEMP TABLE x AS SELECT 1");
        assert!(
            insert.is_err(),
            "an ordinary commit after the restart: {insert:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The network heals: a majority renews the lease, ordinary commits resume.
    c.net.heal_all();
    wait_until("ordinary commits resume after the restart", LONG, || {
        psql_as(&c.primary, "app", "CREATE TEMP TABLE x AS SELECT 1").is_ok()
    });
    assert!(has_event(&c.primary, "lease_renewed", "granted by"));
    assert_eq!(status(&c.primary, "fenced"), "f");
    assert_eq!(psql_as(&c.primary, "app", "SELECT 1").as_deref(), Ok("1"));
    assert_eq!(c.standby.in_recovery(), Some(true));
}

#[test]
fn network_stalls_shorter_than_a_check_fail_no_check() {
    // 200 ms checks: a fresh attempt every 50 ms while nothing sent is acknowledged, so a check
    // fails only if the path was cut for 150 ms of it. TCP alone resends a lost query after
    // 200 ms, the check's whole deadline: before, every check that began during a stall failed.
    let settings = [
        ("pg_promoter.keep_alive", "'200ms'"),
        ("pg_promoter.keepalives_count", "5"),
    ];
    let net = Net::new("stall");
    let (hp, hs) = (net.host("p"), net.host("s"));
    let primary = Node::primary_on(&hp, "stall-p", &settings);
    primary.query("CREATE EXTENSION pg_promoter");
    let standby = Node::standby_on(&hs, "stall-s", &primary, &settings);
    wait_until("the standby watches", LONG, || state(&standby) == "watching");
    let (stalls, stall) = (30, Duration::from_millis(60));
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64()
    };
    // Each stall as made (cut to heal, on the clock the server's events use): a busy machine may
    // stretch one past what the rule rides out, and the check it covers may fail legitimately.
    let mut made = Vec::new();
    for i in 0..stalls {
        let began = unix();
        net.cut(&hs, &hp);
        thread::sleep(stall);
        net.heal(&hs, &hp);
        made.push((began, unix()));
        // Gaps that are not multiples of the check interval: stalls hit every phase of it.
        thread::sleep(Duration::from_millis(150 + (i * 137) % 400));
    }
    // The rule: a check fails only when the path lost everything for 3/4 of its 200 ms deadline.
    // So every failed check (recorded at its end, after at most its deadline and some slack)
    // must overlap a stall that lasted 150 ms or more.
    let failed: Vec<f64> = standby
        .query("SELECT extract(epoch FROM at) FROM pg_promoter_events() WHERE event = 'check_failed'")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    for at in &failed {
        let covered = made
            .iter()
            .any(|(from, to)| to - from >= 0.150 && *from <= *at && *to >= at - 0.400);
        assert!(
            covered,
            "a check failed at {at} with no stall of 150 ms or more over it; stalls made: {made:?}; \
             events:\n{:#?}",
            events(&standby)
        );
    }
    assert_eq!(standby.in_recovery(), Some(true));
}
