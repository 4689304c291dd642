//! Resolving the SPEC section 9 and 10 keys of a section into [`Rules`]: each
//! value parsed by `rules.rs`, each error pointed at its column.

use super::key::Key;
use super::model::{Cidr, Mode, Span};
use super::raw::{Directive, Value};
use super::resolve::{Keys, Resolver};
use super::rules::{self, HeaderRule, HostPattern, ProxyVersion, Rules};
use super::values;

impl Resolver<'_> {
    /// Every CIDR of these directives (`Allow`, `Deny`, `StatisticsAllow`, ...).
    pub(super) fn cidrs(&mut self, ds: &[&Directive]) -> Vec<Cidr> {
        let mut out = Vec::new();
        for d in ds {
            if let Value::Cidrs(list) = &d.value {
                for c in list {
                    match values::cidr(&c.value) {
                        Ok(c) => out.push(c),
                        Err(m) => self.error(c.span, format!("{}: {m}", d.key.name()), None),
                    }
                }
            }
        }
        out
    }

    pub(super) fn hosts(&mut self, ds: &[&Directive]) -> Vec<HostPattern> {
        let mut out = Vec::new();
        for d in ds {
            if let Value::Tokens(list) = &d.value {
                for t in list {
                    match rules::parse_host(&t.value) {
                        Ok(h) => out.push(h),
                        Err((_, m)) => self.error(t.span, format!("Host: {m}"), None),
                    }
                }
            }
        }
        out
    }

    /// Parse a `Words` value with `parse`, reporting at the column it names.
    fn words<T>(
        &mut self,
        d: &Directive,
        parse: impl Fn(&str) -> Result<T, rules::Bad>,
    ) -> Option<T> {
        let Value::Words(text) = &d.value else {
            return None;
        };
        match parse(text) {
            Ok(v) => Some(v),
            Err((at, m)) => {
                let span = Span {
                    line: d.value_span.line,
                    col: d.value_span.col + text[..at.min(text.len())].chars().count(),
                };
                self.error(span, format!("{}: {m}", d.key.name()), None);
                None
            }
        }
    }

    /// The rules of an entry, the defaults' merged in: lists of header rules
    /// add up (defaults' first); `Allow`/`Deny` of the entry replace the defaults'
    /// (nginx's inheritance); single values come from the entry, else the defaults.
    pub(super) fn rules(&mut self, ek: &Keys, dk: &Keys, mode: Mode) -> Rules {
        let mut r = Rules::default();
        let (allow, deny) = if ek.all(Key::Allow).is_empty() && ek.all(Key::Deny).is_empty() {
            (dk.all(Key::Allow), dk.all(Key::Deny))
        } else {
            (ek.all(Key::Allow), ek.all(Key::Deny))
        };
        r.allow = self.cidrs(allow);
        r.deny = self.cidrs(deny);
        let pick = |k: Key| ek.one(k).or_else(|| dk.one(k));
        if let Some(Value::ProxyVersion(v)) = pick(Key::SendProxy).map(|d| &d.value) {
            r.send_proxy = Some(if *v == 1 {
                ProxyVersion::V1
            } else {
                ProxyVersion::V2
            });
        }
        if mode == Mode::Tcp {
            return r;
        }
        if let Some(d) = ek.one(Key::RateLimit) {
            r.rate_limit = self.words(d, rules::parse_rate_limit);
        }
        if let Some(d) = ek.one(Key::Redirect) {
            r.redirect = self.words(d, rules::parse_redirect);
        }
        if let Some(d) = pick(Key::MaxBodySize) {
            r.max_body = self.words(d, rules::parse_size).unwrap_or(0);
        }
        if let Some(d) = ek.one(Key::StripPrefix) {
            if let Value::Path(p) = &d.value {
                let p = p.trim_end_matches('/');
                if p.is_empty() || p.contains(['?', '#']) {
                    self.error(
                        d.value_span,
                        "StripPrefix: expected a path prefix such as /api",
                        None,
                    );
                } else {
                    r.strip_prefix = Some(p.to_string());
                }
            }
        }
        for (key, request) in [(Key::RequestHeader, true), (Key::ResponseHeader, false)] {
            let ds: Vec<&Directive> = dk.all(key).iter().chain(ek.all(key)).copied().collect();
            let list = super::rules::HeaderRules::new(self.header_rules(&ds, request));
            if request {
                r.request_headers = list;
            } else {
                r.response_headers = list;
            }
        }
        r
    }

    /// `RequestHeader` (`request`) or `ResponseHeader` rules, in order.
    pub(super) fn header_rules(&mut self, ds: &[&Directive], request: bool) -> Vec<HeaderRule> {
        ds.iter()
            .filter_map(|d| self.words(d, |t| rules::parse_header_rule(t, request)))
            .collect()
    }
}
