//! `keep_alive` as Ollama reads it (`api/types.go` `Duration.UnmarshalJSON`): a
//! number of seconds or a Go duration string; negative means forever, zero means
//! unload once this request is done. Anything else is the client's mistake, said
//! with the field's name, never a silent default.

use std::time::Duration;

use serde_json::Value;

use crate::error::ApiError;

/// What a request asked of its model's idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload this long after the model's last request ends (zero: at once).
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// The idle timeout in the supervisor's terms (None: never unload).
    pub fn idle(self) -> Option<Duration> {
        match self {
            KeepAlive::For(d) => Some(d),
            KeepAlive::Forever => None,
        }
    }

    pub fn is_zero(self) -> bool {
        self == KeepAlive::For(Duration::ZERO)
    }
}

/// The request's `keep_alive` (None when absent or null).
pub fn parse(value: Option<&Value>) -> Result<Option<KeepAlive>, ApiError> {
    let bad = |why: String| ApiError::InvalidField {
        field: "keep_alive".into(),
        reason: format!(
            "{why}; use a number of seconds or a duration such as \"5m\", \"1h30m\" or \"300ms\" \
             (negative: keep loaded, 0: unload after this request)"
        ),
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::MAX);
            if secs < 0.0 {
                return Ok(Some(KeepAlive::Forever));
            }
            // Ollama keeps whole seconds of a number (`int(t) * time.Second`).
            Ok(Some(match Duration::try_from_secs_f64(secs.trunc()) {
                Ok(d) => KeepAlive::For(d),
                Err(_) => KeepAlive::Forever,
            }))
        }
        Some(Value::String(s)) => go_duration(s)
            .map(Some)
            .map_err(|why| bad(format!("is {s:?}, which is not a duration: {why}"))),
        Some(other) => Err(bad(format!("must be a number or a string, not {other}"))),
    }
}

/// Go's `time.ParseDuration`: `[-+]` then one or more `<decimal><unit>`, units ns
/// us µs ms s m h; a bare "0" is allowed. Negative durations mean forever.
fn go_duration(s: &str) -> Result<KeepAlive, &'static str> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(KeepAlive::For(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err("it is empty");
    }
    let mut total = 0f64; // nanoseconds
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err("expected a number");
        }
        let value: f64 = num.parse().map_err(|_| "expected a number")?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("a unit (ns, us, ms, s, m, h) is missing"),
            _ => return Err("unknown unit (use ns, us, ms, s, m or h)"),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if negative && total > 0.0 {
        return Ok(KeepAlive::Forever);
    }
    match Duration::try_from_secs_f64(total / 1e9) {
        Ok(d) => Ok(KeepAlive::For(d)),
        // Past what Go's Duration holds (~292 years): as good as forever.
        Err(_) => Ok(KeepAlive::Forever),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ka(v: Value) -> Result<Option<KeepAlive>, ApiError> {
        parse(Some(&v))
    }

    fn secs(s: f64) -> Option<KeepAlive> {
        Some(KeepAlive::For(Duration::from_secs_f64(s)))
    }

    #[test]
    fn numbers_are_whole_seconds_and_negative_is_forever() {
        assert_eq!(ka(json!(0)).unwrap(), secs(0.0));
        assert_eq!(ka(json!(300)).unwrap(), secs(300.0));
        assert_eq!(ka(json!(2.9)).unwrap(), secs(2.0));
        assert_eq!(ka(json!(-1)).unwrap(), Some(KeepAlive::Forever));
        assert_eq!(ka(json!(1e300)).unwrap(), Some(KeepAlive::Forever));
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(ka(Value::Null).unwrap(), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(ka(json!("5m")).unwrap(), secs(300.0));
        assert_eq!(ka(json!("1h30m")).unwrap(), secs(5400.0));
        assert_eq!(ka(json!("300ms")).unwrap(), secs(0.3));
        assert_eq!(ka(json!("1.5s")).unwrap(), secs(1.5));
        assert_eq!(ka(json!("0")).unwrap(), secs(0.0));
        assert_eq!(ka(json!("0s")).unwrap(), secs(0.0));
        assert_eq!(ka(json!("+10s")).unwrap(), secs(10.0));
        assert_eq!(ka(json!("-1m")).unwrap(), Some(KeepAlive::Forever));
        assert_eq!(ka(json!("-0s")).unwrap(), secs(0.0));
    }

    #[test]
    fn anything_else_is_a_400_naming_keep_alive() {
        for bad in [
            json!(""),
            json!("5"),
            json!("5 m"),
            json!("abc"),
            json!("m"),
            json!("1.2.3s"),
            json!("5d"),
            json!(true),
            json!([1]),
            json!({"s": 1}),
        ] {
            let e = ka(bad.clone()).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert!(e.to_string().starts_with("`keep_alive`"), "{bad}: {e}");
        }
    }
}
