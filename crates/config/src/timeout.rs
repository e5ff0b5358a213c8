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

/// The longest duration accepted anywhere. Deadlines are `now + duration`,
/// which overflows (and panics) for durations near `u64::MAX` seconds; nothing
/// a router waits for is meant to take longer than this, and keys that can be
/// switched off take `never`.
pub const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

fn bounded(d: Duration, written: impl fmt::Display, allow_never: bool) -> Result<Duration, String> {
    if d <= LONGEST {
        return Ok(d);
    }
    let instead = if allow_never {
        "; write `never` to switch it off"
    } else {
        ""
    };
    Err(format!(
        "`{written}` is longer than the longest duration accepted (365d){instead}"
    ))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // humantime's own word for `-5s` is "expected number at 0".
    if t.starts_with('-') {
        return Err(format!(
            "`{s}` is not a duration: a duration cannot be negative; write e.g. 90s, 10m or 1h 30m"
        ));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 90s, 10m or 1h 30m"))
}

fn negative<E: de::Error>(written: impl fmt::Display) -> E {
    E::custom(format!(
        "`{written}` is not a duration: a duration cannot be negative; write e.g. 90s or 10m"
    ))
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
        self.seconds(Duration::from_secs(v), v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
        let secs = u64::try_from(v).map_err(|_| negative(v))?;
        self.visit_u64(secs)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timeout, E> {
        if v < 0.0 {
            return Err(negative(v));
        }
        if !v.is_finite() {
            return Err(E::custom("a duration must be a finite number of seconds"));
        }
        // Past `LONGEST` the conversion itself can overflow, so bound first.
        let d = Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX);
        // As the user would have written it: 1e300, not three hundred digits.
        let written = if v >= 1e9 {
            format!("{v:e}")
        } else {
            v.to_string()
        };
        self.seconds(d, written)
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
        parse_duration(v)
            .and_then(|d| bounded(d, v, self.allow_never))
            .map(Timeout::After)
            .map_err(E::custom)
    }
}

impl DurationVisitor {
    fn seconds<E: de::Error>(&self, d: Duration, written: impl fmt::Display) -> Result<Timeout, E> {
        bounded(d, written, self.allow_never)
            .map(Timeout::After)
            .map_err(E::custom)
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

    #[test]
    fn a_negative_duration_is_named_as_such_however_it_is_written() {
        for err in [
            t("-5s").unwrap_err(),
            t(" -1h 30m").unwrap_err(),
            number(-5_i64).unwrap_err(),
            number(-0.5_f64).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(msg.contains("cannot be negative"), "{msg}");
        }
        assert!(number(f64::NAN).unwrap_err().to_string().contains("finite"));
    }

    fn number<T: IntoDeserializer<'static, Error>>(v: T) -> Result<Timeout, Error> {
        Timeout::deserialize(v.into_deserializer())
    }

    #[test]
    fn a_duration_longer_than_a_year_is_refused_however_it_is_written() {
        let year = Timeout::After(LONGEST);
        assert_eq!(t("365d").unwrap(), year);
        assert_eq!(number(LONGEST.as_secs()).unwrap(), year);
        for err in [
            t("366d").unwrap_err(),
            t("18446744073709551615").unwrap_err(),
            number(u64::MAX).unwrap_err(),
            number(i64::MAX).unwrap_err(),
            number(1e300_f64).unwrap_err(),
            number(3.2e7_f64).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(msg.contains("longer than the longest"), "{msg}");
            assert!(msg.contains("`never`"), "{msg}");
        }
        assert!(number(0.5_f64).is_ok());
    }
}
