//! Message text in PostgreSQL's style.

/// A detail or hint is a full sentence: capital first letter, final period.
pub fn sentence(fragment: &str) -> String {
    let fragment = fragment.trim().trim_end_matches('.');
    let mut chars = fragment.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

/// An SQL string literal that means `text` whatever `standard_conforming_strings` says (for a
/// statement that takes no parameters, such as ALTER SYSTEM).
pub fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r"host=a password='x\y'"), r"E'host=a password=''x\\y'''");
        assert_eq!(literal(""), "E''");
    }

    #[test]
    fn makes_a_sentence() {
        assert_eq!(sentence("the primary is gone"), "The primary is gone.");
        assert_eq!(sentence("done."), "Done.");
        assert_eq!(sentence("été"), "Été.");
        assert_eq!(sentence(""), "");
    }
}
