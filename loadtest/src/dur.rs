//! Durations as people write them: `30s`, `500ms`, `2m`, `1h`, or a bare number
//! of seconds, in flags and scenario files alike.
//!
//! Plans and reports carry durations as seconds (a float), so the JSON result
//! stays readable by scripts without a duration parser.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A duration parsed from `30s`, `500ms`, `2m`, `1h` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (try 30s, 500ms, 2m)"))?;
        let scale = match unit.trim() {
            "" | "s" => 1.0,
            "ms" => 0.001,
            "us" => 0.000_001,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}` (use ms, s, m, h)"
                ));
            }
        };
        seconds(value * scale).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(v) => seconds(v).map(Dur).map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A `Duration` from seconds, refusing negative, NaN and absurd values.
fn seconds(v: f64) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=1.0e7).contains(&v) {
        return Err(format!("duration of {v} seconds is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Serde helpers that write a `Duration` as seconds (f64).
pub mod as_secs {
    use super::*;

    /// Serialises a duration as seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Reads seconds back into a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        seconds(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!("30s".parse::<Dur>().unwrap().0, Duration::from_secs(30));
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert_eq!("1.5".parse::<Dur>().unwrap().0, Duration::from_millis(1500));
        assert!("-1s".parse::<Dur>().is_err());
        assert!("3 days".parse::<Dur>().is_err());
        assert!("abc".parse::<Dur>().is_err());
    }

    #[test]
    fn deserialises_numbers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: Dur,
            b: Dur,
        }
        let t: T = toml::from_str("a = 2.5\nb = \"100ms\"").unwrap();
        assert_eq!(t.a.0, Duration::from_millis(2500));
        assert_eq!(t.b.0, Duration::from_millis(100));
    }
}
