//! The request rules of an entry at work (SPEC section 9): who may be served,
//! how fast, what simian answers itself (403, 429, redirects, 413), and the
//! edits to the heads that go through (StripPrefix, RequestHeader,
//! ResponseHeader). Only entries that have rules come here (`Rules::is_empty`).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::rules::{HeaderRules, Piece, RedirectTarget, Template, Var};
use crate::config::Entry;
use crate::context::rate_limit::RateTable;
use crate::http::{BodyFraming, RequestHead};

/// What simian answers instead of a backend.
pub struct Answer {
    pub status: u16,
    /// Extra header lines (`Location`, `Retry-After`), each ending in CRLF.
    pub headers: String,
    pub why: &'static str,
}

/// The values `%{...}` stand for in one request.
pub struct Vars<'a> {
    pub client: Option<IpAddr>,
    pub host: &'a [u8],
    pub tls: bool,
    pub route: &'a str,
    pub request_id: u64,
}

/// The checks before any server is chosen, in SPEC order: Allow/Deny, RateLimit,
/// Redirect, MaxBodySize (declared length). `None`: go on to the backend.
pub fn check(
    entry: &Entry,
    rate: Option<&RateTable>,
    buf: &[u8],
    head: &RequestHead,
    vars: &Vars,
    now_ms: u64,
) -> Option<Answer> {
    let r = &entry.rules;
    if !r.admits(vars.client) {
        return Some(Answer {
            status: 403,
            headers: String::new(),
            why: "client address refused by Allow/Deny",
        });
    }
    if let (Some(limit), Some(table), Some(ip)) = (&r.rate_limit, rate, vars.client) {
        if let Err(wait_ms) = table.take(ip, limit, now_ms) {
            return Some(Answer {
                status: 429,
                headers: format!("Retry-After: {}\r\n", wait_ms.div_ceil(1000).max(1)),
                why: "RateLimit",
            });
        }
    }
    if let Some(redirect) = &r.redirect {
        let location = match &redirect.target {
            // Over TLS already: the caller routes on past this entry.
            RedirectTarget::Https if vars.tls => None,
            RedirectTarget::Https => {
                let mut l = String::from("https://");
                l.push_str(&String::from_utf8_lossy(host_without_port(vars.host)));
                l.push_str(&String::from_utf8_lossy(origin_form(
                    &buf[head.target.clone()],
                )));
                Some(l)
            }
            RedirectTarget::Url { template: t, .. } => {
                let mut l = Vec::new();
                expand(
                    t,
                    vars,
                    Some(origin_form(&buf[head.target.clone()])),
                    &mut l,
                );
                Some(String::from_utf8_lossy(&l).into_owned())
            }
        };
        if let Some(location) = location {
            let mut headers = String::from("Location: ");
            // Never a line break into the answer, whatever the request held.
            headers.extend(location.chars().filter(|c| !c.is_control()));
            headers.push_str("\r\n");
            return Some(Answer {
                status: redirect.code,
                headers,
                why: "Redirect",
            });
        }
    }
    if r.max_body > 0 {
        if let BodyFraming::ContentLength(n) = head.framing {
            if n > r.max_body {
                return Some(Answer {
                    status: 413,
                    headers: String::new(),
                    why: "body larger than MaxBodySize",
                });
            }
        }
    }
    None
}

/// `Redirect https` over TLS: the entry lets the request go on to the next one.
pub fn passes_over_tls(entry: &Entry) -> bool {
    matches!(
        entry.rules.redirect.as_ref().map(|r| &r.target),
        Some(RedirectTarget::Https)
    )
}

/// `host:port` → `host` (for `%{host}` and redirects).
fn host_without_port(h: &[u8]) -> &[u8] {
    crate::route::hosts::strip_port(h)
}

/// The path and query of a target (absolute-form loses its scheme and host).
fn origin_form(target: &[u8]) -> &[u8] {
    let Some(rest) = crate::route::hosts::after_scheme(target) else {
        return target;
    };
    match rest.iter().position(|&b| b == b'/' || b == b'?') {
        Some(i) => &rest[i..],
        None => b"/",
    }
}

/// Append the value of `t` for this request.
pub fn expand(t: &Template, vars: &Vars, path: Option<&[u8]>, out: &mut Vec<u8>) {
    for p in &t.0 {
        match p {
            Piece::Text(s) => out.extend_from_slice(s.as_bytes()),
            Piece::Var(Var::Client) => match vars.client {
                Some(ip) => crate::http::rewrite::push_ip(out, ip),
                None => out.extend_from_slice(b"unix"),
            },
            Piece::Var(Var::Host) => out.extend_from_slice(host_without_port(vars.host)),
            Piece::Var(Var::Scheme) => {
                out.extend_from_slice(if vars.tls { b"https" } else { b"http" })
            }
            Piece::Var(Var::Route) => out.extend_from_slice(vars.route.as_bytes()),
            Piece::Var(Var::RequestId) => {
                let mut s = String::new();
                let _ = write!(s, "{:016x}", vars.request_id);
                out.extend_from_slice(s.as_bytes());
            }
            Piece::Var(Var::Path) => out.extend_from_slice(path.unwrap_or(b"/")),
        }
    }
}

/// Apply `StripPrefix` to the request line at the start of `head` (a head
/// simian wrote: `METHOD SP target SP version CRLF`).
pub fn strip_prefix(head: &mut Vec<u8>, prefix: &str) {
    let Some(line_end) = memchr::memmem::find(head, b"\r\n") else {
        return;
    };
    let line = &head[..line_end];
    let (Some(a), Some(b)) = (
        line.iter().position(|&c| c == b' '),
        line.iter().rposition(|&c| c == b' '),
    ) else {
        return;
    };
    let target = &line[a + 1..b];
    let Some(rest) = target.strip_prefix(prefix.as_bytes()) else {
        return;
    };
    // In place: the prefix goes; `/api` and `/api?x` keep a `/` of their own.
    let at = a + 1..a + 1 + prefix.len();
    match rest.first() {
        Some(b'/') => drop(head.drain(at)),
        None | Some(b'?') => drop(head.splice(at, [b'/'])),
        _ => {}
    }
}

/// Apply header rules to a head simian wrote (start line, fields, empty line),
/// in one pass: the fields a `set` or `del` names are left out as the head is
/// compacted in place, then the rules' own lines are written at its end.
pub fn edit_headers(head: &mut Vec<u8>, rules: &HeaderRules, vars: &Vars) {
    // Without the empty line: the added lines go before it.
    head.truncate(head.len().saturating_sub(2));
    let first_line_end = memchr::memchr(b'\n', head).map(|e| e + 1);
    if let (true, Some(start)) = (rules.any_removed(), first_line_end) {
        let (mut read, mut write) = (start, start);
        while read < head.len() {
            let end = memchr::memchr(b'\n', &head[read..]).map_or(head.len(), |e| read + e + 1);
            let colon = memchr::memchr(b':', &head[read..end]).unwrap_or(0);
            if !rules.removes(&head[read..read + colon]) {
                head.copy_within(read..end, write);
                write += end - read;
            }
            read = end;
        }
        head.truncate(write);
    }
    for rule in rules.added() {
        head.extend_from_slice(rule.name.as_bytes());
        head.extend_from_slice(b": ");
        let value_at = head.len();
        expand(&rule.value, vars, None, head);
        // A value made of request data must not break the head.
        if head[value_at..].iter().any(|&b| b == b'\r' || b == b'\n') {
            let clean: Vec<u8> = head
                .drain(value_at..)
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect();
            head.extend_from_slice(&clean);
        }
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// Apply `ResponseHeader` rules to an answer simian wrote itself (`head_len`:
/// where its body starts).
pub fn edit_answer(out: &mut Vec<u8>, head_len: usize, rules: &HeaderRules, vars: &Vars) {
    if rules.is_empty() {
        return;
    }
    let body = out.split_off(head_len.min(out.len()));
    edit_headers(out, rules, vars);
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules::parse_header_rule;

    fn vars() -> Vars<'static> {
        Vars {
            client: Some("10.0.0.1".parse().unwrap()),
            host: b"a.example.com:8080",
            tls: true,
            route: "api",
            request_id: 0xabc,
        }
    }

    #[test]
    fn header_edits() {
        let mut h = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n".to_vec();
        let rules = HeaderRules::new(vec![
            parse_header_rule("set X-A %{client} %{scheme} %{route}", true).unwrap(),
            parse_header_rule("del X-B", true).unwrap(),
            parse_header_rule("add X-Id %{request_id}", true).unwrap(),
            parse_header_rule("add X-H %{host}", true).unwrap(),
            parse_header_rule("add X-C 1", true).unwrap(),
            parse_header_rule("set X-C 2", true).unwrap(),
            parse_header_rule("set X-D 1", true).unwrap(),
            parse_header_rule("add X-D 2", true).unwrap(),
        ]);
        edit_headers(&mut h, &rules, &vars());
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 10.0.0.1 https api\r\nX-Id: 0000000000000abc\r\nX-H: a.example.com\r\nX-C: 2\r\nX-D: 1\r\nX-D: 2\r\n\r\n"
        );
    }

    #[test]
    fn strip() {
        for (from, to) in [
            ("/api/users?x", "/users?x"),
            ("/api", "/"),
            ("/api?x=1", "/?x=1"),
            ("/apix", "/apix"),
            ("/other", "/other"),
        ] {
            let mut h = format!("GET {from} HTTP/1.1\r\n\r\n").into_bytes();
            strip_prefix(&mut h, "/api");
            assert_eq!(
                String::from_utf8(h).unwrap(),
                format!("GET {to} HTTP/1.1\r\n\r\n")
            );
        }
    }

    #[test]
    fn origin() {
        assert_eq!(origin_form(b"http://h:1/a?b"), b"/a?b");
        assert_eq!(origin_form(b"https://h"), b"/");
        assert_eq!(origin_form(b"/x"), b"/x");
    }
}
