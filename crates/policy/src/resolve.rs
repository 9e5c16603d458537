//! Host names, resolved away from the latch loop. libpq resolves a `host` name with a blocking
//! `getaddrinfo()` inside its non-blocking connect, so a slow resolver would stall the worker
//! and a failed one would look like a dead primary. The shell resolves names on a thread of its
//! own and hands libpq the addresses as `hostaddr`; this module decides which entries need a
//! name resolved, how the addresses go into the connection's parameters, and when to ask the
//! resolver again, keeping the last good addresses while it fails.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use crate::time::{Micros, SEC};

/// How often a name is looked up again, at most, counted from the end of the last lookup: at each
/// fresh connection past this, so a name that moves is followed within a check or so.
pub const REFRESH: Micros = SEC;

/// Whether a `host` entry is a name for the resolver: not empty (libpq's default socket), not a
/// socket directory (`/...`, or `@...` for an abstract socket), not an address (an IPv6 one may
/// carry a `%zone`). Anything else is looked up, even a malformed name: libpq would too.
pub fn is_name(host: &str) -> bool {
    let host = host.trim();
    let zoned_v6 = host
        .split('%')
        .next()
        .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok());
    !host.is_empty() && !host.starts_with(['/', '@']) && host.parse::<IpAddr>().is_err() && !zoned_v6
}

/// One host libpq will try: its name, address (empty: libpq's own) and port (empty: the default).
struct Entry<'a> {
    host: &'a str,
    addr: String,
    port: &'a str,
}

fn value<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn list(value: Option<&str>) -> Vec<&str> {
    value.map_or_else(Vec::new, |v| v.split(',').map(str::trim).collect())
}

/// The hosts of a connection, as libpq pairs its lists; `None` when the lists do not line up
/// (libpq reports that itself).
fn entries(params: &[(String, String)]) -> Option<Vec<Entry<'_>>> {
    let hosts = list(value(params, "host"));
    let addrs = list(value(params, "hostaddr"));
    let ports = list(value(params, "port"));
    if (!addrs.is_empty() && addrs.len() != hosts.len()) || ports.len() > 1 && ports.len() != hosts.len() {
        return None;
    }
    Some(
        hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Entry {
                host,
                addr: addrs.get(i).map_or_else(String::new, |a| a.to_string()),
                port: ports.get(i).or(ports.first()).copied().unwrap_or(""),
            })
            .collect(),
    )
}

/// The names a connection needs resolved: its hosts that are names and have no `hostaddr`.
pub fn names(params: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in entries(params).unwrap_or_default() {
        if e.addr.is_empty() && is_name(e.host) && !names.iter().any(|n| n == e.host) {
            names.push(e.host.to_string());
        }
    }
    names
}

/// The parameters with every named host given its addresses: one host entry per address, each
/// with the name (which TLS verifies and the server's messages show) and the address as
/// `hostaddr`, so libpq never resolves. A name missing from `addrs` (its lookup failed) is left
/// out; `None` when no host is left to try.
pub fn with_addresses(
    params: &[(String, String)],
    addrs: &HashMap<String, Vec<IpAddr>>,
) -> Option<Vec<(String, String)>> {
    let Some(entries) = entries(params) else {
        return Some(params.to_vec());
    };
    if entries.is_empty() {
        return Some(params.to_vec());
    }
    let mut out: Vec<Entry> = Vec::new();
    for e in entries {
        if !e.addr.is_empty() || !is_name(e.host) {
            out.push(e);
            continue;
        }
        let resolved = addrs.get(e.host).map_or(&[][..], Vec::as_slice);
        out.extend(resolved.iter().map(|a| Entry {
            host: e.host,
            addr: a.to_string(),
            port: e.port,
        }));
    }
    if out.is_empty() {
        return None;
    }
    let hosts = out.iter().map(|e| e.host).collect::<Vec<_>>().join(",");
    let hostaddrs = out.iter().map(|e| e.addr.as_str()).collect::<Vec<_>>().join(",");
    let ports = out.iter().map(|e| e.port).collect::<Vec<_>>().join(",");
    let mut params: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "host" | "hostaddr" | "port"))
        .cloned()
        .collect();
    params.push(("host".into(), hosts));
    params.push(("hostaddr".into(), hostaddrs));
    if out.iter().any(|e| !e.port.is_empty()) {
        params.push(("port".into(), ports));
    }
    Some(params)
}

/// What is known of one name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Known {
    /// The last good addresses, kept while the resolver fails.
    addrs: Vec<IpAddr>,
    /// Why the last lookup failed, if it did.
    failed: Option<String>,
    /// When the last lookup ended, and whether one is under way.
    ended_at: Option<Micros>,
    asking: bool,
}

/// The names a process has looked up.
#[derive(Debug, Default)]
pub struct Cache {
    names: HashMap<String, Known>,
}

/// What a connection to a name can do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Connect to these addresses (the last good ones: a refresh may be under way).
    Use(Vec<IpAddr>),
    /// No address yet: wait for the lookup under way.
    Wait,
    /// No address, and the last lookup failed a moment ago: the check cannot tell.
    Failed(String),
}

impl Cache {
    /// What to do for `name` now, and whether to start a lookup first (none is under way and the
    /// last one ended [`REFRESH`] ago or more).
    pub fn lookup(&self, name: &str, now: Micros) -> (Lookup, bool) {
        let known = self.names.get(name).cloned().unwrap_or_default();
        let ask = !known.asking && known.ended_at.is_none_or(|at| now - at >= REFRESH);
        let lookup = if !known.addrs.is_empty() {
            Lookup::Use(known.addrs)
        } else if known.asking || ask {
            Lookup::Wait
        } else {
            Lookup::Failed(
                known
                    .failed
                    .unwrap_or_else(|| format!("could not resolve host name \"{name}\"")),
            )
        };
        (lookup, ask)
    }

    /// A lookup of `name` started.
    pub fn asked(&mut self, name: &str) {
        self.names.entry(name.to_string()).or_default().asking = true;
    }

    /// A lookup of `name` ended. A failure keeps the last good addresses. Returns a line for
    /// the log when the name's fate changed: it failed where it had worked (or never had), or
    /// worked again.
    pub fn answered(
        &mut self,
        name: &str,
        result: Result<Vec<IpAddr>, String>,
        now: Micros,
    ) -> Option<String> {
        let known = self.names.entry(name.to_string()).or_default();
        known.asking = false;
        known.ended_at = Some(now);
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                let back = known.failed.take().map(|_| {
                    format!(
                        "host name \"{name}\" resolves again, to {}",
                        addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
                    )
                });
                known.addrs = addrs;
                back
            }
            Ok(_) => Self::failed(
                known,
                format!("could not resolve host name \"{name}\": no address"),
            ),
            Err(why) => Self::failed(known, why),
        }
    }

    fn failed(known: &mut Known, why: String) -> Option<String> {
        let first = known.failed.is_none();
        known.failed = Some(why.clone());
        first.then(|| match known.addrs.as_slice() {
            [] => format!("{why}: checks of it cannot tell whether the server is up"),
            addrs => format!(
                "{why}: connecting to its last known address{} {} meanwhile",
                if addrs.len() > 1 { "es" } else { "" },
                addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_names_need_the_resolver() {
        for name in ["db1", "db1.example.com", " db-1 "] {
            assert!(is_name(name), "{name}");
        }
        for name in ["db1:5432", "[db1]"] {
            assert!(is_name(name), "{name}: malformed, but libpq would look it up");
        }
        for not in [
            "",
            "/var/run/postgresql",
            "@abstract",
            "10.0.0.1",
            "::1",
            "fe80::1%eth0",
        ] {
            assert!(!is_name(not), "{not}");
        }
        let params = pairs(&[("host", "db1,10.0.0.2,/tmp,db3,db1"), ("user", "u")]);
        assert_eq!(names(&params), vec!["db1".to_string(), "db3".to_string()]);
        // A host given its hostaddr is left alone, and so is a connection without host.
        assert!(names(&pairs(&[("host", "db1"), ("hostaddr", "10.0.0.1")])).is_empty());
        assert!(names(&pairs(&[("user", "u")])).is_empty());
        // Lists that do not line up are libpq's to report.
        assert!(names(&pairs(&[("host", "a,b"), ("hostaddr", "10.0.0.1")])).is_empty());
        assert!(names(&pairs(&[("host", "a,b,c"), ("port", "1,2")])).is_empty());
    }

    #[test]
    fn names_get_their_addresses_one_entry_each_with_their_ports() {
        let params = pairs(&[
            ("host", "db1,/tmp,10.0.0.9"),
            ("port", "5432,5433,5434"),
            ("user", "u"),
        ]);
        let addrs = HashMap::from([("db1".to_string(), vec![ip("10.0.0.1"), ip("fd00::1")])]);
        assert_eq!(
            with_addresses(&params, &addrs).unwrap(),
            pairs(&[
                ("user", "u"),
                ("host", "db1,db1,/tmp,10.0.0.9"),
                ("hostaddr", "10.0.0.1,fd00::1,,"),
                ("port", "5432,5432,5433,5434"),
            ])
        );
        // One port for every host stays one port's worth per entry; none stays none.
        let one = pairs(&[("host", "db1"), ("port", "6000")]);
        assert_eq!(
            with_addresses(&one, &addrs).unwrap(),
            pairs(&[
                ("host", "db1,db1"),
                ("hostaddr", "10.0.0.1,fd00::1"),
                ("port", "6000,6000")
            ])
        );
        let none = pairs(&[("host", "db1")]);
        assert_eq!(
            with_addresses(&none, &addrs).unwrap(),
            pairs(&[("host", "db1,db1"), ("hostaddr", "10.0.0.1,fd00::1")])
        );
        // A given hostaddr wins over a resolved name.
        let given = pairs(&[("host", "db1"), ("hostaddr", "10.9.9.9")]);
        assert_eq!(
            with_addresses(&given, &addrs).unwrap(),
            pairs(&[("host", "db1"), ("hostaddr", "10.9.9.9")])
        );
        // A name that did not resolve is left out (libpq would resolve it, blocking); with
        // nothing left, there is nothing to connect to.
        let two = pairs(&[("host", "db2,db1")]);
        assert_eq!(
            with_addresses(&two, &addrs).unwrap(),
            pairs(&[("host", "db1,db1"), ("hostaddr", "10.0.0.1,fd00::1")])
        );
        assert_eq!(with_addresses(&pairs(&[("host", "db2")]), &addrs), None);
        let no_host = pairs(&[("user", "u")]);
        assert_eq!(with_addresses(&no_host, &addrs), Some(no_host));
    }

    #[test]
    fn the_first_lookup_is_waited_for_and_a_failure_is_not_an_address() {
        let mut cache = Cache::default();
        assert_eq!(cache.lookup("db1", 0), (Lookup::Wait, true));
        cache.asked("db1");
        assert_eq!(cache.lookup("db1", 10), (Lookup::Wait, false));
        // Still under way long after: no second lookup alongside (one thread per name).
        assert_eq!(cache.lookup("db1", 5 * SEC), (Lookup::Wait, false));
        let why = "could not resolve host name \"db1\": timed out";
        let said = cache.answered("db1", Err(why.into()), 5 * SEC);
        assert!(said.unwrap().contains("cannot tell"));
        // Failed a moment ago (less than REFRESH since it ended, however long it took): the
        // check cannot tell, with the lookup's own reason, and does not ask again at once.
        assert_eq!(
            cache.lookup("db1", 5 * SEC + 1),
            (Lookup::Failed(why.into()), false)
        );
        // Later, it asks and waits again; a second failure is not said again.
        assert_eq!(cache.lookup("db1", 6 * SEC), (Lookup::Wait, true));
        cache.asked("db1");
        assert_eq!(
            cache.answered("db1", Err("again".into()), 6 * SEC),
            None,
            "said once"
        );
        assert_eq!(
            cache.lookup("db1", 6 * SEC + 1),
            (Lookup::Failed("again".into()), false)
        );
        let back = cache.answered("db1", Ok(vec![ip("10.0.0.1")]), 7 * SEC);
        assert!(back.unwrap().contains("resolves again, to 10.0.0.1"));
        assert_eq!(
            cache.lookup("db1", 7 * SEC + 2),
            (Lookup::Use(vec![ip("10.0.0.1")]), false)
        );
    }

    #[test]
    fn the_last_good_addresses_outlive_a_failing_or_hanging_resolver_and_follow_a_move() {
        let one = |a: &str| Lookup::Use(vec![ip(a)]);
        let mut cache = Cache::default();
        cache.asked("db1");
        assert_eq!(cache.answered("db1", Ok(vec![ip("10.0.0.1")]), 0), None);
        // Fresh: used without a new lookup; past REFRESH: used, and a lookup starts.
        assert_eq!(cache.lookup("db1", REFRESH - 1), (one("10.0.0.1"), false));
        assert_eq!(cache.lookup("db1", REFRESH), (one("10.0.0.1"), true));
        cache.asked("db1");
        // Hanging: the old address all along.
        assert_eq!(cache.lookup("db1", 60 * SEC), (one("10.0.0.1"), false));
        let why = "could not resolve host name \"db1\": failure";
        let said = cache.answered("db1", Err(why.into()), 60 * SEC);
        assert!(said.unwrap().contains("last known address 10.0.0.1"));
        assert_eq!(cache.lookup("db1", 61 * SEC), (one("10.0.0.1"), true));
        cache.asked("db1");
        cache.answered("db1", Ok(vec![ip("10.0.0.7")]), 61 * SEC);
        assert_eq!(cache.lookup("db1", 61 * SEC), (one("10.0.0.7"), false));
        // An empty answer is a failure, not "no address any more".
        cache.answered("db1", Ok(Vec::new()), 62 * SEC);
        assert_eq!(cache.lookup("db1", 70 * SEC).0, one("10.0.0.7"));
    }
}
