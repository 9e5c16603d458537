//! What a check's outcome says about the primary.
//!
//! The rule, after pg_auto_failover's health check: a server that answers at all is alive, even
//! when it refuses us (bad password, too many clients, unknown database). Such a server must
//! never be failed over from, but the DBA must hear about it. Refused, timed out, connection
//! lost, "shutting down" and "starting up" are failures, and so is a primary that answers
//! fenced: it takes no ordinary write, and it is fenced because the cluster has gone on, or may,
//! without it (a standby that took it for alive would never stand, nor follow the new leader).

/// What happened to one check, as the shell observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The check query returned: `pg_is_in_recovery()`, the server's WAL position and timeline.
    Answered {
        in_recovery: bool,
        lsn: Option<u64>,
        timeline: Option<u32>,
        /// When the server started (Unix microseconds): how a node recognises itself in a list.
        started: Option<i64>,
        /// Whether pg_promoter has fenced the server (false where it is not loaded).
        fenced: bool,
    },
    /// Connecting failed; libpq's message.
    ConnectFailed(String),
    /// The server answered the check query with an error.
    QueryFailed { sqlstate: String, message: String },
    /// An established connection broke during the check.
    Lost(String),
    /// The deadline passed, while connecting or while waiting for the answer.
    TimedOut { connecting: bool },
    /// The server's host name could not be resolved (the lookup failed, or had not ended by
    /// the deadline), and no address of it is known: nothing was tried.
    Unresolved(String),
}

/// The meaning of an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    /// Counts toward promotion; the text says why.
    Down(String),
    /// Alive but refusing us: never counts toward promotion, shown and warned about.
    Misconfigured(String),
    /// Nothing learnt of the server (its name did not resolve): neither a sign of life nor of
    /// death, shown and warned about.
    Unknown(String),
}

/// Server states in which the primary is not serving, whatever it says (libpq's and the server's
/// texts; the server sends these before authentication, so they are never translated).
const NOT_SERVING: &[&str] = &[
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
];

/// Client-side messages that can only follow a server's answer.
const ANSWERED_BY_SERVER: &[&str] = &[
    "fe_sendauth",
    "server does not support SSL",
    "certificate",
    "SCRAM",
    "channel binding",
    "GSSAPI",
    "authentication method",
];

pub fn classify(outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Answered {
            in_recovery: false,
            fenced: true,
            ..
        } => Verdict::Down("the primary answered fenced: it takes no ordinary writes".into()),
        Outcome::Answered { .. } => Verdict::Alive,
        Outcome::TimedOut { connecting: true } => Verdict::Down("timed out while connecting".into()),
        Outcome::TimedOut { connecting: false } => Verdict::Down("timed out waiting for the answer".into()),
        Outcome::Lost(message) => Verdict::Down(format!("connection lost: {}", first_line(message))),
        Outcome::ConnectFailed(message) => classify_connect_error(message),
        Outcome::Unresolved(why) => Verdict::Unknown(why.clone()),
        Outcome::QueryFailed { sqlstate, message } => {
            // Class 08 (connection exception) and 57P01-03 (shutdown, crash, cannot connect now).
            let text = first_line(message);
            if sqlstate.starts_with("08") || matches!(sqlstate.as_str(), "57P01" | "57P02" | "57P03") {
                Verdict::Down(format!("check query failed: {text}"))
            } else {
                Verdict::Misconfigured(format!("check query failed: {text} (SQLSTATE {sqlstate})"))
            }
        }
    }
}

fn classify_connect_error(message: &str) -> Verdict {
    let text = server_text(message);
    if NOT_SERVING.iter().any(|p| message.contains(p)) {
        return Verdict::Down(text.to_string());
    }
    // A server-sent error carries its severity; libpq's own failures (refused, unreachable,
    // closed) do not.
    let from_server = message.contains("FATAL:") || message.contains("ERROR:");
    if from_server || ANSWERED_BY_SERVER.iter().any(|p| message.contains(p)) {
        Verdict::Misconfigured(text.to_string())
    } else {
        Verdict::Down(text.to_string())
    }
}

/// libpq prefixes every attempt with `connection to server at "h" (a), port p failed: ` and
/// indents its hints on the next lines; keep the last attempt's reason, which is what the DBA needs.
fn server_text(message: &str) -> &str {
    let line = message
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with([' ', '\t']))
        .unwrap_or_else(|| first_line(message));
    let reason = line.rsplit_once(" failed: ").map_or(line, |(_, r)| r);
    reason.trim()
}

fn first_line(message: &str) -> &str {
    message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(msg: &str) -> Verdict {
        classify(&Outcome::ConnectFailed(msg.into()))
    }

    const PREFIX: &str = "connection to server at \"127.0.0.1\", port 5432 failed: ";

    #[test]
    fn refused_unreachable_and_closed_are_down() {
        for reason in [
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
            "No route to host",
            "Network is unreachable",
            "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally",
            "could not send SSL negotiation packet: Connection reset by peer",
        ] {
            let v = connect(&format!("{PREFIX}{reason}"));
            let first = reason.lines().next().unwrap();
            assert_eq!(v, Verdict::Down(first.into()), "{reason}");
        }
    }

    #[test]
    fn a_name_that_does_not_resolve_says_nothing_of_the_server() {
        let why = "could not resolve host name \"db\": Temporary failure in name resolution";
        assert_eq!(
            classify(&Outcome::Unresolved(why.into())),
            Verdict::Unknown(why.into())
        );
    }

    #[test]
    fn starting_up_and_shutting_down_are_down() {
        for p in NOT_SERVING {
            let v = connect(&format!("{PREFIX}FATAL:  {p}"));
            assert_eq!(v, Verdict::Down(format!("FATAL:  {p}")));
        }
    }

    #[test]
    fn a_server_that_refuses_us_is_alive_but_misconfigured() {
        for reason in [
            "FATAL:  password authentication failed for user \"postgres\"",
            "FATAL:  sorry, too many clients already",
            "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
            "FATAL:  database \"nope\" does not exist",
            "FATAL:  no pg_hba.conf entry for host \"127.0.0.1\", user \"x\", database \"postgres\"",
            "FATAL:  role \"x\" does not exist",
            "fe_sendauth: no password supplied",
            "server does not support SSL, but SSL was required",
        ] {
            let v = connect(&format!("{PREFIX}{reason}"));
            assert_eq!(v, Verdict::Misconfigured(reason.into()), "{reason}");
        }
    }

    #[test]
    fn the_last_attempt_names_the_reason_when_several_hosts_were_tried() {
        let msg = format!("{PREFIX}Connection refused\n{PREFIX}FATAL:  sorry, too many clients already\n");
        assert_eq!(
            connect(&msg),
            Verdict::Misconfigured("FATAL:  sorry, too many clients already".into())
        );
    }

    #[test]
    fn timeouts_and_lost_connections_are_down() {
        assert!(matches!(
            classify(&Outcome::TimedOut { connecting: true }),
            Verdict::Down(_)
        ));
        assert!(matches!(
            classify(&Outcome::TimedOut { connecting: false }),
            Verdict::Down(_)
        ));
        assert_eq!(
            classify(&Outcome::Lost(
                "server closed the connection unexpectedly\n\tmore".into()
            )),
            Verdict::Down("connection lost: server closed the connection unexpectedly".into())
        );
    }

    #[test]
    fn query_errors_split_on_sqlstate() {
        let q = |s: &str| {
            classify(&Outcome::QueryFailed {
                sqlstate: s.into(),
                message: "boom\nmore".into(),
            })
        };
        for down in ["57P01", "57P02", "57P03", "08006", "08000"] {
            assert_eq!(
                q(down),
                Verdict::Down("check query failed: boom".into()),
                "{down}"
            );
        }
        for alive in ["42501", "42883", "53300", "XX000"] {
            assert!(
                matches!(q(alive), Verdict::Misconfigured(m) if m.contains(alive)),
                "{alive}"
            );
        }
    }

    #[test]
    fn an_answer_is_alive_unless_a_fenced_primary_gave_it() {
        for in_recovery in [false, true] {
            for fenced in [false, true] {
                let verdict = classify(&Outcome::Answered {
                    in_recovery,
                    lsn: None,
                    timeline: Some(1),
                    started: None,
                    fenced,
                });
                if fenced && !in_recovery {
                    assert!(matches!(verdict, Verdict::Down(r) if r.contains("fenced")));
                } else {
                    assert_eq!(
                        verdict,
                        Verdict::Alive,
                        "in_recovery {in_recovery}, fenced {fenced}"
                    );
                }
            }
        }
    }
}
