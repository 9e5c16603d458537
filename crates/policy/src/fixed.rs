//! Text that fits in shared memory: a fixed byte array, no pointers.

/// Up to `N` bytes of UTF-8; longer texts are cut at a character boundary and end in `…`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FixedText<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> FixedText<N> {
    pub const fn empty() -> Self {
        FixedText {
            len: 0,
            bytes: [0; N],
        }
    }

    pub fn new(text: &str) -> Self {
        let cut = truncate(text, N);
        let mut fixed = Self::empty();
        fixed.bytes[..cut.len()].copy_from_slice(cut.as_bytes());
        fixed.len = cut.len();
        fixed
    }

    pub fn as_str(&self) -> &str {
        // Only `new` writes the bytes, from a `&str` cut at a char boundary.
        std::str::from_utf8(&self.bytes[..self.len]).expect("FixedText holds UTF-8")
    }
}

impl<const N: usize> std::fmt::Debug for FixedText<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// The longest prefix of `text` within `max` bytes (ending in `…` when cut), at a char boundary.
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let ellipsis = "…";
    let mut end = max.saturating_sub(ellipsis.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_short_text_and_cuts_long_text_at_a_boundary() {
        assert_eq!(FixedText::<8>::empty().as_str(), "");
        assert_eq!(FixedText::<8>::new("abc").as_str(), "abc");
        assert_eq!(FixedText::<8>::new("12345678").as_str(), "12345678");
        assert_eq!(FixedText::<8>::new("123456789").as_str(), "12345…");
        // "é" is two bytes: the cut must not split one.
        let got = FixedText::<8>::new("éééééé");
        assert_eq!(got.as_str(), "éé…");
        assert_eq!(truncate("short", 10), "short");
    }
}
