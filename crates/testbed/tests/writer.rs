//! The test bed's write load ([`Writer`]) on plain PostgreSQL (no pg_promoter): it counts only
//! acknowledged commits, rides out lost sessions, makes its commits as the role it is given,
//! and never hangs on a frozen server.

use std::thread;
use std::time::{Duration, Instant};

use testbed::{wait_until, Node, Writer};

/// The extension may not be built yet; these tests don't need it.
const PLAIN: &[(&str, &str)] = &[("shared_preload_libraries", "''")];

const LONG: Duration = Duration::from_secs(30);

fn number(node: &Node, sql: &str) -> u64 {
    node.query(sql).parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every acknowledged commit is there, and at most the one in flight besides.
fn assert_acked_present(node: &Node, table: &str, acked: u64) {
    let present = number(node, &format!("SELECT count(*) FROM {table} WHERE id <= {acked}"));
    assert_eq!(present, acked, "acknowledged commits missing");
    let beyond = number(node, &format!("SELECT count(*) FROM {table} WHERE id > {acked}"));
    assert!(beyond <= 1, "{beyond} commits beyond the {acked} acknowledged");
}

#[test]
fn writer_counts_acknowledged_commits_across_lost_sessions_and_a_restart() {
    let node = Node::primary("writer", PLAIN);
    let writer = Writer::start(&node, "load", Duration::from_millis(10));
    let start = Instant::now();
    wait_until("commits flow", LONG, || writer.acked() >= 50);
    eprintln!("50 commits in {:?}", start.elapsed());
    // One kept session, not one per commit.
    let sessions = || {
        number(
            &node,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid()",
        )
    };
    assert_eq!(sessions(), 1);

    // Its session ended: the commit in flight fails, the next tick reconnects.
    let before = writer.acked();
    node.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    );
    wait_until("commits flow again", LONG, || writer.acked() >= before + 20);

    // The server restarts under it.
    let before = writer.acked();
    node.restart();
    wait_until("commits flow after the restart", LONG, || {
        writer.acked() >= before + 20
    });
    assert_eq!(sessions(), 1);

    let acked = writer.stop();
    assert_acked_present(&node, "load", acked);
}

#[test]
fn writer_commits_as_its_role_or_not_at_all() {
    let node = Node::primary("writer_role", PLAIN);
    node.query("CREATE ROLE app LOGIN");
    let writer = Writer::start_as(&node, "app", "load", Duration::from_millis(10));
    wait_until("ordinary commits flow", LONG, || writer.acked() >= 20);

    // The role loses the right to insert: its commits fail (a superuser's would not).
    node.query("REVOKE ALL ON load FROM app");
    thread::sleep(Duration::from_millis(100));
    let stalled = writer.acked();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        writer.acked(),
        stalled,
        "commits counted without the right to insert"
    );
    assert_acked_present(&node, "load", stalled);

    node.query("GRANT ALL ON load TO app");
    wait_until("commits flow again", LONG, || writer.acked() >= stalled + 20);

    // The role is gone: SET ROLE fails, and nothing is inserted (nor as the superuser).
    node.query("REVOKE ALL ON load FROM app; DROP ROLE app");
    thread::sleep(Duration::from_millis(100));
    let stalled = writer.acked();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(writer.acked(), stalled, "commits counted without the role");
    let acked = writer.stop();
    assert_acked_present(&node, "load", acked);
}

#[test]
fn writer_stops_within_its_commit_timeout_on_a_frozen_server() {
    let node = Node::primary("writer_frozen", PLAIN);
    let writer = Writer::start(&node, "load", Duration::from_millis(10));
    wait_until("commits flow", LONG, || writer.acked() >= 20);
    node.freeze();
    thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let acked = writer.stop();
    let took = start.elapsed();
    eprintln!("stopped in {took:?} with the server frozen");
    assert!(took < Duration::from_secs(7), "stopping took {took:?}");
    node.thaw();
    assert_acked_present(&node, "load", acked);
}
