//! The request rules of an entry (SPEC section 9), and how each value is read.
//!
//! Each `parse_*` takes the value as written and returns the rule, or the byte
//! offset in the value of what is wrong and why, so `resolve` can point at the
//! column. Everything is compiled here, at load: the data path only follows it.

use super::model::Cidr;

/// A `Host` name: exact (lowercase, no trailing dot), `*.suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`: the suffix with its leading dot, `.example.com`.
    Suffix(String),
    Any,
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// `RateLimit N/s|N/m [burst M]`: a token bucket per client address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    pub burst: u32,
}

/// What a `%{name}` in a value stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Client,
    Host,
    Scheme,
    Route,
    RequestId,
    /// The request target (path and query): redirects only.
    Path,
}

/// A value with `%{...}` placeholders, split at load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

impl Template {
    pub fn uses(&self, v: Var) -> bool {
        self.0.contains(&Piece::Var(v))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectTarget {
    /// The same host and target, with the https scheme.
    Https,
    /// A URL with `%{...}` in it; `text` as written (for `--check` and `explain`).
    Url { template: Template, text: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub code: u16,
    pub target: RedirectTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOp {
    Set,
    Add,
    Del,
}

/// `RequestHeader` / `ResponseHeader`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub op: HeaderOp,
    pub name: String,
    pub value: Template,
}

/// The `RequestHeader` or `ResponseHeader` rules of an entry, in file order, and
/// what they come to, worked out at load so a request pays one pass over its
/// head: the received fields to drop (names of `set` and `del` rules), and the
/// rules whose lines are added (a later `set` or `del` of the same name takes
/// an earlier rule's line back, as applying them in order would).
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub rules: Vec<HeaderRule>,
    /// Lowercase.
    remove: Vec<Box<[u8]>>,
    /// Indexes into `rules`.
    add: Vec<usize>,
    /// A rule's value holds `%{request_id}` / `%{host}`: worked out here so a
    /// request does not look through the rules to know whether to make an id or
    /// keep the host.
    pub uses_request_id: bool,
    pub uses_host: bool,
}

impl HeaderRules {
    pub fn new(rules: Vec<HeaderRule>) -> HeaderRules {
        let remove = rules
            .iter()
            .filter(|r| r.op != HeaderOp::Add)
            .map(|r| r.name.to_ascii_lowercase().into_bytes().into_boxed_slice())
            .collect();
        let add = (0..rules.len())
            .filter(|&i| {
                rules[i].op != HeaderOp::Del
                    && !rules[i + 1..].iter().any(|later| {
                        later.op != HeaderOp::Add && later.name.eq_ignore_ascii_case(&rules[i].name)
                    })
            })
            .collect();
        let uses = |v| rules.iter().any(|r| r.value.uses(v));
        HeaderRules {
            uses_request_id: uses(Var::RequestId),
            uses_host: uses(Var::Host),
            remove,
            add,
            rules,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a received field of this name is dropped.
    pub fn removes(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.len() == name.len() && r.eq_ignore_ascii_case(name))
    }

    pub fn any_removed(&self) -> bool {
        !self.remove.is_empty()
    }

    /// The rules whose lines are added, in order.
    pub fn added(&self) -> impl Iterator<Item = &HeaderRule> {
        self.add.iter().map(|&i| &self.rules[i])
    }
}

/// `SendProxy v1|v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// Every rule of one entry, defaults merged in. `Rules::default()` is an entry
/// with none: the data path checks `is_empty` once and skips them all.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub rate_limit: Option<RateLimit>,
    pub redirect: Option<Redirect>,
    /// 0: unlimited.
    pub max_body: u64,
    pub strip_prefix: Option<String>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    pub send_proxy: Option<ProxyVersion>,
}

impl Rules {
    /// The request needs none of the rule steps (the common case, kept cheap).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.rate_limit.is_none()
            && self.redirect.is_none()
            && self.max_body == 0
            && self.strip_prefix.is_none()
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
    }

    /// The access log gets a request id field when a rule sends one.
    pub fn uses_request_id(&self) -> bool {
        self.request_headers.uses_request_id
    }

    /// Whether `ip` may be served (`Allow`, then `Deny`).
    pub fn admits(&self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip else {
            // Unix-socket clients are local.
            return true;
        };
        (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            && !self.deny.iter().any(|c| c.contains(ip))
    }
}

/// Where a value is wrong: byte offset in the value, and why.
pub type Bad = (usize, String);

pub fn parse_host(text: &str) -> Result<HostPattern, Bad> {
    let t = text.trim_end_matches('.').to_ascii_lowercase();
    if t == "*" {
        return Ok(HostPattern::Any);
    }
    let (suffix, name) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, t.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err((
            0,
            format!("`{text}` is not a host name (example.com, *.example.com or *)"),
        ));
    }
    Ok(if suffix {
        HostPattern::Suffix(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

pub fn parse_rate_limit(text: &str) -> Result<RateLimit, Bad> {
    let words: Vec<(usize, &str)> = words(text);
    let usage = "expected `N/s` or `N/m`, optionally followed by `burst M`";
    let Some(&(_, rate)) = words.first() else {
        return Err((0, usage.into()));
    };
    let (n, unit) = rate.split_once('/').ok_or((0, usage.to_string()))?;
    let n: u32 = n
        .parse()
        .map_err(|_| (0, format!("`{n}` is not a whole number: {usage}")))?;
    if n == 0 {
        return Err((
            0,
            "a rate of 0 refuses every request: use `Deny` for that".into(),
        ));
    }
    let per_second = match unit {
        "s" => f64::from(n),
        "m" => f64::from(n) / 60.0,
        _ => {
            let at = rate.len() - unit.len();
            return Err((at, format!("unknown unit `{unit}`: {usage}")));
        }
    };
    let burst = match words.get(1..) {
        Some([]) | None => n,
        Some([(_, b), (at, m)]) if b.eq_ignore_ascii_case("burst") => match m.parse::<u32>() {
            Ok(m) if m >= 1 => m,
            _ => return Err((*at, format!("burst `{m}`: expected a whole number from 1"))),
        },
        Some([(at, _), ..]) => return Err((*at, usage.into())),
    };
    Ok(RateLimit { per_second, burst })
}

pub fn parse_redirect(text: &str) -> Result<Redirect, Bad> {
    let words = words(text);
    let usage = "expected `Redirect [301|302|303|307|308] https` or a URL";
    let (code, target) = match words.as_slice() {
        [(_, t)] => (301, (words[0].0, *t)),
        [(at, c), (tat, t)] => {
            let code = match *c {
                "301" | "302" | "303" | "307" | "308" => c.parse().unwrap_or(301),
                _ => {
                    return Err((
                        *at,
                        format!("`{c}` is not a redirect code (301, 302, 303, 307 or 308)"),
                    ))
                }
            };
            (code, (*tat, *t))
        }
        _ => return Err((0, usage.into())),
    };
    let (at, t) = target;
    let target = if t.eq_ignore_ascii_case("https") {
        RedirectTarget::Https
    } else {
        let tpl = parse_template(t, true).map_err(|(o, m)| (at + o, m))?;
        let lower = t.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://") || t.starts_with('/')) {
            return Err((
                at,
                format!("`{t}` is not a URL (http://..., https://... or /path): {usage}"),
            ));
        }
        RedirectTarget::Url {
            template: tpl,
            text: t.to_string(),
        }
    };
    Ok(Redirect { code, target })
}

/// `10MB`, `512KiB`, `1048576`, `0`: bytes (decimal units are powers of 1000,
/// binary ones of 1024, as nginx reads `k`/`m` as 1024: both are accepted).
pub fn parse_size(text: &str) -> Result<u64, Bad> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| (0, format!("`{text}` is not a size (10MB, 512KiB, 0)")))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => {
            return Err((
                split,
                format!("unknown size unit `{unit}` (B, KB, KiB, MB, MiB, GB, GiB)"),
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or((0, format!("`{text}` is too large")))
}

/// Fields that frame the message or belong to one hop: rules may not touch them.
const PROTECTED: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// `set|add|del NAME [VALUE]`. `request`: `%{request_id}` is allowed.
pub fn parse_header_rule(text: &str, request: bool) -> Result<HeaderRule, Bad> {
    let usage = "expected `set NAME VALUE`, `add NAME VALUE` or `del NAME`";
    let mut it = text.splitn(3, [' ', '\t']);
    let op = match it.next().map(str::to_ascii_lowercase).as_deref() {
        Some("set") => HeaderOp::Set,
        Some("add") => HeaderOp::Add,
        Some("del") => HeaderOp::Del,
        _ => return Err((0, usage.into())),
    };
    let rest = text[text.find([' ', '\t']).unwrap_or(text.len())..].trim_start();
    let name_at = text.len() - rest.len();
    let (name, value) = match rest.find([' ', '\t']) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    if name.is_empty() || !name.bytes().all(crate::http::is_tchar) {
        return Err((name_at, format!("`{name}` is not a header name: {usage}")));
    }
    if PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name)) {
        return Err((
            name_at,
            format!(
                "`{name}` frames the message or belongs to one hop: rules cannot set or remove it"
            ),
        ));
    }
    let value_at = name_at + name.len() + (rest.len() - name.len() - value.len()).min(1);
    let value = match op {
        HeaderOp::Del if !value.is_empty() => {
            return Err((value_at, "`del` takes a name only".into()));
        }
        HeaderOp::Del => Template::default(),
        _ if value.is_empty() => {
            return Err((name_at + name.len(), format!("a value is needed: {usage}")))
        }
        _ => {
            let t = parse_template(value, false).map_err(|(o, m)| (value_at + o, m))?;
            if !request && t.uses(Var::RequestId) {
                return Err((value_at, "`%{request_id}` is for RequestHeader only".into()));
            }
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return Err((
                    value_at,
                    "control characters cannot be sent in a header".into(),
                ));
            }
            t
        }
    };
    Ok(HeaderRule {
        op,
        name: name.to_string(),
        value,
    })
}

/// Split `%{name}` placeholders out of a value.
fn parse_template(text: &str, redirect: bool) -> Result<Template, Bad> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut at = 0;
    while let Some(i) = rest.find("%{") {
        if i > 0 {
            pieces.push(Piece::Text(rest[..i].to_string()));
        }
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err((at + i, "`%{` without its `}`".into()));
        };
        let name = &after[..end];
        let var = match name {
            "client" => Var::Client,
            "host" => Var::Host,
            "scheme" => Var::Scheme,
            "route" => Var::Route,
            "request_id" if !redirect => Var::RequestId,
            "path" if redirect => Var::Path,
            _ => {
                let known = if redirect {
                    "%{host}, %{path}, %{client}, %{scheme}, %{route}"
                } else {
                    "%{client}, %{host}, %{scheme}, %{route}, %{request_id}"
                };
                return Err((
                    at + i,
                    format!("unknown `%{{{name}}}`: expected one of {known}"),
                ));
            }
        };
        pieces.push(Piece::Var(var));
        let consumed = i + 2 + end + 1;
        at += consumed;
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(Template(pieces))
}

/// Whitespace-separated words with their byte offsets.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c == ' ' || c == '\t', start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("Example.COM."),
            Ok(HostPattern::Exact("example.com".into()))
        );
        let w = parse_host("*.example.com").unwrap();
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("xexample.com"));
        assert_eq!(parse_host("*"), Ok(HostPattern::Any));
        assert!(parse_host("a..b").is_err());
        assert!(parse_host("a/b").is_err());
    }

    #[test]
    fn rates() {
        let r = parse_rate_limit("10/s burst 20").unwrap();
        assert_eq!((r.per_second, r.burst), (10.0, 20));
        let r = parse_rate_limit("120/m").unwrap();
        assert_eq!((r.per_second, r.burst), (2.0, 120));
        assert_eq!(parse_rate_limit("0/s").unwrap_err().0, 0);
        assert_eq!(parse_rate_limit("5/h").unwrap_err().0, 2);
        assert_eq!(parse_rate_limit("5/s burst x").unwrap_err().0, 10);
        assert!(parse_rate_limit("5/s bust 3").is_err());
    }

    #[test]
    fn redirects() {
        assert_eq!(
            parse_redirect("https").unwrap(),
            Redirect {
                code: 301,
                target: RedirectTarget::Https
            }
        );
        let r = parse_redirect("302 https://%{host}/new%{path}").unwrap();
        assert_eq!(r.code, 302);
        let RedirectTarget::Url { template: t, .. } = r.target else {
            panic!()
        };
        assert!(t.uses(Var::Host) && t.uses(Var::Path));
        assert_eq!(parse_redirect("404 x").unwrap_err().0, 0);
        assert_eq!(parse_redirect("301 https://%{nope}/").unwrap_err().0, 12);
        assert!(parse_redirect("301 ftp://x/").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("99999999999999999999GB").is_err());
    }

    #[test]
    fn header_rules() {
        let h = parse_header_rule(
            "set Strict-Transport-Security max-age=63072000; includeSubDomains",
            false,
        )
        .unwrap();
        assert_eq!(h.op, HeaderOp::Set);
        assert_eq!(
            h.value,
            Template(vec![Piece::Text(
                "max-age=63072000; includeSubDomains".into()
            )])
        );
        let h = parse_header_rule("add X-Id %{request_id}-%{client}", true).unwrap();
        assert!(h.value.uses(Var::RequestId));
        assert!(parse_header_rule("add X-Id %{request_id}", false).is_err());
        assert_eq!(
            parse_header_rule("set Content-Length 5", true)
                .unwrap_err()
                .0,
            4
        );
        assert_eq!(
            parse_header_rule("set X-A %{bogus}", true).unwrap_err().0,
            8
        );
        assert!(parse_header_rule("del X-A 1", true).is_err());
        assert!(parse_header_rule("del X-A", true).is_ok());
        assert!(parse_header_rule("put X-A 1", true).is_err());
        assert!(parse_header_rule("set X-A", true).is_err());
    }
}
