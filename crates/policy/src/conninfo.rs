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
    rewrite_keywords(s, Some(MASK))
}

/// Copies `key=value` pairs byte for byte, with the password's value replaced by `password`, or
/// the whole pair left out when `None`.
fn rewrite_keywords(s: &str, password: Option<&str>) -> String {
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
        // White space around `=` is allowed by libpq.
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b'=' {
            out.push_str(key);
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let value_start = j;
        if j < b.len() && b[j] == b'\'' {
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(b.len());
        } else {
            while j < b.len() && !b[j].is_ascii_whitespace() {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j = j.min(b.len());
        }
        match (key == "password" || key == "sslpassword", password) {
            (false, _) => out.push_str(&s[key_start..j]),
            (true, Some(mask)) => {
                out.push_str(&s[key_start..value_start]);
                out.push_str(mask);
            }
            (true, None) => {
                // The white space after it goes too.
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
            }
        }
        i = j;
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

/// `conninfo` with its password left out (not masked: the result is connected with), in both
/// libpq forms. A witness gets the primary's conninfo this way, since a query's parameters may
/// reach its log (`log_statement`); it authenticates with its own passfile.
pub fn without_password(conninfo: &str) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        mask_uri(conninfo)
            .replacen(&format!(":{MASK}@"), "@", 1)
            .replace(&format!("?password={MASK}&"), "?")
            .replace(&format!("?password={MASK}"), "")
            .replace(&format!("&password={MASK}"), "")
    } else {
        rewrite_keywords(conninfo, None).trim_end().to_string()
    }
}

/// The settings whose values hold conninfos: their reloaded values are masked in the log.
pub const CONNINFO_SETTINGS: [&str; 4] = [
    "primary_conninfo",
    "pg_promoter.primary_conninfo",
    "pg_promoter.peers",
    "pg_promoter.witness_conninfo",
];

/// PostgreSQL's untranslated format of the message that logs a reloaded value (its
/// `message_id`, the same whatever `lc_messages` translates the message into).
pub const RELOAD_MESSAGE_ID: &str = "parameter \"%s\" changed to \"%s\"";

/// The reload message of a setting that holds conninfos (found by its untranslated format and
/// the setting's name, never by the translated words), with every password in it masked;
/// `None` for every other message.
pub fn mask_reload(message_id: &str, message: &str) -> Option<String> {
    (message_id == RELOAD_MESSAGE_ID && CONNINFO_SETTINGS.iter().any(|name| message.contains(name)))
        .then(|| mask_text(message))
}

/// Masks every password in free text: `password = value` (quoted or not, ending at white space
/// or a quotation mark of the surrounding message) and a URI's `user:password@`.
fn mask_text(text: &str) -> String {
    let b = text.as_bytes();
    // A value ends at white space or the message's quotation mark; at `&` only in a URI's
    // query, where the key follows `?` or `&`.
    let ends_value = |c: u8, in_query: bool| c.is_ascii_whitespace() || c == b'"' || (in_query && c == b'&');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let key_len = [11, 8].into_iter().find(|&n| {
            let key: &[u8] = if n == 11 { b"sslpassword" } else { b"password" };
            rest.len() >= n && rest.as_bytes()[..n].eq_ignore_ascii_case(key)
        });
        if let (true, Some(n)) = (word_start, key_len) {
            let in_query = i > 0 && matches!(b[i - 1], b'?' | b'&');
            let mut j = i + n;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && b[j] == b'=' {
                j += 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                out.push_str(&text[i..j]);
                out.push_str(MASK);
                if j < b.len() && b[j] == b'\'' {
                    j += 1;
                    while j < b.len() && b[j] != b'\'' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    j += 1;
                } else {
                    while j < b.len() && !ends_value(b[j], in_query) {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                }
                i = j.min(b.len());
                continue;
            }
        }
        if let Some(auth) = rest.strip_prefix("://") {
            // The authority ends at a path, a query, or the end of the value.
            let end = auth
                .find(|c: char| matches!(c, '/' | '?' | '"' | '\'') || c.is_whitespace())
                .unwrap_or(auth.len());
            let authority = &auth[..end];
            out.push_str("://");
            match authority
                .rfind('@')
                .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
            {
                Some((colon, at)) => {
                    out.push_str(&authority[..=colon]);
                    out.push_str(MASK);
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            }
            i += 3 + end;
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        i += c.len_utf8();
    }
    out
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
    fn a_conninfo_without_its_password_keeps_everything_else() {
        assert_eq!(without_password("host=a password=s3cret user=u"), "host=a user=u");
        assert_eq!(without_password("host=a password='x y' port=1"), "host=a port=1");
        assert_eq!(
            without_password("host=a password = 'x y' port=1"),
            "host=a port=1"
        );
        assert_eq!(without_password("host=a"), "host=a");
        assert_eq!(
            without_password("postgresql://u:s3cret@h:5432/db?password=x&sslmode=disable"),
            "postgresql://u@h:5432/db?sslmode=disable"
        );
        assert_eq!(
            without_password("postgresql://u:s3cret@h/db"),
            "postgresql://u@h/db"
        );
    }

    #[test]
    fn reload_messages_of_conninfo_settings_are_masked_in_any_language() {
        let id = RELOAD_MESSAGE_ID;
        let peers = "parameter \"pg_promoter.peers\" changed to \"p: host=a password=s3cret; s: host=b password='x y'\"";
        let masked = mask_reload(id, peers).unwrap();
        assert!(!masked.contains("s3cret") && !masked.contains("x y"), "{masked}");
        assert!(
            masked.contains("p: host=a password=********") && masked.contains("s: host=b password=********"),
            "{masked}"
        );
        // A translated message: the same format id, other words and quotation marks.
        let french =
            "le paramètre « pg_promoter.witness_conninfo » a été modifié en « host=w PASSWORD = 'sec ret' »";
        let masked = mask_reload(id, french).unwrap();
        assert!(
            !masked.contains("sec ret") && masked.contains("le paramètre «"),
            "{masked}"
        );
        let uri =
            "parameter \"primary_conninfo\" changed to \"postgresql://rep:pw0rd@h:5432/db?password=pw1\"";
        let masked = mask_reload(id, uri).unwrap();
        assert!(!masked.contains("pw0rd") && !masked.contains("pw1"), "{masked}");
        assert!(masked.contains("postgresql://rep:********@h:5432/db"), "{masked}");
        // Another setting, or another message: untouched.
        assert_eq!(
            mask_reload(id, "parameter \"work_mem\" changed to \"64MB\""),
            None
        );
        assert_eq!(mask_reload("%s", "primary_conninfo password=x"), None);
        // Characters a keyword value may hold, and sslpassword.
        let odd = "parameter \"primary_conninfo\" changed to \"host=a password=ab&cd;ef sslpassword=kk\"";
        let masked = mask_reload(id, odd).unwrap();
        assert!(
            !masked.contains("cd") && !masked.contains("ef") && !masked.contains("kk"),
            "{masked}"
        );
        assert_eq!(
            mask_password("host=a sslpassword=kk"),
            "host=a sslpassword=********"
        );
    }

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
            mask_reload(RELOAD_MESSAGE_ID, msg).as_deref(),
            Some(r#"parameter "pg_promoter.primary_conninfo" changed to "host=a password=********""#)
        );
        let core = r#"parameter "primary_conninfo" changed to "postgresql://u:hunter2@h/db""#;
        assert!(!mask_reload(RELOAD_MESSAGE_ID, core).unwrap().contains("hunter2"));
        for other in [
            r#"parameter "work_mem" changed to "password=x""#,
            "received SIGHUP, reloading configuration files",
            "",
        ] {
            assert_eq!(mask_reload(RELOAD_MESSAGE_ID, other), None, "{other}");
        }
        let refused = r#"parameter "primary_conninfo" cannot be changed without restarting the server"#;
        assert_eq!(
            mask_reload(
                "parameter \"%s\" cannot be changed without restarting the server",
                refused
            ),
            None
        );
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
