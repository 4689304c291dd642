//! `simian explain URL`: which entry takes a request, and which of its patterns
//! matched, after the same path normalisation the proxy applies.

use std::fmt::Write;
use std::net::IpAddr;

use crate::config::Config;

/// The path part of a URL or request target: no scheme/authority, no query or fragment.
pub fn path_of(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => url,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

pub fn explain(config: &Config, url: &str, client: Option<IpAddr>, cookie: Option<&str>) -> String {
    let mut o = String::new();
    let raw_path = path_of(url);
    let mut norm = Vec::new();
    crate::http::path::normalize_path(raw_path.as_bytes(), &mut norm);
    let norm_s = String::from_utf8_lossy(&norm);
    let _ = writeln!(o, "request path: {raw_path}");
    if norm_s != raw_path {
        let _ = writeln!(o, "normalised:   {norm_s}");
    }
    if let Some(url) = &config.global.statistics_url {
        if raw_path == url {
            let _ = writeln!(o, "-> served by simian itself: the StatisticsURL");
            return o;
        }
    }
    let matches = config.router.all_matches(&norm);
    let Some(first) = matches.first() else {
        let _ = writeln!(o, "-> no entry matches: simian answers 404 Not Found");
        return o;
    };
    let entry = &config.entries[first.entry];
    let _ = writeln!(
        o,
        "-> entry `{}` (line {}), pattern `{}`",
        entry.name,
        entry.span.line,
        config.router.pattern(first.pattern)
    );
    let _ = writeln!(o, "   balancer {} over:", entry.balancer.name());
    for s in &entry.servers {
        let _ = writeln!(o, "     {} (weight {})", s.text, s.weight);
    }
    for m in matches.iter().skip(1).filter(|m| m.entry != first.entry) {
        let other = &config.entries[m.entry];
        let _ = writeln!(
            o,
            "   also matched by entry `{}` pattern `{}` (not used: an earlier entry wins)",
            other.name,
            config.router.pattern(m.pattern)
        );
    }
    if client.is_some() || cookie.is_some() {
        let _ = writeln!(
            o,
            "   (the server choice for a given client or cookie is not computed by this version)"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::path_of;

    #[test]
    fn paths() {
        assert_eq!(path_of("http://h:80/a/b?x=1"), "/a/b");
        assert_eq!(path_of("http://h"), "/");
        assert_eq!(path_of("/x.php?y#z"), "/x.php");
    }
}
