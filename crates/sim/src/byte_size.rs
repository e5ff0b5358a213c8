/// Parses a byte count such as `512MiB`, `1.5GB`, `300mb` or `4096`.
///
/// Decimal units (KB, MB, GB, TB) are powers of 1000 and binary units (KiB,
/// MiB, GiB, TiB) powers of 1024, matching how memory is usually quoted for
/// models; units are case-insensitive and may be separated by spaces.
pub fn parse_byte_size(input: &str) -> Result<u64, String> {
    // The router's parser, so a size means the same to both.
    modelyard_size::parse(input)
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
