//! Human-readable durations (`"250ms"`, `"10s"`, `"5m"`, `"1h"`) and sizes (`"64KiB"`,
//! `"10MiB"`, `"512"`) in the YAML config.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written with a unit: `ms`, `s`, `m`, `h` or `d` (`"1500ms"`, `"2.5s"`, `"10m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// A byte size: a plain number of bytes, or with a unit `B`, `KiB`, `MiB`, `GiB` (powers of
/// 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Size(pub u64);

pub use gatehouse_plugins::api::units::{parse_duration, parse_size};

struct StrOrNum(String);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        match v {
            serde_yaml::Value::String(s) => Ok(StrOrNum(s)),
            serde_yaml::Value::Number(n) => Ok(StrOrNum(n.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a string such as \"10s\" or \"64KiB\"",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_size(&s).map(Size).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["10", "", "s", "-1s", "10 parsecs", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5KB").unwrap(), 1500);
        assert!(parse_size("1.5B").is_err());
        assert!(parse_size("10 furlongs").is_err());
    }
}
