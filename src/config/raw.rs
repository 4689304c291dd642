//! Stage one: text → sections of located directives, with no meaning attached yet.
//!
//! Each line is parsed on its own by the pest grammar, so every broken line of a file
//! is reported (pest stops at its first error). What a line means in its section, and
//! what a section must contain, is `resolve`'s business.

use pest::iterators::Pair;
use pest::Parser;

use super::diagnostic::{Diagnostic, Severity};
use super::grammar::{describe, ConfigParser, Rule};
use super::key::Key;
use super::model::{Balancer, ClientAuth, HealthCheck, Mode, Span, SpliceMode, StickyKind};

/// Longest line accepted; longer ones are certainly not a config line and would make
/// every message about them unreadable.
pub const MAX_LINE: usize = 64 * 1024;

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// An address as written, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrText {
    Unix(String),
    /// `[v6]:port`: host without brackets.
    Ipv6 {
        host: String,
        port: String,
    },
    HostPort {
        host: String,
        port: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerToken {
    /// `tls`: written `tls:host:port`, spoken to over TLS.
    Addr {
        text: String,
        addr: AddrText,
        tls: bool,
    },
    Weight(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Listen {
        text: String,
        addr: AddrText,
        tls: bool,
        proxy: bool,
    },
    /// Tokens with their places (`Host`).
    Tokens(Vec<Spanned<String>>),
    /// The rest of the line (rates, sizes, redirects, header rules).
    Words(String),
    /// `SendProxy v1|v2`.
    ProxyVersion(u8),
    Path(String),
    /// `TLSCertificate CERT [KEY]`.
    Certificate {
        cert: String,
        key: Option<Spanned<String>>,
    },
    /// `TLSProtocols`: each version as written, "1.2" or "1.3".
    Versions(Vec<String>),
    ClientAuth(ClientAuth),
    Switch(bool),
    Patterns(Vec<Spanned<String>>),
    Name(String),
    Servers(Vec<Spanned<ServerToken>>),
    Balancer(Result<Balancer, String>),
    /// Digits as written: range checks belong to resolve.
    Count(String),
    Duration(String),
    HealthCheck(HealthCheck),
    Sticky {
        cookie: String,
        kind: StickyKind,
    },
    Mode(Mode),
    Splice(SpliceMode),
    Off,
    Auto,
    Cidrs(Vec<Spanned<String>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub key: Key,
    pub span: Span,
    /// Where the (first) value starts, for messages about the value.
    pub value_span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionKind {
    Defaults,
    Entry,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub kind: SectionKind,
    pub span: Span,
    pub directives: Vec<Directive>,
    /// A line of this section failed to parse: "missing X" checks are skipped for
    /// it, since X may be on the broken line.
    pub had_errors: bool,
}

/// The parse result: sections in file order, the lines of the file (for messages),
/// and the errors found so far.
pub struct RawFile {
    pub file: String,
    pub lines: Vec<String>,
    pub sections: Vec<Section>,
    pub errors: Vec<Diagnostic>,
}

impl RawFile {
    pub fn diag(
        &self,
        severity: Severity,
        span: Span,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.clone(),
            line: span.line,
            col: span.col,
            message: message.into(),
            line_text: self
                .lines
                .get(span.line.wrapping_sub(1))
                .cloned()
                .unwrap_or_default(),
            help,
        }
    }
}

/// Parse a whole file. Never panics, whatever the bytes.
pub fn parse(file: &str, bytes: &[u8]) -> RawFile {
    parse_with(file, bytes, PARALLEL_FROM)
}

/// [`parse`], on several threads from `parallel_from` lines on.
fn parse_with(file: &str, bytes: &[u8], parallel_from: usize) -> RawFile {
    let mut raw = RawFile {
        file: file.to_string(),
        lines: Vec::new(),
        sections: Vec::new(),
        errors: Vec::new(),
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Name the line and column of the first bad byte, then stop: the rest of a
            // binary file would be one error per line.
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            let col = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            raw.errors.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                line,
                col,
                message: "the file is not UTF-8 text (is this really a config file?)".into(),
                line_text: String::new(),
                help: None,
            });
            return raw;
        }
    };
    raw.lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    if text.trim().is_empty() {
        return raw; // resolve reports "no [PROXY_ENTRY]"
    }
    // Lines are independent until sections are assembled: a big file (10,000
    // entries) is parsed on as many threads as there are cores, in chunks.
    let per_line: Vec<Vec<LineItem>> = {
        let raw_ref = &raw;
        let n = raw.lines.len();
        let threads = if n < parallel_from {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |t| t.get())
                .min(8)
        };
        let chunk = n.div_ceil(threads);
        let run = move |from: usize| -> Vec<Vec<LineItem>> {
            (from..(from + chunk).min(n))
                .map(|i| parse_line(raw_ref, i + 1))
                .collect()
        };
        if threads == 1 {
            run(0)
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| scope.spawn(move || run(t * chunk)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        }
    };
    let mut current: Option<Section> = None;
    for item in per_line.into_iter().flatten() {
        match item {
            LineItem::Error(d) => {
                raw.errors.push(d);
                if let Some(s) = current.as_mut() {
                    s.had_errors = true;
                }
            }
            LineItem::Section {
                kind,
                span,
                unknown,
            } => {
                let had_errors = unknown.is_some();
                if let Some(e) = unknown {
                    raw.errors.push(e);
                }
                if let Some(s) = current.take() {
                    raw.sections.push(s);
                }
                current = Some(Section {
                    kind,
                    span,
                    directives: Vec::new(),
                    // No "missing X" errors about a section already reported as
                    // unknown.
                    had_errors,
                });
            }
            LineItem::Directive(d) => match current.as_mut() {
                Some(s) => s.directives.push(d),
                None => {
                    let e = raw.diag(
                        Severity::Error,
                        d.span,
                        format!(
                            "`{}` outside of a section: expected [PROXY_DEFAULTS] or [PROXY_ENTRY] first",
                            d.key.name()
                        ),
                        None,
                    );
                    raw.errors.push(e);
                }
            },
        }
    }
    if let Some(s) = current.take() {
        raw.sections.push(s);
    }
    raw
}

/// Files with at least this many lines are parsed on several threads.
const PARALLEL_FROM: usize = 4096;

/// What one line holds, in order.
enum LineItem {
    /// `unknown`: the error for a section name that is neither kind.
    Section {
        kind: SectionKind,
        span: Span,
        unknown: Option<Diagnostic>,
    },
    Directive(Directive),
    Error(Diagnostic),
}

/// Parse line `lineno` (1-based) of the file on its own.
fn parse_line(raw: &RawFile, lineno: usize) -> Vec<LineItem> {
    let line = raw.lines[lineno - 1].as_str();
    let mut out = Vec::new();
    if line.len() > MAX_LINE {
        let e = raw.diag(
            Severity::Error,
            Span {
                line: lineno,
                col: MAX_LINE + 1,
            },
            format!("line is longer than {MAX_LINE} bytes"),
            None,
        );
        out.push(LineItem::Error(e));
        return out;
    }
    if let Some(pos) = line.find(|c: char| c.is_control() && c != '\t') {
        let col = line[..pos].chars().count() + 1;
        let e = raw.diag(
            Severity::Error,
            Span { line: lineno, col },
            "control character in the line (is this really a config file?)",
            None,
        );
        out.push(LineItem::Error(e));
        return out;
    }
    let pairs = match ConfigParser::parse(Rule::line, line) {
        Err(e) => {
            let d = if line.trim_start().starts_with('[') && !line.contains(']') {
                let col = line.trim_end().chars().count() + 1;
                let msg = "section header without its closing `]`";
                raw.diag(Severity::Error, Span { line: lineno, col }, msg, None)
            } else {
                pest_error(raw, lineno, line, e)
            };
            out.push(LineItem::Error(d));
            return out;
        }
        Ok(mut pairs) => match pairs.next() {
            Some(p) => p,
            None => return out,
        },
    };
    for item in pairs.into_inner() {
        match item.as_rule() {
            Rule::section => {
                let span = span_of(&item, lineno);
                let Some(kind) = item.into_inner().next() else {
                    continue;
                };
                let mut unknown = None;
                let kind = match kind.as_rule() {
                    Rule::defaults_section => SectionKind::Defaults,
                    Rule::entry_section => SectionKind::Entry,
                    _ => {
                        let help = super::suggest::nearest(
                            kind.as_str(),
                            ["PROXY_DEFAULTS", "PROXY_ENTRY"],
                        );
                        let e = raw.diag(
                            Severity::Error,
                            span_of(&kind, lineno),
                            format!(
                                "unknown section [{}]: expected [PROXY_DEFAULTS] or [PROXY_ENTRY]",
                                kind.as_str()
                            ),
                            help,
                        );
                        unknown = Some(e);
                        // Keep reading its lines into a throwaway section.
                        SectionKind::Entry
                    }
                };
                out.push(LineItem::Section {
                    kind,
                    span,
                    unknown,
                });
            }
            Rule::EOI => {}
            _ => match directive(item, lineno) {
                Ok(d) => out.push(LineItem::Directive(d)),
                Err(e) => out.push(LineItem::Error(raw.diag(Severity::Error, e.0, e.1, e.2))),
            },
        }
    }
    out
}

fn span_of(pair: &Pair<Rule>, line: usize) -> Span {
    let (_, col) = pair.line_col();
    Span { line, col }
}

fn pest_error(raw: &RawFile, lineno: usize, line: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((p, _)) => p,
    };
    let col = line.get(..pos).map_or(pos, |s| s.chars().count()) + 1;
    let found = line
        .get(pos..)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|w| format!("`{}`", truncate(w, 40)))
        .unwrap_or_else(|| "end of line".into());
    let message = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } if !positives.is_empty() => {
            let mut names: Vec<String> = Vec::new();
            for n in positives.iter().map(describe) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            format!("expected {}, found {found}", names.join(" or "))
        }
        _ => format!("unexpected {found}"),
    };
    raw.diag(Severity::Error, Span { line: lineno, col }, message, None)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n).collect();
        format!("{t}...")
    }
}

type DirectiveError = (Span, String, Option<String>);

fn directive(pair: Pair<Rule>, line: usize) -> Result<Directive, DirectiveError> {
    let span = span_of(&pair, line);
    let rule = pair.as_rule();
    let text = pair.as_str().to_string();
    let mut values = pair.into_inner().peekable();
    let value_span = values.peek().map_or(span, |p| span_of(p, line));
    let first = values.next();
    let first_str = first
        .as_ref()
        .map_or(String::new(), |p| p.as_str().to_string());
    let key = match rule {
        Rule::unknown_directive => {
            let word = text.split_whitespace().next().unwrap_or("").to_string();
            let help = super::suggest::nearest(&word, Key::ALL.iter().map(|k| k.name()));
            return Err((span, format!("unknown key `{}`", truncate(&word, 40)), help));
        }
        Rule::listen => Key::Listen,
        Rule::tls_certificate => Key::TlsCertificate,
        Rule::tls_key => Key::TlsKey,
        Rule::tls_protocols => Key::TlsProtocols,
        Rule::tls_client_ca => Key::TlsClientCa,
        Rule::tls_client_auth => Key::TlsClientAuth,
        Rule::backend_ca => Key::BackendCa,
        Rule::backend_tls_verify => Key::BackendTlsVerify,
        Rule::match_dir => Key::Match,
        Rule::name => Key::Name,
        Rule::server_list => Key::ServerList,
        Rule::load_balancer => Key::LoadBalancer,
        Rule::attempts_count => Key::AttemptsCount,
        Rule::offline_timeout => Key::OfflineTimeOut,
        Rule::connect_timeout => Key::ConnectTimeout,
        Rule::backend_timeout => Key::BackendTimeout,
        Rule::idle_timeout => Key::IdleTimeout,
        Rule::head_timeout => Key::HeadTimeout,
        Rule::health_check => Key::HealthCheck,
        Rule::health_check_interval => Key::HealthCheckInterval,
        Rule::healthy_threshold => Key::HealthyThreshold,
        Rule::unhealthy_threshold => Key::UnhealthyThreshold,
        Rule::max_connections => Key::MaxConnections,
        Rule::global_max_connections => Key::GlobalMaxConnections,
        Rule::sticky_cookie => Key::StickyCookie,
        Rule::sticky_timeout => Key::StickyTimeout,
        Rule::sticky_table_size => Key::StickyTableSize,
        Rule::mode => Key::Mode,
        Rule::wait_bytes => Key::WaitBytes,
        Rule::splice => Key::Splice,
        Rule::statistics_url => Key::StatisticsUrl,
        Rule::statistics_allow => Key::StatisticsAllow,
        Rule::access_log => Key::AccessLog,
        Rule::error_log => Key::ErrorLog,
        Rule::threads => Key::Threads,
        Rule::shutdown_timeout => Key::ShutdownTimeout,
        Rule::host_dir => Key::Host,
        Rule::allow => Key::Allow,
        Rule::deny => Key::Deny,
        Rule::rate_limit => Key::RateLimit,
        Rule::redirect => Key::Redirect,
        Rule::max_body_size => Key::MaxBodySize,
        Rule::strip_prefix => Key::StripPrefix,
        Rule::request_header => Key::RequestHeader,
        Rule::response_header => Key::ResponseHeader,
        Rule::trusted_proxies => Key::TrustedProxies,
        Rule::send_proxy => Key::SendProxy,
        Rule::shutdown_delay => Key::ShutdownDelay,
        Rule::admin_socket => Key::AdminSocket,
        Rule::health_url => Key::HealthUrl,
        other => return Err((span, format!("unexpected {other:?}"), None)),
    };
    let Some(first) = first else {
        return Err((span, format!("`{}` needs a value", key.name()), None));
    };
    let value = match key {
        Key::Listen => {
            let addr = addr_text(&first);
            let (mut tls, mut proxy) = (false, false);
            for flag in values {
                match flag.as_rule() {
                    Rule::proxy_flag => proxy = true,
                    _ => tls = true,
                }
            }
            Value::Listen {
                text: first_str,
                addr,
                tls,
                proxy,
            }
        }
        Key::TlsCertificate => Value::Certificate {
            cert: first_str,
            key: values.next().map(|p| Spanned {
                span: span_of(&p, line),
                value: p.as_str().to_string(),
            }),
        },
        Key::TlsProtocols => Value::Versions(
            std::iter::once(first)
                .chain(values)
                .map(|p| p.as_str().to_string())
                .collect(),
        ),
        Key::TlsClientAuth => {
            Value::ClientAuth(match first.into_inner().next().map(|p| p.as_rule()) {
                Some(Rule::auth_off) => ClientAuth::Off,
                Some(Rule::auth_optional) => ClientAuth::Optional,
                _ => ClientAuth::Required,
            })
        }
        Key::BackendTlsVerify => {
            Value::Switch(first.into_inner().next().map(|p| p.as_rule()) == Some(Rule::on))
        }
        Key::TlsKey | Key::TlsClientCa | Key::BackendCa | Key::ErrorLog | Key::AdminSocket => {
            Value::Path(first_str)
        }
        Key::AccessLog | Key::Threads if first.as_rule() == Rule::off => Value::Off,
        Key::Threads if first.as_rule() == Rule::auto => Value::Auto,
        Key::AccessLog => Value::Path(first_str),
        Key::Match => Value::Patterns(spanned_tokens(first, values, line)),
        Key::Name => Value::Name(first_str),
        Key::ServerList => Value::Servers(
            std::iter::once(first)
                .chain(values)
                .map(|p| {
                    let span = span_of(&p, line);
                    let value = if p.as_rule() == Rule::weight {
                        let n = p
                            .into_inner()
                            .next()
                            .map_or(String::new(), |n| n.as_str().into());
                        ServerToken::Weight(n)
                    } else if p.as_rule() == Rule::tls_addr {
                        let text = p.as_str().to_string();
                        let inner = p.into_inner().next();
                        ServerToken::Addr {
                            text,
                            addr: inner.as_ref().map_or(
                                AddrText::HostPort {
                                    host: String::new(),
                                    port: String::new(),
                                },
                                addr_text,
                            ),
                            tls: true,
                        }
                    } else {
                        ServerToken::Addr {
                            text: p.as_str().to_string(),
                            addr: addr_text(&p),
                            tls: false,
                        }
                    };
                    Spanned { value, span }
                })
                .collect(),
        ),
        Key::LoadBalancer => {
            let inner = first.into_inner().next();
            Value::Balancer(match inner.as_ref().map(|p| p.as_rule()) {
                Some(Rule::naive) => Ok(Balancer::Naive),
                Some(Rule::first_alive) => Ok(Balancer::FirstAlive),
                Some(Rule::round_robin) => Ok(Balancer::RoundRobin),
                Some(Rule::locking_round_robin) => Ok(Balancer::LockingRoundRobin),
                Some(Rule::weighted_round_robin) => Ok(Balancer::WeightedRoundRobin),
                Some(Rule::least_connections) => Ok(Balancer::LeastConnections),
                Some(Rule::source_hash) => Ok(Balancer::SourceHash),
                Some(Rule::random) => Ok(Balancer::Random),
                Some(Rule::least_bytes) => Ok(Balancer::LeastBytes),
                Some(Rule::least_time) => Ok(Balancer::LeastTime),
                Some(Rule::workload) => Ok(Balancer::Workload),
                _ => Err(first_str),
            })
        }
        Key::AttemptsCount
        | Key::HealthyThreshold
        | Key::UnhealthyThreshold
        | Key::MaxConnections
        | Key::GlobalMaxConnections
        | Key::StickyTableSize
        | Key::WaitBytes
        | Key::Threads => Value::Count(first_str),
        Key::OfflineTimeOut
        | Key::ConnectTimeout
        | Key::BackendTimeout
        | Key::IdleTimeout
        | Key::HeadTimeout
        | Key::HealthCheckInterval
        | Key::StickyTimeout
        | Key::ShutdownTimeout
        | Key::ShutdownDelay => Value::Duration(first_str),
        Key::HealthCheck => {
            let inner = first.into_inner().next();
            Value::HealthCheck(match inner.as_ref().map(|p| p.as_rule()) {
                Some(Rule::hc_off) => HealthCheck::Off,
                Some(Rule::hc_tcp) => HealthCheck::Tcp,
                _ => HealthCheck::Http(inner.map_or(first_str, |p| p.as_str().to_string())),
            })
        }
        Key::StickyCookie => {
            let kind = match values
                .next()
                .and_then(|k| k.into_inner().next())
                .map(|p| p.as_rule())
            {
                Some(Rule::sticky_hash) => StickyKind::Hash,
                _ => StickyKind::Table,
            };
            Value::Sticky {
                cookie: first_str,
                kind,
            }
        }
        Key::Mode => Value::Mode(match first.into_inner().next().map(|p| p.as_rule()) {
            Some(Rule::mode_tcp) => Mode::Tcp,
            _ => Mode::Http,
        }),
        Key::Splice => Value::Splice(match first.into_inner().next().map(|p| p.as_rule()) {
            Some(Rule::splice_on) => SpliceMode::On,
            Some(Rule::splice_off) => SpliceMode::Off,
            _ => SpliceMode::Auto,
        }),
        Key::StatisticsUrl | Key::HealthUrl | Key::StripPrefix => Value::Path(first_str),
        Key::RateLimit
        | Key::Redirect
        | Key::MaxBodySize
        | Key::RequestHeader
        | Key::ResponseHeader => Value::Words(first_str),
        Key::SendProxy => {
            Value::ProxyVersion(match first.into_inner().next().map(|p| p.as_rule()) {
                Some(Rule::proxy_v1) => 1,
                _ => 2,
            })
        }
        Key::Host => Value::Tokens(spanned_tokens(first, values, line)),
        Key::StatisticsAllow | Key::Allow | Key::Deny | Key::TrustedProxies => {
            Value::Cidrs(spanned_tokens(first, values, line))
        }
    };
    Ok(Directive {
        key,
        span,
        value_span,
        value,
    })
}

/// A key's values, each as written with its place (`Match`, `Host`, the CIDR lists).
fn spanned_tokens<'i>(
    first: Pair<'i, Rule>,
    rest: impl Iterator<Item = Pair<'i, Rule>>,
    line: usize,
) -> Vec<Spanned<String>> {
    std::iter::once(first)
        .chain(rest)
        .map(|p| Spanned {
            span: span_of(&p, line),
            value: p.as_str().to_string(),
        })
        .collect()
}

fn addr_text(pair: &Pair<Rule>) -> AddrText {
    let mut inner = pair.clone().into_inner();
    let a = inner
        .next()
        .map_or(String::new(), |p| p.as_str().to_string());
    let b = inner
        .next()
        .map_or(String::new(), |p| p.as_str().to_string());
    match pair.as_rule() {
        Rule::unix_addr => AddrText::Unix(a),
        Rule::ipv6_addr => AddrText::Ipv6 { host: a, port: b },
        _ => AddrText::HostPort { host: a, port: b },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel path gives exactly what the sequential one gives, errors and
    /// their order included.
    #[test]
    fn parallel_parse_matches_sequential() {
        let mut text = String::from("[PROXY_DEFAULTS]\nListen 127.0.0.1:8080\n");
        for i in 0..700 {
            text.push_str(&format!(
                "[PROXY_ENTRY]\nName e{i}\nMatch ^/s{i}/\nServerList 127.0.0.1:{}\n",
                1000 + i
            ));
            if i % 97 == 0 {
                text.push_str("Bogus key\nAttemptsCount x\n[NOPE]\n");
            }
        }
        let seq = parse_with("f", text.as_bytes(), usize::MAX);
        for threshold in [1, 10] {
            let par = parse_with("f", text.as_bytes(), threshold);
            assert_eq!(par.errors, seq.errors);
            assert_eq!(par.sections.len(), seq.sections.len());
            for (a, b) in par.sections.iter().zip(&seq.sections) {
                assert_eq!(a.directives, b.directives);
                assert_eq!(
                    (a.kind.clone(), a.span, a.had_errors),
                    (b.kind.clone(), b.span, b.had_errors)
                );
            }
        }
        assert!(!seq.errors.is_empty());
    }
}
