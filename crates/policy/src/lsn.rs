//! WAL positions in PostgreSQL's text form (`16/B374D848`).

/// Formats an LSN the way `pg_lsn` prints it.
pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `pg_lsn` text; `None` for anything `pg_lsn` itself would reject.
pub fn parse(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let valid = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid(hi) || !valid(lo) {
        return None;
    }
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_pg_lsn() {
        assert_eq!(format(0), "0/0");
        assert_eq!(format(0x16_B374_D848), "16/B374D848");
        assert_eq!(format(u64::MAX), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_what_it_formats_and_rejects_garbage() {
        for lsn in [0, 1, 0x3_0000_0060, u64::MAX] {
            assert_eq!(parse(&format(lsn)), Some(lsn));
        }
        assert_eq!(parse("0/16B3748"), Some(0x16B_3748));
        assert_eq!(parse("16/b374d848"), Some(0x16_B374_D848));
        for bad in ["", "/", "1/", "/1", "1/2/3", "G/0", "123456789/0", "-1/0", "1 /0"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
