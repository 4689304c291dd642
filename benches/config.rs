//! Configuration benchmarks (issue 2, "Measure"): `cargo bench --bench config`.
//!
//! (a) parse + validate a generated config of 10,000 entries and 50,000 servers
//!     (target: under 200 ms);
//! (b) route 1,000,000 request paths against a 1,000-entry config (target: under
//!     1 µs per match), with the cost of `normalize_path` measured on its own;
//! (c) route by host and path: 1,000 entries over 500 hosts (SPEC section 9; issue
//!     14's target: under 1 µs per match, host normalisation included).
//!
//! Plain `std::time::Instant`, no harness; the result is a small markdown table.

use std::fmt::Write;
use std::hint::black_box;
use std::time::{Duration, Instant};

use simian::config::Config;
use simian::http::normalize_path;

/// A config with `entries` entries of `servers_per_entry` servers each, every entry
/// with its own `Match ^/svc{i}/`. Addresses are literal IPs: no DNS in a benchmark.
fn generate(entries: usize, servers_per_entry: usize) -> String {
    let mut s = String::with_capacity(entries * (100 + servers_per_entry * 20));
    s.push_str("[PROXY_DEFAULTS]\nListen 127.0.0.1:8080\nLoadBalancer RoundRobin\n");
    s.push_str("AttemptsCount 3\nOfflineTimeOut 30s\n\n");
    let mut port = 10_000u32;
    for i in 0..entries {
        let _ = writeln!(s, "[PROXY_ENTRY]\nName svc{i}\nMatch ^/svc{i}/");
        s.push_str("ServerList");
        for _ in 0..servers_per_entry {
            // Distinct servers across the whole file (ports cycle, hosts change).
            let host = 1 + (port / 50_000);
            let _ = write!(s, " 127.0.0.{host}:{}", 1024 + port % 50_000);
            port += 1;
        }
        s.push_str("\n\n");
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Deterministic xorshift, so every run routes the same paths.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Request paths as they arrive: about 3/4 match an entry (some early, some late in
/// the file), 1/4 match nothing (404); some need normalising (`.`, `..`, `%xx`).
fn request_paths(n: usize, entries: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            let r = rng.next();
            let svc = (r >> 8) as usize % entries;
            let p = match r % 8 {
                0 => format!("/svc{svc}/index.html"),
                1 => format!("/svc{svc}/api/v1/users/{}?page=2", r >> 40),
                2 => format!("/SVC{svc}/static/app.{}.js", r % 1000),
                3 => format!("/a/../svc{svc}/./x/%61b"),
                4 => format!("/svc{svc}/"),
                5 => format!("/svc{svc}/deep/path/with/many/segments/file.css"),
                6 => format!("/nothing/{svc}/here"),
                _ => format!("/svc{}x/not-an-entry", svc),
            };
            p.into_bytes()
        })
        .collect()
}

/// The part the proxy routes on: the target without its query.
fn path_part(target: &[u8]) -> &[u8] {
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    &target[..end]
}

fn main() {
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    let ok = |good: bool| if good { "ok" } else { "MISSED" };

    // ---- (a) load 10,000 entries / 50,000 servers --------------------------------
    let text = generate(10_000, 5);
    let mut times = Vec::new();
    let mut config = None;
    for _ in 0..5 {
        let t = Instant::now();
        let c = Config::from_text(black_box(&text)).expect("generated config is valid");
        times.push(t.elapsed());
        config = Some(c);
    }
    let config = config.expect("ran");
    assert_eq!(config.entries.len(), 10_000);
    assert_eq!(
        config
            .entries
            .iter()
            .map(|e| e.servers.len())
            .sum::<usize>(),
        50_000
    );
    let load = median(times);
    // The first stage alone: the pest grammar applied line by line.
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let raw = simian::config::raw::parse("bench.conf", black_box(text.as_bytes()));
        times.push(t.elapsed());
        assert!(raw.errors.is_empty());
    }
    let grammar = median(times);
    rows.push((
        format!(
            "parse + validate 10,000 entries / 50,000 servers ({} KiB)",
            text.len() / 1024
        ),
        format!("{:.1} ms (median of 5)", load.as_secs_f64() * 1e3),
        "< 200 ms".into(),
        ok(load < Duration::from_millis(200)),
    ));

    rows.push((
        "  of which: grammar stage alone (`config::raw::parse`)".into(),
        format!("{:.1} ms", grammar.as_secs_f64() * 1e3),
        "-".into(),
        "",
    ));

    // Routing on the 10,000-entry config too (not a target, for scale).
    let paths10k = request_paths(100_000, 10_000);
    let norm10k: Vec<Vec<u8>> = paths10k
        .iter()
        .map(|p| {
            let mut o = Vec::new();
            normalize_path(path_part(p), &mut o);
            o
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    for p in &norm10k {
        hits += usize::from(config.router.route(black_box(p)).is_some());
    }
    let per10k = t.elapsed().as_nanos() as f64 / norm10k.len() as f64;
    black_box(hits);

    // ---- (b) route 1,000,000 paths against 1,000 entries -------------------------
    let config = Config::from_text(&generate(1_000, 5)).expect("valid");
    let paths = request_paths(1_000_000, 1_000);

    // normalize_path alone (buffer reused, as the proxy does).
    let mut buf = Vec::with_capacity(256);
    let t = Instant::now();
    let mut total = 0usize;
    for p in &paths {
        normalize_path(path_part(black_box(p)), &mut buf);
        total += buf.len();
    }
    let norm_ns = t.elapsed().as_nanos() as f64 / paths.len() as f64;
    black_box(total);

    // Route on pre-normalised paths: the cost of the match alone.
    let normalised: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| {
            let mut o = Vec::new();
            normalize_path(path_part(p), &mut o);
            o
        })
        .collect();
    // Warm the lazy DFA the way a running proxy is warm.
    for p in normalised.iter().take(10_000) {
        black_box(config.router.route(p));
    }
    let mut matched = 0usize;
    let t = Instant::now();
    for p in &normalised {
        matched += usize::from(config.router.route(black_box(p)).is_some());
    }
    let route_ns = t.elapsed().as_nanos() as f64 / normalised.len() as f64;
    black_box(matched);

    // Both, as the proxy does per request.
    let t = Instant::now();
    let mut both = 0usize;
    for p in &paths {
        normalize_path(path_part(black_box(p)), &mut buf);
        both += usize::from(config.router.route(&buf).is_some());
    }
    let both_ns = t.elapsed().as_nanos() as f64 / paths.len() as f64;
    assert_eq!(both, matched);

    rows.push((
        format!(
            "route match, 1,000 entries, 1M paths ({:.0}% match)",
            matched as f64 * 100.0 / paths.len() as f64
        ),
        format!("{route_ns:.0} ns/match"),
        "< 1 µs".into(),
        ok(route_ns < 1000.0),
    ));
    rows.push((
        "normalize_path alone, same 1M paths".into(),
        format!("{norm_ns:.0} ns/path"),
        "-".into(),
        "",
    ));
    rows.push((
        "normalize_path + route match, same 1M paths".into(),
        format!("{both_ns:.0} ns/request"),
        "-".into(),
        "",
    ));
    rows.push((
        "route match, 10,000 entries, 100k paths".into(),
        format!("{per10k:.0} ns/match"),
        "-".into(),
        "",
    ));

    // ---- (c) 1,000 entries over 500 hosts ---------------------------------------
    let (hosted, hosts_ns, load_ms) = route_by_host();
    rows.push((
        format!("route by host + path, 1,000 entries over 500 hosts, 1M requests ({hosted:.0}% match); load {load_ms:.0} ms"),
        format!("{hosts_ns:.0} ns/match"),
        "< 1 µs".into(),
        ok(hosts_ns < 1000.0),
    ));

    println!();
    println!("| benchmark | result | target | |");
    println!("|---|---|---|---|");
    for (what, result, target, status) in rows {
        println!("| {what} | {result} | {target} | {status} |");
    }
}

/// 500 hosts with two entries each (`/api` and the rest), plus two wildcard
/// entries and a host-less catch-all; requests spread over known hosts, hosts
/// only a wildcard covers, and unknown hosts. Returns (% matched, ns per match
/// including the host's normalisation, load time in ms).
fn route_by_host() -> (f64, f64, f64) {
    let mut s = String::from("[PROXY_DEFAULTS]\nListen 127.0.0.1:8080\n\n");
    for h in 0..500 {
        let _ = writeln!(
            s,
            "[PROXY_ENTRY]\nName api{h}\nHost h{h}.example.com\nMatch ^/api/\nServerList 127.0.0.1:9\n"
        );
        let _ = writeln!(
            s,
            "[PROXY_ENTRY]\nName site{h}\nHost h{h}.example.com www.h{h}.example.com\nServerList 127.0.0.1:9\n"
        );
    }
    s.push_str("[PROXY_ENTRY]\nName wild\nHost *.example.net\nServerList 127.0.0.1:9\n\n");
    s.push_str(
        "[PROXY_ENTRY]\nName wild2\nHost *.b.example.org\nMatch ^/x\nServerList 127.0.0.1:9\n\n",
    );
    s.push_str("[PROXY_ENTRY]\nName rest\nMatch ^/static/\nServerList 127.0.0.1:9\n");
    let t = Instant::now();
    let config = Config::from_text(&s).expect("valid");
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let reqs: Vec<(Vec<u8>, Vec<u8>)> = (0..1_000_000)
        .map(|_| {
            let r = rng.next();
            let host = match r % 10 {
                0 => format!("x{}.example.net", r % 77),
                1 => format!("Q.B.example.org:{}", 8000 + r % 100),
                2 => format!("unknown{}.test", r % 1000),
                _ => format!("H{}.Example.com:443", (r >> 8) % 500),
            };
            let path = match (r >> 20) % 3 {
                0 => format!("/api/v1/items/{}", r % 1000),
                1 => format!("/static/app.{}.js", r % 100),
                _ => "/index.html".to_string(),
            };
            (host.into_bytes(), path.into_bytes())
        })
        .collect();
    let mut scratch = [0u8; 256];
    for (h, p) in reqs.iter().take(10_000) {
        let host = simian::route::hosts::request_host(p, Some(h), &mut scratch);
        black_box(config.route(host, p));
    }
    let mut matched = 0usize;
    let t = Instant::now();
    for (h, p) in &reqs {
        let host = simian::route::hosts::request_host(black_box(p), Some(h), &mut scratch);
        matched += usize::from(config.route(host, p).is_some());
    }
    let ns = t.elapsed().as_nanos() as f64 / reqs.len() as f64;
    (matched as f64 * 100.0 / reqs.len() as f64, ns, load_ms)
}
