//! Tests of the test bed itself, on plain PostgreSQL (no pg_promoter).

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use testbed::{free_port, psql_at, wait_until, Mode, Node, Proxy};

/// The extension may not be built yet; these tests don't need it.
const PLAIN: &[(&str, &str)] = &[("shared_preload_libraries", "''")];

fn count(node: &Node) -> Option<i64> {
    node.psql("SELECT count(*) FROM t").ok()?.parse().ok()
}

#[test]
fn free_ports_are_unique_within_a_process() {
    let ports: HashSet<u16> = (0..200).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 200);
}

#[test]
fn standby_replicates_from_primary() {
    let primary = Node::primary("repl_p", PLAIN);
    let standby = Node::standby("repl_s", &primary, primary.port(), PLAIN);
    assert_eq!(primary.in_recovery(), Some(false));
    assert_eq!(standby.in_recovery(), Some(true));
    assert_eq!(
        primary.conninfo(),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            primary.port()
        )
    );

    primary.query("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 10)");
    let took = wait_until("the standby sees 10 rows", Duration::from_secs(30), || {
        count(&standby) == Some(10)
    });
    eprintln!("replicated in {took:?}");
    assert!(standby.psql("INSERT INTO t VALUES (11)").is_err());

    // Settings appended later win, and reload/restart pick them up.
    primary.append_conf("work_mem = '7MB'");
    primary.reload();
    wait_until("work_mem is reloaded", Duration::from_secs(10), || {
        primary.query("SHOW work_mem") == "7MB"
    });
    let stopped_in = primary.stop_fast();
    eprintln!("fast stop took {stopped_in:?}");
    assert!(!primary.is_running());
    primary.start();
    assert_eq!(count(&primary), Some(10));
}

#[test]
fn kill9_stops_the_postmaster_and_drop_cleans_up() {
    let node = Node::primary("kill", PLAIN);
    assert!(node.is_running());
    let base = node.data_dir().parent().unwrap().to_path_buf();
    node.kill9();
    let took = wait_until("the postmaster is gone", Duration::from_secs(10), || {
        !node.is_running()
    });
    eprintln!("postmaster gone {took:?} after SIGKILL");
    // postmaster.pid is left behind, as after a real crash.
    assert!(node.postmaster_pid().is_some());
    assert!(node.psql("SELECT 1").is_err());
    drop(node);
    assert!(!base.exists(), "{} should be removed", base.display());
}

#[test]
fn freeze_hangs_the_server_and_thaw_resumes_it() {
    let node = Node::primary("freeze", PLAIN);
    node.freeze();
    assert!(node.is_running(), "a stopped process is still running");
    let start = Instant::now();
    let result = node.psql("SELECT 1");
    let took = start.elapsed();
    eprintln!("psql against a frozen server: {result:?} after {took:?}");
    assert!(result.is_err());
    assert!(took >= Duration::from_secs(2), "it should hang, not fail");
    node.thaw();
    assert_eq!(node.query("SELECT 1"), "1");
}

#[test]
fn proxy_passes_refuses_and_recovers() {
    let node = Node::primary("proxy_refuse", PLAIN);
    let proxy = Proxy::start(node.port());
    assert_eq!(proxy.mode(), Mode::Pass);
    assert_eq!(psql_at(proxy.port(), "SELECT 42").as_deref(), Ok("42"));

    // A connection open across the switch gets closed.
    let mut open = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    thread::sleep(Duration::from_millis(100));
    proxy.set_mode(Mode::Refuse);
    assert_eq!(proxy.mode(), Mode::Refuse);
    open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    match open.read(&mut [0; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }

    // Refused, not left hanging as a blackhole would.
    wait_refused(proxy.port());
    wait_until(
        "psql is refused",
        Duration::from_secs(10),
        || matches!(psql_at(proxy.port(), "SELECT 1"), Err(e) if e.contains("Connection refused")),
    );

    proxy.set_mode(Mode::Pass);
    assert_eq!(psql_at(proxy.port(), "SELECT 43").as_deref(), Ok("43"));

    let port = proxy.port();
    drop(proxy);
    wait_refused(port);
}

/// Waits until connecting to `port` is refused. A closed listener can still
/// accept for a moment: another test's thread may be forking a child (psql,
/// pg_ctl), which holds a copy of every descriptor until it execs.
fn wait_refused(port: u16) {
    wait_until("the port refuses connections", Duration::from_secs(10), || {
        matches!(
            TcpStream::connect(("127.0.0.1", port)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    });
}

#[test]
fn blackholed_connection_hangs() {
    let node = Node::primary("proxy_bh", PLAIN);
    let proxy = Proxy::start(node.port());
    proxy.set_mode(Mode::Blackhole);
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    // An SSLRequest packet: PostgreSQL would answer it with one byte at once.
    conn.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let err = conn.read(&mut [0; 1]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    // Leaving Blackhole drops connections accepted during it.
    proxy.set_mode(Mode::Pass);
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(matches!(conn.read(&mut [0; 1]), Ok(0) | Err(_)));
    assert_eq!(psql_at(proxy.port(), "SELECT 1").as_deref(), Ok("1"));
}

#[test]
fn blackhole_stops_streaming_and_pass_resumes_it() {
    let primary = Node::primary("bh_p", PLAIN);
    let proxy = Proxy::start(primary.port());
    let standby = Node::standby("bh_s", &primary, proxy.port(), PLAIN);
    primary.query("CREATE TABLE t(id int); INSERT INTO t VALUES (1)");
    wait_until("the standby sees row 1", Duration::from_secs(30), || {
        count(&standby) == Some(1)
    });

    proxy.set_mode(Mode::Blackhole);
    primary.query("INSERT INTO t VALUES (2); SELECT pg_switch_wal()");
    let sent = primary.query("SELECT pg_current_wal_lsn()");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&standby), Some(1), "WAL got through the blackhole");
    let behind = standby.query(&format!("SELECT pg_last_wal_receive_lsn() < '{sent}'::pg_lsn"));
    assert_eq!(behind, "t");

    proxy.set_mode(Mode::Pass);
    let took = wait_until("the standby catches up", Duration::from_secs(30), || {
        count(&standby) == Some(2)
    });
    eprintln!("caught up {took:?} after the blackhole ended");
}
