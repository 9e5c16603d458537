//! Tests of simulated hosts (network namespaces on a private bridge), on plain
//! PostgreSQL. They need root and iproute2.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testbed::{try_wait_until, Host, Net, Node};

/// The extension may not be built yet; these tests don't need it.
const PLAIN: &[(&str, &str)] = &[("shared_preload_libraries", "''")];

fn count(node: &Node) -> Option<i64> {
    node.psql("SELECT count(*) FROM t").ok()?.parse().ok()
}

fn reaches(from: &Node, to: &Node) -> bool {
    from.psql_to(to, "SELECT 1").as_deref() == Ok("1")
}

/// Asserts that `from` cannot query `to`; returns how long finding out took.
fn blocked(from: &Node, to: &Node) -> Duration {
    let start = Instant::now();
    let result = from.psql_to(to, "SELECT 1");
    let took = start.elapsed();
    eprintln!("{} -> {}: {result:?} after {took:?}", from.name(), to.name());
    assert!(
        result.is_err(),
        "{} reached {} through a cut",
        from.name(),
        to.name()
    );
    took
}

/// Asserts that every pair is cut silently: the attempts hang until psql's
/// connect timeout rather than fail at once. They run side by side.
fn all_hang(pairs: &[(&Node, &Node)]) {
    thread::scope(|scope| {
        let checks: Vec<_> = pairs
            .iter()
            .map(|&(a, b)| scope.spawn(move || blocked(a, b)))
            .collect();
        for check in checks {
            let took = check.join().unwrap();
            assert!(
                took >= Duration::from_secs(2),
                "a silent cut should hang, not refuse"
            );
        }
    });
}

/// Asserts that the admin path (psql from the root namespace) reaches `nodes`.
fn admin_reaches(nodes: &[&Node]) {
    for node in nodes {
        assert_eq!(node.query("SELECT 1"), "1", "admin path to {}", node.name());
    }
}

/// Asserts that the postmaster of `node` runs in `host`'s network namespace.
fn runs_inside(node: &Node, host: &Host) {
    let pid = node.postmaster_pid().expect("postmaster.pid");
    let id = |path: String| {
        let m = fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        (m.dev(), m.ino())
    };
    assert_eq!(
        id(format!("/proc/{pid}/ns/net")),
        id(format!("/run/netns/{}", host.netns())),
        "{} is not inside {}",
        node.name(),
        host.netns()
    );
}

/// Waits up to `timeout` for `f`, else panics with the logs of `nodes`.
fn wait_for(what: &str, timeout: Duration, nodes: &[&Node], f: impl FnMut() -> bool) -> Duration {
    try_wait_until(timeout, f).unwrap_or_else(|| {
        let logs: String = nodes
            .iter()
            .map(|n| format!("--- {} log tail ---\n{}\n", n.name(), n.log_tail(40)))
            .collect();
        panic!("timed out after {timeout:?} waiting until {what}\n{logs}")
    })
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn standby_on_another_host_replicates() {
    let net = Net::new("repl");
    let (hp, hs) = (net.host("p"), net.host("s"));
    let primary = Node::primary_on(&hp, "net_repl_p", PLAIN);
    let standby = Node::standby_on(&hs, "net_repl_s", &primary, PLAIN);
    assert_eq!(primary.address(), hp.ip().to_string());
    assert_eq!(standby.host(), Some(&hs));
    assert_eq!(
        primary.conninfo(),
        format!(
            "host={} port={} user=postgres dbname=postgres",
            hp.ip(),
            primary.port()
        )
    );
    assert_eq!(standby.in_recovery(), Some(true));
    runs_inside(&primary, &hp);
    runs_inside(&standby, &hs);

    primary.query("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 10)");
    let took = wait_for(
        "the standby sees 10 rows",
        Duration::from_secs(60),
        &[&primary, &standby],
        || count(&standby) == Some(10),
    );
    eprintln!("replicated across hosts in {took:?}");
    // The stream crosses the bridge from the standby's own address.
    assert_eq!(
        primary.query("SELECT client_addr FROM pg_stat_replication"),
        hs.ip().to_string()
    );
}

#[test]
fn faults_work_on_hosts_and_hosts_hold_several_nodes() {
    let net = Net::new("faults");
    let (hp, hs) = (net.host("p"), net.host("s"));
    let primary = Node::primary_on(&hp, "net_fault_p", PLAIN);
    let neighbour = Node::primary_on(&hp, "net_fault_n", PLAIN);
    assert_ne!(primary.port(), neighbour.port());
    assert_eq!(primary.psql_to(&neighbour, "SELECT 2").as_deref(), Ok("2"));
    let standby = Node::standby_on(&hs, "net_fault_s", &primary, PLAIN);
    let streaming =
        || primary.psql("SELECT client_addr FROM pg_stat_replication").ok() == Some(hs.ip().to_string());

    primary.freeze();
    let start = Instant::now();
    assert!(primary.psql("SELECT 1").is_err());
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "a frozen server should hang"
    );
    primary.thaw();
    assert_eq!(primary.query("SELECT 1"), "1");

    standby.restart();
    runs_inside(&standby, &hs);
    wait_for(
        "the standby streams again",
        Duration::from_secs(60),
        &[&primary, &standby],
        streaming,
    );

    primary.stop_fast();
    assert!(!primary.is_running());
    primary.start();
    runs_inside(&primary, &hp);
    wait_for(
        "the standby reconnects",
        Duration::from_secs(90),
        &[&primary, &standby],
        streaming,
    );

    primary.kill9();
    wait_for(
        "the postmaster is gone",
        Duration::from_secs(10),
        &[&primary],
        || !primary.is_running(),
    );
    assert!(primary.psql("SELECT 1").is_err());
    assert_eq!(neighbour.query("SELECT 3"), "3");
}

#[test]
fn cut_separates_one_link_only_and_heal_restores_it() {
    let net = Net::new("cut");
    let (hp, hs, hw) = (net.host("p"), net.host("s"), net.host("w"));
    let primary = Node::primary_on(&hp, "net_cut_p", PLAIN);
    let standby = Node::standby_on(&hs, "net_cut_s", &primary, PLAIN);
    let witness = Node::primary_on(&hw, "net_cut_w", PLAIN);
    assert!(reaches(&standby, &primary) && reaches(&witness, &primary));
    primary.query("CREATE TABLE t(id int); INSERT INTO t VALUES (1)");
    wait_for(
        "the standby sees row 1",
        Duration::from_secs(60),
        &[&primary, &standby],
        || count(&standby) == Some(1),
    );

    net.cut(&hs, &hp);
    all_hang(&[(&standby, &primary), (&primary, &standby)]);
    assert!(reaches(&witness, &primary));
    assert!(reaches(&primary, &witness));
    assert!(reaches(&standby, &witness));
    admin_reaches(&[&primary, &standby, &witness]);
    // The open replication connection is cut too, not just new ones.
    primary.query("INSERT INTO t VALUES (2)");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&standby), Some(1), "WAL got through the cut");

    net.heal(&hs, &hp);
    assert!(reaches(&standby, &primary));
    let took = wait_for(
        "the standby catches up",
        Duration::from_secs(120),
        &[&primary, &standby],
        || count(&standby) == Some(2),
    );
    eprintln!("caught up {took:?} after the heal");
}

#[test]
fn isolate_cuts_one_host_from_all_and_heal_all_restores() {
    let net = Net::new("isolate");
    let (hp, hs, hw) = (net.host("p"), net.host("s"), net.host("w"));
    let primary = Node::primary_on(&hp, "net_iso_p", PLAIN);
    let standby = Node::standby_on(&hs, "net_iso_s", &primary, PLAIN);
    let witness = Node::primary_on(&hw, "net_iso_w", PLAIN);

    net.isolate(&hp);
    all_hang(&[
        (&standby, &primary),
        (&witness, &primary),
        (&primary, &standby),
        (&primary, &witness),
    ]);
    assert!(reaches(&standby, &witness) && reaches(&witness, &standby));
    admin_reaches(&[&primary, &standby, &witness]);

    net.heal_all();
    for (a, b) in [
        (&standby, &primary),
        (&witness, &primary),
        (&primary, &standby),
        (&primary, &witness),
    ] {
        assert!(
            reaches(a, b),
            "{} cannot reach {} after heal_all",
            a.name(),
            b.name()
        );
    }
}

#[test]
fn refusing_cut_fails_fast() {
    let net = Net::new("refuse");
    let (hp, hs, hw) = (net.host("p"), net.host("s"), net.host("w"));
    let primary = Node::primary_on(&hp, "net_ref_p", PLAIN);
    let other = Node::primary_on(&hs, "net_ref_s", PLAIN);
    let witness = Node::primary_on(&hw, "net_ref_w", PLAIN);

    // A refusing cut replaces a silent one.
    net.cut(&hs, &hp);
    net.cut_refusing(&hs, &hp);
    for (a, b) in [(&other, &primary), (&primary, &other)] {
        assert!(
            blocked(a, b) < Duration::from_secs(2),
            "a refusing cut should fail fast"
        );
    }
    assert!(reaches(&witness, &primary));
    admin_reaches(&[&primary, &other]);

    net.heal(&hs, &hp);
    assert!(reaches(&other, &primary) && reaches(&primary, &other));
}

#[test]
fn drop_removes_namespaces_and_interfaces() {
    let net = Net::new("drop");
    let id = net.id();
    let (a, b) = (net.host("a"), net.host("b"));
    net.cut(&a, &b);
    // A server still running inside must not stop the cleanup.
    let node = Node::primary_on(&a, "net_drop_a", PLAIN);
    let ours = |name: &str| {
        name.starts_with(&format!("pp{id}-"))
            || name.starts_with(&format!("pv{id}h"))
            || name.starts_with(&format!("pv{id}p"))
            || name == format!("ppb{id}")
    };
    let namespaces = || -> Vec<String> {
        let list = ip(&["netns", "list"]);
        list.lines()
            .filter_map(|l| Some(l.split_whitespace().next()?.to_string()))
            .collect()
    };
    let links = || -> Vec<String> {
        let list = ip(&["-o", "link", "show"]);
        list.lines()
            .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_string()))
            .collect()
    };
    assert!(namespaces().iter().any(|n| n == a.netns()) && namespaces().iter().any(|n| n == b.netns()));
    assert_eq!(links().iter().filter(|l| ours(l)).count(), 3, "{:?}", links());

    drop(net);
    let left: Vec<String> = namespaces()
        .into_iter()
        .chain(links())
        .filter(|n| ours(n))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Cut off from the admin path now, but still stoppable.
    assert!(node.psql("SELECT 1").is_err());
    node.stop_fast();
}
