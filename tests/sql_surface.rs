//! Who may read and who may act, and what happens without shared_preload_libraries.

mod common;

use common::*;
use testbed::{wait_until, Node};

#[test]
fn monitoring_roles_read_and_only_superusers_act() {
    let primary = Node::primary("privileges", FAST);
    primary.query("CREATE EXTENSION pg_promoter");
    primary.query("CREATE ROLE mon IN ROLE pg_monitor; CREATE ROLE plain");
    wait_until("the worker reports", LONG, || state(&primary) == "primary");

    // psql prints SET's tag first; the answer is the last line.
    let as_role = |role: &str, sql: &str| {
        let out = primary.psql(&format!("SET ROLE {role}; {sql}"));
        out.map(|o| o.lines().last().unwrap_or_default().to_string())
    };
    assert_eq!(
        as_role("mon", "SELECT role FROM pg_promoter_status").as_deref(),
        Ok("primary")
    );
    assert!(as_role("mon", "SELECT count(*) FROM pg_promoter_events()").is_ok());
    for act in [
        "pg_promoter_pause()",
        "pg_promoter_resume()",
        "pg_promoter_promote()",
    ] {
        let err = as_role("mon", &format!("SELECT {act}")).unwrap_err();
        assert!(err.contains("permission denied for function"), "{act}: {err}");
    }
    for read in ["pg_promoter_status()", "pg_promoter_events()"] {
        let err = as_role("plain", &format!("SELECT * FROM {read}")).unwrap_err();
        assert!(err.contains("permission denied"), "{read}: {err}");
    }
    let err = as_role("plain", "SELECT * FROM pg_promoter_status").unwrap_err();
    assert!(
        err.contains("permission denied for view pg_promoter_status"),
        "{err}"
    );
}

#[test]
fn without_shared_preload_libraries_the_functions_say_what_is_missing() {
    let node = Node::primary("nopreload", &[("shared_preload_libraries", "''")]);
    node.query("CREATE EXTENSION pg_promoter");
    for sql in [
        "SELECT * FROM pg_promoter_status",
        "SELECT * FROM pg_promoter_events()",
        "SELECT pg_promoter_pause()",
    ] {
        let err = node.psql(sql).unwrap_err();
        assert!(err.contains("ERROR:  pg_promoter is not loaded"), "{sql}: {err}");
        assert!(err.contains("shared_preload_libraries"), "{sql}: {err}");
    }
    // Loaded into a session, its settings are known, with their units.
    let shown = node.query("LOAD 'pg_promoter'; SHOW pg_promoter.keep_alive");
    assert_eq!(shown.lines().last(), Some("1s"));
}
