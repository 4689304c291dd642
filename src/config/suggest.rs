//! "did you mean ...": the nearest known word to a misspelling.

/// The candidate closest to `word` (case-insensitive, ignoring `-` and `_`), when it
/// is close enough to be a plausible typo; as a ready-to-print help line.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let w = norm(word);
    let (best, dist) = candidates
        .into_iter()
        .map(|c| (c, strsim::levenshtein(&w, &norm(c))))
        .min_by_key(|(_, d)| *d)?;
    // Allow roughly one typo per four letters, at least two.
    let limit = (w.chars().count() / 4).max(2);
    (dist <= limit).then(|| format!("did you mean `{best}`?"))
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["ServerList", "LoadBalancer", "Match"];
        assert_eq!(
            nearest("Serverlst", keys).as_deref(),
            Some("did you mean `ServerList`?")
        );
        assert_eq!(
            nearest("load_balancr", keys).as_deref(),
            Some("did you mean `LoadBalancer`?")
        );
        assert_eq!(nearest("Frobnicate", keys), None);
    }
}
