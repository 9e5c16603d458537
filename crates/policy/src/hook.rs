//! The pre- and post-promote commands: placeholder expansion, and what their results mean.
//!
//! Placeholders: `%d` the data directory, `%t` the timeline (before promotion: the one being
//! left; after: the new one), `%h` and `%p` the old primary's host and port (from the check's
//! conninfo), `%n` this node's name (`cluster_name`), `%%` a literal `%`. Every value is
//! shell-quoted, so a path with spaces or quotes stays one argument.

/// The values placeholders stand for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values {
    pub data_dir: String,
    pub timeline: Option<u32>,
    pub old_primary_host: String,
    pub old_primary_port: String,
    pub node_name: String,
}

/// The command with its placeholders replaced; an unknown `%x` is kept as it is.
pub fn expand(template: &str, v: &Values) -> String {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let value = match chars.peek() {
            Some('d') => quote(&v.data_dir),
            Some('t') => quote(&v.timeline.map(|t| t.to_string()).unwrap_or_default()),
            Some('h') => quote(&v.old_primary_host),
            Some('p') => quote(&v.old_primary_port),
            Some('n') => quote(&v.node_name),
            Some('%') => "%".to_string(),
            _ => {
                out.push('%');
                continue;
            }
        };
        chars.next();
        out.push_str(&value);
    }
    out
}

/// Single-quotes a value for `/bin/sh`.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

/// A one-line summary for events and the log: how it ended and the tail of its output.
pub fn summary(what: &str, exit: &Exit, took_ms: u128, output: &str) -> String {
    let how = match exit {
        Exit::Code(0) => "succeeded".to_string(),
        Exit::Code(c) => format!("failed with exit code {c}"),
        Exit::Signal(s) => format!("was killed by signal {s}"),
        Exit::TimedOut => "timed out and was killed".to_string(),
    };
    let output = output.trim();
    let tail: String = output
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    if tail.is_empty() {
        format!("{what} {how} after {took_ms} ms")
    } else {
        format!("{what} {how} after {took_ms} ms: {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            data_dir: "/var/lib/pg data".into(),
            timeline: Some(3),
            old_primary_host: "10.0.0.1".into(),
            old_primary_port: "5432".into(),
            node_name: "it's-me".into(),
        }
    }

    #[test]
    fn expands_every_placeholder_quoted() {
        let got = expand("fence %h:%p; vip up %d tl=%t node=%n 100%%", &values());
        assert_eq!(
            got,
            r"fence '10.0.0.1':'5432'; vip up '/var/lib/pg data' tl='3' node='it'\''s-me' 100%"
        );
    }

    #[test]
    fn keeps_unknown_and_trailing_percent_signs() {
        assert_eq!(expand("a %x b %", &values()), "a %x b %");
        assert_eq!(expand("%t", &Values::default()), "''");
    }

    #[test]
    fn summaries_say_how_it_ended_with_the_output_tail() {
        assert_eq!(
            summary("pre", &Exit::Code(0), 12, ""),
            "pre succeeded after 12 ms"
        );
        assert_eq!(
            summary("pre", &Exit::Code(3), 5, "a\nb\nc\nd\n"),
            "pre failed with exit code 3 after 5 ms: b | c | d"
        );
        assert!(summary("post", &Exit::TimedOut, 1000, "x").starts_with("post timed out and was killed"));
        assert!(summary("post", &Exit::Signal(9), 1, "").contains("killed by signal 9"));
    }
}
