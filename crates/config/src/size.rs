//! Byte sizes as users write them: `48GB`, `512MiB`, `1.5GB` or plain bytes
//! (parsed by modelyard-size, which modelyard-sim shares), and how routes.yaml
//! reads and shows them.
//!
//! SI units are powers of 1000 and IEC units powers of 1024, as the units say; a
//! model's download size is usually quoted in GB, a machine's memory often in GiB,
//! and the router must not silently round one into the other.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    /// The one parser, shared with modelyard-sim (see modelyard-size).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        modelyard_size::parse(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    /// Prints in the unit family the number is exact in, so `512MiB` reads back as
    /// `512 MiB` and `48GB` as `48 GB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b == 0 {
            return write!(f, "0 B");
        }
        for (unit, m) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)] {
            if b >= m && b.is_multiple_of(m) && !b.is_multiple_of(1_000_000) {
                return write!(f, "{} {unit}", b / m);
            }
        }
        for (unit, m) in [
            ("TB", 1_000_000_000_000u64),
            ("GB", 1_000_000_000),
            ("MB", 1_000_000),
            ("KB", 1_000),
        ] {
            if b >= m {
                let v = b as f64 / m as f64;
                return if b.is_multiple_of(m) {
                    write!(f, "{} {unit}", b / m)
                } else {
                    write!(f, "{:.1} {unit}", v)
                };
            }
        }
        write!(f, "{b} B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 48GB, 512MiB, 1.5GB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format!(
                        "`{v}` is not a size: a size cannot be negative; write e.g. 48GB or 512MiB"
                    ))
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Memory sizes written as a bare number under 1 MB (`memory: 50`, a budget of
/// 48): bytes, as written, but never what anyone means for a model or a machine.
/// Their path and how they read, from the merged file and environment.
pub(crate) fn unitless_memory(figment: &figment::Figment) -> Vec<(Vec<String>, String)> {
    use figment::value::Value;
    let bare = |v: &Value| -> Option<String> {
        let text = match v {
            Value::Num(_, n) => n.to_u128().map(|n| n.to_string())?,
            Value::String(_, s) if s.trim().chars().all(|c| c.is_ascii_digit()) => {
                s.trim().to_string()
            }
            _ => return None,
        };
        let n: u64 = text.parse().ok()?;
        (n > 0 && n < 1_000_000).then_some(text)
    };
    let mut found = Vec::new();
    for key in ["budget", "reserve"] {
        if let Some(text) = figment.find_value(key).ok().as_ref().and_then(bare) {
            found.push((vec![key.to_string()], text));
        }
    }
    for table in ["models", "backends"] {
        if let Ok(Value::Dict(_, entries)) = figment.find_value(table) {
            for (name, entry) in entries {
                if let Value::Dict(_, keys) = entry {
                    if let Some(text) = keys.get("memory").and_then(bare) {
                        found.push((vec![table.into(), name, "memory".into()], text));
                    }
                }
            }
        }
    }
    found
        .into_iter()
        .map(|(path, n)| {
            let why = format!(
                "`{n}` has no unit, so it is {n} bytes; write {n}MB or {n}GB (or {n}B if bytes are meant)"
            );
            (path, why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> u64 {
        s.parse::<ByteSize>().unwrap().0
    }

    #[test]
    fn parses_si_iec_fractions_and_plain_bytes() {
        assert_eq!(p("48GB"), 48_000_000_000);
        assert_eq!(p("512MiB"), 512 << 20);
        assert_eq!(p("1.5GB"), 1_500_000_000);
        assert_eq!(p("1.5 gib"), 3 << 29);
        assert_eq!(p("1024"), 1024);
        assert_eq!(p("10_000"), 10_000);
    }

    #[test]
    fn rejects_unknown_units_and_garbage() {
        assert!("48 GX"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("unknown unit"));
        assert!("GB".parse::<ByteSize>().is_err());
        assert!("-1GB"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("cannot be negative"));
        assert!("99999999999TB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_in_the_family_it_was_written_in() {
        assert_eq!(ByteSize(48_000_000_000).to_string(), "48 GB");
        assert_eq!(ByteSize(512 << 20).to_string(), "512 MiB");
        assert_eq!(ByteSize(1_500_000_000).to_string(), "1.5 GB");
        assert_eq!(ByteSize(12).to_string(), "12 B");
    }
}
