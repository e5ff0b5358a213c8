/// Parses a byte count such as `512MiB`, `1.5GB`, `300mb` or `4096`.
///
/// Decimal units (KB, MB, GB, TB) are powers of 1000 and binary units (KiB,
/// MiB, GiB, TiB) powers of 1024, matching how memory is usually quoted for
/// models; units are case-insensitive and may be separated by spaces.
pub fn parse_byte_size(input: &str) -> Result<u64, String> {
    let trimmed = input.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "'{input}' is not a size (expected e.g. 512MiB, 1.5GB, 4096)"
        ));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{input}' (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    // Whole numbers are computed exactly; only fractions go through f64.
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| format!("size '{input}' is too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{input}' is not a size (expected e.g. 512MiB, 1.5GB, 4096)"))?;
    let bytes = (value * multiplier as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size '{input}' is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_byte_size("0"), Ok(0));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("4096B"), Ok(4096));
        assert_eq!(parse_byte_size(" 12 b "), Ok(12));
    }

    #[test]
    fn decimal_units() {
        assert_eq!(parse_byte_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_byte_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_byte_size("2kb"), Ok(2_000));
        assert_eq!(parse_byte_size("1TB"), Ok(1_000_000_000_000));
    }

    #[test]
    fn binary_units() {
        assert_eq!(parse_byte_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_byte_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_byte_size("0.5 GiB"), Ok(1 << 29));
        assert_eq!(parse_byte_size("3KIB"), Ok(3072));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "MB",
            "-5MB",
            "1.2.3GB",
            "12 parsecs",
            "1e9",
            "99999999999999TB",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
