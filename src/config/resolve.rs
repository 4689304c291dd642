//! Stage two: sections of directives → a validated [`Config`].
//!
//! Applies SPEC section 2: which key may stand where, defaults copied into every
//! entry that does not set them (Monkey semantics), every value range, and the rules
//! across entries (unique names, no duplicate `Listen`). Errors are collected, not
//! returned at the first, so `--check` shows everything wrong with a file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::diagnostic::{ConfigErrors, Diagnostic, Severity};
use super::key::{Key, Place};
use super::model::*;
use super::raw::{Directive, RawFile, SectionKind, ServerToken, Value};
use super::{lint, values};
use crate::route::Router;

const MAX_WEIGHT: u64 = 1000;
/// SPEC section 12: the sticky table is bounded whatever clients send.
const DEFAULT_STICKY_TABLE_SIZE: u32 = 1_000_000;

/// The directives of one section by key (validated for place and repetition).
#[derive(Default)]
pub(super) struct Keys<'a> {
    map: HashMap<Key, Vec<&'a Directive>>,
}

impl<'a> Keys<'a> {
    pub(super) fn one(&self, key: Key) -> Option<&'a Directive> {
        self.map.get(&key).and_then(|v| v.first().copied())
    }
    pub(super) fn all(&self, key: Key) -> &[&'a Directive] {
        self.map.get(&key).map_or(&[], |v| v.as_slice())
    }
}

pub(super) struct Resolver<'r> {
    pub(super) raw: &'r RawFile,
    pub(super) errors: Vec<Diagnostic>,
}

impl<'r> Resolver<'r> {
    pub(super) fn error(&mut self, span: Span, message: impl Into<String>, help: Option<String>) {
        let d = self.raw.diag(Severity::Error, span, message, help);
        self.errors.push(d);
    }

    /// Check place and repetition of every directive of a section.
    fn keys<'a>(&mut self, section: &'a super::raw::Section) -> Keys<'a> {
        let mut keys = Keys::default();
        let in_defaults = section.kind == SectionKind::Defaults;
        for d in &section.directives {
            let wrong = match d.key.place() {
                Place::Defaults => !in_defaults,
                Place::Entry => in_defaults,
                Place::Both => false,
            };
            if wrong {
                let (here, there) = if in_defaults {
                    ("[PROXY_DEFAULTS]", "[PROXY_ENTRY]")
                } else {
                    ("[PROXY_ENTRY]", "[PROXY_DEFAULTS]")
                };
                self.error(
                    d.span,
                    format!(
                        "`{}` is not allowed in {here}: it belongs in {there}",
                        d.key.name()
                    ),
                    None,
                );
                continue;
            }
            let list = keys.map.entry(d.key).or_default();
            if let (false, Some(first)) = (d.key.repeatable(), list.first()) {
                let first_line = first.span.line;
                self.error(
                    d.span,
                    format!(
                        "`{}` is set twice in this section (first on line {first_line})",
                        d.key.name()
                    ),
                    None,
                );
                continue;
            }
            list.push(d);
        }
        keys
    }

    fn count(&mut self, d: Option<&Directive>, min: u64, max: u64) -> Option<u64> {
        let d = d?;
        let Value::Count(text) = &d.value else {
            return None;
        };
        match values::count(text, min, max) {
            Ok(n) => Some(n),
            Err(m) => {
                self.error(d.value_span, format!("{}: {m}", d.key.name()), None);
                None
            }
        }
    }

    fn duration(&mut self, d: Option<&Directive>, nonzero: bool) -> Option<Duration> {
        let d = d?;
        let Value::Duration(text) = &d.value else {
            return None;
        };
        let r = if nonzero {
            values::nonzero_duration(text)
        } else {
            values::duration(text)
        };
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.error(d.value_span, format!("{}: {m}", d.key.name()), None);
                None
            }
        }
    }

    /// The admin socket's directory must exist: simian creates the socket, not
    /// the directories above it (as nginx's `pid`, HAProxy's `stats socket`).
    fn admin_socket(&mut self, d: &Directive) -> Option<PathBuf> {
        let p = path_of(Some(d))?;
        // sockaddr_un holds 108 bytes, the last one a NUL.
        let len = p.as_os_str().len();
        if len > crate::admin::socket::MAX_PATH {
            self.error(
                d.value_span,
                format!(
                    "AdminSocket: a unix socket path is at most {} bytes; this one is {len}",
                    crate::admin::socket::MAX_PATH
                ),
                None,
            );
            return None;
        }
        let dir = match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            self.error(
                d.value_span,
                format!(
                    "AdminSocket: the directory {} does not exist",
                    dir.display()
                ),
                None,
            );
            return None;
        }
        Some(p)
    }

    fn listeners(&mut self, ds: &[&Directive]) -> Vec<Listener> {
        let mut out = Vec::new();
        for d in ds {
            if let Value::Listen {
                addr,
                tls,
                text,
                proxy,
            } = &d.value
            {
                match values::address(addr, true) {
                    Ok(a) => out.push(Listener {
                        addr: a,
                        text: text.clone(),
                        tls: *tls,
                        proxy: *proxy,
                        span: d.value_span,
                    }),
                    Err(m) => self.error(d.value_span, format!("Listen `{text}`: {m}"), None),
                }
            }
        }
        out
    }

    fn servers(&mut self, ds: &[&Directive]) -> Vec<Server> {
        let mut out: Vec<Server> = Vec::new();
        for d in ds {
            let Value::Servers(tokens) = &d.value else {
                continue;
            };
            // Index into `out` of the address the next weight= applies to.
            let mut last: Option<usize> = None;
            let mut last_weighted = false;
            for t in tokens {
                match &t.value {
                    ServerToken::Addr { text, addr, tls } => {
                        let host = match addr {
                            super::raw::AddrText::HostPort { host, .. }
                            | super::raw::AddrText::Ipv6 { host, .. } => host.clone(),
                            super::raw::AddrText::Unix(_) => String::new(),
                        };
                        let addr = match values::address(addr, false) {
                            Ok(a) => a,
                            Err(m) => {
                                self.error(t.span, format!("server `{text}`: {m}"), None);
                                last = None;
                                continue;
                            }
                        };
                        let tls = match (&addr, tls) {
                            (Address::Inet(a), true) => {
                                Some(crate::tls::client::server_name(&host, a.ip()))
                            }
                            _ => None,
                        };
                        // A server listed k times has weight k (Monkey's WRR).
                        if let Some(i) = out
                            .iter()
                            .position(|s| s.addr == addr && s.tls.is_some() == tls.is_some())
                        {
                            out[i].weight += 1;
                            last = Some(i);
                        } else {
                            out.push(Server {
                                text: text.clone(),
                                addr,
                                weight: 1,
                                tls,
                                span: t.span,
                            });
                            last = Some(out.len() - 1);
                        }
                        last_weighted = false;
                    }
                    ServerToken::Weight(n) => {
                        let Some(i) = last else {
                            self.error(t.span, "`weight=` must follow a server address", None);
                            continue;
                        };
                        if last_weighted {
                            self.error(t.span, "a second `weight=` for the same server", None);
                            continue;
                        }
                        match values::count(n, 1, MAX_WEIGHT) {
                            // weight=N replaces the 1 this listing added.
                            Ok(w) => out[i].weight = out[i].weight - 1 + w as u32,
                            Err(m) => self.error(t.span, format!("weight: {m}"), None),
                        }
                        last_weighted = true;
                    }
                }
            }
        }
        out
    }
}

/// Validate a parsed file into a configuration.
pub fn resolve(raw: RawFile, source: PathBuf) -> Result<Config, ConfigErrors> {
    let mut r = Resolver {
        raw: &raw,
        errors: Vec::new(),
    };
    let mut errors_before = std::mem::take(&mut r.errors);
    errors_before.extend(raw.errors.iter().cloned());

    // Section order and multiplicity.
    let mut defaults: Option<&super::raw::Section> = None;
    let mut entry_sections = Vec::new();
    for s in &raw.sections {
        match s.kind {
            SectionKind::Defaults if defaults.is_some() => r.error(
                s.span,
                "a second [PROXY_DEFAULTS]: there can be only one",
                None,
            ),
            SectionKind::Defaults if !entry_sections.is_empty() => r.error(
                s.span,
                "[PROXY_DEFAULTS] must come before the first [PROXY_ENTRY]",
                None,
            ),
            SectionKind::Defaults => defaults = Some(s),
            SectionKind::Entry => entry_sections.push(s),
        }
    }
    let dk = match defaults {
        Some(s) => r.keys(s),
        None => Keys::default(),
    };
    let defaults_broken = defaults.is_some_and(|s| s.had_errors);
    if entry_sections.is_empty() && raw.errors.is_empty() {
        let line = raw.lines.len().max(1);
        r.error(
            Span { line, col: 1 },
            "no [PROXY_ENTRY] section: a configuration needs at least one entry",
            None,
        );
    }

    // Global settings (defaults only).
    let mut global = Global {
        listen: Vec::new(),
        tls: None,
        tls_client_ca: path_of(dk.one(Key::TlsClientCa)),
        head_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        global_max_connections: None,
        statistics_url: path_of(dk.one(Key::StatisticsUrl)).map(|p| p.to_string_lossy().into()),
        statistics_allow: Vec::new(),
        trusted_proxies: Vec::new(),
        response_headers: Default::default(),
        access_log: match dk.one(Key::AccessLog).map(|d| &d.value) {
            Some(Value::Path(p)) => Some(PathBuf::from(p)),
            _ => None,
        },
        error_log: path_of(dk.one(Key::ErrorLog)),
        threads: None,
        shutdown_timeout: Duration::from_secs(30),
        shutdown_delay: Duration::ZERO,
        health_url: path_of(dk.one(Key::HealthUrl)).map(|p| p.to_string_lossy().into()),
        admin_socket: None,
    };
    if let Some(d) = r.duration(dk.one(Key::ShutdownDelay), false) {
        global.shutdown_delay = d;
    }
    if let Some(d) = dk.one(Key::AdminSocket) {
        global.admin_socket = r.admin_socket(d);
    }
    if let Some(d) = r.duration(dk.one(Key::HeadTimeout), true) {
        global.head_timeout = d;
    }
    if let Some(d) = r.duration(dk.one(Key::IdleTimeout), true) {
        global.idle_timeout = d;
    }
    if let Some(d) = r.duration(dk.one(Key::ShutdownTimeout), false) {
        global.shutdown_timeout = d;
    }
    global.global_max_connections = r
        .count(dk.one(Key::GlobalMaxConnections), 1, u32::MAX as u64)
        .map(|n| n as u32);
    global.threads = r.count(dk.one(Key::Threads), 1, 1024).map(|n| n as u32);
    let allow = dk.all(Key::StatisticsAllow);
    if allow.is_empty() {
        global.statistics_allow = vec![
            values::cidr("127.0.0.0/8").expect("constant"),
            values::cidr("::1").expect("constant"),
        ];
    }
    global.statistics_allow.extend(r.cidrs(allow));
    global.trusted_proxies = r.cidrs(dk.all(Key::TrustedProxies));
    global.response_headers =
        super::rules::HeaderRules::new(r.header_rules(dk.all(Key::ResponseHeader), false));
    let default_listen = r.listeners(dk.all(Key::Listen));

    // Entries.
    let mut entries: Vec<Entry> = Vec::new();
    // Entry name -> line of its section, for the uniqueness check (a linear search
    // per entry is quadratic: 0.6 s at 10,000 entries).
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut patterns: Vec<(usize, String, Span)> = Vec::new();
    // Read once per load, by the first entry that needs it.
    let mut system_roots = None;
    for (n, s) in entry_sections.iter().enumerate() {
        let ek = r.keys(s);
        let pick = |k: Key| ek.one(k).or_else(|| dk.one(k));
        let mode = match ek.one(Key::Mode).map(|d| &d.value) {
            Some(Value::Mode(m)) => *m,
            _ => Mode::Http,
        };
        let name = match ek.one(Key::Name).map(|d| &d.value) {
            Some(Value::Name(name)) => name.clone(),
            _ => format!("entry{}", n + 1),
        };
        if let Some(&line) = names.get(&name) {
            let at = ek.one(Key::Name).map_or(s.span, |d| d.value_span);
            r.error(
                at,
                format!("entry name `{name}` is already used by the entry on line {line}"),
                None,
            );
        }

        names.entry(name.clone()).or_insert(s.span.line);

        let server_ds = if ek.all(Key::ServerList).is_empty() {
            dk.all(Key::ServerList)
        } else {
            ek.all(Key::ServerList)
        };
        let servers = r.servers(server_ds);
        let redirects = ek.one(Key::Redirect).is_some();
        if server_ds.is_empty() && !redirects && !s.had_errors && !defaults_broken {
            r.error(
                s.span,
                format!("entry `{name}` has no ServerList (in the entry or in [PROXY_DEFAULTS])"),
                None,
            );
        }

        let balancer = match pick(Key::LoadBalancer) {
            Some(d) => match &d.value {
                Value::Balancer(Ok(b)) => *b,
                Value::Balancer(Err(text)) => {
                    let help =
                        super::suggest::nearest(text, Balancer::ALL.iter().map(|b| b.name()));
                    let all: Vec<&str> = Balancer::ALL.iter().map(|b| b.name()).collect();
                    r.error(
                        d.value_span,
                        format!(
                            "unknown balancer `{text}`: expected one of {}",
                            all.join(", ")
                        ),
                        help,
                    );
                    Balancer::RoundRobin
                }
                _ => Balancer::RoundRobin,
            },
            None => Balancer::RoundRobin,
        };

        let mut entry_patterns = Vec::new();
        for d in ek.all(Key::Match) {
            if mode == Mode::Tcp {
                r.error(
                    d.span,
                    "a `Mode tcp` entry has no `Match`: it takes every connection on its Listen",
                    None,
                );
                continue;
            }
            if let Value::Patterns(ps) = &d.value {
                for p in ps {
                    entry_patterns.push(p.value.clone());
                    patterns.push((n, p.value.clone(), p.span));
                }
            }
        }
        let hosts = r.hosts(ek.all(Key::Host));
        if mode == Mode::Http && ek.all(Key::Match).is_empty() && hosts.is_empty() && !s.had_errors
        {
            r.error(
                s.span,
                format!("http entry `{name}` has no `Match` line"),
                None,
            );
        }

        let listen = r.listeners(ek.all(Key::Listen));
        match mode {
            Mode::Http => {
                if let Some(d) = ek.all(Key::Listen).first() {
                    r.error(
                        d.span,
                        "an http entry cannot have its own `Listen`: http listeners go in [PROXY_DEFAULTS] (or set `Mode tcp`)",
                        None,
                    );
                }
            }
            Mode::Tcp => {
                if ek.all(Key::Listen).is_empty() && !s.had_errors {
                    r.error(
                        s.span,
                        format!("tcp entry `{name}` needs its own `Listen`"),
                        None,
                    );
                }
                for k in [
                    Key::StickyCookie,
                    Key::StickyTimeout,
                    Key::StickyTableSize,
                    Key::Host,
                    Key::RateLimit,
                    Key::Redirect,
                    Key::StripPrefix,
                    Key::MaxBodySize,
                    Key::RequestHeader,
                    Key::ResponseHeader,
                ] {
                    if let Some(d) = ek.one(k) {
                        r.error(
                            d.span,
                            format!("`{}` is for http entries only", k.name()),
                            None,
                        );
                    }
                }
            }
        }
        if mode == Mode::Http {
            if let Some(d) = ek.one(Key::WaitBytes) {
                r.error(d.span, "`WaitBytes` is for `Mode tcp` entries only", None);
            }
        }

        let availability = Availability {
            attempts: r
                .count(pick(Key::AttemptsCount), 0, 1_000_000)
                .map_or(3, |n| n as u32),
            offline_timeout: r
                .duration(pick(Key::OfflineTimeOut), false)
                .unwrap_or(Duration::from_secs(30)),
        };
        let timeouts = Timeouts {
            connect: r
                .duration(pick(Key::ConnectTimeout), true)
                .unwrap_or(Duration::from_secs(3)),
            backend: r
                .duration(pick(Key::BackendTimeout), true)
                .unwrap_or(Duration::from_secs(30)),
            idle: r
                .duration(pick(Key::IdleTimeout), true)
                .unwrap_or(Duration::from_secs(60)),
        };
        let health = HealthSettings {
            check: match pick(Key::HealthCheck).map(|d| &d.value) {
                Some(Value::HealthCheck(h)) => h.clone(),
                _ => HealthCheck::Off,
            },
            interval: r
                .duration(pick(Key::HealthCheckInterval), true)
                .unwrap_or(Duration::from_secs(5)),
            healthy_threshold: r
                .count(pick(Key::HealthyThreshold), 1, 1000)
                .map_or(2, |n| n as u32),
            unhealthy_threshold: r
                .count(pick(Key::UnhealthyThreshold), 1, 1000)
                .map_or(3, |n| n as u32),
        };
        let max_connections = r
            .count(pick(Key::MaxConnections), 1, u32::MAX as u64)
            .map(|n| n as u32);
        let sticky = match ek.one(Key::StickyCookie).map(|d| &d.value) {
            Some(Value::Sticky { cookie, kind }) if mode == Mode::Http => Some(Sticky {
                cookie: cookie.clone(),
                kind: *kind,
                timeout: r
                    .duration(ek.one(Key::StickyTimeout), true)
                    .unwrap_or(Duration::from_secs(30 * 60)),
                table_size: r
                    .count(pick(Key::StickyTableSize), 1, u32::MAX as u64)
                    .map_or(DEFAULT_STICKY_TABLE_SIZE, |n| n as u32),
            }),
            _ => None,
        };
        let wait_bytes = r.count(ek.one(Key::WaitBytes), 0, 1 << 20).unwrap_or(0);
        let splice = match pick(Key::Splice).map(|d| &d.value) {
            Some(Value::Splice(m)) => *m,
            _ => SpliceMode::Auto,
        };
        let backend_verify = !matches!(
            pick(Key::BackendTlsVerify).map(|d| &d.value),
            Some(Value::Switch(false))
        );
        let backend_ca_d = pick(Key::BackendCa);
        let backend_tls = if servers.iter().any(|s| s.tls.is_some()) {
            r.backend_tls(backend_ca_d, backend_verify, s.span, &mut system_roots)
        } else {
            // Unused here, but a broken file is still an error (it would be the day
            // a `tls:` server is added).
            r.check_backend_ca(backend_ca_d);
            None
        };
        let rules = r.rules(&ek, &dk, mode);
        if mode == Mode::Http && entry_patterns.is_empty() && !hosts.is_empty() {
            // `Host` without `Match`: every path of those hosts.
            entry_patterns.push("^".to_string());
            patterns.push((n, "^".to_string(), s.span));
        }
        entries.push(Entry {
            has_match: !ek.all(Key::Match).is_empty(),
            hosts,
            rules,
            name,
            mode,
            patterns: entry_patterns,
            servers,
            balancer,
            availability,
            timeouts,
            health,
            max_connections,
            sticky,
            listen,
            wait_bytes,
            splice,
            backend_tls,
            backend_verify,
            backend_ca: path_of(backend_ca_d),
            span: s.span,
        });
    }

    // The defaults' Listen is opened only when something serves http on it.
    let needs_http = entries.iter().any(|e| e.mode == Mode::Http)
        || global.statistics_url.is_some()
        || global.health_url.is_some();
    if needs_http {
        global.listen = if default_listen.is_empty() && dk.all(Key::Listen).is_empty() {
            vec![Listener {
                addr: Address::Inet(std::net::SocketAddr::from(([0, 0, 0, 0], 8080))),
                text: "0.0.0.0:8080".into(),
                tls: false,
                proxy: false,
                span: Span::default(),
            }]
        } else {
            default_listen
        };
    }
    let tls_listener = global
        .listen
        .iter()
        .chain(entries.iter().flat_map(|e| e.listen.iter()))
        .find(|l| l.tls)
        .map(|l| l.span);
    let mut tls_warnings = Vec::new();
    global.tls = r.termination(&dk, tls_listener, &mut tls_warnings);

    // No address is listened on twice.
    let mut seen: HashMap<&Address, Span> = HashMap::new();
    let all_listeners: Vec<&Listener> = global
        .listen
        .iter()
        .chain(entries.iter().flat_map(|e| e.listen.iter()))
        .collect();
    for l in all_listeners {
        if let Some(first) = seen.get(&l.addr) {
            let line = first.line;
            let msg = format!("duplicate Listen `{}` (already on line {line})", l.addr);
            r.error(l.span, msg, None);
        } else {
            seen.insert(&l.addr, l.span);
        }
    }

    // Compile the routes.
    let router = match Router::build(patterns.iter().map(|(e, p, _)| (*e, p.clone())).collect()) {
        Ok(router) => router,
        Err((i, e)) => {
            // Report every broken pattern, not only the first.
            for (_, p, span) in &patterns[i..] {
                if let Err(e) = crate::route::compile_one(p) {
                    let msg = format!("invalid regex `{p}`: {}", regex_error_line(&e));
                    let help = lint::glob_help(p);
                    r.error(*span, msg, help);
                }
            }
            if r.errors.is_empty() {
                r.error(
                    patterns.get(i).map_or(Span::default(), |p| p.2),
                    format!("{e}"),
                    None,
                );
            }
            Router::empty()
        }
    };

    let mut all = errors_before;
    all.append(&mut r.errors);
    if !all.is_empty() {
        all.sort_by_key(|d| (d.line, d.col));
        all.dedup();
        return Err(ConfigErrors(all));
    }
    let hosts = if entries.iter().any(|e| !e.hosts.is_empty()) {
        let by_entry: Vec<_> = entries.iter().map(|e| e.hosts.clone()).collect();
        let list: Vec<(usize, String)> = patterns.iter().map(|(e, p, _)| (*e, p.clone())).collect();
        // The patterns compiled above: they compile again here.
        crate::route::HostRoutes::build(&by_entry, &list).ok()
    } else {
        None
    };
    let mut config = Config {
        source,
        global,
        entries,
        router,
        hosts,
        warnings: Vec::new(),
    };
    config.warnings = lint::warnings(&raw, &config, &patterns);
    config.warnings.extend(tls_warnings);
    Ok(config)
}

pub(super) fn path_of(d: Option<&Directive>) -> Option<PathBuf> {
    match d.map(|d| &d.value) {
        Some(Value::Path(p)) => Some(PathBuf::from(p)),
        _ => None,
    }
}

/// regex errors are multi-line drawings; keep the last line (the actual reason).
fn regex_error_line(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_string())
        .unwrap_or(s)
}
