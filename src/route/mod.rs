//! Request routing: which entry takes a request path.
//!
//! Patterns are numbered in file order, so the lowest matching index is Monkey's
//! "first entry, first pattern wins". They are compiled once, at load, in two parts:
//!
//! - the commonest shape, a case-insensitive anchored literal prefix (`^/api/`,
//!   `^/svc12/`), goes into a byte trie over the case-folded literal: a request
//!   walks its path once and meets every such pattern that matches, whatever their
//!   number, and loading them compiles no regex;
//! - every other pattern goes into one `RegexSet`, searched once per request (and
//!   only when one of its patterns could come before the trie's answer).
//!
//! A `RegexSet` answers "which patterns match" as one flag per pattern, so finding
//! the first costs a scan of all of them: about 0.5 ns per pattern per request, plus
//! the time to build the set at load (15 ms per 1,000 patterns). The trie keeps both
//! flat for prefix routes, which is what a config with thousands of entries has.

pub mod hosts;

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

pub use hosts::HostRoutes;

/// The compiled `Match` patterns of a configuration.
#[derive(Debug, Clone)]
pub struct Router {
    /// Patterns of the form `^literal` (see [`literal_prefix`]).
    trie: Trie,
    /// Every other pattern.
    set: RegexSet,
    /// For set pattern j: its pattern index (ascending).
    set_ids: Vec<usize>,
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

/// Most trie nodes (about 50 bytes each): far above real configurations (10,000
/// `^/svcN/` entries take about 21,000), and past it patterns go to the `RegexSet`.
const MAX_TRIE_NODES: usize = 1 << 21;

/// How a pattern is compiled: Monkey matched case-insensitively (REG_ICASE); `(?-i)`
/// inside the pattern turns that off.
pub fn compile_one(pattern: &str) -> Result<Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(&format!("(?i){pattern}"))
        .size_limit(SET_SIZE_LIMIT)
        .build()
}

/// For a pattern that is exactly `^` followed by literal ASCII text, that text
/// lowercased: what `(?i)pattern` matches is then "the path starts with it, ignoring
/// case". Deliberately narrow: only characters that are literal in every regex
/// context, and escapes of regex metacharacters, so everything accepted here is a
/// valid regex with that meaning; anything else (`$`, classes, repetitions, `(?-i)`,
/// non-ASCII) is left to the `RegexSet`.
fn literal_prefix(pattern: &str) -> Option<Vec<u8>> {
    let rest = pattern.strip_prefix('^')?.as_bytes();
    let mut lit = Vec::with_capacity(rest.len());
    let mut i = 0;
    while let Some(&b) = rest.get(i) {
        let c = match b {
            b'\\' => {
                let e = *rest.get(i + 1)?;
                i += 1;
                if !b".+*?()|[]{}^$\\/-".contains(&e) {
                    return None;
                }
                e
            }
            b if b.is_ascii_alphanumeric() || b"/-_~%=,;:@!&'".contains(&b) => b,
            _ => return None,
        };
        lit.push(c.to_ascii_lowercase());
        i += 1;
    }
    (!lit.is_empty()).then_some(lit)
}

/// The bytes of a path as a case-insensitive ASCII literal sees them: ASCII
/// lowercased, and the only two non-ASCII characters that Unicode simple case
/// folding equates with ASCII letters (`ſ` with s, the Kelvin sign with k) replaced
/// by them. Stops at any other non-ASCII character: no ASCII literal matches it.
fn folded(path: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const LONG_S: &[u8] = "\u{17F}".as_bytes();
    const KELVIN: &[u8] = "\u{212A}".as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *path.get(i)?;
        let rest = &path[i..];
        let (c, n) = if b.is_ascii() {
            (b.to_ascii_lowercase(), 1)
        } else if rest.starts_with(LONG_S) {
            (b's', LONG_S.len())
        } else if rest.starts_with(KELVIN) {
            (b'k', KELVIN.len())
        } else {
            return None;
        };
        i += n;
        Some(c)
    })
}

/// A byte trie of literal prefixes; node 0 is the root.
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// (byte, node index), few per node.
    children: Vec<(u8, u32)>,
    /// Patterns whose literal ends here, ascending.
    ids: Vec<usize>,
}

impl Trie {
    fn new() -> Trie {
        Trie {
            nodes: vec![TrieNode::default()],
        }
    }

    fn child(&self, node: usize, b: u8) -> Option<usize> {
        self.nodes[node]
            .children
            .iter()
            .find(|(c, _)| *c == b)
            .map(|(_, n)| *n as usize)
    }

    fn insert(&mut self, lit: &[u8], id: usize) {
        let mut node = 0;
        for &b in lit {
            node = match self.child(node, b) {
                Some(n) => n,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].children.push((b, n as u32));
                    n
                }
            };
        }
        self.nodes[node].ids.push(id);
    }

    /// Calls `f` with the patterns of every node the path walks through.
    fn walk(&self, path: &[u8], mut f: impl FnMut(&[usize])) {
        if self.nodes.len() == 1 {
            return;
        }
        let mut node = 0;
        for b in folded(path) {
            let Some(next) = self.child(node, b) else {
                return;
            };
            node = next;
            f(&self.nodes[node].ids);
        }
    }

    /// The lowest pattern index whose literal prefixes the path.
    fn first(&self, path: &[u8]) -> Option<usize> {
        let mut best: Option<usize> = None;
        self.walk(path, |ids| {
            if let Some(&id) = ids.first() {
                best = Some(best.map_or(id, |b| b.min(id)));
            }
        });
        best
    }
}

impl Router {
    /// `patterns`: (entry index, pattern text) in file order. On failure, the index of
    /// the first pattern that does not compile, with the regex error.
    pub fn build(patterns: Vec<(usize, String)>) -> Result<Router, (usize, regex::Error)> {
        let mut trie = Trie::new();
        let mut set_ids = Vec::new();
        for (i, (_, p)) in patterns.iter().enumerate() {
            match literal_prefix(p) {
                // Bounded like the set's size limit: a hostile file of long distinct
                // literals must not build an unbounded trie (the set refuses it).
                Some(lit) if trie.nodes.len() + lit.len() <= MAX_TRIE_NODES => trie.insert(&lit, i),
                _ => set_ids.push(i),
            }
        }
        let set = RegexSetBuilder::new(set_ids.iter().map(|&i| format!("(?i){}", patterns[i].1)))
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(64 << 20)
            .build();
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                // The set does not say which pattern broke it: find it (slow path, only
                // for broken configs). Trie patterns are valid by construction.
                for &i in &set_ids {
                    if let Err(e) = compile_one(&patterns[i].1) {
                        return Err((i, e));
                    }
                }
                return Err((set_ids.first().copied().unwrap_or(0), e));
            }
        };
        let (entry_of, text) = patterns.into_iter().unzip();
        Ok(Router {
            trie,
            set,
            set_ids,
            entry_of,
            text,
        })
    }

    pub fn empty() -> Router {
        Router {
            trie: Trie::new(),
            set: RegexSet::empty(),
            set_ids: Vec::new(),
            entry_of: Vec::new(),
            text: Vec::new(),
        }
    }

    /// The first matching pattern for a normalised path, or `None` (404).
    pub fn route(&self, path: &[u8]) -> Option<RouteMatch> {
        let lit = self.trie.first(path);
        // Only set patterns numbered before the trie's answer can change it.
        let limit = lit.map_or(self.set_ids.len(), |l| {
            self.set_ids.partition_point(|&i| i < l)
        });
        let mut best = lit;
        if limit > 0 {
            let m = self.set.matches(path);
            if m.matched_any() {
                if let Some(j) = (0..limit).find(|&j| m.matched(j)) {
                    best = Some(self.set_ids[j]);
                }
            }
        }
        let first = best?;
        Some(RouteMatch {
            entry: self.entry_of[first],
            pattern: first,
        })
    }

    /// Every pattern that matches, in order (for `explain` and shadowing checks).
    pub fn all_matches(&self, path: &[u8]) -> Vec<RouteMatch> {
        let mut ids: Vec<usize> = Vec::new();
        self.trie.walk(path, |found| ids.extend_from_slice(found));
        ids.extend(self.set.matches(path).into_iter().map(|j| self.set_ids[j]));
        ids.sort_unstable();
        ids.into_iter()
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

    #[test]
    fn literal_prefixes_are_recognised_narrowly() {
        let lit = |p: &str| literal_prefix(p).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(lit("^/API/v1"), Some("/api/v1".into()));
        assert_eq!(lit(r"^/a\.b\-c\/d"), Some("/a.b-c/d".into()));
        for p in [
            "/api", "^", "^/a$", "^/a?", "^/a*", "^/a+", "^/a{2}", "^/a|/b", "^/[a]", "^/(a)",
            "(?-i)^/a", r"^/\d", r"^/\<", "^/é", "^/a.b", "^^/a", r"^/a\",
        ] {
            assert_eq!(lit(p), None, "{p}");
        }
        // Every escape and character accepted is a valid regex with the same meaning.
        let all = r"^/aZ09-_~%=,;:@!&'\.\+\*\?\(\)\|\[\]\{\}\^\$\\\/\-";
        let l = literal_prefix(all).unwrap();
        let re = compile_one(all).unwrap();
        assert!(re.is_match(&l));
        assert!(re.is_match(&l.to_ascii_uppercase()));
    }

    /// The trie folds only `ſ` and the Kelvin sign to ASCII; check that this is what
    /// the regex crate's Unicode case-insensitivity does, for every character.
    #[test]
    fn only_two_non_ascii_characters_fold_to_ascii() {
        let all: String = (0x80u32..=0x10FFFF).filter_map(char::from_u32).collect();
        let re = compile_one("[a-z0-9/._~%=,;:@!&'-]").unwrap();
        let found: Vec<&[u8]> = re.find_iter(all.as_bytes()).map(|m| m.as_bytes()).collect();
        assert_eq!(found, ["\u{17F}".as_bytes(), "\u{212A}".as_bytes()]);
        let r = router(&[(0, "^/ask")]);
        assert_eq!(
            r.route("/a\u{17F}\u{212A}/x".as_bytes()).map(|m| m.entry),
            Some(0)
        );
        assert_eq!(r.route("/aé".as_bytes()), None);
    }

    /// The trie + set split answers exactly what trying every pattern in order does.
    #[test]
    fn same_answer_as_trying_each_pattern_in_order() {
        let patterns = [
            "^/api/",
            r"\.php$",
            "^/api/v2",
            "^/API",
            "^/static/",
            "(?-i)^/Doc",
            "^/a",
            "/",
            "^/ab",
            "^/a/b",
            r"^/x\.y",
            "^/svc1",
            "^/svc10/",
            "^/k",
            "^/s",
            "img",
        ];
        let paths = [
            "/",
            "/api/x",
            "/API/v2/y",
            "/apix",
            "/index.php",
            "/static/a.PHP",
            "/Doc",
            "/doc",
            "/ab",
            "/a/b/c",
            "/x.y",
            "/xzy",
            "/svc1",
            "/svc10/",
            "/svc100/",
            "/\u{212A}",
            "/\u{17F}",
            "/é",
            "",
            "/img/a",
            "/zzz",
        ];
        let re: Vec<Regex> = patterns.iter().map(|p| compile_one(p).unwrap()).collect();
        // Every rotation of the pattern list, so each kind comes first somewhere.
        for start in 0..patterns.len() {
            let order: Vec<usize> = (0..patterns.len())
                .map(|k| (start + k) % patterns.len())
                .collect();
            let r = Router::build(
                order
                    .iter()
                    .enumerate()
                    .map(|(e, &k)| (e, patterns[k].to_string()))
                    .collect(),
            )
            .unwrap();
            for path in paths {
                let want: Vec<usize> = (0..order.len())
                    .filter(|&i| re[order[i]].is_match(path.as_bytes()))
                    .collect();
                let got = r.route(path.as_bytes()).map(|m| m.pattern);
                assert_eq!(got, want.first().copied(), "{path} with {order:?}");
                let all: Vec<usize> = r
                    .all_matches(path.as_bytes())
                    .iter()
                    .map(|m| m.pattern)
                    .collect();
                assert_eq!(all, want, "{path} with {order:?}");
            }
        }
    }
}
