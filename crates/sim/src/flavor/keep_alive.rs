use std::time::Duration;

use serde_json::Value;

/// How long Ollama keeps a model loaded once its last request finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Forever,
    /// Zero unloads right after the request.
    For(Duration),
}

/// Ollama's own default when OLLAMA_KEEP_ALIVE is unset.
pub const DEFAULT: KeepAlive = KeepAlive::For(Duration::from_secs(300));

impl KeepAlive {
    fn from_seconds(seconds: f64) -> Result<Self, String> {
        if seconds < 0.0 {
            Ok(Self::Forever)
        } else {
            Duration::try_from_secs_f64(seconds)
                .map(Self::For)
                .map_err(|e| format!("keep_alive {seconds} out of range: {e}"))
        }
    }

    /// A request's `keep_alive`: a number of seconds or a Go duration
    /// string; `None` when absent so the server default applies.
    pub fn from_json(value: Option<&Value>) -> Result<Option<Self>, String> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| format!("invalid keep_alive {n}"))
                .and_then(Self::from_seconds)
                .map(Some),
            Some(Value::String(s)) => parse_go_duration(s).map(Some),
            Some(other) => Err(format!("invalid keep_alive {other}")),
        }
    }

    /// OLLAMA_KEEP_ALIVE: a Go duration, or bare integer seconds.
    pub fn from_env(text: &str) -> Result<Self, String> {
        match text.trim().parse::<i64>() {
            Ok(seconds) => Self::from_seconds(seconds as f64),
            Err(_) => parse_go_duration(text.trim()),
        }
    }
}

/// Go's `time.ParseDuration` grammar ("5m", "1h30m", "1.5s", "-1m", "0");
/// any negative value means forever, as in Ollama.
pub fn parse_go_duration(text: &str) -> Result<KeepAlive, String> {
    let bad = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(KeepAlive::For(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut seconds = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        seconds += number * scale;
        rest = &rest[unit_len..];
    }
    if negative && seconds > 0.0 {
        return Ok(KeepAlive::Forever);
    }
    Duration::try_from_secs_f64(seconds)
        .map(KeepAlive::For)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn secs(s: u64) -> KeepAlive {
        KeepAlive::For(Duration::from_secs(s))
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Ok(secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_go_duration("10s"), Ok(secs(10)));
        assert_eq!(parse_go_duration("0"), Ok(secs(0)));
        assert_eq!(
            parse_go_duration("1.5s"),
            Ok(KeepAlive::For(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_go_duration("250ms"),
            Ok(KeepAlive::For(Duration::from_millis(250)))
        );
        assert_eq!(parse_go_duration("-1m"), Ok(KeepAlive::Forever));
        for bad in ["", "5", "5x", "m", "1h-3m", "-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_and_env_forms() {
        assert_eq!(KeepAlive::from_json(None), Ok(None));
        assert_eq!(KeepAlive::from_json(Some(&json!(0))), Ok(Some(secs(0))));
        assert_eq!(KeepAlive::from_json(Some(&json!(30))), Ok(Some(secs(30))));
        assert_eq!(
            KeepAlive::from_json(Some(&json!(-1))),
            Ok(Some(KeepAlive::Forever))
        );
        assert_eq!(
            KeepAlive::from_json(Some(&json!("1h"))),
            Ok(Some(secs(3600)))
        );
        assert!(KeepAlive::from_json(Some(&json!(true))).is_err());
        assert_eq!(KeepAlive::from_env("60"), Ok(secs(60)));
        assert_eq!(KeepAlive::from_env("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_env("2m"), Ok(secs(120)));
    }
}
