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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_sentence() {
        assert_eq!(sentence("the primary is gone"), "The primary is gone.");
        assert_eq!(sentence("done."), "Done.");
        assert_eq!(sentence("été"), "Été.");
        assert_eq!(sentence(""), "");
    }
}
