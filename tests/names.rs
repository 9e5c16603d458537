//! Host names in the check's conninfo: a resolver that fails or hangs neither blocks the worker
//! nor counts as a dead primary, and the last good address is kept while it is down. Each
//! standby runs on a simulated host with resolver files of its own.

mod common;

use std::time::Duration;

use common::*;
use testbed::{wait_until, Net, Node, Resolver};

const NAME: &str = "db-primary";

/// A primary, and a standby whose check names the primary by `NAME` (its WAL receiver uses the
/// address), with the standby's resolver as given from its start.
fn cluster(net: &Net, name: &str, resolver: Resolver, extra: &[(&str, &str)]) -> (Node, Node) {
    let (hp, hs) = (net.host("p"), net.host("s"));
    net.set_resolver(&hs, &[(NAME, hp.ip())], resolver);
    let primary = Node::primary_on(&hp, &format!("{name}-p"), FAST);
    primary.query("CREATE EXTENSION pg_promoter");
    let check = format!(
        "'host={NAME} port={} user=postgres dbname=postgres'",
        primary.port()
    );
    let mut settings = FAST.to_vec();
    settings.push(("pg_promoter.primary_conninfo", check.as_str()));
    settings.extend_from_slice(extra);
    let standby = Node::standby_on(&hs, &format!("{name}-s"), &primary, &settings);
    (primary, standby)
}

/// The standby's check connections on the primary.
fn check_sessions(primary: &Node, standby: &Node) -> String {
    let ip = standby.address();
    primary.query(&format!(
        "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
         WHERE application_name = 'pg_promoter' AND client_addr = '{ip}'"
    ))
}

/// Whether the standby's worker finished a check after `since` (a timestamp of the standby's).
fn checked_since(standby: &Node, since: &str, column: &str) -> bool {
    standby.query(&format!(
        "SELECT coalesce({column} > '{since}', false) FROM pg_promoter_status"
    )) == "t"
}

#[test]
fn a_hanging_resolver_blocks_neither_checks_nor_shutdown_and_the_last_address_is_kept() {
    let net = Net::new("dnshang");
    let (primary, standby) = cluster(&net, "dnshang", Resolver::Works, &[]);
    wait_until("the standby watches, by name", LONG, || {
        state(&standby) == "watching"
    });
    let hs = standby.host().unwrap().clone();
    net.set_resolver(&hs, &[], Resolver::Hangs);

    // The kept check connection is ended on the primary: the next check needs a fresh one,
    // which connects to the address the name had (a lookup of the name would hang for
    // minutes).
    let before = check_sessions(&primary, &standby);
    assert!(!before.is_empty(), "the standby's check is connected");
    primary.query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({before})"
    ));
    let since = standby.query("SELECT now()");
    wait_until("a fresh check connection reaches the primary", LONG, || {
        let now = check_sessions(&primary, &standby);
        !now.is_empty() && now != before
    });
    wait_until("checks succeed after it", LONG, || {
        checked_since(&standby, &since, "last_success_at")
    });
    assert_eq!(status(&standby, "consecutive_failures"), "0");

    // A new worker knows no address: its checks cannot tell, and say so, without counting a
    // failure or blocking.
    let old = terminate_worker(&standby);
    wait_new_worker(&standby, &old);
    wait_until("the check says it cannot tell", LONG, || {
        has_event(&standby, "check_unknown", "lookup had not ended")
    });
    let since = standby.query("SELECT now()");
    wait_until("checks go on meanwhile", LONG, || {
        checked_since(&standby, &since, "last_check_at")
    });
    assert_eq!(status(&standby, "consecutive_failures"), "0");
    assert!(status(&standby, "last_error").contains(&format!("could not resolve host name \"{NAME}\"")));
    assert_stays_standby(&standby, Duration::from_secs(2));
    // Nor does a lookup under way hold up a shutdown.
    standby.stop_fast();
}

#[test]
fn a_name_that_does_not_resolve_is_not_a_dead_primary_and_checks_resume_when_it_does() {
    let net = Net::new("dnsfail");
    let (primary, standby) = cluster(&net, "dnsfail", Resolver::Fails, &[]);
    // The WAL receiver streams (by address), so the primary was reached; the primary is idle,
    // so the WAL receiver's last message soon ages out of the window.
    wait_until("the check says it cannot tell", LONG, || {
        has_event(&standby, "check_unknown", "could not resolve host name")
    });
    assert_stays_standby(&standby, Duration::from_secs(5));
    assert_eq!(status(&standby, "consecutive_failures"), "0");
    assert!(status(&standby, "last_error").contains(&format!("could not resolve host name \"{NAME}\"")));
    assert!(standby
        .log()
        .contains("WARNING:  pg_promoter: could not resolve host name"));
    // pg_promoter_probe(), as a witness runs it, answers "unknown", not "unreachable".
    let probe = standby.query(&format!(
        "SELECT reachable IS NULL, error FROM pg_promoter_probe('host={NAME} port={}')",
        primary.port()
    ));
    assert!(probe.starts_with("t|could not resolve host name"), "{probe}");

    // The name resolves again: checks answer, and a real death is still seen.
    let hp = primary.host().unwrap().clone();
    net.set_resolver(standby.host().unwrap(), &[(NAME, hp.ip())], Resolver::Works);
    let since = standby.query("SELECT now()");
    wait_until("checks succeed again", LONG, || {
        checked_since(&standby, &since, "last_success_at")
    });
    assert!(standby
        .log()
        .contains(&format!("LOG:  pg_promoter: host name \"{NAME}\" resolves again")));
    primary.kill9();
    wait_promoted(&standby);
}

#[test]
fn three_members_named_by_host_names_lead_follow_and_fail_over() {
    let net = Net::new("dnspeers");
    let labels = ["p", "s1", "s2"];
    let hosts: Vec<_> = labels.iter().map(|l| net.host(l)).collect();
    let names: Vec<String> = labels.iter().map(|l| format!("db-{l}")).collect();
    let table: Vec<(&str, std::net::Ipv4Addr)> = names
        .iter()
        .zip(&hosts)
        .map(|(n, h)| (n.as_str(), h.ip()))
        .collect();
    for h in &hosts {
        net.set_resolver(h, &table, Resolver::Works);
    }
    let primary = Node::primary_on(&hosts[0], "dnspeers-p", FAST);
    primary.query("CREATE EXTENSION pg_promoter; CREATE ROLE app LOGIN; CREATE TABLE t (id int)");
    primary.query("GRANT ALL ON t TO app");
    let mut nodes = vec![primary];
    for i in 1..3 {
        let standby = Node::standby_on(&hosts[i], &format!("dnspeers-{}", labels[i]), &nodes[0], FAST);
        nodes.push(standby);
    }
    // Every member by its name: the member rounds, votes and leases all go through lookups.
    let peers: Vec<String> = labels
        .iter()
        .zip(&names)
        .zip(&nodes)
        .map(|((l, name), n)| format!("{l}: host={name} port={} user=postgres dbname=postgres", n.port()))
        .collect();
    for node in &nodes {
        node.append_conf(&format!("pg_promoter.peers = '{}'", peers.join("; ")));
        node.reload();
    }
    wait_until("the primary leads", LONG, || status(&nodes[0], "leader") == "p");
    wait_until("an ordinary commit succeeds on it", LONG, || {
        psql_as(&nodes[0], "app", "INSERT INTO t VALUES (1)").is_ok()
    });
    for s in &nodes[1..] {
        wait_until("the standbys watch", LONG, || state(s) == "watching");
    }
    nodes[0].kill9();
    let winner = testbed::try_wait_until(LONG, || nodes[1..].iter().any(|s| s.in_recovery() == Some(false)));
    assert!(
        winner.is_some(),
        "no standby was promoted: {:#?}",
        events(&nodes[1])
    );
    let (new, other, new_name) = if nodes[1].in_recovery() == Some(false) {
        (&nodes[1], &nodes[2], &names[1])
    } else {
        (&nodes[2], &nodes[1], &names[2])
    };
    wait_until("the new primary takes ordinary commits", LONG, || {
        psql_as(new, "app", "INSERT INTO t VALUES (2)").is_ok()
    });
    // Re-pointed with the winner's conninfo from peers: by its name.
    let sender = "SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'";
    wait_until("the other standby follows it", LONG, || {
        other.query(sender) == *new_name
    });
}
