//! Byte sizes as people write them: `48GB`, `512MiB`, `1.5GB`, `300mb` or plain
//! bytes. The one parser for routes.yaml (through `modelyard_config::ByteSize`)
//! and modelyard-sim's flags, which depends on none of the router's crates.
//!
//! SI units are powers of 1000 and IEC units powers of 1024, as the units say; a
//! model's download size is usually quoted in GB, a machine's memory often in GiB,
//! and the router must not silently round one into the other. Units are
//! case-insensitive and may follow a space; `_` may group digits.

const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("k", 1_000),
    ("m", 1_000_000),
    ("g", 1_000_000_000),
];

/// The bytes `s` stands for, or why it stands for none (the message quotes `s`).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    // Without this, `-5GB` reads as the unit `-5gb`.
    if t.starts_with('-') {
        return Err(format!(
            "`{s}` is not a size: a size cannot be negative; write e.g. 48GB or 512MiB"
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!("`{s}` is not a size: unknown unit `{unit}` (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")
            })?
    };
    if num.is_empty() {
        return Err(format!(
            "`{s}` is not a size: expected a number such as 48GB or 512MiB"
        ));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(multiplier)
            .ok_or_else(|| format!("`{s}` is too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size: expected a number such as 48GB or 512MiB"))?;
    let bytes = f * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn si_iec_fractions_grouping_and_plain_bytes() {
        assert_eq!(parse("48GB"), Ok(48_000_000_000));
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("1.5 gb"), Ok(1_500_000_000));
        assert_eq!(parse("4_096"), Ok(4096));
        assert_eq!(parse(" 12 b "), Ok(12));
    }

    #[test]
    fn negatives_unknown_units_and_overflow_are_refused_with_the_text() {
        assert!(parse("-5GB").unwrap_err().contains("cannot be negative"));
        assert!(parse("12 parsecs")
            .unwrap_err()
            .contains("unknown unit `parsecs`"));
        assert!(parse("99999999999999TB").unwrap_err().contains("too large"));
        assert!(parse("GB").is_err() && parse("").is_err() && parse("1.2.3GB").is_err());
    }
}
