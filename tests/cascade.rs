//! Cascading replication: a standby that streams from another standby checks that standby, not
//! the primary, so losing it says nothing about the primary.

mod common;

use std::time::Duration;

use common::*;
use testbed::{wait_until, Node};

#[test]
fn a_cascaded_standby_does_not_promote_when_its_upstream_standby_dies() {
    let (primary, a) = pair("cascade", FAST, None);
    primary.query("CREATE ROLE app LOGIN; CREATE TABLE t (x int); GRANT ALL ON t TO app");
    // B streams from standby A, and its worker checks A (B's primary_conninfo).
    let b = Node::standby("cascade-b", &a, a.port(), FAST);
    wait_until("B's worker watches its upstream", LONG, || {
        state(&b) == "watching"
    });
    assert_eq!(status(&b, "primary_in_recovery"), "t");

    a.kill9();
    wait_until("B refuses, naming the cascade", LONG, || {
        has_event(&b, "refused", "cascades from it")
    });
    assert_stays_standby(&b, Duration::from_secs(2));
    // The primary lives and keeps taking ordinary commits.
    assert_eq!(primary.in_recovery(), Some(false));
    assert_eq!(
        psql_as(&primary, "app", "INSERT INTO t VALUES (1)").as_deref(),
        Ok("INSERT 0 1")
    );
}
