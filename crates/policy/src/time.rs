//! Time as PostgreSQL keeps it: microseconds (`TimestampTz`), so facts read from shared memory
//! (the WAL receiver's last message time) compare directly with the worker's clock.

/// A point in time or a duration, in microseconds.
pub type Micros = i64;

pub const MS: Micros = 1_000;
pub const SEC: Micros = 1_000_000;

/// Milliseconds to microseconds, saturating rather than overflowing on absurd settings.
pub fn ms(ms: i64) -> Micros {
    ms.saturating_mul(MS)
}

/// A setting's duration in microseconds, saturating.
pub fn micros(d: std::time::Duration) -> Micros {
    Micros::try_from(d.as_micros()).unwrap_or(Micros::MAX)
}

/// Microseconds to whole milliseconds, rounding to nearest, for display.
pub fn to_ms(us: Micros) -> i64 {
    (us + MS / 2).div_euclid(MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_saturate() {
        assert_eq!(ms(1500), 1_500_000);
        assert_eq!(to_ms(1_500_000), 1500);
        assert_eq!(to_ms(1_499), 1);
        assert_eq!(to_ms(499), 0);
        assert_eq!(ms(i64::MAX), i64::MAX);
        assert_eq!(micros(std::time::Duration::from_millis(2)), 2_000);
        assert_eq!(micros(std::time::Duration::MAX), i64::MAX);
    }
}
