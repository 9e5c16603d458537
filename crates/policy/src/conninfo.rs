//! Connection strings: hiding passwords for display, and the parameters the check connects with.

const MASK: &str = "********";

/// Returns `conninfo` with every password replaced by `********`, in both libpq forms:
/// `key=value` (quoted or not) and URIs (`postgresql://user:secret@host/db?password=secret`).
/// Everything else is kept byte for byte, so the DBA recognises their setting.
pub fn mask_password(conninfo: &str) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        mask_uri(conninfo)
    } else {
        mask_keywords(conninfo)
    }
}

fn mask_keywords(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        // Copy white space, then read a keyword up to `=` or white space.
        if b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        out.push_str(key);
        // White space around `=` is allowed by libpq.
        while i < b.len() && b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        out.push('=');
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
        }
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(b.len());
        }
        if key == "password" {
            out.push_str(MASK);
        } else {
            out.push_str(&s[value_start..i]);
        }
    }
    out
}

fn mask_uri(s: &str) -> String {
    let scheme_end = s.find("://").map_or(0, |p| p + 3);
    let (head, rest) = s.split_at(scheme_end);
    // The authority ends at the first `/`, `?` or end; user info ends at its last `@`.
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:{MASK}{}", &userinfo[..colon], &authority[at..]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => format!("password={MASK}"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

/// PostgreSQL logs a reloaded setting's new value verbatim (`parameter "primary_conninfo"
/// changed to "… password=…"`). For any setting whose name ends in `conninfo`, returns the same
/// message with the password masked; `None` for every other message.
pub fn mask_reload_message(message: &str) -> Option<String> {
    let rest = message.strip_prefix("parameter \"")?;
    let (name, rest) = rest.split_once('"')?;
    let value = rest.strip_prefix(" changed to \"")?.strip_suffix('"')?;
    if !name.ends_with("conninfo") {
        return None;
    }
    Some(format!(
        "parameter \"{name}\" changed to \"{}\"",
        mask_password(value)
    ))
}

/// The name the check shows in the primary's `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pg_promoter";

/// The parameters the check connects with, from the `(keyword, value)` pairs libpq parsed out of
/// the configured conninfo: our own `application_name` (never the WAL receiver's, which may name a
/// synchronous standby), `dbname=postgres` when none is given (the server's `primary_conninfo`
/// usually has none, and libpq would pick the user name), and no `replication` keyword (the check
/// runs SQL, which a physical replication connection refuses).
pub fn check_params(parsed: &[(String, String)]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = parsed
        .iter()
        .filter(|(k, v)| !v.is_empty() && k != "application_name" && k != "replication")
        .cloned()
        .collect();
    if !params.iter().any(|(k, _)| k == "dbname") {
        params.push(("dbname".into(), "postgres".into()));
    }
    params.push(("application_name".into(), APPLICATION_NAME.into()));
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keyword_passwords_in_every_quoting() {
        let cases = [
            ("host=a password=secret port=5", "host=a password=******** port=5"),
            ("password=secret", "password=********"),
            ("host=a password = secret", "host=a password = ********"),
            ("password='s e c\\'ret' user=u", "password=******** user=u"),
            ("password=se\\ cret user=u", "password=******** user=u"),
            ("user=password host=a", "user=password host=a"),
            ("host=a", "host=a"),
            ("", ""),
            ("passwordx=keep password=x", "passwordx=keep password=********"),
            ("password='unterminated", "password=********"),
            ("password=", "password=********"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_password(input), want, "{input:?}");
            assert!(!mask_password(input).contains("secret"), "{input:?}");
        }
    }

    #[test]
    fn masks_uri_passwords() {
        let cases = [
            (
                "postgresql://u:secret@h:5432/db",
                "postgresql://u:********@h:5432/db",
            ),
            (
                "postgres://u:secret@h1,h2/db?sslmode=require",
                "postgres://u:********@h1,h2/db?sslmode=require",
            ),
            (
                "postgresql://u@h/db?password=secret&x=1",
                "postgresql://u@h/db?password=********&x=1",
            ),
            (
                "postgresql://h?password=secret",
                "postgresql://h?password=********",
            ),
            ("postgresql://u:p%40ss@h", "postgresql://u:********@h"),
            ("postgresql://h/db", "postgresql://h/db"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_password(input), want, "{input:?}");
        }
    }

    #[test]
    fn masks_reload_messages_of_conninfo_settings_only() {
        let msg = r#"parameter "pg_promoter.primary_conninfo" changed to "host=a password=hunter2""#;
        assert_eq!(
            mask_reload_message(msg).as_deref(),
            Some(r#"parameter "pg_promoter.primary_conninfo" changed to "host=a password=********""#)
        );
        let core = r#"parameter "primary_conninfo" changed to "postgresql://u:hunter2@h/db""#;
        assert!(!mask_reload_message(core).unwrap().contains("hunter2"));
        for other in [
            r#"parameter "work_mem" changed to "password=x""#,
            "received SIGHUP, reloading configuration files",
            r#"parameter "primary_conninfo" cannot be changed"#,
            "",
        ] {
            assert_eq!(mask_reload_message(other), None, "{other}");
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn check_params_name_the_worker_and_pick_a_database() {
        let got = check_params(&pairs(&[
            ("host", "10.0.0.1"),
            ("user", "repl"),
            ("application_name", "standby1"),
            ("sslmode", ""),
        ]));
        assert_eq!(
            got,
            pairs(&[
                ("host", "10.0.0.1"),
                ("user", "repl"),
                ("dbname", "postgres"),
                ("application_name", "pg_promoter")
            ])
        );
    }

    #[test]
    fn check_params_keep_a_given_database_and_drop_replication() {
        let got = check_params(&pairs(&[("dbname", "app"), ("replication", "true")]));
        assert_eq!(
            got,
            pairs(&[("dbname", "app"), ("application_name", "pg_promoter")])
        );
    }
}
