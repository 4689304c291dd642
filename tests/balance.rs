//! Load balancing and availability, end to end (SPEC section 3, issue 4): the real
//! `simian` binary in front of real backends on 127.0.0.1.
//!
//! Covered here: passive ejection (`AttemptsCount`, `OfflineTimeOut`, one probe),
//! failover when a server dies under load, active health checks (HTTP and tcp),
//! `MaxConnections` under 200 concurrent clients, sticky cookies (`table` and
//! `hash`), every balancer over the binary, and `simian explain` against a running
//! simian. The strategies' unit tests live in `src/balance/*.rs`.
//!
//! Servers are told apart by their answers: every backend answers its own name.
//! Waits poll (the statistics, the backends, a load generator's progress) with a
//! deadline; nothing sleeps for a fixed time to let something happen.

mod util;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use util::{Backend, Client, Conn, DeadPort, Options, Proxy, Reply, Response, Wire};

const STATS: &str = "/simian-status";

// ---------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------

/// One entry `web` matching everything, in front of `servers`, with the statistics
/// URL on; `entry` lines go into the entry.
fn config(servers: &str, entry: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\nStatisticsURL {STATS}\n\n\
         [PROXY_ENTRY]\nName web\nMatch ^/\nServerList {servers}\n{entry}\n"
    )
}

/// `n` backends answering `s0`, `s1`...
fn named(n: usize) -> Vec<Backend> {
    (0..n).map(|i| name_backend(format!("s{i}"))).collect()
}

fn name_backend(name: String) -> Backend {
    Backend::start(move |_| Reply::ok(&name))
}

fn addrs(bs: &[Backend]) -> String {
    bs.iter().map(Backend::addr).collect::<Vec<_>>().join(" ")
}

fn sock(p: &Proxy) -> SocketAddr {
    p.addr().parse().unwrap()
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// `?format=json` of the statistics URL.
fn stats_json(p: &Proxy) -> serde_json::Value {
    util::metrics::after_cache_window(&p.addr());
    let r = p.client().get(&format!("{STATS}?format=json"));
    assert_eq!(r.status, 200, "statistics: {r:?}");
    serde_json::from_slice(&r.body.bytes).expect("statistics JSON")
}

/// The JSON object of one server (by its address as written) of entry `web`.
fn server_stats(p: &Proxy, server: &str) -> serde_json::Value {
    let j = stats_json(p);
    j["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "web"))
        .and_then(|r| r["servers"].as_array())
        .and_then(|l| l.iter().find(|s| s["server"] == server))
        .unwrap_or_else(|| panic!("no server {server} in the statistics: {j}"))
        .clone()
}

/// The Prometheus text of the statistics URL.
fn metrics(p: &Proxy) -> String {
    util::metrics::after_cache_window(&p.addr());
    let r = p.client().get(STATS);
    assert_eq!(r.status, 200, "statistics: {r:?}");
    r.text()
}

/// The value of the sample of `name` whose labels include all of `labels` (0 when
/// there is none).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            return value.trim().parse().unwrap_or_else(|_| panic!("{line}"));
        }
    }
    0.0
}

/// `(up, connect failures, health successes, health failures)` of a server, from
/// one scrape.
fn server_metrics(p: &Proxy, server: &str) -> (bool, u64, u64, u64) {
    let t = metrics(p);
    let l = [("route", "web"), ("server", server)];
    let hc = |result| {
        metric(
            &t,
            "simian_health_checks_total",
            &[("route", "web"), ("server", server), ("result", result)],
        ) as u64
    };
    (
        metric(&t, "simian_server_up", &l) == 1.0,
        metric(&t, "simian_server_connect_failures_total", &l) as u64,
        hc("success"),
        hc("failure"),
    )
}

/// Poll `f` every 10 ms until it returns `Some`, or panic with `what` after `within`.
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

fn connect(addr: SocketAddr) -> io::Result<Client> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    Ok(Client {
        wire: Wire::new(Conn::Tcp(s)),
    })
}

/// A client whose connection comes from `ip` (any 127.0.0.0/8 address is local).
fn connect_from(ip: Ipv4Addr, addr: SocketAddr) -> Client {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip.into(), 0).into())
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect from {ip}: {e}"));
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    Client {
        wire: Wire::new(Conn::Tcp(s)),
    }
}

fn local_port(c: &Client) -> u16 {
    match &c.wire.conn {
        Conn::Tcp(s) => s.local_addr().unwrap().port(),
        Conn::Unix(_) => 0,
    }
}

fn try_get(c: &mut Client, path: &str, extra: &str) -> io::Result<Response> {
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes())?;
    c.try_read_response(false)
}

/// `n` GETs on one keep-alive connection, each answered 200; the servers that
/// answered, in order.
fn sequence(p: &Proxy, n: usize) -> Vec<String> {
    let mut c = p.client();
    (0..n)
        .map(|i| {
            let r = c.get(&format!("/seq/{i}"));
            assert_eq!(r.status, 200, "request {i}: {r:?}");
            r.text()
        })
        .collect()
}

fn tally<'a>(names: impl IntoIterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

/// What one request of a [`Load`] got.
#[derive(Clone, Debug)]
struct Outcome {
    start: Instant,
    /// 0: no response (connect, write or read failed).
    status: u16,
    body: String,
    error: String,
}

/// Client threads doing keep-alive GETs in a loop until stopped; a connection that
/// fails or is closed is replaced.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, path: &'static str, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut client: Option<Client> = None;
                    while !stop.load(SeqCst) {
                        let start = Instant::now();
                        let c = match client.take() {
                            Some(c) => Ok(c),
                            None => connect(addr),
                        };
                        let r = c.and_then(|mut c| try_get(&mut c, path, "").map(|r| (c, r)));
                        match r {
                            Ok((c, r)) => {
                                if r.keep_alive() {
                                    client = Some(c);
                                }
                                out.push(Outcome {
                                    start,
                                    status: r.status,
                                    body: r.text(),
                                    error: String::new(),
                                });
                            }
                            Err(e) => out.push(Outcome {
                                start,
                                status: 0,
                                body: String::new(),
                                error: e.to_string(),
                            }),
                        }
                        done.fetch_add(1, SeqCst);
                        if !pause.is_zero() {
                            thread::sleep(pause);
                        }
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.done.load(SeqCst)
    }

    /// Wait until `n` more requests completed (panics after 30 s).
    fn wait_more(&self, n: usize) {
        let target = self.done() + n;
        wait_for(Duration::from_secs(30), "load progress", || {
            (self.done() >= target).then_some(())
        });
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// A backend that can be killed
// ---------------------------------------------------------------------------

/// A minimal HTTP/1.1 backend answering its name to every request (no request
/// bodies), which [`Killable::kill`] stops dead: the listener is closed (connects
/// are refused from then on) and every open connection is shut down, including
/// idle keep-alive ones and those with a request in progress.
struct Killable {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    requests: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Killable {
    fn start(name: &str) -> Killable {
        Self::start_on("127.0.0.1:0", name)
    }

    fn start_on(addr: &str, name: &str) -> Killable {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let name = name.to_string();
        let acceptor = {
            let (stop, conns, requests) = (stop.clone(), conns.clone(), requests.clone());
            thread::spawn(move || {
                while !stop.load(SeqCst) {
                    match l.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let _ = s.set_nodelay(true);
                            conns.lock().unwrap().push(s.try_clone().unwrap());
                            let (stop, requests, name) =
                                (stop.clone(), requests.clone(), name.clone());
                            thread::spawn(move || {
                                let mut w = Wire::new(Conn::Tcp(s));
                                while let Ok(Some(_)) = w.read_head() {
                                    if stop.load(SeqCst) {
                                        return;
                                    }
                                    requests.fetch_add(1, SeqCst);
                                    let reply = format!(
                                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                                        name.len()
                                    );
                                    if w.write_all(reply.as_bytes()).is_err() {
                                        return;
                                    }
                                }
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
                // The listener is dropped here: connects are refused from now on.
            })
        };
        Killable {
            addr,
            stop,
            conns,
            requests,
            acceptor: Some(acceptor),
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }

    /// Close the listener and every connection; returns once connects are refused.
    fn kill(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.acceptor.take() {
            t.join().unwrap();
        }
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// 1. Passive availability: offline after AttemptsCount, skipped, one probe
// ---------------------------------------------------------------------------

/// A dead server (a port that refuses connections) behind RoundRobin with one live
/// server, `AttemptsCount 2`, `OfflineTimeOut 2s`: every request succeeds; after
/// two refused connects the server is offline and gets no connect attempt for 2 s
/// (its connect-failure counter stays at 2 under concurrent load); then exactly one
/// request probes it (the counter goes to 3, not further, and the server is offline
/// again). A listener opened on the port during that second window gets its first
/// connect only once the window is over, and the server is then back in rotation.
#[test]
fn dead_server_is_skipped_while_offline_and_probed_once() {
    let live = Backend::fixed("live");
    let dead = DeadPort::new();
    let dead_addr = dead.addr();
    let p = Proxy::start(&config(
        &format!("{} {dead_addr}", live.addr()),
        "LoadBalancer RoundRobin\nAttemptsCount 2\nOfflineTimeOut 2s\nConnectTimeout 1s",
    ));

    // Sequential requests until the dead server has been tried twice.
    let mut c = p.client();
    let mut marked = None;
    for i in 0..8 {
        let before = Instant::now();
        let r = c.get(&format!("/warm/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "live"), "{r:?}");
        let s = server_stats(&p, &dead_addr);
        let failures = s["connect_failures"].as_u64().unwrap();
        if failures == 1 {
            assert_eq!(s["up"], true, "offline after one failure: {s}");
        }
        if failures >= 2 {
            assert_eq!(failures, 2, "{s}");
            assert_eq!(s["up"], false, "not offline after two failures: {s}");
            assert_eq!(s["offline_transitions"], 1, "{s}");
            marked = Some((before, Instant::now()));
            break;
        }
    }
    let (mark_lo, mark_hi) = marked.expect("the dead server was never tried");
    drop(c);

    // Concurrent load: while offline, no connect to the dead server at all.
    let load = Load::start(sock(&p), 4, "/load", Duration::from_millis(2));
    // When a scrape last showed 2 failures (taken before the scrape).
    let mut last_two = Instant::now();
    let probed_at = wait_for(Duration::from_secs(6), "the probe", || {
        let asked = Instant::now();
        let (up, failures, _, _) = server_metrics(&p, &dead_addr);
        match failures {
            2 => {
                assert!(!up || asked >= mark_lo + Duration::from_millis(1990));
                last_two = asked;
                None
            }
            3 => Some(Instant::now()),
            n => panic!("{n} connect failures: the offline server was tried more than once"),
        }
    });
    let window = probed_at.duration_since(mark_lo);
    assert!(
        window >= Duration::from_millis(1990),
        "probed {window:?} after going offline (OfflineTimeOut 2s)"
    );
    assert!(
        probed_at <= mark_hi + Duration::from_secs(3),
        "probed only {window:?} after going offline"
    );
    // The probe failed: offline again, and no second probe during the new window.
    let s = server_stats(&p, &dead_addr);
    assert_eq!(s["up"], false, "{s}");
    assert_eq!(s["offline_transitions"], 1, "{s}");
    let quiet_until = probed_at + Duration::from_millis(800);
    while Instant::now() < quiet_until {
        let (up, failures, _, _) = server_metrics(&p, &dead_addr);
        assert_eq!(failures, 3, "a second probe during the offline window");
        assert!(!up);
        thread::sleep(Duration::from_millis(20));
    }

    // Now open a listener on the port: its first connect comes after the window.
    drop(dead);
    let revived = Backend::start_on(&dead_addr, |_| Reply::ok("revived"));
    let accepted_at = wait_for(
        Duration::from_secs(4),
        "a connect to the revived server",
        || (revived.connections() > 0).then(Instant::now),
    );
    let window = accepted_at.duration_since(last_two);
    assert!(
        window >= Duration::from_millis(1990),
        "connected {window:?} after the failed probe (OfflineTimeOut 2s)"
    );
    // Back in rotation: it takes requests and its counters say so.
    revived.wait_requests(20, Duration::from_secs(10));
    let s = server_stats(&p, &dead_addr);
    assert_eq!(s["up"], true, "{s}");
    assert_eq!(s["connect_failures"], 3, "{s}");
    assert_eq!(s["consecutive_failures"], 0, "{s}");

    let outcomes = load.finish();
    assert!(outcomes.len() > 100, "only {} requests", outcomes.len());
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        bad.is_empty(),
        "{} failed requests, e.g. {:?}",
        bad.len(),
        bad.iter()
            .take(5)
            .map(|o| (o.status, &o.error))
            .collect::<Vec<_>>()
    );
    assert!(outcomes
        .iter()
        .all(|o| o.body == "live" || o.body == "revived"));
}

/// Every server offline: `503` with `Retry-After` (none available), while a
/// request that tried the last server and failed gets `502`.
#[test]
fn all_servers_offline_gives_503_with_retry_after() {
    let dead = [DeadPort::new(), DeadPort::new()];
    let p = Proxy::start(&config(
        &format!("{} {}", dead[0].addr(), dead[1].addr()),
        "AttemptsCount 1\nOfflineTimeOut 60s",
    ));
    let mut c = p.client();
    let r = c.get("/first");
    assert_eq!(r.status, 502, "both servers tried and refused: {r:?}");
    for s in &dead {
        let st = server_stats(&p, &s.addr());
        assert_eq!(st["up"], false, "{st}");
    }
    let mut c = p.client();
    let r = c.get("/second");
    assert_eq!(r.status, 503, "{r:?}");
    let retry = r.get("retry-after").expect("503 without Retry-After");
    assert!(retry.parse::<u64>().is_ok(), "Retry-After: {retry}");
}

// ---------------------------------------------------------------------------
// 2. A server killed in the middle of a load run
// ---------------------------------------------------------------------------

/// Four client threads doing keep-alive GETs over three servers; one server is
/// killed (listener closed, every connection shut down) in the middle. Failures
/// visible to clients are at most the requests that were in flight on it (one per
/// client thread), none once the kill is done; the survivors take the load and the
/// dead server ends up offline.
#[test]
fn server_killed_under_load_causes_no_client_failures() {
    let mut servers = [
        Killable::start("k0"),
        Killable::start("k1"),
        Killable::start("k2"),
    ];
    let list = servers
        .iter()
        .map(Killable::addr)
        .collect::<Vec<_>>()
        .join(" ");
    let p = Proxy::start(&config(&list, "LoadBalancer RoundRobin"));
    const THREADS: usize = 4;
    let load = Load::start(sock(&p), THREADS, "/work", Duration::ZERO);
    load.wait_more(600);
    assert!(servers.iter().all(|s| s.requests() > 50));

    servers[1].kill();
    let killed_at = Instant::now();
    let k1_after_kill = servers[1].requests();
    let (k0, k2) = (servers[0].requests(), servers[2].requests());
    load.wait_more(1500);
    let outcomes = load.finish();

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.len() <= THREADS,
        "{} client-visible failures: {:?}",
        failed.len(),
        failed
            .iter()
            .map(|o| (o.status, &o.error))
            .collect::<Vec<_>>()
    );
    let late: Vec<&&Outcome> = failed.iter().filter(|o| o.start >= killed_at).collect();
    assert!(late.is_empty(), "failures after the kill: {late:?}");
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.start >= killed_at).collect();
    assert!(
        after.iter().all(|o| o.body != "k1"),
        "k1 answered after it died"
    );
    assert_eq!(servers[1].requests(), k1_after_kill);
    assert!(servers[0].requests() > k0 + 300 && servers[2].requests() > k2 + 300);
    let s = server_stats(&p, &servers[1].addr());
    assert_eq!(s["up"], false, "the killed server is still up: {s}");
}

// ---------------------------------------------------------------------------
// 3. Active health checks
// ---------------------------------------------------------------------------

/// A backend answering `status` on `/healthz` and its name elsewhere.
fn health_backend(name: &'static str, status: Arc<AtomicU16>) -> Backend {
    Backend::start(move |r| {
        if r.target == "/healthz" {
            Reply::status(status.load(SeqCst), &[], "health\n")
        } else {
            Reply::ok(name)
        }
    })
}

fn non_health_requests(b: &Backend) -> usize {
    b.targets().iter().filter(|t| *t != "/healthz").count()
}

/// `HealthCheck /healthz`, every 200 ms, 2 failures take a server down and 2
/// successes bring it back: a server answering 500 is taken down (never before 2
/// failed checks), requests avoid it, and when it answers 200 again it comes back
/// (never before 2 successful checks). `simian_health_checks_total` counts both.
#[test]
fn health_checks_take_a_server_down_and_bring_it_back() {
    let a_status = Arc::new(AtomicU16::new(200));
    let a = health_backend("a", a_status.clone());
    let b = health_backend("b", Arc::new(AtomicU16::new(200)));
    let p = Proxy::start(&config(
        &format!("{} {}", a.addr(), b.addr()),
        "LoadBalancer RoundRobin\nHealthCheck /healthz\nHealthCheckInterval 200ms\n\
         HealthyThreshold 2\nUnhealthyThreshold 2",
    ));
    let a_addr = a.addr();
    wait_for(Duration::from_secs(5), "two successful checks of a", || {
        let (up, _, ok, failed) = server_metrics(&p, &a_addr);
        assert!(up);
        assert_eq!(failed, 0);
        (ok >= 2).then_some(())
    });
    let hc = a
        .requests()
        .into_iter()
        .find(|r| r.target == "/healthz")
        .unwrap();
    assert_eq!(hc.method, "GET");
    let all = tally(&sequence(&p, 10));
    assert_eq!((all["a"], all["b"]), (5, 5));

    // Unhealthy.
    a_status.store(500, SeqCst);
    let switched = Instant::now();
    wait_for(Duration::from_secs(5), "a taken down", || {
        let (up, _, _, failed) = server_metrics(&p, &a_addr);
        if !up {
            assert!(failed >= 2, "down after {failed} failed check(s)");
        }
        (!up).then_some(())
    });
    let took = switched.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} at 200ms per check"
    );
    let s = server_stats(&p, &a_addr);
    assert_eq!(
        (s["up"].clone(), s["health_down"].clone()),
        (false.into(), true.into())
    );
    let before = non_health_requests(&a);
    let seq = sequence(&p, 20);
    assert!(seq.iter().all(|s| s == "b"), "{seq:?}");
    assert_eq!(non_health_requests(&a), before);

    // Healthy again.
    let (_, _, ok_before, _) = server_metrics(&p, &a_addr);
    a_status.store(200, SeqCst);
    wait_for(Duration::from_secs(5), "a back up", || {
        let (up, _, ok, _) = server_metrics(&p, &a_addr);
        if up {
            assert!(
                ok >= ok_before + 2,
                "up after {} success(es)",
                ok - ok_before
            );
        }
        up.then_some(())
    });
    let seq = sequence(&p, 20);
    assert_eq!(tally(&seq)["a"], 10, "{seq:?}");

    let t = metrics(&p);
    for (srv, result) in [
        (&a_addr, "success"),
        (&a_addr, "failure"),
        (&b.addr(), "success"),
    ] {
        let n = metric(
            &t,
            "simian_health_checks_total",
            &[("route", "web"), ("server", srv), ("result", result)],
        );
        assert!(n >= 2.0, "{srv} {result}: {n}\n{t}");
    }
    assert_eq!(
        metric(
            &t,
            "simian_health_checks_total",
            &[("server", &b.addr()), ("result", "failure")]
        ),
        0.0
    );
}

/// `HealthCheck tcp`: a server whose port stops accepting is taken down after 2
/// failed connects and comes back after 2 successful ones, with no client traffic
/// involved.
#[test]
fn tcp_health_checks_follow_the_listener() {
    let mut a = Killable::start("a");
    let b = Killable::start("b");
    let a_addr = a.addr();
    let p = Proxy::start(&config(
        &format!("{a_addr} {}", b.addr()),
        "LoadBalancer RoundRobin\nHealthCheck tcp\nHealthCheckInterval 200ms\n\
         HealthyThreshold 2\nUnhealthyThreshold 2",
    ));
    wait_for(Duration::from_secs(5), "tcp checks of a", || {
        let (up, _, ok, _) = server_metrics(&p, &a_addr);
        assert!(up);
        (ok >= 2).then_some(())
    });
    a.kill();
    wait_for(Duration::from_secs(5), "a taken down", || {
        let (up, _, _, failed) = server_metrics(&p, &a_addr);
        if !up {
            assert!(failed >= 2, "down after {failed} failed check(s)");
        }
        (!up).then_some(())
    });
    let seq = sequence(&p, 10);
    assert!(seq.iter().all(|s| s == "b"), "{seq:?}");
    let (_, failures, ok_before, _) = server_metrics(&p, &a_addr);
    assert_eq!(failures, 0, "a client request tried the server held down");

    let a2 = Killable::start_on(&a_addr, "a");
    wait_for(Duration::from_secs(5), "a back up", || {
        let (up, _, ok, _) = server_metrics(&p, &a_addr);
        if up {
            assert!(
                ok >= ok_before + 2,
                "up after {} success(es)",
                ok - ok_before
            );
        }
        up.then_some(())
    });
    let seq = sequence(&p, 10);
    assert_eq!(tally(&seq)["a"], 5, "{seq:?}");
    assert_eq!(a2.requests(), 5);
}

// ---------------------------------------------------------------------------
// 4. MaxConnections under 200 concurrent clients
// ---------------------------------------------------------------------------

/// `MaxConnections 3` over two slow servers (each request held 100 ms), 200
/// clients at once, three requests each: neither server ever has more than 3
/// requests in flight, every answer is 200 or 503, and every 503 has `Retry-After`.
#[test]
fn max_connections_is_never_exceeded() {
    struct Slow {
        backend: Backend,
        max: Arc<AtomicUsize>,
    }
    let slow = |name: &'static str| {
        let (cur, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let m = max.clone();
        let backend = Backend::start(move |_| {
            let n = cur.fetch_add(1, SeqCst) + 1;
            m.fetch_max(n, SeqCst);
            thread::sleep(Duration::from_millis(100));
            cur.fetch_sub(1, SeqCst);
            Reply::ok(name)
        });
        Slow { backend, max }
    };
    let servers = [slow("a"), slow("b")];
    let p = Proxy::start(&config(
        &format!(
            "{} {}",
            servers[0].backend.addr(),
            servers[1].backend.addr()
        ),
        "LoadBalancer LeastConnections\nMaxConnections 3",
    ));
    const CLIENTS: usize = 200;
    let addr = sock(&p);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<JoinHandle<Vec<Response>>> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut c = connect(addr).unwrap();
                    barrier.wait();
                    let mut got = Vec::new();
                    for k in 0..3 {
                        let r = try_get(&mut c, &format!("/c{i}/{k}"), "")
                            .unwrap_or_else(|e| panic!("client {i} request {k}: {e}"));
                        let keep = r.keep_alive();
                        got.push(r);
                        if !keep {
                            c = connect(addr).unwrap();
                        }
                    }
                    got
                })
                .unwrap()
        })
        .collect();
    let responses: Vec<Response> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut ok = 0;
    for r in &responses {
        match r.status {
            200 => ok += 1,
            503 => assert!(
                r.get("retry-after")
                    .is_some_and(|v| v.parse::<u64>().is_ok()),
                "503 without a valid Retry-After: {r:?}"
            ),
            _ => panic!("unexpected answer: {r:?}"),
        }
    }
    assert!(ok >= 6, "only {ok} requests served");
    assert!(ok < responses.len(), "no 503 with 200 clients and 6 slots");
    for s in &servers {
        let max = s.max.load(SeqCst);
        assert!(
            max <= 3,
            "a server had {max} requests in flight (MaxConnections 3)"
        );
        assert_eq!(max, 3, "the limit was never reached");
    }
    let served: usize = servers.iter().map(|s| s.backend.request_count()).sum();
    assert_eq!(served, ok);
    wait_for(Duration::from_secs(5), "active requests back to 0", || {
        let j = stats_json(&p);
        let servers = j["routes"][0]["servers"].as_array().unwrap().clone();
        servers
            .iter()
            .all(|s| s["active_requests"] == 0)
            .then_some(())
    });
}

// ---------------------------------------------------------------------------
// 5. Sticky cookies
// ---------------------------------------------------------------------------

/// For each cookie value, the server a request carrying `SID=value` reaches;
/// requests spread over `threads` keep-alive connections. Every answer must be 200.
fn map_cookies(p: &Proxy, cookies: &[String], threads: usize) -> HashMap<String, String> {
    let chunks: Vec<Vec<String>> = cookies
        .chunks(cookies.len().div_ceil(threads))
        .map(<[String]>::to_vec)
        .collect();
    let addr = sock(p);
    let handles: Vec<JoinHandle<Vec<(String, String)>>> = chunks
        .into_iter()
        .map(|chunk| {
            thread::spawn(move || {
                let mut c = connect(addr).unwrap();
                chunk
                    .into_iter()
                    .map(|v| {
                        let r = try_get(&mut c, "/app", &format!("Cookie: lang=en; SID={v}\r\n"))
                            .unwrap_or_else(|e| panic!("cookie {v}: {e}"));
                        assert_eq!(r.status, 200, "cookie {v}: {r:?}");
                        if !r.keep_alive() {
                            c = connect(addr).unwrap();
                        }
                        (v, r.text())
                    })
                    .collect()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn cookies(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{tag}{i:04}x{}", i * 7919))
        .collect()
}

/// `StickyCookie SID table` with `Random`: 1,000 new cookies spread within ±20% of
/// even over 4 servers, and each cookie reaches its server on 3 later requests.
#[test]
fn sticky_table_spreads_new_cookies_and_keeps_them() {
    let bs = named(4);
    let p = Proxy::start(&config(
        &addrs(&bs),
        "LoadBalancer Random\nStickyCookie SID table",
    ));
    let values = cookies(1000, "t");
    let first = map_cookies(&p, &values, 4);
    let counts = tally(first.values());
    for i in 0..4 {
        let n = counts.get(&format!("s{i}")).copied().unwrap_or(0);
        assert!(
            (200..=300).contains(&n),
            "s{i} got {n} of 1000 new cookies: {counts:?}"
        );
    }
    for round in 0..3 {
        let again = map_cookies(&p, &values, 4);
        let moved: Vec<&String> = values.iter().filter(|v| again[*v] != first[*v]).collect();
        assert!(
            moved.is_empty(),
            "round {round}: {} cookies changed server, e.g. {:?}",
            moved.len(),
            &moved[..moved.len().min(5)]
        );
    }
}

/// `StickyCookie SID hash`: the cookie→server mapping is the same after simian is
/// restarted, and when one of 4 servers dies only its cookies move (and they stay
/// where they moved).
#[test]
fn sticky_hash_survives_restart_and_only_moves_a_dead_servers_cookies() {
    let mut ks: Vec<Killable> = (0..4).map(|i| Killable::start(&format!("k{i}"))).collect();
    let list = ks.iter().map(Killable::addr).collect::<Vec<_>>().join(" ");
    let conf = config(
        &list,
        "StickyCookie SID hash\nAttemptsCount 1\nOfflineTimeOut 60s",
    );
    let values = cookies(1000, "h");
    let p = Proxy::start(&conf);
    let before = map_cookies(&p, &values, 4);
    let counts = tally(before.values());
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|n| (150..=350).contains(n)),
        "rendezvous hashing spreads badly: {counts:?}"
    );
    drop(p);

    let p = Proxy::start(&conf);
    let restarted = map_cookies(&p, &values, 4);
    let differ: Vec<&String> = values
        .iter()
        .filter(|v| restarted[*v] != before[*v])
        .collect();
    assert!(
        differ.is_empty(),
        "{} cookies map elsewhere after a restart, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );

    // k2 dies. One of its cookies makes simian find out (the request fails over).
    ks[2].kill();
    let k2_cookie = values.iter().find(|v| before[*v] == "k2").unwrap();
    let mut c = p.client();
    let r = c.get_with("/app", &format!("Cookie: SID={k2_cookie}\r\n"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(server_stats(&p, &ks[2].addr())["up"], false);
    let after = map_cookies(&p, &values, 4);
    let mut moved = 0;
    for v in &values {
        if before[v] == "k2" {
            assert_ne!(after[v], "k2");
            moved += 1;
        } else {
            assert_eq!(after[v], before[v], "cookie {v} of a live server moved");
        }
    }
    assert!(moved > 100);
    let again = map_cookies(&p, &values, 4);
    assert_eq!(again, after, "moved cookies are not stable");
}

// ---------------------------------------------------------------------------
// 6. Every balancer over the real binary
// ---------------------------------------------------------------------------

const BALANCERS: [&str; 11] = [
    "Naive",
    "FirstAlive",
    "RoundRobin",
    "LockingRoundRobin",
    "LeastConnections",
    "WeightedRoundRobin",
    "SourceHash",
    "Random",
    "LeastBytes",
    "LeastTime",
    "Workload",
];

/// Each balancer name: 3 servers, 4 keep-alive clients x 15 requests, all 200 and
/// all answered by one of the servers.
#[test]
fn every_balancer_serves_every_request() {
    let bs = named(3);
    for name in BALANCERS {
        let p = Proxy::start(&config(&addrs(&bs), &format!("LoadBalancer {name}")));
        let load: Vec<JoinHandle<Vec<String>>> = (0..4)
            .map(|_| {
                let addr = sock(&p);
                thread::spawn(move || {
                    let mut c = connect(addr).unwrap();
                    (0..15)
                        .map(|i| {
                            let r = try_get(&mut c, &format!("/{i}"), "").unwrap();
                            assert_eq!(r.status, 200, "{r:?}");
                            r.text()
                        })
                        .collect()
                })
            })
            .collect();
        for h in load {
            let got = h
                .join()
                .unwrap_or_else(|_| panic!("{name}: a request failed"));
            assert!(
                got.iter().all(|s| ["s0", "s1", "s2"].contains(&s.as_str())),
                "{name}: {got:?}"
            );
        }
    }
}

#[test]
fn naive_starts_at_client_port_mod_n() {
    let bs = named(3);
    let p = Proxy::start(&config(&addrs(&bs), "LoadBalancer Naive"));
    let mut seen = HashSet::new();
    for i in 0..30 {
        let mut c = p.client();
        let port = local_port(&c);
        let expect = format!("s{}", port % 3);
        for k in 0..2 {
            let r = c.get(&format!("/{i}/{k}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), expect, "client port {port}");
        }
        seen.insert(expect);
    }
    assert!(seen.len() >= 2, "30 client ports all ≡ the same mod 3?");
}

#[test]
fn first_alive_uses_the_first_server() {
    let bs = named(3);
    let dead = DeadPort::new();
    let p = Proxy::start(&config(
        &format!("{} {}", dead.addr(), addrs(&bs)),
        "LoadBalancer FirstAlive",
    ));
    let seq = sequence(&p, 20);
    assert!(seq.iter().all(|s| s == "s0"), "{seq:?}");
}

fn round_robin(name: &str) {
    let bs = named(3);
    let p = Proxy::start(&config(&addrs(&bs), &format!("LoadBalancer {name}")));
    let seq = sequence(&p, 300);
    let counts = tally(&seq);
    for i in 0..3 {
        assert_eq!(counts[&format!("s{i}")], 100, "{name}: {counts:?}");
    }
    for w in seq.windows(3) {
        assert!(
            w[0] != w[1] && w[1] != w[2] && w[0] != w[2],
            "{name}: {w:?}"
        );
    }
}

#[test]
fn round_robin_cycles() {
    round_robin("RoundRobin");
}

#[test]
fn locking_round_robin_cycles() {
    round_robin("LockingRoundRobin");
}

/// Requests held by the backends: each new one goes to the server with the fewest
/// in flight, ties by list order.
#[test]
fn least_connections_picks_the_least_busy() {
    let release = Arc::new(AtomicBool::new(false));
    let held: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let bs: Vec<Backend> = (0..3)
        .map(|i| {
            let (release, held) = (release.clone(), held[i].clone());
            Backend::start(move |r| {
                if r.target == "/hold" {
                    held.fetch_add(1, SeqCst);
                    let t = Instant::now();
                    while !release.load(SeqCst) && t.elapsed() < Duration::from_secs(10) {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                Reply::ok(&format!("s{i}"))
            })
        })
        .collect();
    let p = Proxy::start(&config(&addrs(&bs), "LoadBalancer LeastConnections"));
    let addr = sock(&p);
    let mut waiting = Vec::new();
    let mut order = Vec::new();
    for k in 0..4 {
        let counts: Vec<usize> = held.iter().map(|h| h.load(SeqCst)).collect();
        waiting.push(thread::spawn(move || {
            let mut c = connect(addr).unwrap();
            try_get(&mut c, "/hold", "").unwrap()
        }));
        let got = wait_for(Duration::from_secs(5), "the held request", || {
            (0..3).find(|&i| held[i].load(SeqCst) > counts[i])
        });
        assert_eq!(held.iter().map(|h| h.load(SeqCst)).sum::<usize>(), k + 1);
        order.push(got);
    }
    assert_eq!(order, [0, 1, 2, 0], "held requests went to {order:?}");
    release.store(true, SeqCst);
    for w in waiting {
        assert_eq!(w.join().unwrap().status, 200);
    }
    wait_for(Duration::from_secs(5), "nothing in flight", || {
        let j = stats_json(&p);
        let l = j["routes"][0]["servers"].as_array().unwrap().clone();
        l.iter().all(|s| s["active_requests"] == 0).then_some(())
    });
    let seq = sequence(&p, 10);
    assert!(seq.iter().all(|s| s == "s0"), "ties by list order: {seq:?}");
}

#[test]
fn weighted_round_robin_three_to_one() {
    let bs = named(2);
    let p = Proxy::start(&config(
        &format!("{} weight=3 {} weight=1", bs[0].addr(), bs[1].addr()),
        "LoadBalancer WeightedRoundRobin",
    ));
    let seq = sequence(&p, 400);
    let counts = tally(&seq);
    let (a, b) = (counts["s0"], counts["s1"]);
    assert!(
        (270..=330).contains(&a) && (70..=130).contains(&b),
        "{counts:?}"
    );
    // Smooth: interleaved, never a run of more than 3.
    let longest = seq
        .chunk_by(|x, y| x == y)
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(longest <= 3, "a run of {longest} on one server");
}

#[test]
fn source_hash_keeps_each_client_on_its_server() {
    let bs = named(3);
    let p = Proxy::start(&config(&addrs(&bs), "LoadBalancer SourceHash"));
    let addr = sock(&p);
    let mut used = HashSet::new();
    for x in 1..=40u8 {
        let ip = Ipv4Addr::new(127, 0, 0, x);
        let mut first: Option<String> = None;
        for k in 0..3 {
            // A new connection (a new source port) each time.
            let mut c = connect_from(ip, addr);
            let r = c.get(&format!("/{x}/{k}"));
            assert_eq!(r.status, 200, "{r:?}");
            let s = r.text();
            match &first {
                None => first = Some(s),
                Some(f) => assert_eq!(&s, f, "client {ip} moved"),
            }
        }
        used.insert(first.unwrap());
    }
    assert_eq!(
        used.len(),
        3,
        "40 client addresses over 3 servers used only {used:?}"
    );
}

#[test]
fn random_spreads_uniformly() {
    let bs = named(3);
    let p = Proxy::start(&config(&addrs(&bs), "LoadBalancer Random"));
    let counts = tally(&sequence(&p, 600));
    for i in 0..3 {
        let n = counts.get(&format!("s{i}")).copied().unwrap_or(0);
        assert!((140..=260).contains(&n), "{counts:?}");
    }
}

/// fproxy's history-based strategies, over HTTP: with 3 identical servers (same
/// body, each request held 3 ms) and one request at a time, the bytes and time each
/// server has served grow with every request, so the picks must rotate: each
/// server gets a fair share of 30 sequential requests.
fn history_balancer_spreads(name: &str) {
    let bs: Vec<Backend> = (0..3)
        .map(|i| {
            Backend::start(move |_| {
                thread::sleep(Duration::from_millis(3));
                Reply::ok(&format!("s{i}{}", ".".repeat(1000)))
            })
        })
        .collect();
    let p = Proxy::start(&config(&addrs(&bs), &format!("LoadBalancer {name}")));
    let seq: Vec<String> = sequence(&p, 30)
        .into_iter()
        .map(|s| s[..2].to_string())
        .collect();
    let counts = tally(&seq);
    for i in 0..3 {
        let n = counts.get(&format!("s{i}")).copied().unwrap_or(0);
        assert!(n >= 5, "{name}: {counts:?} (sequence {seq:?})");
    }
}

#[test]
fn least_bytes_spreads_over_http() {
    history_balancer_spreads("LeastBytes");
}

#[test]
fn least_time_spreads_over_http() {
    history_balancer_spreads("LeastTime");
}

#[test]
fn workload_spreads_over_http() {
    history_balancer_spreads("Workload");
}

// ---------------------------------------------------------------------------
// 7. simian explain
// ---------------------------------------------------------------------------

/// `simian -c FILE explain ARGS...`: its stdout.
fn explain(p: &Proxy, args: &[&str]) -> String {
    // explain reads the running simian's statistics page (cached 250 ms).
    util::metrics::after_cache_window(&p.addr());
    let out = Command::new(env!("CARGO_BIN_EXE_simian"))
        .arg("-c")
        .arg(p.dir.join("simian.conf"))
        .arg("explain")
        .args(args)
        .output()
        .expect("run simian explain");
    // It rendered a page at some point before now: a later read waits from here.
    util::metrics::read_elsewhere(&p.addr());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "explain {args:?}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The server named by explain's `-> server ADDR (...)` line.
fn explained_server(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("-> server "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `-> server` line in:\n{text}"))
        .to_string()
}

/// `explain --client 10.0.0.7 --cookie SID=V` for a `StickyCookie SID hash` entry
/// names the server a real request with that cookie reaches (from 127.0.0.1: hash
/// mode ignores the client), with the state read from the running simian; with one
/// server offline it says that server is skipped and names the server the cookie
/// moved to.
#[test]
fn explain_names_the_server_a_sticky_request_reaches() {
    let mut ks: Vec<Killable> = (0..4).map(|i| Killable::start(&format!("k{i}"))).collect();
    let list = ks.iter().map(Killable::addr).collect::<Vec<_>>().join(" ");
    let p = Proxy::start(&config(
        &list,
        "StickyCookie SID hash\nAttemptsCount 1\nOfflineTimeOut 60s",
    ));
    let names: HashMap<String, String> = ks
        .iter()
        .enumerate()
        .map(|(i, k)| (k.addr(), format!("k{i}")))
        .collect();
    let name_of = |addr: &str| names[addr].clone();
    let reach = |v: &str| {
        let r = p.client().get_with("/app", &format!("Cookie: SID={v}\r\n"));
        assert_eq!(r.status, 200, "{r:?}");
        r.text()
    };
    let mut values = vec!["abc".to_string()];
    values.extend((0..15).map(|i| format!("v{i}")));
    let mut chosen = HashMap::new();
    for v in &values {
        let text = explain(
            &p,
            &[
                "--client",
                "10.0.0.7",
                "--cookie",
                &format!("SID={v}"),
                "http://test/app",
            ],
        );
        assert!(text.contains("read from the running simian"), "{text}");
        let server = name_of(&explained_server(&text));
        assert_eq!(reach(v), server, "cookie SID={v}\n{text}");
        chosen.insert(v.clone(), server);
    }

    // The server of SID=abc dies; one request makes simian notice.
    let victim: usize = chosen["abc"][1..].parse().unwrap();
    let victim_addr = ks[victim].addr();
    ks[victim].kill();
    assert_eq!(reach("abc").len(), 2);
    assert_eq!(server_stats(&p, &victim_addr)["up"], false);
    for v in &values {
        let text = explain(
            &p,
            &[
                "--client",
                "10.0.0.7",
                "--cookie",
                &format!("SID={v}"),
                "http://test/app",
            ],
        );
        assert!(
            text.lines().any(|l| l.contains(&victim_addr)
                && l.contains("skipped")
                && l.contains("offline")),
            "explain does not say the offline server is skipped:\n{text}"
        );
        let server = name_of(&explained_server(&text));
        assert_ne!(server, format!("k{victim}"), "{text}");
        if chosen[v] != format!("k{victim}") {
            assert_eq!(
                server, chosen[v],
                "cookie {v} of a live server moved\n{text}"
            );
        }
        assert_eq!(reach(v), server, "cookie SID={v}\n{text}");
    }
}

/// `explain --client IP` for `SourceHash` names the server a client from that
/// address reaches.
#[test]
fn explain_names_the_server_of_a_source_hash_client() {
    let bs = named(3);
    let p = Proxy::start(&config(&addrs(&bs), "LoadBalancer SourceHash"));
    let by_addr: HashMap<String, String> = bs
        .iter()
        .enumerate()
        .map(|(i, b)| (b.addr(), format!("s{i}")))
        .collect();
    for x in [1u8, 7, 23, 42, 99, 200] {
        let ip = Ipv4Addr::new(127, 0, 0, x);
        let text = explain(&p, &["--client", &ip.to_string(), "/page"]);
        let server = &by_addr[&explained_server(&text)];
        let r = connect_from(ip, sock(&p)).get("/page");
        assert_eq!(&r.text(), server, "client {ip}\n{text}");
    }
}

// ---------------------------------------------------------------------------
// Availability corner: the probe over a pooled connection
// ---------------------------------------------------------------------------

/// A server that stops accepting new connections but still serves its open
/// keep-alive ones (as the util backend does when dropped, or a server draining
/// for a restart): a refused connect takes it offline; once `OfflineTimeOut` is
/// over the probe request goes out over a pooled connection and succeeds. That
/// success must end the offline state ("a success resets"): the server is
/// available again afterwards, and takes requests once it accepts connections.
#[test]
fn a_successful_probe_over_a_pooled_connection_brings_the_server_back() {
    let a = Backend::start(|r| {
        if r.target == "/slow" {
            thread::sleep(Duration::from_millis(400));
        }
        Reply::ok("a")
    });
    let b = Backend::fixed("b");
    let a_addr = a.addr();
    let p = Proxy::start_with(
        &config(
            &format!("{a_addr} {}", b.addr()),
            "LoadBalancer FirstAlive\nAttemptsCount 1\nOfflineTimeOut 1s",
        ),
        Options::default().threads(1),
    );
    let addr = sock(&p);
    // A pooled connection to a.
    assert_eq!(p.client().get("/warm").text(), "a");
    // a stops accepting; its open connection still works.
    drop(a);
    wait_for(Duration::from_secs(5), "a refusing connects", || {
        TcpStream::connect(&a_addr).is_err().then_some(())
    });
    // One request holds the pooled connection; another needs a new connect: refused.
    let slow = thread::spawn(move || connect(addr).unwrap().get("/slow").text());
    thread::sleep(Duration::from_millis(100));
    assert_eq!(p.client().get("/x").text(), "b");
    assert_eq!(slow.join().unwrap(), "a");
    assert_eq!(server_stats(&p, &a_addr)["up"], false);
    // The window passes; the probe goes over the pooled connection.
    wait_for(Duration::from_secs(5), "the offline window to end", || {
        (server_stats(&p, &a_addr)["up"] == true).then_some(())
    });
    assert_eq!(p.client().get("/probe").text(), "a");
    let st = server_stats(&p, &a_addr);
    assert_eq!(st["connect_failures"], 1, "the probe connected anew: {st}");
    assert_eq!(
        st["up"], true,
        "still offline after a successful probe: {st}"
    );
    // a accepts connections again: it must be back in use (FirstAlive).
    let _a2 = Backend::start_on(&a_addr, |_| Reply::ok("a"));
    wait_for(
        Duration::from_secs(4),
        "a back in use after a successful probe",
        || (p.client().get("/again").text() == "a").then_some(()),
    );
}

/// Passive ejection is logged. `AttemptsCount 1`, `OfflineTimeOut 1s`, a server
/// whose port refuses connects ahead of a live one (FirstAlive): its refused
/// connect logs `server ADDR: 1 failed connects in a row: offline for 1s` (once);
/// when the port accepts again and a connect to it succeeds (the probe after the
/// window), `server ADDR: connect succeeded: back online`.
#[test]
fn passive_ejection_and_return_are_logged() {
    let live = Backend::fixed("live");
    let dead = DeadPort::new();
    let dead_addr = dead.addr();
    let p = Proxy::start(&config(
        &format!("{dead_addr} {}", live.addr()),
        "LoadBalancer FirstAlive\nAttemptsCount 1\nOfflineTimeOut 1s",
    ));
    let offline = format!("server {dead_addr}: 1 failed connects in a row: offline for 1s");
    let online = format!("server {dead_addr}: connect succeeded: back online");
    assert_eq!(p.client().get("/first").text(), "live");
    assert!(
        p.wait_log(&offline, Duration::from_secs(3)),
        "no `{offline}` in the log:\n{}",
        p.stderr()
    );
    assert!(!p.stderr().contains(&online), "{}", p.stderr());

    // The port accepts again: once the window is over, a connect succeeds.
    drop(dead);
    let revived = Backend::start_on(&dead_addr, |_| Reply::ok("revived"));
    wait_for(Duration::from_secs(5), "the revived server in use", || {
        let back = p.client().get("/again").text() == "revived";
        if !back {
            thread::sleep(Duration::from_millis(50));
        }
        back.then_some(())
    });
    assert!(revived.connections() >= 1);
    assert!(
        p.wait_log(&online, Duration::from_secs(3)),
        "no `{online}` in the log:\n{}",
        p.stderr()
    );
    let log = p.stderr();
    assert_eq!(log.matches(&offline).count(), 1, "{log}");
    assert_eq!(log.matches(&online).count(), 1, "{log}");
    assert!(log.find(&offline) < log.find(&online), "{log}");
}
