//! Durations and sizes as the whole config writes them: `"250ms"`, `"2.5s"`, `"10s"`, `"5m"`,
//! `"1h"`, `"1d"`; `"64KiB"`, `"10MiB"`, `"1.5KB"`, `"512"`. One implementation for the
//! gateway's own settings and for plugin configs: a config field typed [`Dur`] or [`Size`]
//! (or [`NonZeroDur`], [`NonZeroSize`] where zero makes no sense) is parsed and checked by
//! serde, and its errors carry the field's YAML path.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written with a unit: `ms`, `s`, `m`, `h` or `d` (`"1500ms"`, `"2.5s"`, `"10m"`).
/// Negative values do not parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// A [`Dur`] that must be greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NonZeroDur(pub Duration);

/// A byte size: a plain number of bytes, or with a unit `B`, `KiB`, `MiB`, `GiB` (powers of
/// 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Size(pub u64);

/// A [`Size`] that must be greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NonZeroSize(pub u64);

/// A YAML scalar as text: `10s` or a bare number.
struct StrOrNum(String);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(StrOrNum(s)),
            serde_yaml::Value::Number(n) => Ok(StrOrNum(n.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a string such as \"10s\" or \"64KiB\"",
            )),
        }
    }
}

const ZERO: &str = "must be greater than 0";

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for NonZeroDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Dur::deserialize(d)?.0 {
            v if v.is_zero() => Err(serde::de::Error::custom(ZERO)),
            v => Ok(NonZeroDur(v)),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_size(&s).map(Size).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for NonZeroSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Size::deserialize(d)?.0 {
            0 => Err(serde::de::Error::custom(ZERO)),
            v => Ok(NonZeroSize(v)),
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

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

    #[test]
    fn serde_types() {
        let d: Dur = serde_yaml::from_str("\"1.5s\"").unwrap();
        assert_eq!(d.0, Duration::from_millis(1500));
        let z: Dur = serde_yaml::from_str("0s").unwrap();
        assert!(z.0.is_zero());
        let e = serde_yaml::from_str::<NonZeroDur>("0ms").unwrap_err();
        assert!(e.to_string().contains("must be greater than 0"), "{e}");
        assert!(serde_yaml::from_str::<Dur>("\"-1s\"").is_err());
        let s: Size = serde_yaml::from_str("4096").unwrap();
        assert_eq!(s.0, 4096);
        let e = serde_yaml::from_str::<NonZeroSize>("0KiB").unwrap_err();
        assert!(e.to_string().contains("must be greater than 0"), "{e}");
        assert!(serde_yaml::from_str::<Size>("[1]").is_err());
    }
}
