//! Request routing: which entry takes a request path.
//!
//! Every `Match` pattern of every http entry is compiled once, at load, into one
//! `RegexSet`; a request costs one scan of its (normalised) path whatever the number
//! of entries. Patterns are numbered in file order, so the lowest matching index is
//! Monkey's "first entry, first pattern wins".

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

/// The compiled `Match` patterns of a configuration.
#[derive(Debug, Clone)]
pub struct Router {
    set: RegexSet,
    /// For pattern i: the entry index it belongs to.
    entry_of: Vec<usize>,
    /// For pattern i: the pattern as written (statistics label, `explain`).
    text: Vec<String>,
}

/// A routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub entry: usize,
    /// Index of the pattern in [`Router::pattern`] numbering.
    pub pattern: usize,
}

/// Size limit for the compiled set: generous, since a 10,000-entry config is a real
/// use case, but bounded so a hostile file cannot eat the machine.
const SET_SIZE_LIMIT: usize = 512 << 20;

/// How a pattern is compiled: Monkey matched case-insensitively (REG_ICASE); `(?-i)`
/// inside the pattern turns that off.
pub fn compile_one(pattern: &str) -> Result<Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(&format!("(?i){pattern}"))
        .size_limit(SET_SIZE_LIMIT)
        .build()
}

impl Router {
    /// `patterns`: (entry index, pattern text) in file order. On failure, the index of
    /// the first pattern that does not compile, with the regex error.
    pub fn build(patterns: Vec<(usize, String)>) -> Result<Router, (usize, regex::Error)> {
        let set = RegexSetBuilder::new(patterns.iter().map(|(_, p)| format!("(?i){p}")))
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(64 << 20)
            .build();
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                // The set does not say which pattern broke it: find it (slow path, only
                // for broken configs).
                for (i, (_, p)) in patterns.iter().enumerate() {
                    if let Err(e) = compile_one(p) {
                        return Err((i, e));
                    }
                }
                return Err((0, e));
            }
        };
        let (entry_of, text) = patterns.into_iter().unzip();
        Ok(Router {
            set,
            entry_of,
            text,
        })
    }

    pub fn empty() -> Router {
        Router {
            set: RegexSet::empty(),
            entry_of: Vec::new(),
            text: Vec::new(),
        }
    }

    /// The first matching pattern for a normalised path, or `None` (404).
    pub fn route(&self, path: &[u8]) -> Option<RouteMatch> {
        let first = self.set.matches(path).into_iter().next()?;
        Some(RouteMatch {
            entry: self.entry_of[first],
            pattern: first,
        })
    }

    /// Every pattern that matches, in order (for `explain` and shadowing checks).
    pub fn all_matches(&self, path: &[u8]) -> Vec<RouteMatch> {
        self.set
            .matches(path)
            .into_iter()
            .map(|i| RouteMatch {
                entry: self.entry_of[i],
                pattern: i,
            })
            .collect()
    }

    pub fn pattern(&self, i: usize) -> &str {
        &self.text[i]
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Index of the first pattern of an entry (an entry's patterns are numbered
    /// contiguously), so `pattern - first_pattern_of(entry)` is its index within the
    /// entry.
    pub fn first_pattern_of(&self, entry: usize) -> usize {
        self.entry_of.partition_point(|e| *e < entry)
    }

    /// Pattern indexes of one entry.
    pub fn patterns_of(&self, entry: usize) -> impl Iterator<Item = usize> + '_ {
        self.entry_of
            .iter()
            .enumerate()
            .filter(move |(_, e)| **e == entry)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(p: &[(usize, &str)]) -> Router {
        Router::build(p.iter().map(|(e, s)| (*e, s.to_string())).collect()).unwrap()
    }

    #[test]
    fn first_entry_then_first_pattern_wins() {
        let r = router(&[(0, r"\.php$"), (1, "^/static/"), (1, r"\.jpg$"), (2, "/")]);
        assert_eq!(
            r.route(b"/index.php"),
            Some(RouteMatch {
                entry: 0,
                pattern: 0
            })
        );
        assert_eq!(
            r.route(b"/static/a.jpg"),
            Some(RouteMatch {
                entry: 1,
                pattern: 1
            })
        );
        assert_eq!(
            r.route(b"/x/a.JPG"),
            Some(RouteMatch {
                entry: 1,
                pattern: 2
            })
        );
        assert_eq!(
            r.route(b"/other"),
            Some(RouteMatch {
                entry: 2,
                pattern: 3
            })
        );
        assert_eq!(router(&[(0, "^/a$")]).route(b"/b"), None);
    }

    #[test]
    fn case_insensitive_unless_turned_off() {
        let r = router(&[(0, "^/API/"), (1, "(?-i)^/Doc")]);
        assert_eq!(r.route(b"/api/x").map(|m| m.entry), Some(0));
        assert_eq!(r.route(b"/Doc").map(|m| m.entry), Some(1));
        assert_eq!(r.route(b"/doc"), None);
    }

    #[test]
    fn reports_the_broken_pattern() {
        let e = Router::build(vec![(0, "ok".into()), (1, "(unclosed".into())]).unwrap_err();
        assert_eq!(e.0, 1);
    }
}
