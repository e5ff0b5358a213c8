//! Durations as users write them (`10m`, `90s`, `1h 30m`, humantime) plus `never`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration that may be switched off, as for idle unloading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    After(Duration),
    Never,
}

impl Timeout {
    pub fn duration(self) -> Option<Duration> {
        match self {
            Timeout::After(d) => Some(d),
            Timeout::Never => None,
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timeout::After(d) => write!(f, "{}", humantime::format_duration(*d)),
            Timeout::Never => f.write_str("never"),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 90s, 10m or 1h 30m"))
}

struct DurationVisitor {
    allow_never: bool,
}

impl Visitor<'_> for DurationVisitor {
    type Value = Timeout;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.allow_never {
            f.write_str("a duration such as 90s or 10m, or `never`")
        } else {
            f.write_str("a duration such as 90s or 10m")
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
        Ok(Timeout::After(Duration::from_secs(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
        u64::try_from(v)
            .map(|s| Timeout::After(Duration::from_secs(s)))
            .map_err(|_| E::custom("a duration cannot be negative"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timeout, E> {
        if v.is_finite() && v >= 0.0 {
            Ok(Timeout::After(Duration::from_secs_f64(v)))
        } else {
            Err(E::custom("a duration must be a positive number of seconds"))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
        if v.trim().eq_ignore_ascii_case("never") {
            return if self.allow_never {
                Ok(Timeout::Never)
            } else {
                Err(E::custom(
                    "`never` is not allowed here; give a duration such as 90s",
                ))
            };
        }
        parse_duration(v).map(Timeout::After).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor { allow_never: true })
    }
}

/// For `#[serde(with = "span")]` on plain `Duration` fields, where `never` makes no sense.
pub mod span {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match d.deserialize_any(DurationVisitor { allow_never: false })? {
            Timeout::After(d) => Ok(d),
            Timeout::Never => unreachable!("rejected by the visitor"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{Error, StrDeserializer};
    use serde::de::IntoDeserializer;

    fn t(s: &str) -> Result<Timeout, Error> {
        let d: StrDeserializer<Error> = s.into_deserializer();
        Timeout::deserialize(d)
    }

    #[test]
    fn parses_humantime_plain_seconds_and_never() {
        assert_eq!(t("10m").unwrap(), Timeout::After(Duration::from_secs(600)));
        assert_eq!(
            t("1h 30m").unwrap(),
            Timeout::After(Duration::from_secs(5400))
        );
        assert_eq!(t("45").unwrap(), Timeout::After(Duration::from_secs(45)));
        assert_eq!(t("never").unwrap(), Timeout::Never);
        assert!(t("soon")
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
    }
}
