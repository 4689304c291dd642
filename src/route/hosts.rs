//! Routing by host (SPEC section 9): which entries a request's host lets in,
//! decided by one hash lookup, then the path routed among those entries only.
//!
//! Built at load, when any entry has `Host`: one [`Router`] per distinct exact
//! name and per distinct `*.suffix`, each holding the patterns of every entry that
//! name admits (its own, wildcard ones that cover it, `*` ones and host-less ones),
//! in file order. A request's host picks its router by an exact lookup, then by
//! its longest known suffix (one lookup per label), then the `*` router; so the
//! cost does not grow with the number of entries or hosts. A request without a
//! host only meets entries without `Host`.

use rustc_hash::FxHashMap;

use super::{RouteMatch, Router};
use crate::config::HostPattern;

/// The patterns of the entries one host admits, and their numbers in the full
/// configuration (statistics and `explain` use those).
#[derive(Debug, Clone)]
struct Group {
    router: Router,
    global: Vec<usize>,
}

impl Group {
    fn build(
        patterns: &[(usize, String)],
        admits: impl Fn(usize) -> bool,
    ) -> Result<Group, (usize, regex::Error)> {
        let (global, subset): (Vec<usize>, Vec<(usize, String)>) = patterns
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| admits(*e))
            .map(|(i, p)| (i, p.clone()))
            .unzip();
        let router = Router::build(subset).map_err(|(i, e)| (global[i], e))?;
        Ok(Group { router, global })
    }

    fn route(&self, path: &[u8]) -> Option<RouteMatch> {
        self.router.route(path).map(|m| RouteMatch {
            entry: m.entry,
            pattern: self.global[m.pattern],
        })
    }
}

#[derive(Debug, Clone)]
pub struct HostRoutes {
    exact: FxHashMap<Box<str>, Group>,
    /// By suffix with its leading dot (`.example.com`).
    suffix: FxHashMap<Box<str>, Group>,
    /// A host no `Host` name covers: entries with `*` and entries without `Host`.
    any_host: Group,
    /// No host at all (HTTP/1.0 without `Host`): entries without `Host` only.
    no_host: Group,
}

impl HostRoutes {
    /// `hosts[e]`: entry e's `Host` names (empty: any host). `patterns`: as for
    /// [`Router::build`].
    pub fn build(
        hosts: &[Vec<HostPattern>],
        patterns: &[(usize, String)],
    ) -> Result<HostRoutes, (usize, regex::Error)> {
        let open = |e: usize| hosts.get(e).is_none_or(|h| h.is_empty());
        let star = |e: usize| open(e) || hosts[e].contains(&HostPattern::Any);
        let mut exact = FxHashMap::default();
        let mut suffix = FxHashMap::default();
        for h in hosts.iter().flatten() {
            match h {
                HostPattern::Exact(name) if !exact.contains_key(name.as_str()) => {
                    let g = Group::build(patterns, |e| {
                        star(e) || hosts[e].iter().any(|p| p.matches(name))
                    })?;
                    exact.insert(name.clone().into_boxed_str(), g);
                }
                HostPattern::Suffix(s) if !suffix.contains_key(s.as_str()) => {
                    // Every host ending in `s` is also covered by the wildcards
                    // whose suffix `s` itself ends with.
                    let g = Group::build(patterns, |e| {
                        star(e)
                            || hosts[e].iter().any(|p| match p {
                                HostPattern::Suffix(t) => s.ends_with(t.as_str()),
                                _ => false,
                            })
                    })?;
                    suffix.insert(s.clone().into_boxed_str(), g);
                }
                _ => {}
            }
        }
        Ok(HostRoutes {
            exact,
            suffix,
            any_host: Group::build(patterns, star)?,
            no_host: Group::build(patterns, open)?,
        })
    }

    /// The first matching pattern for `host` (lowercase, no port, no trailing
    /// dot) and a normalised path.
    pub fn route(&self, host: Option<&str>, path: &[u8]) -> Option<RouteMatch> {
        self.group(host).route(path)
    }

    fn group(&self, host: Option<&str>) -> &Group {
        let Some(host) = host else {
            return &self.no_host;
        };
        if let Some(g) = self.exact.get(host) {
            return g;
        }
        if !self.suffix.is_empty() {
            // The longest suffix first: scan the dots from the left.
            for (i, _) in host.match_indices('.') {
                if let Some(g) = self.suffix.get(&host[i..]) {
                    return g;
                }
            }
        }
        &self.any_host
    }
}

/// The host of a request as routing compares it: from the absolute-form target
/// if there is one, else the `Host` field; without its port and trailing dot,
/// lowercased into `scratch`. None when the request names no host.
pub fn request_host<'s>(
    target: &[u8],
    host_field: Option<&[u8]>,
    scratch: &'s mut [u8; 256],
) -> Option<&'s str> {
    let raw = absolute_form_host(target).or(host_field)?;
    let name = strip_port(raw);
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > scratch.len() {
        return None;
    }
    let out = &mut scratch[..name.len()];
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// An absolute-form target without its scheme: `http://host/p` → `host/p`;
/// None for any other form.
pub fn after_scheme(target: &[u8]) -> Option<&[u8]> {
    let has = |s: &[u8]| target.len() > s.len() && target[..s.len()].eq_ignore_ascii_case(s);
    if has(b"http://") {
        Some(&target[7..])
    } else if has(b"https://") {
        Some(&target[8..])
    } else {
        None
    }
}

/// `http://host:port/path` → `host:port`.
fn absolute_form_host(target: &[u8]) -> Option<&[u8]> {
    let rest = after_scheme(target)?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // userinfo@host is not valid in http(s) targets (RFC 9110 4.2.4); take the host.
    Some(match authority.iter().rposition(|&b| b == b'@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    })
}

/// `host:80` → `host`, `[::1]:80` → `[::1]`.
pub fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostPattern {
        crate::config::rules::parse_host(s).unwrap()
    }

    #[test]
    fn picks_by_exact_then_longest_suffix_then_star() {
        let hosts = vec![
            vec![h("a.example.com")],
            vec![h("*.example.com")],
            vec![h("*.b.example.com")],
            vec![],
            vec![h("*")],
        ];
        let patterns: Vec<(usize, String)> = (0..5).map(|e| (e, "^/".to_string())).collect();
        let r = HostRoutes::build(&hosts, &patterns).unwrap();
        let entry = |host: Option<&str>| r.route(host, b"/x").map(|m| m.entry);
        assert_eq!(entry(Some("a.example.com")), Some(0));
        assert_eq!(entry(Some("z.example.com")), Some(1));
        assert_eq!(
            entry(Some("x.b.example.com")),
            Some(1),
            "file order: *.example.com first"
        );
        assert_eq!(entry(Some("example.com")), Some(3));
        assert_eq!(entry(Some("other.org")), Some(3));
        assert_eq!(entry(None), Some(3));
        // Pattern numbers are the configuration's.
        assert_eq!(r.route(Some("z.example.com"), b"/").unwrap().pattern, 1);
    }

    #[test]
    fn star_does_not_take_hostless_requests() {
        let hosts = vec![vec![h("*")]];
        let r = HostRoutes::build(&hosts, &[(0, "^/".into())]).unwrap();
        assert!(r.route(Some("x"), b"/").is_some());
        assert!(r.route(None, b"/").is_none());
    }

    #[test]
    fn host_of_a_request() {
        let mut s = [0u8; 256];
        assert_eq!(
            request_host(b"/", Some(b"A.Example.COM:8080"), &mut s),
            Some("a.example.com")
        );
        assert_eq!(
            request_host(b"/", Some(b"a.example.com."), &mut s),
            Some("a.example.com")
        );
        assert_eq!(
            request_host(b"http://B.example.com:81/x", Some(b"a"), &mut s),
            Some("b.example.com")
        );
        assert_eq!(request_host(b"/", Some(b"[::1]:80"), &mut s), Some("[::1]"));
        assert_eq!(request_host(b"/", None, &mut s), None);
    }
}
