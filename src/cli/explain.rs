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

/// The host of an absolute URL (lowercase, without port), as routing sees it.
fn host_of(url: &str) -> Option<String> {
    let after = &url[url.find("://")? + 3..];
    let authority = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
    let mut scratch = [0u8; 256];
    crate::route::hosts::request_host(b"/", Some(authority.as_bytes()), &mut scratch)
        .map(str::to_string)
}

/// One line per rule of an entry, for `--check` and `explain`.
pub fn rule_lines(r: &crate::config::Rules) -> Vec<String> {
    use crate::config::rules::{HeaderOp, RedirectTarget};
    let cidrs = |l: &[crate::config::Cidr]| {
        l.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::new();
    if !r.allow.is_empty() {
        out.push(format!("Allow {}", cidrs(&r.allow)));
    }
    if !r.deny.is_empty() {
        out.push(format!("Deny {}", cidrs(&r.deny)));
    }
    if let Some(l) = &r.rate_limit {
        out.push(format!("RateLimit {:.3}/s burst {}", l.per_second, l.burst));
    }
    if let Some(d) = &r.redirect {
        let to = match &d.target {
            RedirectTarget::Https => "https".to_string(),
            RedirectTarget::Url { text, .. } => text.clone(),
        };
        out.push(format!("Redirect {} {to}", d.code));
    }
    if r.max_body > 0 {
        out.push(format!("MaxBodySize {} bytes", r.max_body));
    }
    if let Some(p) = &r.strip_prefix {
        out.push(format!("StripPrefix {p}"));
    }
    for (what, list) in [
        ("RequestHeader", &r.request_headers.rules),
        ("ResponseHeader", &r.response_headers.rules),
    ] {
        for h in list {
            let op = match h.op {
                HeaderOp::Set => "set",
                HeaderOp::Add => "add",
                HeaderOp::Del => "del",
            };
            out.push(format!("{what} {op} {}", h.name));
        }
    }
    if let Some(v) = r.send_proxy {
        out.push(format!("SendProxy {v:?}"));
    }
    out
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
    let host = host_of(url);
    let tls = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if let Some(h) = &host {
        let _ = writeln!(o, "host:         {h}");
    }
    let matches: Vec<_> = config
        .router
        .all_matches(&norm)
        .into_iter()
        .filter(|m| config.entries[m.entry].takes_host(host.as_deref()))
        // A request over TLS passes `Redirect https` entries by.
        .filter(|m| !(tls && crate::proxy::rules::passes_over_tls(&config.entries[m.entry])))
        .collect();
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
    if !entry.hosts.is_empty() {
        let h: Vec<String> = entry.hosts.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(o, "   for hosts {}", h.join(" "));
    }
    for line in rule_lines(&entry.rules) {
        let _ = writeln!(o, "   rule: {line}");
    }
    if !entry.rules.admits(client) {
        let _ = writeln!(
            o,
            "-> simian answers 403 Forbidden: Allow/Deny refuse this client"
        );
        return o;
    }
    if let Some(r) = &entry.rules.redirect {
        let _ = writeln!(
            o,
            "-> simian answers {} (Redirect), before any server{}",
            r.code,
            if matches!(r.target, crate::config::rules::RedirectTarget::Https) {
                " (requests over TLS go on to the next entry)"
            } else {
                ""
            }
        );
        return o;
    }
    if let Some(l) = &entry.rules.rate_limit {
        let _ = writeln!(
            o,
            "   a client past {:.3}/s (burst {}) gets 429 Too Many Requests before any server",
            l.per_second, l.burst
        );
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
    choose_server(&mut o, config, first.entry, client, cookie);
    o
}

/// Which server the entry's balancer would pick now, with the servers' state read
/// from a running simian (its statistics JSON) when one answers, else all up.
fn choose_server(
    o: &mut String,
    config: &Config,
    entry: usize,
    client: Option<IpAddr>,
    cookie: Option<&str>,
) {
    use crate::balance::{self, PickContext, Tried};
    use crate::config::StickyKind;
    use std::sync::atomic::Ordering::Relaxed;

    let e = &config.entries[entry];
    let servers: Vec<std::sync::Arc<crate::upstream::ServerState>> = e
        .servers
        .iter()
        .map(|s| std::sync::Arc::new(crate::upstream::ServerState::new(s.clone())))
        .collect();
    let now = crate::upstream::clock::now_ms();
    match live_state(config) {
        Some((from, json)) => {
            let _ = writeln!(o, "   server state read from the running simian at {from}:");
            let route = json["routes"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["route"] == e.name.as_str()));
            for s in &servers {
                let st = route
                    .and_then(|r| r["servers"].as_array())
                    .and_then(|l| l.iter().find(|x| x["server"] == s.spec.text.as_str()));
                let Some(st) = st else { continue };
                if st["up"] == false {
                    if st["health_down"] == true {
                        s.health_down.store(true, Relaxed);
                    } else {
                        let left = st["offline_for_ms"].as_u64().unwrap_or(0).max(1);
                        s.offline_until.store(now + left, Relaxed);
                    }
                }
                s.active
                    .store(st["active_requests"].as_u64().unwrap_or(0) as u32, Relaxed);
            }
        }
        None => {
            let _ = writeln!(
                o,
                "   no running simian answered on the statistics URL: assuming every server is up"
            );
        }
    }
    for s in &servers {
        let mut why = Vec::new();
        if s.health_down.load(Relaxed) {
            why.push("down by health checks".to_string());
        } else if s.is_offline(now) {
            let left = s.offline_until.load(Relaxed).saturating_sub(now);
            why.push(format!("offline after failed connects, {left} ms left"));
        }
        if let Some(m) = e.max_connections {
            let a = s.active.load(Relaxed);
            if a >= m {
                why.push(format!("at MaxConnections ({a}/{m})"));
            }
        }
        if !why.is_empty() {
            let _ = writeln!(o, "     {} is skipped: {}", s.spec.text, why.join(", "));
        }
    }
    let tried = Tried::new(servers.len());
    let cx = PickContext {
        servers: &servers,
        client_ip: client,
        client_port: 0,
        now_ms: now,
        tried: &tried,
        max_connections: e.max_connections,
        sticky: false,
    };
    let balancer = balance::build(e.balancer, &e.servers);
    let cookie_value = cookie
        .and_then(|c| c.split_once('='))
        .filter(|(n, _)| e.sticky.as_ref().is_some_and(|s| s.cookie == *n));
    let (pick, how) = match (&e.sticky, cookie_value) {
        (Some(st), Some((_, v))) if st.kind == StickyKind::Hash => (
            balance::rendezvous_with(balance::stable_hash(v.as_bytes()), &balance::salts(&e.servers), &cx),
            format!("cookie {}={v} by rendezvous hash (the same on every instance)", st.cookie),
        ),
        (Some(st), Some((_, v))) => (
            balancer.pick(&cx),
            format!(
                "cookie {}={v}: the sticky table lives in the running process; a value it has not seen goes to the balancer's pick",
                st.cookie
            ),
        ),
        _ => (balancer.pick(&cx), format!("balancer {}", e.balancer.name())),
    };
    match pick {
        Some(i) => {
            let _ = writeln!(o, "-> server {} ({how})", servers[i].spec.text);
            if matches!(
                e.balancer,
                crate::config::Balancer::RoundRobin
                    | crate::config::Balancer::LockingRoundRobin
                    | crate::config::Balancer::WeightedRoundRobin
                    | crate::config::Balancer::Random
            ) && cookie_value.is_none()
            {
                let _ = writeln!(
                    o,
                    "   ({} moves on with every request: this is its first pick)",
                    e.balancer.name()
                );
            }
        }
        None => {
            let _ = writeln!(o, "-> no server can take it now: simian answers 503");
        }
    }
}

/// Fetch `?format=json` from the first http listener of the configuration.
fn live_state(config: &Config) -> Option<(String, serde_json::Value)> {
    use std::io::{Read, Write};
    let url = config.global.statistics_url.as_ref()?;
    let l = config.global.listen.first()?;
    let crate::config::Address::Inet(mut addr) = l.addr else {
        return None;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let t = std::time::Duration::from_millis(500);
    let mut s = std::net::TcpStream::connect_timeout(&addr, t).ok()?;
    s.set_read_timeout(Some(t)).ok()?;
    write!(
        s,
        "GET {url}?format=json HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    let start = body.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let json = serde_json::from_slice(&body[start..]).ok()?;
    Some((addr.to_string(), json))
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
