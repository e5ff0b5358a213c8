//! "Did you mean": the one rule, for config keys and names and for the model
//! names clients send. A slip changes a name by a few letters (a swap of two
//! counts as one); a short name allows one, so `nope` is not a typo of `code`.
//! A name the wanted one is part of (three letters or more) is close too.

/// Names among `candidates` that `wanted` is probably a slip of, closest first
/// (ties by name).
pub fn close_names<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    // A name far longer than any candidate is no slip, and measuring it would
    // cost time in its length.
    let longest = candidates.iter().map(|c| c.len()).max().unwrap_or(0);
    if wanted.len() > longest + 8 {
        return Vec::new();
    }
    let wanted_l = wanted.to_lowercase();
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter_map(|c| {
            let cl = c.to_lowercase();
            let d = strsim::damerau_levenshtein(&wanted_l, &cl);
            let related =
                d <= 1.max(c.len() / 3) || (wanted_l.len() >= 3 && cl.contains(&wanted_l));
            related.then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().map(|(_, c)| c).collect()
}

/// The closest of `candidates` to `wanted`, if one is close enough to be a
/// typo of it.
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    close_names(wanted, candidates).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slips_are_close_and_other_names_are_not() {
        let names = ["default", "code", "qwen3-32b", "qwen"];
        assert_eq!(closest("defualt", names), Some("default"), "a swap");
        assert_eq!(closest("qwen3-23b", names), Some("qwen3-32b"));
        assert_eq!(closest("nope", names), None, "two letters of four");
        assert_eq!(close_names("qwe", names), vec!["qwen", "qwen3-32b"]);
        assert_eq!(closest(&"x".repeat(40), names), None);
    }
}
