//! `simian --check`: the resolved route table, as a human reads a config.

use std::fmt::Write;

use crate::config::{Config, HealthCheck, Mode};

/// The route table of a valid configuration.
pub fn route_table(c: &Config) -> String {
    let mut o = String::new();
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let g = &c.global;
    let _ = writeln!(o, "configuration {} is valid", c.source.display());
    let listen: Vec<String> = g
        .listen
        .iter()
        .map(|l| format!("{}{}", l.addr, if l.tls { " tls" } else { "" }))
        .collect();
    let _ = writeln!(
        o,
        "http listeners: {}",
        if listen.is_empty() {
            "none".to_string()
        } else {
            listen.join(", ")
        }
    );
    tls_listeners(c, &mut o);
    let threads = g.threads.map_or("auto".to_string(), |n| n.to_string());
    let _ = writeln!(
        o,
        "threads: {threads} ({}), head timeout {}, shutdown timeout {}, global max connections {}",
        c.threads(),
        d(g.head_timeout),
        d(g.shutdown_timeout),
        g.global_max_connections
            .map_or("unlimited".into(), |n| n.to_string())
    );
    if let Some(url) = &g.statistics_url {
        let allow: Vec<String> = g.statistics_allow.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(o, "statistics: {url} (allowed: {})", allow.join(" "));
    }
    let log = |p: &Option<std::path::PathBuf>, none: &str| {
        p.as_ref()
            .map_or(none.to_string(), |p| p.display().to_string())
    };
    let _ = writeln!(
        o,
        "access log: {}, error log: {}",
        log(&g.access_log, "off"),
        log(&g.error_log, "stderr")
    );
    for (i, e) in c.entries.iter().enumerate() {
        let _ = writeln!(o);
        let mode = match e.mode {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        };
        let _ = writeln!(
            o,
            "entry {} `{}` ({mode}, line {})",
            i + 1,
            e.name,
            e.span.line
        );
        if e.mode == Mode::Tcp {
            let l: Vec<String> = e
                .listen
                .iter()
                .map(|l| {
                    format!(
                        "{}{}{}",
                        l.addr,
                        if l.proxy { " proxy" } else { "" },
                        if l.tls { " tls" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(o, "  listen:       {}", l.join(", "));
            let _ = writeln!(o, "  wait bytes:   {}", e.wait_bytes);
        } else {
            if !e.hosts.is_empty() {
                let h: Vec<String> = e.hosts.iter().map(|h| h.to_string()).collect();
                let _ = writeln!(o, "  hosts:        {}", h.join(" "));
            }
            if e.has_match || e.hosts.is_empty() {
                let _ = writeln!(o, "  match:        {}", e.patterns.join("  |  "));
            } else {
                let _ = writeln!(o, "  match:        every path of its hosts");
            }
            for line in super::explain::rule_lines(&e.rules) {
                let _ = writeln!(o, "  rule:         {line}");
            }
        }
        let _ = writeln!(o, "  balancer:     {}", e.balancer.name());
        let _ = writeln!(o, "  servers:");
        for s in &e.servers {
            let resolved = s.addr.to_string();
            let via = if resolved == s.text {
                String::new()
            } else {
                format!(" -> {resolved}")
            };
            let _ = writeln!(o, "    {}{via}  weight={}", s.text, s.weight);
        }
        let a = &e.availability;
        let avail = if a.attempts == 0 {
            "off (AttemptsCount 0)".to_string()
        } else {
            format!(
                "offline after {} failed connects, for {}",
                a.attempts,
                d(a.offline_timeout)
            )
        };
        let _ = writeln!(o, "  availability: {avail}");
        let h = &e.health;
        let hc = match &h.check {
            HealthCheck::Off => "off".to_string(),
            HealthCheck::Tcp => "tcp".to_string(),
            HealthCheck::Http(p) => format!("GET {p}"),
        };
        if h.check != HealthCheck::Off {
            let _ = writeln!(
                o,
                "  health check: {hc} every {}, up after {}, down after {}",
                d(h.interval),
                h.healthy_threshold,
                h.unhealthy_threshold
            );
        } else {
            let _ = writeln!(o, "  health check: off");
        }
        let t = &e.timeouts;
        let _ = writeln!(
            o,
            "  timeouts:     connect {}, backend {}, idle {}",
            d(t.connect),
            d(t.backend),
            d(t.idle)
        );
        if e.backend_tls.is_some() {
            let verify = match (e.backend_verify, &e.backend_ca) {
                (false, _) => "off".to_string(),
                (true, Some(ca)) => format!("against {}", ca.display()),
                (true, None) => "against the system's CA bundle".to_string(),
            };
            let _ = writeln!(o, "  backend tls:  verify {verify}");
        }
        let _ = writeln!(
            o,
            "  limits:       max connections per server {}; splice {:?}",
            e.max_connections
                .map_or("unlimited".into(), |n| n.to_string()),
            e.splice
        );
        if let Some(s) = &e.sticky {
            let _ = writeln!(
                o,
                "  sticky:       cookie {} ({:?}), forgotten after {} idle, at most {} assignments",
                s.cookie,
                s.kind,
                d(s.timeout),
                s.table_size
            );
        }
    }
    o
}

/// Per `tls` listener: its certificates, names and expiry, versions and client
/// certificates (SPEC section 8).
fn tls_listeners(c: &Config, o: &mut String) {
    let Some(t) = &c.global.tls else { return };
    let listeners: Vec<&str> = c
        .global
        .listen
        .iter()
        .chain(c.entries.iter().flat_map(|e| e.listen.iter()))
        .filter(|l| l.tls)
        .map(|l| l.text.as_str())
        .collect();
    let client = match (&c.global.tls_client_ca, t.client_auth) {
        (Some(ca), auth) if auth != crate::config::ClientAuth::Off => {
            format!("{} (CA {})", auth.name(), ca.display())
        }
        _ => "off".to_string(),
    };
    for l in listeners {
        let _ = writeln!(
            o,
            "tls listener {l}: TLS {}, client certificates {client}",
            t.versions.join(" ")
        );
        for (i, cert) in t.certificates.iter().enumerate() {
            let _ = writeln!(
                o,
                "  certificate {}{}: {} (expires {})",
                cert.path,
                if i == 0 { " (default)" } else { "" },
                cert.names.join(", "),
                crate::tls::certificate::date(cert.not_after)
            );
        }
    }
}
