//! pgwire against a real PostgreSQL server started by the test bed (which needs root, or the
//! server's OS user, and PostgreSQL's binaries; without them these tests say so and pass).
// One poll(2), to drive a `Conn` by hand as the extension does with its latch.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::time::{Duration, Instant};

use pgwire::{parse_conninfo, Client, Conn, PgResult, Poll, Progress};
use testbed::Node;

/// The extension may not be built; these tests don't need it.
const PLAIN: &[(&str, &str)] = &[("shared_preload_libraries", "''")];

const TIMEOUT: Duration = Duration::from_secs(10);

fn have_postgres() -> bool {
    let postgres = testbed::bindir().join("postgres");
    if !postgres.exists() {
        eprintln!("skipped: no {}", postgres.display());
    }
    postgres.exists()
}

/// Waits until `conn`'s socket is readable (or writable), failing the test after TIMEOUT.
fn wait(conn: &Conn, write: bool) {
    let mut fd = libc::pollfd {
        fd: conn.socket(),
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    // SAFETY: one live pollfd for the whole call, on a socket `conn` keeps open meanwhile.
    let n = unsafe { libc::poll(&mut fd, 1, TIMEOUT.as_millis() as i32) };
    assert!(n > 0, "poll: {n}, {}", std::io::Error::last_os_error());
}

/// Connects by hand, step by step: `Conn::start`, then `poll` whenever the socket is ready.
fn connect(conninfo: &str) -> Conn {
    let params = parse_conninfo(&CString::new(conninfo).unwrap()).unwrap();
    let mut conn = Conn::start(&params).unwrap();
    let mut write = true;
    loop {
        wait(&conn, write);
        match conn.poll() {
            Poll::Ready => break,
            Poll::Read => write = false,
            Poll::Write => write = true,
            Poll::Failed => panic!("connecting to {conninfo}: {}", conn.error_message()),
        }
    }
    assert!(conn.is_ok());
    conn
}

/// The one result of a query sent on `conn`, read without blocking.
fn result(conn: &mut Conn) -> PgResult {
    while conn.flush().unwrap() {
        wait(conn, true);
    }
    while conn.consume().unwrap() {
        wait(conn, false);
    }
    let res = conn.next_result().expect("a result");
    while conn.consume().unwrap() {
        wait(conn, false);
    }
    assert!(conn.next_result().is_none(), "one result only");
    res
}

#[test]
fn conn_runs_queries_with_parameters_and_reports_errors() {
    if !have_postgres() {
        return;
    }
    let node = Node::primary("pgwire_conn", PLAIN);
    let mut conn = connect(&format!("{} connect_timeout=5", node.conninfo()));
    // Connected over TCP, everything sent is acknowledged.
    assert_eq!(conn.progress(), Progress::Delivered);

    let params = [c"40", c"2", c"it's; DROP TABLE x --"];
    conn.send_query(c"SELECT $1::int + $2::int, $3::text, NULL::text", &params)
        .unwrap();
    let res = result(&mut conn);
    assert!(res.has_rows() && res.is_ok());
    assert_eq!((res.rows(), res.columns()), (1, 3));
    assert_eq!(res.value(0, 0).as_deref(), Some("42"));
    assert_eq!(res.value(0, 1).as_deref(), Some("it's; DROP TABLE x --"));
    assert_eq!(res.value(0, 2), None, "NULL");
    assert_eq!(res.value(1, 0), None, "out of range");
    assert_eq!(res.value(0, 3), None, "out of range");
    assert_eq!(res.value(-1, 0), None, "out of range");
    assert_eq!(res.sqlstate(), None);
    assert_eq!(res.error_message(), "");

    conn.send_query(c"SELECT 1 / $1::int", &[c"0"]).unwrap();
    let res = result(&mut conn);
    assert!(!res.has_rows() && !res.is_ok());
    assert_eq!(res.sqlstate().as_deref(), Some("22012"));
    assert_eq!(res.error_message(), "ERROR:  division by zero");
    assert!(conn.is_ok(), "a failed query leaves the connection usable");

    // The extended protocol takes one statement; the simple one several.
    conn.send_query(c"SELECT 1; SELECT 2", &[]).unwrap();
    assert_eq!(result(&mut conn).sqlstate().as_deref(), Some("42601"));
    conn.send_simple_query(c"CREATE TABLE t(id int); INSERT INTO t VALUES (7)")
        .unwrap();
    while conn.consume().unwrap() {
        wait(&conn, false);
    }
    for _ in 0..2 {
        let res = conn.next_result().expect("a result per statement");
        assert!(res.is_ok() && !res.has_rows(), "{}", res.error_message());
        while conn.consume().unwrap() {
            wait(&conn, false);
        }
    }
    assert!(conn.next_result().is_none());

    // A Conn moves to another thread whole.
    let mut conn = std::thread::spawn(move || {
        conn.send_query(c"SELECT id FROM t", &[]).unwrap();
        assert_eq!(result(&mut conn).value(0, 0).as_deref(), Some("7"));
        conn
    })
    .join()
    .unwrap();
    conn.send_query(c"SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(result(&mut conn).value(0, 0).as_deref(), Some("1"));

    // Over the server's Unix socket there is no network path to speak of.
    let socket_dir = node.data_dir().parent().unwrap().display().to_string();
    let local = connect(&format!(
        "host={socket_dir} port={} user=postgres dbname=postgres",
        node.port()
    ));
    assert_eq!(local.progress(), Progress::Local);

    // A server that goes away: the connection reports it.
    conn.send_query(c"SELECT pg_backend_pid()", &[]).unwrap();
    let backend = result(&mut conn).value(0, 0).unwrap();
    drop(local);
    node.kill9();
    testbed::wait_until("the backend exits", TIMEOUT, || {
        !std::path::Path::new(&format!("/proc/{backend}")).exists()
    });
    let lost: Result<(), String> = conn.send_query(c"SELECT 1", &[]).and_then(|()| loop {
        if !conn.flush()? && !conn.consume()? {
            let res = conn.next_result().expect("a result");
            assert!(!res.is_ok());
            break Err(res.error_message());
        }
        wait(&conn, false);
    });
    eprintln!("after kill -9: {lost:?}");
    assert!(lost.is_err());
}

#[test]
fn client_runs_queries_keeps_its_session_and_honours_its_deadline() {
    if !have_postgres() {
        return;
    }
    let node = Node::primary("pgwire_client", PLAIN);
    let mut client = Client::new(&format!("{} connect_timeout=5", node.conninfo()));

    let rows = client
        .exec_params("SELECT $1::text || $2::text, NULL", &["it's", " fine"], TIMEOUT)
        .unwrap();
    assert_eq!(rows, vec![vec![Some("it's fine".to_string()), None]]);
    assert!(client.is_connected());

    // Several statements in one call, one implicit transaction; rows of every SELECT.
    let rows = client
        .exec(
            "CREATE TABLE t(id int); INSERT INTO t VALUES (1), (2); SELECT id FROM t ORDER BY id; \
             SELECT 3",
            TIMEOUT,
        )
        .unwrap();
    let rows: Vec<_> = rows.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(rows, ["1", "2", "3"]);

    // One session, kept.
    let pid = client.exec("SELECT pg_backend_pid()", TIMEOUT).unwrap();
    assert_eq!(client.exec("SELECT pg_backend_pid()", TIMEOUT).unwrap(), pid);

    // An error in the middle undoes the whole string and drops the session.
    let err = client
        .exec(
            "INSERT INTO t VALUES (3); SELECT * FROM nosuchtable; INSERT INTO t VALUES (4)",
            TIMEOUT,
        )
        .unwrap_err();
    assert!(err.contains(r#"relation "nosuchtable" does not exist"#), "{err}");
    assert!(!client.is_connected());
    let count = client.exec("SELECT count(*) FROM t", TIMEOUT).unwrap();
    assert_eq!(count[0][0].as_deref(), Some("2"));
    assert_ne!(client.exec("SELECT pg_backend_pid()", TIMEOUT).unwrap(), pid);

    // A session ended under it: one error, then a new session.
    let pid = client.exec("SELECT pg_backend_pid()", TIMEOUT).unwrap()[0][0]
        .clone()
        .unwrap();
    let mut other = Client::new(&node.conninfo());
    other
        .exec_params("SELECT pg_terminate_backend($1::int)", &[&pid], TIMEOUT)
        .unwrap();
    let err = client.exec("SELECT 1", TIMEOUT).unwrap_err();
    eprintln!("after pg_terminate_backend: {err}");
    assert_eq!(
        client.exec("SELECT 1", TIMEOUT).unwrap(),
        [[Some("1".to_string())]]
    );

    // A frozen server: a kept session's query, then a new connection, each cost their timeout.
    let short = Duration::from_millis(700);
    node.freeze();
    for what in ["a query on the kept session", "connecting"] {
        let start = Instant::now();
        let err = client.exec("SELECT 1", short).unwrap_err();
        let took = start.elapsed();
        eprintln!("{what} against a frozen server: {err} after {took:?}");
        assert!(err.contains("timed out"), "{what}: {err}");
        assert!(
            took >= short && took < short + Duration::from_millis(500),
            "{what}: {took:?}"
        );
        assert!(!client.is_connected());
    }
    node.thaw();
    assert_eq!(
        client.exec("SELECT 1", TIMEOUT).unwrap(),
        [[Some("1".to_string())]]
    );

    // Moved to another thread, still the same session.
    let pid = client.exec("SELECT pg_backend_pid()", TIMEOUT).unwrap();
    let again = std::thread::spawn(move || client.exec("SELECT pg_backend_pid()", TIMEOUT).unwrap())
        .join()
        .unwrap();
    assert_eq!(again, pid);
}
