/// Page granularity: writing a page makes the kernel back it, so RSS reflects
/// the requested size.
const PAGE: usize = 4096;

/// Allocates `bytes` and writes every page so the memory is resident, not
/// merely reserved. Supervisors measure RSS, so untouched memory would make
/// the sim look smaller than it claims to be.
pub fn allocate_resident(bytes: u64) -> Result<Vec<u8>, String> {
    let len = usize::try_from(bytes).map_err(|_| format!("{bytes} bytes do not fit in memory"))?;
    let mut block = Vec::new();
    // Fallible reservation turns an impossible size into an error message
    // instead of an abort.
    block
        .try_reserve_exact(len)
        .map_err(|e| format!("cannot allocate {bytes} bytes: {e}"))?;
    // Page-sized copies stay fast even in debug builds, where a byte-wise
    // fill of gigabytes would delay readiness by seconds.
    let page = [1u8; PAGE];
    while block.len() < len {
        let n = (len - block.len()).min(PAGE);
        block.extend_from_slice(&page[..n]);
    }
    Ok(std::hint::black_box(block))
}

#[cfg(test)]
mod tests {
    use super::allocate_resident;

    #[test]
    fn allocates_and_touches() {
        let block = allocate_resident(3 * 4096 + 10).unwrap();
        assert_eq!(block.len(), 3 * 4096 + 10);
        assert!(block.iter().all(|&b| b == 1));
        assert!(allocate_resident(0).unwrap().is_empty());
    }

    #[test]
    fn impossible_size_is_an_error() {
        assert!(allocate_resident(u64::MAX / 2).is_err());
    }
}
