//! Durations and sizes as the whole config writes them: `"250ms"`, `"2.5s"`, `"10s"`, `"5m"`,
//! `"1h"`, `"1d"`; `"64KiB"`, `"10MiB"`, `"1.5KB"`, `"512"`. One implementation for the
//! gateway's own settings and for plugin configs.

use std::time::Duration;

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n, unit.trim()))
}

/// Parses a duration such as `"250ms"` or `"10s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration `{s}`: write a number and a unit (ms, s, m, h, d), e.g. \"10s\"")
    };
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Parses a size such as `"64KiB"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || {
        format!("invalid size `{s}`: write a number and a unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. \"64KiB\"")
    };
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    let v = n * mult as f64;
    if v > u64::MAX as f64 || v.fract() != 0.0 {
        return Err(err());
    }
    Ok(v as u64)
}

/// [`parse_duration`] with a plugin config error naming `field`.
pub fn duration_at(s: &str, field: &str) -> Result<Duration, super::BuildError> {
    parse_duration(s).map_err(|e| super::BuildError::at(field, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x1s").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("1 furlong").is_err());
    }
}
