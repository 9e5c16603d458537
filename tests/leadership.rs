//! A member's side of the leadership protocol, asked directly: one vote per term, kept in the
//! state file across restarts; a lease grant that holds votes back; a newer term named to an
//! older leader.

mod common;

use std::time::Duration;

use common::*;
use testbed::{wait_until, Node};

/// `(granted, term, leader, refusal)` as text, `|`-separated.
fn vote(node: &Node, term: i64, candidate: &str) -> String {
    node.query(&format!(
        "SELECT granted, term, leader, refusal FROM pg_promoter_vote({term}, '{candidate}', 1, '0/3000000', 1)"
    ))
}

fn lease(node: &Node, term: i64, leader: &str, duration: &str) -> String {
    node.query(&format!(
        "SELECT granted, term, leader, refusal FROM pg_promoter_lease({term}, '{leader}', '{duration}')"
    ))
}

/// A witness-like member: the library preloaded, 200 ms x 3 (a lease, and the quiet period after
/// a start, of 400 ms).
fn member(name: &str) -> Node {
    let node = Node::primary(name, FAST);
    node.query("CREATE EXTENSION pg_promoter");
    node
}

#[test]
fn a_member_grants_one_vote_per_term_and_keeps_it_across_a_restart() {
    let w = member("vote-w");
    wait_until("the quiet period after the start ends", LONG, || {
        !vote(&w, 5, "s1").contains("started recently")
    });
    assert_eq!(vote(&w, 5, "s1"), "t|5||");
    assert_eq!(vote(&w, 5, "s2"), "f|5||it voted for s1 in term 5");
    assert_eq!(status(&w, "term"), "5");
    assert_eq!(status(&w, "voted_for"), "s1");
    let file = std::fs::read_to_string(w.data_dir().join("pg_promoter.state")).unwrap();
    assert!(file.contains("term 5\nvoted_for s1\n"), "{file}");

    w.restart();
    // Quiet at first (its grants were in memory), then the vote on disk still stands.
    assert!(vote(&w, 5, "s2").contains("started recently"));
    wait_until("the quiet period after the restart ends", LONG, || {
        !vote(&w, 5, "s2").contains("started recently")
    });
    assert_eq!(vote(&w, 5, "s2"), "f|5||it voted for s1 in term 5");
    assert_eq!(vote(&w, 4, "s2"), "f|5||term 5 is newer");
    assert_eq!(vote(&w, 6, "s2"), "t|6||");
}

#[test]
fn a_lease_grant_holds_votes_back_and_tells_an_older_leader_who_leads() {
    let w = member("lease-w");
    wait_until("the quiet period after the start ends", LONG, || {
        !vote(&w, 1, "s0").contains("started recently")
    });
    assert_eq!(lease(&w, 6, "p", "2s"), "t|6|p|");
    assert_eq!(status(&w, "leader"), "p");
    assert_ne!(status(&w, "lease_expires_at"), "");
    let refused = vote(&w, 7, "s1");
    assert!(refused.starts_with("f|6|p|its lease to p holds for"), "{refused}");
    assert_eq!(status(&w, "term"), "6", "a refused vote does not take the term");
    assert_eq!(lease(&w, 5, "old", "2s"), "f|6|p|term 6 is newer, led by p");
    assert_eq!(lease(&w, 6, "q", "2s"), "f|6|p|p leads term 6");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vote(&w, 7, "s1"), "t|7||");
    assert_eq!(status(&w, "lease_expires_at"), "");
}

/// `(granted, term, refusal, timeline)` of a standby's ballot that claims `claim`.
fn claiming(node: &Node, term: i64, candidate: &str, claim: i32) -> String {
    node.query(&format!(
        "SELECT granted, term, refusal, timeline FROM pg_promoter_vote({term}, '{candidate}', 1, '0/3000000', 1, false, {claim})"
    ))
}

#[test]
fn a_vote_keeps_the_timeline_its_candidate_claimed_and_refuses_a_claim_not_above_it() {
    let w = member("claim-w");
    wait_until("the quiet period after the start ends", LONG, || {
        !claiming(&w, 5, "s1", 2).contains("started recently")
    });
    assert_eq!(claiming(&w, 5, "s1", 2), "t|5||2");
    let file = std::fs::read_to_string(w.data_dir().join("pg_promoter.state")).unwrap();
    assert!(file.contains("timeline 2\n"), "{file}");
    w.restart();
    wait_until("the quiet period after the restart ends", LONG, || {
        !claiming(&w, 6, "s2", 2).contains("started recently")
    });
    // Kept across the restart: the next term's candidate must claim above it.
    assert_eq!(
        claiming(&w, 6, "s2", 2),
        "f|6|it voted for a candidate that claimed timeline 2: claim a higher one|2"
    );
    assert!(
        has_event(&w, "vote_refused", "claimed timeline 2"),
        "{:#?}",
        events(&w)
    );
    assert_eq!(claiming(&w, 6, "s2", 3), "t|6||3");
    assert!(has_event(
        &w,
        "vote_granted",
        "to s2 in term 6, claiming timeline 3"
    ));
    // A primary claims nothing: its ballot leaves the record as it is.
    let primary = w.query("SELECT granted, timeline FROM pg_promoter_vote(7, 'p', 1, '0/0', 1, true)");
    assert_eq!(primary, "t|3");
}

#[test]
fn bad_requests_are_errors_and_only_superusers_may_ask() {
    let w = member("bad-w");
    let err = w
        .psql("SELECT * FROM pg_promoter_vote(-1, 's1', 1, '0/0', 1)")
        .unwrap_err();
    assert!(err.contains("term must not be negative"), "{err}");
    let err = w
        .psql("SELECT * FROM pg_promoter_vote(1, 'a b', 1, '0/0', 1)")
        .unwrap_err();
    assert!(err.contains("invalid member name \"a b\""), "{err}");
    let err = w
        .psql("SELECT * FROM pg_promoter_vote(1, 's1', 1, 'x', 1)")
        .unwrap_err();
    assert!(err.contains("invalid WAL position \"x\""), "{err}");
    let err = w
        .psql("SELECT * FROM pg_promoter_vote(1, 's1', 1, '0/0', 1, false, 1)")
        .unwrap_err();
    assert!(err.contains("claimed timeline 1 is out of range"), "{err}");
    let err = w
        .psql("SELECT * FROM pg_promoter_vote(1, 'p', 1, '0/0', 1, true, 2)")
        .unwrap_err();
    assert!(err.contains("a primary's ballot claims no timeline"), "{err}");
    let err = w
        .psql("SELECT * FROM pg_promoter_lease(1, 'p', '0s')")
        .unwrap_err();
    assert!(err.contains("duration must be between"), "{err}");
    w.query("CREATE ROLE mon LOGIN IN ROLE pg_monitor");
    for call in [
        "pg_promoter_vote(1, 's1', 1, '0/0', 1)",
        "pg_promoter_lease(1, 'p', '1s')",
    ] {
        let err = psql_as(&w, "mon", &format!("SELECT * FROM {call}")).unwrap_err();
        assert!(err.contains("permission denied for function"), "{call}: {err}");
    }
}
