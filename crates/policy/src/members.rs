//! Cluster member lists: `pg_promoter.peers` and `pg_promoter.witness_conninfo`.
//!
//! Syntax: entries separated by `;`, each `name: conninfo`, for example
//! `pg1: host=10.0.0.1 port=5432; pg2: host=10.0.0.2 port=5432`. For witnesses the name is
//! optional (`host=10.0.0.9; host=10.0.0.10` names them `witness1`, `witness2`). A `;` or `:`
//! inside a single-quoted conninfo value does not split. Names are letters, digits, `_`, `-`
//! and `.`, unique within the list; peers' names also give unique slot names (see
//! [`crate::leading::slot_name`]).

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub conninfo: String,
}

/// Whether each entry must be named (peers) or may be anonymous (witnesses, named by position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Required,
    Optional { prefix: &'static str },
}

/// Parses a member list; the error is a full sentence for errdetail.
pub fn parse(text: &str, naming: Naming) -> Result<Vec<Member>, String> {
    let mut members: Vec<Member> = Vec::new();
    for (i, entry) in split_outside_quotes(text, ';').into_iter().enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, conninfo) = match split_name(entry) {
            Some((name, conninfo)) => (name.to_string(), conninfo.trim().to_string()),
            None => match naming {
                Naming::Required => {
                    return Err(format!(
                        "Entry {} has no name: write it as \"name: conninfo\".",
                        i + 1
                    ));
                }
                Naming::Optional { prefix } => (format!("{prefix}{}", members.len() + 1), entry.to_string()),
            },
        };
        if conninfo.is_empty() {
            return Err(format!("Member \"{name}\" has an empty conninfo."));
        }
        if name.len() > crate::leader::NAME_MAX {
            return Err(format!(
                "Member name \"{name}\" is longer than {} bytes.",
                crate::leader::NAME_MAX
            ));
        }
        if members.iter().any(|m| m.name == name) {
            return Err(format!("Member name \"{name}\" appears more than once."));
        }
        // Each node streams through a slot named after it, where members use slots.
        let slot = crate::leading::slot_name(&name);
        let clash = members
            .iter()
            .find(|m| crate::leading::slot_name(&m.name) == slot);
        if let (Naming::Required, Some(other)) = (naming, clash) {
            return Err(format!(
                "Members \"{}\" and \"{name}\" would share the replication slot name \"{slot}\": names must \
                 differ in more than case, \"-\" and \".\".",
                other.name
            ));
        }
        members.push(Member { name, conninfo });
    }
    Ok(members)
}

/// `name: rest` when the text before the first `:` is a valid name. A conninfo never starts
/// that way: its first token is `key=value` or a URI (`postgresql://`, whose `:` follows a
/// scheme that is followed by `//`).
fn split_name(entry: &str) -> Option<(&str, &str)> {
    let (name, rest) = entry.split_once(':')?;
    let name = name.trim();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    (valid && !rest.starts_with("//")).then_some((name, rest))
}

/// The list as written, with every conninfo's password masked, for SHOW and the log.
pub fn mask(text: &str) -> String {
    split_outside_quotes(text, ';')
        .into_iter()
        .map(|entry| match split_name(entry.trim()) {
            Some((name, conninfo)) => format!("{name}: {}", crate::conninfo::mask_password(conninfo.trim())),
            None => crate::conninfo::mask_password(entry.trim()),
        })
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, conninfo: &str) -> Member {
        Member {
            name: name.into(),
            conninfo: conninfo.into(),
        }
    }

    #[test]
    fn parses_named_entries() {
        let got = parse("pg1: host=a port=5432; pg2:host=b ;", Naming::Required).unwrap();
        assert_eq!(got, vec![m("pg1", "host=a port=5432"), m("pg2", "host=b")]);
        assert_eq!(parse("", Naming::Required).unwrap(), vec![]);
        assert_eq!(parse("  ;  ", Naming::Required).unwrap(), vec![]);
    }

    #[test]
    fn a_name_must_fit_in_shared_memory() {
        let long = "n".repeat(64);
        let err = parse(&format!("{long}: host=a"), Naming::Required).unwrap_err();
        assert!(err.contains("longer than 63 bytes"), "{err}");
        assert!(parse(&format!("{}: host=a", "n".repeat(63)), Naming::Required).is_ok());
    }

    #[test]
    fn names_anonymous_witnesses_by_position() {
        let got = parse(
            "host=w1; w: host=w2; postgresql://u@w3:5432/db",
            Naming::Optional { prefix: "witness" },
        );
        assert_eq!(
            got.unwrap(),
            vec![
                m("witness1", "host=w1"),
                m("w", "host=w2"),
                m("witness3", "postgresql://u@w3:5432/db")
            ]
        );
    }

    #[test]
    fn quotes_protect_separators() {
        let got = parse("a: host=x password='p;q:r'; b: host=y", Naming::Required).unwrap();
        assert_eq!(got, vec![m("a", "host=x password='p;q:r'"), m("b", "host=y")]);
        let got = parse(r"a: password='it\'s;x'", Naming::Required).unwrap();
        assert_eq!(got, vec![m("a", r"password='it\'s;x'")]);
    }

    #[test]
    fn masks_every_password_in_a_list() {
        let got = mask("a: host=x password=s1;b:host=y password='s 2'; host=z password=s3");
        assert_eq!(
            got,
            "a: host=x password=********; b: host=y password=********; host=z password=********"
        );
    }

    #[test]
    fn rejects_what_cannot_be_meant() {
        let err = |t: &str| parse(t, Naming::Required).unwrap_err();
        assert!(err("host=a").contains("has no name"));
        assert!(err("a: host=x; host=y").contains("Entry 2 has no name"));
        assert!(err("a:  ").contains("empty conninfo"));
        assert!(err("a: host=x; a: host=y").contains("more than once"));
        assert!(err("bad name: host=x").contains("has no name"));
        let clash = err("Node-1: host=x; node_1: host=y");
        assert!(
            clash.contains("\"Node-1\" and \"node_1\" would share the replication slot name \"node_1\""),
            "{clash}"
        );
        assert!(
            parse("Node-1: host=x; node_1: host=y", Naming::Optional { prefix: "w" }).is_ok(),
            "witnesses have no slots"
        );
    }
}
