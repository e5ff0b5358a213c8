//! Counts (`max_queue`, `max_headers`, …): whole numbers, refused with a message
//! that says so instead of serde's "invalid value: signed int, expected usize".
//!
//! 0 passes here: it is a valid number but a useless limit, and validation refuses
//! it together with every other problem of the file, not as the one error that
//! stops reading.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// For `#[serde(with = "count")]` on `usize` fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    d.deserialize_any(CountVisitor)
}

fn not_a_count<E: de::Error>(written: impl fmt::Display) -> E {
    E::custom(format!(
        "must be a whole number of at least 1, such as 256; `{written}` is not one"
    ))
}

struct CountVisitor;

impl Visitor<'_> for CountVisitor {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number of at least 1")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("`{v}` is too large")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        u64::try_from(v)
            .map_err(|_| not_a_count(v))
            .and_then(|n| self.visit_u64(n))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<usize, E> {
        // `4.0` is a whole number however YAML typed it; bounded so the cast is exact.
        if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
            return Ok(v as usize);
        }
        if v.fract() == 0.0 && v > 0.0 {
            return Err(E::custom(format!("`{v:e}` is too large")));
        }
        Err(not_a_count(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        Err(not_a_count(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<usize, E> {
        Err(not_a_count(v))
    }
}

#[cfg(test)]
mod tests {
    use serde::de::value::Error;
    use serde::de::IntoDeserializer;

    fn count<T: IntoDeserializer<'static, Error>>(v: T) -> Result<usize, String> {
        super::deserialize(v.into_deserializer()).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_pass_and_anything_else_says_what_to_write() {
        assert_eq!(count(256_u64), Ok(256));
        assert_eq!(count(0_i64), Ok(0), "0 is left to validation");
        assert_eq!(count(4.0_f64), Ok(4));
        for (err, written) in [
            (count(-1_i64), "`-1`"),
            (count(1.5_f64), "`1.5`"),
            (count(-2.0_f64), "`-2`"),
            (count("many"), "`many`"),
        ] {
            let msg = err.unwrap_err();
            assert!(msg.contains("whole number of at least 1"), "{msg}");
            assert!(msg.contains(written), "{msg}");
        }
    }
}
