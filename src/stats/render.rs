//! The statistics page in three forms: Prometheus text (built with the
//! `prometheus` crate's model and encoder), JSON, and HTML for a browser.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::Encoder;

use super::counters::{unix_now, BUCKETS, PROCESS};
use super::names::*;
use crate::context::live::Live;
use crate::upstream::clock::now_ms;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

fn counter(pairs: &[(&str, &str)], v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// Every metric family, summed over the workers.
pub fn families(live: &Live) -> Vec<MetricFamily> {
    let c = &live.config;
    let now = now_ms();
    let (mut req, mut dur, mut rx, mut tx, mut mat) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut up, mut act, mut fail, mut off, mut hc) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut admin, mut weight) = (vec![], vec![]);
    let mut sticky = vec![];
    let mut limited = vec![];
    for (e, rt) in c.entries.iter().zip(&live.entries) {
        let route = e.name.as_str();
        let s = &rt.stats;
        if let Some(t) = &rt.sticky {
            sticky.push(gauge(&[("route", route)], t.len() as f64));
        }
        if let Some(t) = &rt.rate {
            limited.push(counter(&[("route", route)], t.limited.load(Relaxed)));
        }
        for (i, srv) in rt.servers.iter().enumerate() {
            let server = srv.spec.text.as_str();
            for (k, class) in CLASSES.iter().enumerate() {
                let n = s.sum(|w| w.requests.get(i).map_or(0, |r| r[k].load(Relaxed)));
                if n > 0 || k == 1 {
                    req.push(counter(
                        &[("route", route), ("server", server), ("code", class)],
                        n,
                    ));
                }
            }
            let l = [("route", route), ("server", server)];
            up.push(gauge(&l, if srv.is_offline(now) { 0.0 } else { 1.0 }));
            act.push(gauge(&l, srv.active.load(Relaxed) as f64));
            admin.push(gauge(&l, f64::from(srv.admin_state() as u8)));
            weight.push(gauge(&l, f64::from(srv.weight())));
            fail.push(counter(&l, srv.connect_failures.load(Relaxed)));
            off.push(counter(&l, srv.offline_transitions.load(Relaxed)));
            for (result, v) in [("success", &srv.health_ok), ("failure", &srv.health_failed)] {
                hc.push(counter(
                    &[("route", route), ("server", server), ("result", result)],
                    v.load(Relaxed),
                ));
            }
        }
        // Answers simian gave itself, without a server.
        let none = rt.servers.len();
        for (k, class) in CLASSES.iter().enumerate() {
            let n = s.sum(|w| w.requests.get(none).map_or(0, |r| r[k].load(Relaxed)));
            if n > 0 {
                req.push(counter(
                    &[("route", route), ("server", "-"), ("code", class)],
                    n,
                ));
            }
        }
        let mut h = Histogram::default();
        let mut cum = 0;
        let mut buckets = Vec::new();
        for (b, ub) in BUCKETS.iter().enumerate() {
            cum += s.sum(|w| w.buckets[b].load(Relaxed));
            let mut bk = Bucket::default();
            bk.set_upper_bound(*ub);
            bk.set_cumulative_count(cum);
            buckets.push(bk);
        }
        cum += s.sum(|w| w.buckets[BUCKETS.len()].load(Relaxed));
        h.set_bucket(buckets);
        h.set_sample_count(cum);
        h.set_sample_sum(s.sum(|w| w.duration_sum_us.load(Relaxed)) as f64 / 1e6);
        let mut m = Metric::from_label(labels(&[("route", route)]));
        m.set_histogram(h);
        dur.push(m);
        rx.push(counter(
            &[("route", route)],
            s.sum(|w| w.received.load(Relaxed)),
        ));
        tx.push(counter(
            &[("route", route)],
            s.sum(|w| w.sent.load(Relaxed)),
        ));
        for (p, pattern) in e.patterns.iter().enumerate() {
            let n = s.sum(|w| w.matches.get(p).map_or(0, |m| m.load(Relaxed)));
            mat.push(counter(&[("route", route), ("pattern", pattern)], n));
        }
    }
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let p = &PROCESS;
    vec![
        family(
            REQUESTS,
            "Requests answered, by route, server and status class.",
            COUNTER,
            req,
        ),
        family(
            DURATION,
            "Time from the request head to the end of the response.",
            HISTOGRAM,
            dur,
        ),
        family(RECEIVED, "Bytes received from clients.", COUNTER, rx),
        family(SENT, "Bytes sent to clients.", COUNTER, tx),
        family(
            MATCHES,
            "Requests routed by each Match pattern.",
            COUNTER,
            mat,
        ),
        family(
            CLIENT_CONNECTIONS,
            "Client connections open now.",
            GAUGE,
            vec![gauge(&[], p.client_connections.load(Relaxed) as f64)],
        ),
        family(
            PARKED_CONNECTIONS,
            "Idle keep-alive client connections parked (no task, no buffer).",
            GAUGE,
            vec![gauge(&[], p.parked_connections.load(Relaxed) as f64)],
        ),
        family(
            LOCAL_ERRORS,
            "Backend connects that failed for a reason of this host (not counted against servers), by cause.",
            COUNTER,
            super::counters::LOCAL_ERROR_CAUSES
                .iter()
                .zip(&p.local_errors)
                .map(|(cause, n)| counter(&[("cause", cause)], n.load(Relaxed)))
                .collect(),
        ),
        family(
            RATE_LIMITED,
            "Requests refused by the route's RateLimit (429).",
            COUNTER,
            limited,
        ),
        family(
            STICKY_ENTRIES,
            "Cookie-to-server assignments held in the route's sticky table.",
            GAUGE,
            sticky,
        ),
        family(
            LOG_LINES_DROPPED,
            "Log lines dropped because the log file was slower than the traffic, by log.",
            COUNTER,
            vec![
                counter(&[("log", "access")], crate::accesslog::dropped()),
                counter(&[("log", "error")], crate::log::dropped()),
            ],
        ),
        family(
            SERVER_UP,
            "1 when the server is available, 0 when offline.",
            GAUGE,
            up,
        ),
        family(
            SERVER_ADMIN_STATE,
            "What the operator said of the server (simian ctl): 0 ready, 1 drain, 2 maint.",
            GAUGE,
            admin,
        ),
        family(
            SERVER_WEIGHT,
            "The server's weight in force (the file's, or simian ctl weight's).",
            GAUGE,
            weight,
        ),
        family(
            SERVER_ACTIVE,
            "Requests in flight to the server.",
            GAUGE,
            act,
        ),
        family(
            SERVER_CONNECT_FAILURES,
            "Failed connects to the server.",
            COUNTER,
            fail,
        ),
        family(
            SERVER_OFFLINE_TRANSITIONS,
            "Times the server was taken offline.",
            COUNTER,
            off,
        ),
        family(
            HEALTH_CHECKS,
            "Active health checks, by result.",
            COUNTER,
            hc,
        ),
        family(
            RELOADS,
            "Configuration reloads, by result.",
            COUNTER,
            vec![
                counter(&[("result", "success")], p.reloads_ok.load(Relaxed)),
                counter(&[("result", "failure")], p.reloads_failed.load(Relaxed)),
            ],
        ),
        family(
            LAST_RELOAD,
            "Unix time of the last successful configuration load.",
            GAUGE,
            vec![gauge(&[], p.last_reload_ok.load(Relaxed) as f64)],
        ),
        family(
            TLS_HANDSHAKES,
            "TLS handshakes, by listener and result (success = full, resumed, failure).",
            COUNTER,
            live.tls
                .iter()
                .flat_map(|t| {
                    let h = &t.handshakes;
                    [
                        ("success", h.success.load(Relaxed)),
                        ("resumed", h.resumed.load(Relaxed)),
                        ("failure", h.failure.load(Relaxed)),
                    ]
                    .map(|(r, v)| counter(&[("listener", &t.text), ("result", r)], v))
                })
                .collect(),
        ),
        family(
            TLS_CERT_EXPIRY,
            "notAfter of each TLS certificate, by its first DNS name.",
            GAUGE,
            live.config
                .global
                .tls
                .iter()
                .flat_map(|t| t.certificates.iter())
                .map(|c| gauge(&[("name", c.label())], c.not_after as f64))
                .collect(),
        ),
        family(
            BUILD_INFO,
            "simian's version.",
            GAUGE,
            vec![gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        ),
    ]
}

pub fn prometheus_text(live: &Live) -> Vec<u8> {
    // The encoder refuses a family without samples (a config with no Match has no
    // simian_match_requests_total): leave those out rather than lose the rest.
    let fams: Vec<MetricFamily> = families(live)
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&fams, &mut out) {
        crate::error!("statistics: cannot encode metrics: {e}");
    }
    out
}

pub fn json(live: &Live) -> Vec<u8> {
    let now = now_ms();
    let c = &live.config;
    let routes: Vec<serde_json::Value> = c
        .entries
        .iter()
        .zip(&live.entries)
        .map(|(e, rt)| {
            let s = &rt.stats;
            let servers: Vec<serde_json::Value> = rt
                .servers
                .iter()
                .enumerate()
                .map(|(i, srv)| {
                    let by_class: serde_json::Map<String, serde_json::Value> = CLASSES
                        .iter()
                        .enumerate()
                        .map(|(k, cl)| {
                            (
                                cl.to_string(),
                                s.sum(|w| w.requests.get(i).map_or(0, |r| r[k].load(Relaxed)))
                                    .into(),
                            )
                        })
                        .collect();
                    let until = srv.offline_until.load(Relaxed);
                    serde_json::json!({
                        "server": srv.spec.text,
                        "address": srv.spec.addr.to_string(),
                        "weight": srv.weight(),
                        "admin_state": srv.admin_state().name(),
                        "up": !srv.is_offline(now),
                        "health_down": srv.health_down.load(Relaxed),
                        "offline_for_ms": until.saturating_sub(now),
                        "active_requests": srv.active.load(Relaxed),
                        "consecutive_failures": srv.failures.load(Relaxed),
                        "connect_failures": srv.connect_failures.load(Relaxed),
                        "offline_transitions": srv.offline_transitions.load(Relaxed),
                        "requests": by_class,
                    })
                })
                .collect();
            serde_json::json!({
                "route": e.name,
                "balancer": e.balancer.name(),
                "patterns": e.patterns,
                "hosts": e.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "rate_limited": rt.rate.as_ref().map_or(0, |t| t.limited.load(Relaxed)),
                "max_connections": e.max_connections,
                "received_bytes": s.sum(|w| w.received.load(Relaxed)),
                "sent_bytes": s.sum(|w| w.sent.load(Relaxed)),
                "servers": servers,
            })
        })
        .collect();
    let p = &PROCESS;
    let v = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "time": unix_now(),
        "client_connections": p.client_connections.load(Relaxed),
        "parked_connections": p.parked_connections.load(Relaxed),
        "reloads": { "success": p.reloads_ok.load(Relaxed), "failure": p.reloads_failed.load(Relaxed) },
        "last_reload_success": p.last_reload_ok.load(Relaxed),
        "routes": routes,
    });
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Monkey's page (name, connections, offline count, last offline check per
/// server), grown into a table per route. Everything printed is escaped.
pub fn html(live: &Live) -> Vec<u8> {
    use std::fmt::Write;
    let now = now_ms();
    let p = &PROCESS;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=utf-8><title>simian</title><meta http-equiv=refresh content=5>\
         <style>body{{font:14px sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}\
         .up{{color:#080}}.down{{color:#c00;font-weight:bold}}td:first-child{{text-align:left}}</style></head><body>\
         <h1>simian {}</h1><p>client connections: {} &middot; reloads: {} ok, {} failed &middot; last reload: {}</p>",
        esc(env!("CARGO_PKG_VERSION")),
        p.client_connections.load(Relaxed),
        p.reloads_ok.load(Relaxed),
        p.reloads_failed.load(Relaxed),
        p.last_reload_ok.load(Relaxed)
    );
    for (e, rt) in live.config.entries.iter().zip(&live.entries) {
        let _ = write!(
            o,
            "<h2>{}</h2><p>{} &middot; {}match: <code>{}</code></p><table><tr><th>server</th><th>state</th>\
             <th>admin</th><th>weight</th><th>active</th><th>requests</th><th>5xx</th><th>connect failures</th><th>offline count</th>\
             <th>offline for</th></tr>",
            esc(&e.name),
            esc(e.balancer.name()),
            if e.hosts.is_empty() {
                String::new()
            } else {
                let h: Vec<String> = e.hosts.iter().map(|h| h.to_string()).collect();
                format!("hosts: <code>{}</code> &middot; ", esc(&h.join(" ")))
            },
            esc(&e.patterns.join(" | "))
        );
        for (i, srv) in rt.servers.iter().enumerate() {
            let reqs: u64 = (0..5)
                .map(|k| {
                    rt.stats
                        .sum(|w| w.requests.get(i).map_or(0, |r| r[k].load(Relaxed)))
                })
                .sum();
            let errs = rt
                .stats
                .sum(|w| w.requests.get(i).map_or(0, |r| r[4].load(Relaxed)));
            let offline = srv.is_offline(now);
            let until = srv.offline_until.load(Relaxed);
            let _ = write!(
                o,
                "<tr><td>{}</td><td class={}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&srv.spec.text),
                if offline { "down" } else { "up" },
                if offline { "offline" } else { "up" },
                srv.admin_state().name(),
                srv.weight(),
                srv.active.load(Relaxed),
                reqs,
                errs,
                srv.connect_failures.load(Relaxed),
                srv.offline_transitions.load(Relaxed),
                if until > now { format!("{} ms", until - now) } else { "-".into() }
            );
        }
        o.push_str("</table>");
    }
    o.push_str("</body></html>\n");
    o.into_bytes()
}
