//! The HTTP data plane, end to end: the real `simian` binary, real sockets, and
//! in-process backends that record exactly what they received (SPEC section 4).
//!
//! Scenarios that exercise I/O run once per monoio driver (io_uring, and epoll
//! forced with `MONOIO_FORCE_LEGACY_DRIVER=1`), and the body tests once per
//! `Splice` mode as well; the generated test names end in `uring` / `epoll`
//! (and `splice_on` / `splice_off`).

mod util;

use std::io::Read;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// A configuration: `[PROXY_DEFAULTS]` listening on `@PORT@` with the `extra`
/// lines, then one RoundRobin entry per `(Match, ServerList)`.
fn conf(extra: &str, entries: &[(&str, &str)]) -> String {
    let mut s = format!("[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\n{extra}\n");
    for (m, servers) in entries {
        s +=
            &format!("\n[PROXY_ENTRY]\nMatch {m}\nServerList {servers}\nLoadBalancer RoundRobin\n");
    }
    s
}

/// One catch-all entry in front of `servers`.
fn conf1(extra: &str, servers: &str) -> String {
    conf(extra, &[("^/", servers)])
}

fn start(d: Driver, config: &str) -> Proxy {
    Proxy::start_with(config, Options::driver(d))
}

/// At GlobalMaxConnections, idle (parked) keep-alive connections are closed to
/// make room for a new one instead of holding it in the backlog for IdleTimeout.
fn idle_connections_give_way_at_the_limit(d: Driver) {
    let b = Backend::fixed("ok\n");
    let p = Proxy::start_with(
        &conf1("GlobalMaxConnections 2\nIdleTimeout 60s", &b.addr()),
        Options::driver(d).threads(1),
    );
    let mut idle: Vec<Client> = (0..2).map(|_| p.client()).collect();
    for c in &mut idle {
        c.set_timeout(Duration::from_secs(5));
        assert_eq!(c.get("/a").text(), "ok\n");
    }
    // Idle long enough to be parked (500 ms).
    std::thread::sleep(Duration::from_millis(1200));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let t = std::time::Instant::now();
    assert_eq!(c.get("/new").text(), "ok\n");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let closed = idle
        .iter_mut()
        .map(|c| c.read_until_close(Duration::from_millis(500)).is_ok())
        .filter(|&closed| closed)
        .count();
    assert!(closed >= 1, "no idle connection gave way");
}

/// A new connection that sends nothing is closed at HeadTimeout, not IdleTimeout:
/// it would hold a GlobalMaxConnections slot that long. Once a request was
/// served, the connection may idle for IdleTimeout.
fn silent_new_connection_closed_at_head_timeout(d: Driver) {
    let b = Backend::fixed("ok\n");
    let p = start(d, &conf1("HeadTimeout 1s\nIdleTimeout 30s", &b.addr()));
    let mut silent = p.client();
    let t = std::time::Instant::now();
    // TCP_DEFER_ACCEPT hands the connection over after 1 s without data.
    silent.expect_closed(Duration::from_secs(6));
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(c.get("/a").text(), "ok\n");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        c.get("/b").text(),
        "ok\n",
        "idle for IdleTimeout once a request was served"
    );
}

/// `Content-Length: 5, 5` and `Transfer-Encoding: ,chunked` are accepted (RFC 9110
/// 8.6, 5.6.1) but reach the backend as one canonical line each, so it cannot
/// frame the body differently from simian.
fn irregular_framing_forwarded_canonical(d: Driver) {
    let b = Backend::start(|r| Reply::ok(&format!("got {}", r.body.len)));
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let r = c.request(b"POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello");
    assert_eq!(r.text(), "got 5");
    let r = c.request(
        b"POST /te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: ,chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.text(), "got 5");
    // Both requests, on whichever backend connections they took.
    let all: String = b
        .raw()
        .iter()
        .map(|r| String::from_utf8_lossy(r).to_string())
        .collect();
    assert!(
        all.contains("\r\nContent-Length: 5\r\n") && !all.contains("5, 5"),
        "{all}"
    );
    assert!(
        all.contains("\r\nTransfer-Encoding: chunked\r\n") && !all.contains(",chunked"),
        "{all}"
    );
}

/// simian's soft fd limit, lowered and restored with prlimit(1).
struct FdLimit {
    pid: String,
}

impl FdLimit {
    /// `None` (and a note) where prlimit is not installed.
    fn of(p: &Proxy) -> Option<FdLimit> {
        if std::process::Command::new("prlimit")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: prlimit (util-linux) not installed");
            return None;
        }
        Some(FdLimit {
            pid: p.pid().to_string(),
        })
    }

    /// The soft limit only: lowering the hard one could not be undone.
    fn set(&self, n: usize) {
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &self.pid, &format!("--nofile={n}:")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "prlimit failed");
    }

    /// Leave exactly one fd to open. RLIMIT_NOFILE bounds fd numbers, and new fds
    /// take the lowest free ones: the second lowest free number is the limit.
    fn leave_one(&self) {
        let used: std::collections::HashSet<usize> =
            std::fs::read_dir(format!("/proc/{}/fd", self.pid))
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
        self.set((0..).filter(|n| !used.contains(n)).nth(1).unwrap());
    }

    fn restore(&self) {
        self.set(4096);
    }
}

/// A body to be spliced when no pipe can be made (pipe2 needs two fds, one is
/// left) is copied instead, whole; it used to be cut.
fn no_pipe_body_is_copied(d: Driver) {
    let b = Backend::start(|r| match r.target.as_str() {
        "/big" => Reply::Pattern(MIB as u64),
        _ => Reply::ok("small\n"),
    });
    let p = Proxy::start_with(
        &conf1("Splice on", &b.addr()),
        Options::driver(d).threads(1),
    );
    let Some(fds) = FdLimit::of(&p) else {
        return;
    };
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    // The client and backend connections exist (pooled) before the limit.
    assert_eq!(c.get("/small").text(), "small\n");
    fds.leave_one();
    let r = c.get("/big");
    fds.restore();
    assert_eq!(r.status, 200);
    assert!(r.body.is_pattern(MIB as u64), "the body was cut or damaged");
    assert_eq!(c.get("/small").text(), "small\n");
}

/// A backend connect that fails because simian is out of file descriptors
/// (EMFILE) answers 503 (the server is not at fault) and does not count against it: with
/// `AttemptsCount 1` it would otherwise be offline (503) once fds are back.
fn out_of_fds_is_not_the_servers_fault(d: Driver) {
    let b = Backend::fixed("up\n");
    let p = Proxy::start_with(
        &conf1(
            "AttemptsCount 1\nOfflineTimeOut 60s\nStatisticsURL /stats",
            &b.addr(),
        ),
        Options::driver(d).threads(1),
    );
    let Some(fds) = FdLimit::of(&p) else {
        return;
    };
    // Room for the client's connection, none for the backend's.
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    fds.leave_one();
    let r = c.get_with("/a", "Connection: close\r\n");
    fds.restore();
    assert_eq!(r.status, 503, "{}", p.stderr());
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(c.get("/b").text(), "up\n", "the server was taken offline");
    let m = c.get("/stats").text();
    assert!(
        m.contains("simian_local_errors_total{cause=\"fds\"} 1\n"),
        "{m}"
    );
}

/// A 103 before the 100 under `Expect: 100-continue` is relayed as the interim
/// answer it is; the 100 that follows still lets the body through.
fn early_hints_before_100_continue(d: Driver) {
    let b = Backend::start(|r| Reply::ok(&format!("got {}", r.body.len)));
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    c.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\
          X-Test-Early-Hints: 1\r\n\r\n",
    );
    let r = c.read_head_response();
    assert_eq!((r.status, r.get("Link")), (103, Some("</s.css>")));
    let r = c.read_head_response();
    assert_eq!(r.status, 100);
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "got 5"));
    assert_eq!(c.get("/next").text(), "got 0");
}

/// Bytes a backend sends after a complete response (here a second response, 100
/// ms later) must not be taken by the next request on that pooled connection as
/// its answer: that would hand one client's bytes to another.
fn stray_backend_bytes_never_reach_the_next_client(d: Driver) {
    let b = Backend::start(|r| match r.target.as_str() {
        "/first" => Reply::Trickle(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY!".to_vec(),
            ],
            Duration::from_millis(100),
        ),
        _ => Reply::ok("clean"),
    });
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(1));
    let mut a = p.client();
    a.set_timeout(Duration::from_secs(5));
    assert_eq!(a.get("/first").text(), "first");
    // The stray response is in the pooled connection by now, well within the
    // half second a pooled connection used to be trusted without a look.
    std::thread::sleep(Duration::from_millis(300));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    for _ in 0..3 {
        assert_eq!(c.get("/second").text(), "clean");
    }
}

/// A TLS ClientHello on a plain listener gets 400 at its first bytes (a client
/// that took the port for a TLS one), not a 408 at HeadTimeout.
fn non_http_bytes_refused_at_once(d: Driver) {
    let b = Backend::fixed("app\n");
    let p = start(d, &conf1("HeadTimeout 10s", &b.addr()));
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0, 0x03, 0x03, 0x00, 0x00,
    ];
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let t = std::time::Instant::now();
    c.send(&hello);
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    c.expect_closed(Duration::from_secs(2));
    // Empty lines before a request are still fine (RFC 9112 2.2).
    let mut c = p.client();
    c.send(b"\r\nGET / HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

/// simian's own answers to HEAD (404 for no entry, 403 for the statistics) carry no
/// body: on a kept connection, one would be read as the next response's start.
fn head_to_simian_answers_has_no_body(d: Driver) {
    let b = Backend::fixed("app\n");
    let p = start(
        d,
        &conf(
            "StatisticsURL /stats\nStatisticsAllow 10.0.0.0/8",
            &[("^/app", &b.addr())],
        ),
    );
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    for (path, status) in [("/nothing", 404), ("/stats", 403)] {
        c.send(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        let r = c.read_head_response();
        assert_eq!(r.status, status, "HEAD {path}");
        assert!(r.keep_alive(), "HEAD {path}: the connection stays open");
        let next = c.get("/app");
        assert_eq!(
            (next.status, next.text()),
            (200, "app\n".to_string()),
            "after HEAD {path}"
        );
    }
    // 502 for a server that refuses: the head, then the close, no body.
    let dead = DeadPort::new();
    let p = start(d, &conf("", &[("^/down", &dead.addr())]));
    let mut c = p.client();
    c.send(b"HEAD /down HTTP/1.1\r\nHost: test\r\n\r\n");
    let all = c.expect_closed(Duration::from_secs(5));
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "a body after the head: {text:?}"
    );
}

per_driver!(
    response_content_length_list_forwarded_canonical,
    lingering_close_after_an_error,
    panics_are_contained,
    no_pipe_body_is_copied,
    idle_connections_give_way_at_the_limit,
    silent_new_connection_closed_at_head_timeout,
    irregular_framing_forwarded_canonical,
    out_of_fds_is_not_the_servers_fault,
    early_hints_before_100_continue,
    stray_backend_bytes_never_reach_the_next_client,
    non_http_bytes_refused_at_once,
    head_to_simian_answers_has_no_body,
    keepalive_client_side,
    keepalive_backend_pool_across_clients,
    routing_per_request,
    pipelined_requests,
    head_204_304,
    expect_100_continue,
    websocket_tunnel,
    websocket_early_data,
    unix_sockets,
    backend_dies_mid_response,
    backend_closes_after_response,
    bad_backend_responses,
    http10_backend,
    interim_responses,
    client_half_close,
    upgrade_declined,
    expect_100_continue_body_at_once,
    client_aborts,
    failover_and_502,
    malformed_requests,
    slowloris_cut_off,
    idle_timeout,
    parked_connections,
    park_fails_connection_kept,
    backend_timeout_504,
    threads_modes,
    idle_pooled_backend_connection_closed,
);
per_driver_and_splice!(request_bodies, response_bodies, stop_and_go_body);

mod expect_100_continue_keep_alive {
    use super::Driver;
    #[test]

    fn uring() {
        super::expect_100_continue_keep_alive(Driver::Uring)
    }
    #[test]

    fn epoll() {
        super::expect_100_continue_keep_alive(Driver::Epoll)
    }
}

// ---------------------------------------------------------------------------
// Keep-alive and routing
// ---------------------------------------------------------------------------

/// 20 requests on one client connection: each answered on it, and simian reuses
/// one backend connection for all of them.
fn keepalive_client_side(d: Driver) {
    let b = Backend::fixed("hello\n");
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    for i in 0..20 {
        let r = c.get(&format!("/k/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello\n");
        assert!(r.keep_alive(), "response {i} closes: {:?}", r.head);
    }
    let want: Vec<String> = (0..20).map(|i| format!("/k/{i}")).collect();
    assert_eq!(b.targets(), want);
    assert_eq!(
        b.connections(),
        1,
        "20 sequential requests used {} backend connections",
        b.connections()
    );
}

/// Two client connections one after the other (one worker thread, so one pool)
/// share one pooled backend connection.
fn keepalive_backend_pool_across_clients(d: Driver) {
    let b = Backend::fixed("pooled\n");
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(1));
    for i in 0..3 {
        let mut c = p.client();
        let r = c.get(&format!("/client/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "pooled\n"));
        assert_eq!(
            r.get("X-Conn"),
            Some("0"),
            "client {i} got a new backend conn"
        );
    }
    assert_eq!(b.connections(), 1);
    assert!(b.requests().iter().all(|r| r.conn == 0));
}

/// Two entries to two backends; requests alternate on one client connection and
/// each goes where its own path says.
fn routing_per_request(d: Driver) {
    let a = Backend::start(|r| Reply::ok(&format!("A {}", r.target)));
    let b = Backend::start(|r| Reply::ok(&format!("B {}", r.target)));
    let p = start(
        d,
        &conf(
            "",
            &[("^/a", a.addr().as_str()), ("^/b", b.addr().as_str())],
        ),
    );
    let mut c = p.client();
    let paths = ["/a1", "/b1", "/a2", "/b2", "/b3", "/a3", "/a4"];
    for path in paths {
        let r = c.get(path);
        assert_eq!(r.status, 200);
        let who = if path.starts_with("/a") { "A" } else { "B" };
        assert_eq!(r.text(), format!("{who} {path}"));
    }
    assert_eq!(a.targets(), ["/a1", "/a2", "/a3", "/a4"]);
    assert_eq!(b.targets(), ["/b1", "/b2", "/b3"]);
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

/// Several requests in one write (pipelining): answered in order, each routed.
fn pipelined_requests(d: Driver) {
    let a = Backend::start(|r| Reply::ok(&format!("A {} {}", r.target, r.body.text())));
    let b = Backend::start(|r| Reply::ok(&format!("B {}", r.target)));
    let p = start(
        d,
        &conf(
            "",
            &[("^/a", a.addr().as_str()), ("^/b", b.addr().as_str())],
        ),
    );
    let mut c = p.client();
    c.send(
        b"GET /a1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /b1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /a2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /b2 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let got: Vec<String> = (0..4).map(|_| c.read_response().text()).collect();
    assert_eq!(got, ["A /a1 ", "B /b1", "A /a2 hello", "B /b2"]);
    assert_eq!(c.get("/a3").text(), "A /a3 ");

    // A chunked body and a 200 KB body, each followed in the same write by the
    // next request.
    let mut msg = b"POST /a4 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /b3 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /b4 HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n"
        .to_vec();
    msg.extend_from_slice(&pattern_vec(200_000));
    msg.extend_from_slice(b"GET /a5 HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&msg);
    let got: Vec<String> = (0..4).map(|_| c.read_response().text()).collect();
    assert_eq!(got, ["A /a4 abcde", "B /b3", "B /b4", "A /a5 "]);
    let b4 = b
        .requests()
        .into_iter()
        .find(|r| r.target == "/b4")
        .unwrap();
    assert!(b4.body.is_pattern(200_000));
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// Request bodies of 0 B, 1 B, 1 MiB, 64 MiB (Content-Length) and a chunked one,
/// on one client connection, checked at the backend.
fn request_bodies(d: Driver, splice: &str) {
    let b = Backend::summary();
    let p = start(d, &conf1(&format!("Splice {splice}"), &b.addr()));
    let mut c = p.client();
    let sizes = [0, 1, MIB, 64 * MIB];
    for (i, &n) in sizes.iter().enumerate() {
        c.send(
            format!("POST /up/{i} HTTP/1.1\r\nHost: test\r\nContent-Length: {n}\r\n\r\n")
                .as_bytes(),
        );
        c.send_pattern(n as u64);
        let r = c.read_response();
        assert_eq!(r.status, 200, "POST of {n} bytes");
        assert_eq!(r.get("X-Body-Len"), Some(n.to_string().as_str()));
        assert_eq!(
            r.get("X-Body-Pattern"),
            Some("yes"),
            "{n}-byte body altered"
        );
        if n <= MIB {
            let want = sha256_hex(&pattern_vec(n));
            assert_eq!(r.get("X-Body-Sha256"), Some(want.as_str()));
        }
    }

    // Chunked: varied chunk sizes (small ones, one above the splice threshold,
    // one with an extension) and a trailer.
    let chunks = [1usize, 2, 10, 4096, 65536, 100_000, MIB, 3, 300_000];
    let total: usize = chunks.iter().sum();
    let mut msg =
        b"POST /up/chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let body = pattern_vec(total);
    let mut off = 0;
    for (i, &n) in chunks.iter().enumerate() {
        let ext = if i == 2 { ";name=value" } else { "" };
        msg.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        msg.extend_from_slice(&body[off..off + n]);
        msg.extend_from_slice(b"\r\n");
        off += n;
    }
    msg.extend_from_slice(b"0\r\nX-Trailer-Test: yes\r\n\r\n");
    let r = c.request(&msg);
    assert_eq!(r.status, 200);
    assert_eq!(r.get("X-Body-Len"), Some(total.to_string().as_str()));
    assert_eq!(r.get("X-Body-Sha256"), Some(sha256_hex(&body).as_str()));

    // The connection is still in step after all of that.
    let r = c.get("/after");
    assert_eq!(r.status, 200);

    let reqs = b.requests();
    let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/up/0", "/up/1", "/up/2", "/up/3", "/up/chunked", "/after"]
    );
    for (r, n) in reqs.iter().zip(sizes) {
        assert!(r.complete && r.body.is_pattern(n as u64));
        assert_eq!(r.get("Content-Length"), Some(n.to_string().as_str()));
    }
    let ch = &reqs[4];
    assert!(ch.chunked && ch.complete);
    assert_eq!(ch.get("Content-Length"), None);
    assert_eq!(
        ch.trailers,
        [("X-Trailer-Test".to_string(), "yes".to_string())]
    );
    assert_eq!(b.connections(), 1);
}

/// Responses of 64 MiB (Content-Length), chunked, and close-delimited, checked
/// byte for byte at the client; keep-alive survives the first two.
fn response_bodies(d: Driver, splice: &str) {
    const CHUNKS: [usize; 8] = [1, 7, 4096, 65536, 200_000, MIB, 2 * MIB, 5];
    let b = Backend::start(|r| match r.target.as_str() {
        "/big" => Reply::Pattern(64 * MIB as u64),
        "/chunked" => Reply::ChunkedPattern(CHUNKS.to_vec()),
        "/close" => Reply::ClosePattern(24 * MIB as u64),
        _ => Reply::ok("small\n"),
    });
    let p = start(d, &conf1(&format!("Splice {splice}"), &b.addr()));
    let mut c = p.client();

    let r = c.get("/big");
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Length(64 * MIB as u64));
    assert!(r.body.is_pattern(64 * MIB as u64), "64 MiB body altered");
    assert!(r.keep_alive());

    let r = c.get("/chunked");
    let total: usize = CHUNKS.iter().sum();
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.body.len, total as u64);
    assert_eq!(r.body.sha256(), sha256_hex(&pattern_vec(total)));
    assert_eq!(r.trailers, [("X-Trail".to_string(), "end".to_string())]);

    assert_eq!(c.get("/small").text(), "small\n");

    // Close-delimited: the client reads until simian closes.
    let r = c.get("/close");
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Close);
    assert!(
        r.body.is_pattern(24 * MIB as u64),
        "close-delimited body altered"
    );

    let mut c2 = p.client();
    assert_eq!(c2.get("/small").text(), "small\n");
}

/// A body that arrives in bursts, to a client that reads slowly at first: each
/// side of the relay keeps running dry (an empty receive queue) and full (a full
/// send buffer), which the splice loop answers by waiting for readiness rather
/// than by asking the socket again. The body arrives whole, and the connection
/// serves the next request.
fn stop_and_go_body(d: Driver, splice: &str) {
    const PIECES: [usize; 8] = [1, 3000, 70_000, 5, 300_000, 65536, 2 * MIB, 1];
    let total: usize = PIECES.iter().sum();
    let b = Backend::start(move |r| match r.target.as_str() {
        "/bursts" => {
            let body = pattern_vec(total);
            let mut pieces =
                vec![format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").into_bytes()];
            let mut at = 0;
            for n in PIECES {
                pieces.push(body[at..at + n].to_vec());
                at += n;
            }
            Reply::Trickle(pieces, Duration::from_millis(30))
        }
        _ => Reply::ok("next\n"),
    });
    let p = start(d, &conf1(&format!("Splice {splice}"), &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(20));
    c.send(b"GET /bursts HTTP/1.1\r\nHost: test\r\n\r\n");
    // 1 KiB every 5 ms for 300 ms: simian's send buffer to the client fills.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let slow_until = Instant::now() + Duration::from_millis(300);
    let mut head_end = None;
    while head_end.is_none_or(|h| raw.len() < h + total) {
        let want = if Instant::now() < slow_until {
            thread::sleep(Duration::from_millis(5));
            1024
        } else {
            buf.len()
        };
        let n = c
            .wire
            .conn
            .read(&mut buf[..want])
            .expect("reading the response");
        assert!(n > 0, "closed after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
    }
    let head_end = head_end.expect("the loop ends once the head is in");
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{:?}", &raw[..head_end]);
    assert_eq!(raw.len(), head_end + total, "bytes past the body");
    assert!(raw[head_end..] == pattern_vec(total)[..], "body altered");
    assert_eq!(c.get("/next").text(), "next\n");
}

/// HEAD, 204 and 304 responses have no body whatever their headers say; the next
/// request on the same connection (and the same backend connection) works.
fn head_204_304(d: Driver) {
    let b = Backend::start(|r| match r.target.as_str() {
        "/head" => Reply::ok(&"x".repeat(1000)),
        "/head-chunked" => {
            Reply::Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec())
        }
        "/204" => Reply::status(204, &[("X-Kind", "no content")], ""),
        "/304" => Reply::status(304, &[("ETag", "\"v1\""), ("Content-Length", "1000")], ""),
        _ => Reply::ok("next\n"),
    });
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));

    c.send(b"HEAD /head HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.get("Content-Length"), Some("1000"));
    assert_eq!(c.get("/n1").text(), "next\n");

    c.send(b"HEAD /head-chunked HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.get("Transfer-Encoding"), Some("chunked"));
    assert_eq!(c.get("/n2").text(), "next\n");

    let r = c.get("/204");
    assert_eq!((r.status, r.get("X-Kind")), (204, Some("no content")));
    assert_eq!(c.get("/n3").text(), "next\n");

    let r = c.get("/304");
    assert_eq!((r.status, r.get("ETag")), (304, Some("\"v1\"")));
    assert_eq!(c.get("/n4").text(), "next\n");

    assert!(c.stays_quiet(Duration::from_millis(200)), "stray bytes");
    assert_eq!(b.request_count(), 8);
    assert_eq!(
        b.connections(),
        1,
        "bodiless responses cost a backend connection"
    );
}

/// Send a head with `Expect: 100-continue`, wait for the 100, send the body, get
/// the final response.
fn upload_with_expect(c: &mut Client, path: &str) -> Response {
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n\
             Content-Length: 100000\r\n\r\n"
        )
        .as_bytes(),
    );
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "expected 100 Continue first");
    c.send_pattern(100_000);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.get("X-Body-Len"), Some("100000"));
    assert_eq!(r.get("X-Body-Pattern"), Some("yes"));
    r
}

/// The client waits for the backend's 100 before sending its body.
fn expect_100_continue(d: Driver) {
    let b = Backend::summary();
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    upload_with_expect(&mut c, "/upload");
    let reqs = b.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].get("Expect"), Some("100-continue"));
    assert!(reqs[0].complete);
}

/// After a completed 100-continue exchange both connections stay reusable.
fn expect_100_continue_keep_alive(d: Driver) {
    let b = Backend::summary();
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let r = upload_with_expect(&mut c, "/upload");
    assert!(r.keep_alive(), "closed after 100-continue: {:?}", r.head);
    let r = upload_with_expect(&mut c, "/upload2");
    assert_eq!(r.get("X-Conn"), Some("0"));
    assert_eq!(c.get("/next").status, 200);
    assert_eq!(b.connections(), 1);
}

// ---------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------

/// `X-Forwarded-For` gets the client appended, `X-Forwarded-Proto` is set; the
/// target, version, Host and other headers pass unchanged.
#[test]
fn forwarded_headers() {
    let b = Backend::fixed("ok");
    let p = Proxy::start(&conf1("", &b.addr()));
    let mut c = p.client();
    c.send(
        b"GET /x/./y?q=%41&r=/../z HTTP/1.1\r\nHost: example.test:8080\r\n\
          X-Forwarded-For: 203.0.113.7, 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\
          X-Custom: keep me\r\nUser-Agent: t/1\r\n\r\n",
    );
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.get("/plain").status, 200);
    let r = c.get_with(
        "/two-lines",
        "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2, 192.0.2.3\r\n",
    );
    assert_eq!(r.status, 200);
    let reqs = b.requests();
    assert_eq!(
        reqs[2].head.get_all("X-Forwarded-For"),
        ["192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1"]
    );
    let r = &reqs[0];
    assert_eq!(r.head.line, "GET /x/./y?q=%41&r=/../z HTTP/1.1");
    assert_eq!(r.head.get_all("Host"), ["example.test:8080"]);
    assert_eq!(
        r.head.get_all("X-Forwarded-For"),
        ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    );
    assert_eq!(r.head.get_all("X-Forwarded-Proto"), ["http"]);
    assert_eq!(r.get("X-Custom"), Some("keep me"));
    assert_eq!(r.get("User-Agent"), Some("t/1"));
    let r = &reqs[1];
    assert_eq!(r.head.get_all("X-Forwarded-For"), ["127.0.0.1"]);
    assert_eq!(r.head.get_all("X-Forwarded-Proto"), ["http"]);
}

/// Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded in either direction;
/// the client's `Connection: close` closes the client connection only.
#[test]
fn hop_by_hop_headers() {
    let b = Backend::start(|_| {
        Reply::status(
            200,
            &[
                ("Connection", "X-Secret"),
                ("X-Secret", "s"),
                ("Keep-Alive", "timeout=100"),
                ("X-Public", "p"),
            ],
            "ok",
        )
    });
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::default().threads(1));
    let mut c = p.client();
    let r = c.get_with(
        "/h",
        "Connection: close, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Bar: 2\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.get("X-Public"), Some("p"));
    assert_eq!(r.get("X-Secret"), None, "response hop-by-hop leaked");
    assert_eq!(r.get("Keep-Alive"), None, "response Keep-Alive leaked");
    assert!(r.head.has_token("Connection", "close"));
    c.expect_closed(Duration::from_secs(3));

    let req = &b.requests()[0];
    for h in ["X-Foo", "Keep-Alive", "Proxy-Connection", "TE"] {
        assert_eq!(req.get(h), None, "{h} reached the backend: {:?}", req.head);
    }
    assert_eq!(req.get("X-Bar"), Some("2"));
    for v in req.head.get_all("Connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("close") && !v.contains("x-foo"),
            "Connection: {v}"
        );
    }
    // The backend connection outlived the client's `Connection: close`.
    let mut c2 = p.client();
    assert_eq!(c2.get("/h2").status, 200);
    assert_eq!(b.connections(), 1);
}

/// HTTP/1.0 clients: closed after the response unless they ask for keep-alive;
/// the version is forwarded as received.
#[test]
fn http10_clients() {
    let b = Backend::fixed("old\n");
    let p = Proxy::start(&conf1("", &b.addr()));
    let mut c = p.client();
    c.send(b"GET /one HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "old\n"));
    c.expect_closed(Duration::from_secs(3));

    let mut c = p.client();
    let ka = "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let r = c.request(ka.as_bytes());
    assert_eq!(r.status, 200);
    assert!(r.head.has_token("Connection", "keep-alive"), "{:?}", r.head);
    assert_eq!(c.request(ka.as_bytes()).text(), "old\n");
    let reqs = b.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.version == "HTTP/1.0"));

    // HTTP/1.1 persists by default: no `Connection` line to parse (HAProxy sends
    // none either), and the connection serves the next request.
    let mut c = p.client();
    let r = c.get("/eleven");
    assert_eq!(r.status, 200);
    assert!(!r.head.has("Connection"), "{:?}", r.head);
    assert_eq!(c.get("/again").text(), "old\n");
}

// ---------------------------------------------------------------------------
// Upgrade
// ---------------------------------------------------------------------------

fn upgrade_backend() -> Backend {
    Backend::start(|r| {
        if r.head.has_token("Upgrade", "websocket") {
            Reply::Upgrade
        } else {
            Reply::ok("plain")
        }
    })
}

const WS_HEAD: &str = "GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// 101, then bytes echo both ways through the tunnel (the client writes from
/// another thread so large echoes cannot deadlock), and a half-close travels.
fn websocket_tunnel(d: Driver) {
    let b = upgrade_backend();
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let r = c.request(WS_HEAD.as_bytes());
    assert_eq!(r.status, 101);
    assert_eq!(r.get("Upgrade"), Some("websocket"));
    assert!(r.head.has_token("Connection", "upgrade"), "{:?}", r.head);
    let req = &b.requests()[0];
    assert_eq!(req.get("Upgrade"), Some("websocket"));
    assert!(req.head.has_token("Connection", "upgrade"));
    assert_eq!(
        req.get("Sec-WebSocket-Key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    for n in [5usize, 1, 70_000, 3 * MIB] {
        let mut w = c.wire.conn.try_clone().unwrap();
        let writer = thread::spawn(move || write_pattern(&mut w, 0, n as u64));
        let mut body = Body::default();
        c.wire.read_exact_into(n as u64, &mut body).unwrap();
        writer.join().unwrap().unwrap();
        assert!(body.is_pattern(n as u64), "{n} bytes echoed wrong");
    }
    // Half-close: our EOF reaches the backend, which closes, which closes us.
    c.wire.conn.shutdown(std::net::Shutdown::Write);
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty());
}

/// Bytes the client sends right behind the upgrade request reach the backend
/// after the switch.
fn websocket_early_data(d: Driver) {
    let b = upgrade_backend();
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    c.send(format!("{WS_HEAD}EARLY").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 101);
    let mut body = Body::default();
    c.wire.read_exact_into(5, &mut body).unwrap();
    assert_eq!(body.text(), "EARLY");
    c.send(b"late");
    let mut body = Body::default();
    c.wire.read_exact_into(4, &mut body).unwrap();
    assert_eq!(body.text(), "late");
}

// ---------------------------------------------------------------------------
// Listeners and backends of every address family
// ---------------------------------------------------------------------------

/// An IPv6 listener `[::1]:PORT` in front of an IPv6 backend.
#[test]
fn ipv6_listener_and_backend() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    drop(l);
    let b = Backend::start_on("[::1]:0", |_| Reply::ok("v6\n"));
    let p = Proxy::start(&format!(
        "[PROXY_DEFAULTS]\nListen [::1]:@PORT@\n\n[PROXY_ENTRY]\nMatch ^/\nServerList {}\n",
        b.addr()
    ));
    let mut c = Client::tcp(format!("[::1]:{}", p.port));
    for _ in 0..3 {
        assert_eq!(c.get("/six").text(), "v6\n");
    }
    let reqs = b.requests();
    assert_eq!(reqs[0].head.get_all("X-Forwarded-For"), ["::1"]);
    assert_eq!(b.connections(), 1);
}

/// A unix-socket listener next to a TCP one, and a unix-socket backend next to a
/// TCP one; bodies and keep-alive across all four combinations.
/// A second simian on a unix socket path a running one listens on refuses to
/// start (it used to remove the socket and take the path over); a stale socket
/// file left by a dead process is replaced as before.
#[test]
fn unix_listener_not_taken_from_a_running_process() {
    let b = Backend::fixed("first\n");
    let p = start(
        Driver::Uring,
        &format!(
            "[PROXY_DEFAULTS]\nListen unix:@DIR@/s.sock\n[PROXY_ENTRY]\nMatch ^/\nServerList {}\n",
            b.addr()
        ),
    );
    let sock = p.dir.join("s.sock");
    let conf = p.dir.join("second.conf");
    std::fs::write(
        &conf,
        format!(
            "[PROXY_DEFAULTS]\nListen unix:{}\n[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:9\n",
            sock.display()
        ),
    )
    .unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_simian"))
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a simian that took the socket over would run on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("running process"), "{err}");
    let mut c = Client::unix(&sock);
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(c.get("/").text(), "first\n", "the first keeps its socket");
    // A stale socket file (nobody listening) is still replaced.
    let stale = p.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let l = simian::net::listen::Listener::bind(&simian::config::Address::Unix(stale.clone()));
    assert!(l.is_ok(), "{:?}", l.err());
}

fn unix_sockets(d: Driver) {
    let dir = temp_dir("unix");
    let ub = Backend::start_unix(dir.join("backend.sock"), |r| {
        if r.method == "POST" {
            Reply::summary(r)
        } else {
            Reply::ok("unix backend\n")
        }
    });
    let tb = Backend::fixed("tcp backend\n");
    let config = format!(
        "[PROXY_DEFAULTS]\nListen unix:@DIR@/simian.sock\nListen 127.0.0.1:@PORT@\n\n\
         [PROXY_ENTRY]\nMatch ^/u\nServerList {}\n\n[PROXY_ENTRY]\nMatch ^/t\nServerList {}\n",
        ub.addr(),
        tb.addr()
    );
    let p = start(d, &config);
    let mut uc = p.client();
    let mut tc = Client::tcp(p.addr());
    for c in [&mut uc, &mut tc] {
        assert_eq!(c.get("/u1").text(), "unix backend\n");
        assert_eq!(c.get("/t1").text(), "tcp backend\n");
        c.send(b"POST /u/post HTTP/1.1\r\nHost: test\r\nContent-Length: 1048576\r\n\r\n");
        c.send_pattern(MIB as u64);
        let r = c.read_response();
        assert_eq!(r.get("X-Body-Pattern"), Some("yes"));
        assert_eq!(r.get("X-Body-Len"), Some("1048576"));
        assert_eq!(c.get("/u2").text(), "unix backend\n");
    }
    // Idle past the park delay: both kinds of client connection are parked, then
    // served again on the same connection.
    thread::sleep(Duration::from_millis(1000));
    for c in [&mut uc, &mut tc] {
        assert_eq!(c.get("/u3").text(), "unix backend\n");
    }
    assert_eq!(ub.request_count(), 8);
    assert_eq!(tb.request_count(), 2);
    assert!(ub.connections() <= 2, "unix backend connections not reused");
    drop(ub);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/// A backend that closes mid-response: the client's connection is closed (no
/// hang, no fake complete response), and the proxy keeps serving.
fn backend_dies_mid_response(d: Driver) {
    let b = Backend::start(|r| match r.target.as_str() {
        "/die" => Reply::DieMidway(1_000_000),
        "/die-chunked" => Reply::DieMidwayChunked,
        _ => Reply::ok("alive\n"),
    });
    let p = start(d, &conf1("", &b.addr()));

    let mut c = p.client();
    c.send(b"GET /die HTTP/1.1\r\nHost: test\r\n\r\n");
    let raw = c.expect_closed(Duration::from_secs(5));
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n");
    if let Some(h) = head_end {
        // A response started: 200 with a cut body that is a prefix of the real one.
        assert_eq!(status_of(&raw), 200);
        let body = &raw[h + 4..];
        assert!(body.len() < 1_000_000, "a complete body was faked");
        assert_eq!(body, &pattern_vec(body.len())[..]);
    } else {
        assert!(raw.is_empty(), "garbage: {raw:?}");
    }

    let mut c = p.client();
    c.send(b"GET /die-chunked HTTP/1.1\r\nHost: test\r\n\r\n");
    let raw = c.expect_closed(Duration::from_secs(5));
    assert!(
        !raw.windows(5).any(|w| w == b"0\r\n\r\n"),
        "a cut chunked body was terminated as if complete"
    );

    let mut c = p.client();
    assert_eq!(c.get("/ok").text(), "alive\n");
}

/// The backend closes each connection after its response, once announcing it
/// (`Connection: close`) and once silently: the next request, GET or POST,
/// still succeeds on a fresh backend connection and the client keeps its own.
///
/// A GET right after a silent close races the close and is replayed when it
/// loses. A POST cannot be replayed once written (the backend may have acted on
/// it; nginx and HAProxy answer 502 there too), so before each POST the test waits
/// for the backend's close to happen: simian must then see the dead connection
/// (its liveness check) instead of sending the POST into it.
fn backend_closes_after_response(d: Driver) {
    let b = Backend::start(|r| {
        let body = format!("{} {}", r.target, r.body.len);
        let conn = if r.target.contains("announced") {
            "Connection: close\r\n"
        } else {
            ""
        };
        Reply::RawClose(
            format!(
                "HTTP/1.1 200 OK\r\n{conn}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(1));
    let mut c = p.client();
    for kind in ["announced", "silent"] {
        for i in 0..3 {
            let path = format!("/{kind}/get{i}");
            let r = c.get(&path);
            assert_eq!((r.status, r.text()), (200, format!("{path} 0")));
            assert!(r.keep_alive(), "{:?}", r.head);
            // Every request so far had a backend connection of its own.
            let before = if kind == "silent" { 6 } else { 0 } + 2 * i + 1;
            assert!(
                b.wait_closed(before, Duration::from_secs(5)),
                "the backend did not close {before} connections"
            );
            let path = format!("/{kind}/post{i}");
            c.send(
                format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
                    .as_bytes(),
            );
            c.send_pattern(1000);
            let r = c.read_response();
            assert_eq!((r.status, r.text()), (200, format!("{path} 1000")));
        }
    }
    let reqs = b.requests();
    assert_eq!(reqs.len(), 12);
    assert!(reqs.iter().all(|r| r.complete && r.index == 0), "{reqs:?}");
    assert_eq!(b.connections(), 12);
}

/// An HTTP/1.0 backend response without keep-alive ends that backend
/// connection: simian does not pool it.
fn http10_backend(d: Driver) {
    let b = Backend::start(|r| {
        Reply::Raw(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                r.target.len(),
                r.target
            )
            .into_bytes(),
        )
    });
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(1));
    let mut c = p.client();
    for i in 0..3 {
        let path = format!("/old{i}");
        let r = c.get(&path);
        assert_eq!((r.status, r.text()), (200, path));
        assert!(r.keep_alive(), "client connection closed: {:?}", r.head);
    }
    assert_eq!(
        b.connections(),
        3,
        "a non-persistent backend connection was reused"
    );
}

/// Clients that go away mid-request-body and mid-response: the backend
/// connection is dropped, not pooled, and the next client is served.
fn client_aborts(d: Driver) {
    let b = Backend::start(|r| {
        if r.target == "/big" {
            Reply::Pattern(64 * MIB as u64)
        } else {
            Reply::summary(r)
        }
    });
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(1));

    let mut c = p.client();
    c.send(b"POST /cut HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
    c.send_pattern(1000);
    drop(c);
    let reqs = b.wait_requests(1, Duration::from_secs(5));
    assert_eq!(reqs[0].target, "/cut");
    assert!(!reqs[0].complete);
    assert!(reqs[0].body.len <= 1000);

    let mut c = p.client();
    c.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut first = Body::default();
    c.wire.read_exact_into(100_000, &mut first).unwrap();
    drop(c);

    for i in 0..3 {
        let mut c = p.client();
        let r = c.get(&format!("/after{i}"));
        assert_eq!((r.status, r.get("X-Body-Len")), (200, Some("0")));
    }
    let reqs = b.requests();
    assert_eq!(
        b.targets(),
        ["/cut", "/big", "/after0", "/after1", "/after2"]
    );
    let used = [reqs[0].conn, reqs[1].conn];
    assert!(
        reqs[2..].iter().all(|r| !used.contains(&r.conn)),
        "an aborted backend connection was reused: {reqs:?}"
    );
}

/// A dead server in a two-server list: every request still succeeds. Only dead
/// servers: 502 and the connection closes.
fn failover_and_502(d: Driver) {
    let b = Backend::fixed("live\n");
    let (dead1, dead2) = (DeadPort::new(), DeadPort::new());
    let p = start(d, &conf1("", &format!("{} {}", dead1.addr(), b.addr())));
    let mut c = p.client();
    for i in 0..4 {
        let r = c.get(&format!("/f/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "live\n"));
    }
    for i in 4..8 {
        let mut c = p.client();
        let r = c.get(&format!("/f/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "live\n"));
    }
    assert_eq!(b.request_count(), 8);
    drop(c);

    let p2 = start(
        d,
        &conf1(
            "AttemptsCount 0",
            &format!("{} {}", dead1.addr(), dead2.addr()),
        ),
    );
    for _ in 0..2 {
        let mut c = p2.client();
        let r = c.get("/nobody");
        assert_eq!(r.status, 502, "{:?}", r.head);
        assert!(!r.body.bytes.is_empty() && r.body.len < 200, "short body");
        c.expect_closed(Duration::from_secs(3));
    }
    let mut c = p2.client();
    c.send(b"POST /nobody HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    let _ = c.try_send(&pattern_vec(100_000));
    let raw = c.expect_closed(Duration::from_secs(3));
    assert_eq!(status_of(&raw), 502);
}

/// No entry matches: 404, and a bodiless request keeps the connection. A 404
/// with a body never lets that body be read as a request.
#[test]
fn not_found_404() {
    let b = Backend::fixed("only\n");
    let p = Proxy::start(&conf("", &[("^/only", b.addr().as_str())]));
    let mut c = p.client();
    let r = c.get("/other");
    assert_eq!(r.status, 404);
    assert!(
        r.keep_alive(),
        "404 closed a bodiless request: {:?}",
        r.head
    );
    assert_eq!(c.get("/only/x").text(), "only\n");

    let smuggled = "GET /only/smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    c.send(
        format!(
            "POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 404);
    // simian may close, or skip the body; it must not run it as a request.
    if c.try_send(b"GET /only/after HTTP/1.1\r\nHost: t\r\n\r\n")
        .is_ok()
    {
        if let Ok(r) = c.try_read_response(false) {
            assert_eq!((r.status, r.text().as_str()), (200, "only\n"));
        }
    }
    let targets = b.targets();
    assert!(
        !targets.iter().any(|t| t == "/only/smuggled"),
        "{targets:?}"
    );
}

// ---------------------------------------------------------------------------
// Strict framing (SPEC section 4)
// ---------------------------------------------------------------------------

const SMUGGLE: &str = "GET /SMUGGLED HTTP/1.1\r\nHost: test\r\n\r\n";

struct Bad {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
    /// The head is valid and goes to the backend; the body is the bad part.
    head_ok: bool,
}

fn bad(name: &'static str, raw: impl AsRef<[u8]>, status: u16) -> Bad {
    Bad {
        name,
        raw: raw.as_ref().to_vec(),
        status,
        head_ok: false,
    }
}

fn bad_chunks(name: &'static str, body: &str) -> Bad {
    Bad {
        name,
        raw: format!(
            "POST /chunks HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLE}"
        )
        .into_bytes(),
        status: 400,
        head_ok: true,
    }
}

fn malformed_cases() -> Vec<Bad> {
    let n = SMUGGLE.len();
    let post = "POST /x HTTP/1.1\r\nHost: test\r\n";
    let mut big = b"GET /big HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    big.resize(big.len() + 70 * KIB, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    vec![
        bad(
            "CL+TE",
            format!("{post}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "TE+CL",
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{SMUGGLE}", n + 5),
            400,
        ),
        bad(
            "duplicate differing CL",
            format!("{post}Content-Length: 0\r\nContent-Length: {n}\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "differing CL list",
            format!("{post}Content-Length: 0, {n}\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad("negative CL", format!("{post}Content-Length: -1\r\n\r\n{SMUGGLE}"), 400),
        bad("CL with sign", format!("{post}Content-Length: +0\r\n\r\n{SMUGGLE}"), 400),
        bad("non-numeric CL", format!("{post}Content-Length: 0x0\r\n\r\n{SMUGGLE}"), 400),
        bad(
            "TE chunked, identity",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "TE chunked then identity on two lines",
            format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "TE not ending in chunked",
            format!("{post}Transfer-Encoding: gzip\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "unknown transfer coding",
            format!("{post}Transfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
            501,
        ),
        bad(
            "space before colon",
            format!("{post}Content-Length : {n}\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "space before colon in TE",
            format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "non-token header name",
            format!("{post}X-Fo(o): 1\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "header name with a slash",
            format!("{post}X/Foo: 1\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "obs-fold",
            format!("{post}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "obs-fold of Content-Length",
            format!("{post}Content-Length: 0\r\n {n}\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad("bare LF everywhere", format!("GET /lf HTTP/1.1\nHost: test\n\n{SMUGGLE}"), 400),
        bad(
            "bare LF after one header",
            format!("GET /lf HTTP/1.1\r\nHost: test\nX-A: b\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "bare LF ending the head",
            format!("GET /lf HTTP/1.1\r\nHost: test\r\n\n{SMUGGLE}"),
            400,
        ),
        bad("NUL in a value", "GET /nul HTTP/1.1\r\nHost: test\r\nX-A: a\0b\r\n\r\n", 400),
        bad("SOH in a value", "GET /ctl HTTP/1.1\r\nHost: test\r\nX-A: a\x01b\r\n\r\n", 400),
        bad("DEL in a value", "GET /del HTTP/1.1\r\nHost: test\r\nX-A: a\x7fb\r\n\r\n", 400),
        bad("bare CR in a value", "GET /cr HTTP/1.1\r\nHost: test\r\nX-A: a\rb\r\n\r\n", 400),
        bad("head over 64 KiB", big, 431),
        bad(
            "101 header fields",
            format!("GET /fields HTTP/1.1\r\nHost: test\r\n{}\r\n{SMUGGLE}", "X-F: 1\r\n".repeat(100)),
            431,
        ),
        bad("HTTP/1.1 without Host", format!("GET /nohost HTTP/1.1\r\n\r\n{SMUGGLE}"), 400),
        bad(
            "two Host headers",
            format!("GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "whitespace before the first header",
            format!("GET /ws HTTP/1.1\r\n Content-Length: {n}\r\nHost: test\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad(
            "CL overflow",
            format!("{post}Content-Length: 99999999999999999999999\r\n\r\n{SMUGGLE}"),
            400,
        ),
        bad_chunks("chunk size zz", "zz\r\n0\r\n\r\n"),
        bad_chunks(
            "chunk extension over 4 KiB",
            &format!("5;x={}\r\nhello\r\n0\r\n\r\n", "e".repeat(4100)),
        ),
        bad_chunks("chunk size -1", "-1\r\n0\r\n\r\n"),
        bad_chunks("chunk size 0x10", "0x10\r\n\r\n"),
        bad_chunks("empty chunk size", "\r\n0\r\n\r\n"),
        bad_chunks("chunk size overflow", "10000000000000001\r\nab\r\n0\r\n\r\n"),
        bad_chunks("chunk data longer than its size", "5\r\nhelloXX\r\n0\r\n\r\n"),
        bad_chunks("chunk data with bare LF", "5\r\nhello\n0\r\n\r\n"),
        bad_chunks("chunk size line with bare LF", "5\nhello\r\n0\r\n\r\n"),
        bad_chunks("chunk size line with bare CR", "5\rhello\r\n0\r\n\r\n"),
        bad_chunks("last chunk with bare LF", "0\n\n"),
        bad_chunks("trailer with bare LF", "0\r\nX-T: a\n\r\n"),
        bad_chunks("trailer with obs-fold", "0\r\nX-T: a\r\n b\r\n\r\n"),
        bad_chunks("trailer name not a token", "0\r\nX T: a\r\n\r\n"),
    ]
}

/// Every malformed request of SPEC section 4: the right status, the connection
/// closed, and the backend never sees the request hidden behind it. All cases
/// are run and the mismatches reported together.
fn malformed_requests(d: Driver) {
    let b = Backend::summary();
    let p = start(d, &conf1("HeadTimeout 5s", &b.addr()));
    let mut failures = Vec::new();
    for case in malformed_cases() {
        let before = b.request_count();
        let mut c = p.client();
        c.set_timeout(Duration::from_secs(8));
        // simian may answer and close before reading everything: ignore EPIPE.
        let _ = c.try_send(&case.raw);
        let got = c.read_until_close(Duration::from_secs(8));
        let closed = got.is_ok();
        let raw = got.unwrap_or_else(|v| v);
        let status = status_of(&raw);
        if status != case.status {
            failures.push(format!(
                "{}: expected {}, got {:?}",
                case.name,
                case.status,
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            ));
        }
        if !closed {
            failures.push(format!("{}: connection left open", case.name));
        }
        if raw.windows(10).filter(|w| w == b"HTTP/1.1 2").count() > 0 {
            failures.push(format!("{}: a 2xx came back", case.name));
        }
        if case.head_ok {
            // The backend records a cut request when simian closes its side.
            b.wait_count(before + 1, Duration::from_secs(2));
        }
        let seen = b.request_count() - before;
        if !case.head_ok && seen != 0 {
            failures.push(format!("{}: backend got {seen} request(s)", case.name));
        }
        if case.head_ok {
            // The head went on; the body was cut at the bad framing.
            let incomplete = b.requests().iter().skip(before).all(|r| !r.complete);
            if seen > 1 || !incomplete {
                failures.push(format!(
                    "{}: backend saw {seen} request(s), complete: {}",
                    case.name, !incomplete
                ));
            }
        }
        // The proxy is fine and nothing stale is reused.
        let mut ok = p.client();
        let r = ok.get("/check");
        if r.status != 200 || r.get("X-Body-Len") != Some("0") {
            failures.push(format!("{}: next request got {:?}", case.name, r.head));
        }
    }
    let targets = b.targets();
    if targets.iter().any(|t| t.contains("SMUGGLED")) || b.raw_contains(b"SMUGGLED") {
        failures.push(format!("smuggled request reached the backend: {targets:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

/// A client trickling its head a byte every 500 ms is cut off after
/// `HeadTimeout 2s` (optionally with a 408); another client on the same worker
/// is served normally all along.
fn slowloris_cut_off(d: Driver) {
    let b = Backend::fixed("fast\n");
    let p = Proxy::start_with(
        &conf1("HeadTimeout 2s\nIdleTimeout 30s", &b.addr()),
        Options::driver(d).threads(1),
    );
    let addr = p.addr();
    let slow = thread::spawn(move || {
        let mut s = Client::tcp(addr);
        let head = b"GET /slow HTTP/1.1\r\nHost: test\r\nX-Slow: ";
        let start = Instant::now();
        let mut got = Vec::new();
        for i in 0.. {
            assert!(start.elapsed() < Duration::from_secs(10), "never cut off");
            let byte = head.get(i).copied().unwrap_or(b'a');
            if s.try_send(&[byte]).is_err() {
                break;
            }
            // Wait up to 500 ms for the proxy to answer or close.
            match s.read_until_close(Duration::from_millis(500)) {
                Ok(v) => {
                    got.extend(v);
                    break;
                }
                Err(v) => got.extend(v),
            }
        }
        (start.elapsed(), got)
    });
    let mut c = p.client();
    let mut served = 0;
    while !slow.is_finished() {
        let t = Instant::now();
        let r = if served % 2 == 0 {
            c.get("/fast")
        } else {
            p.client().get("/fast")
        };
        assert_eq!(r.text(), "fast\n");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "blocked by the slow client"
        );
        served += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let (elapsed, got) = slow.join().unwrap();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed <= Duration::from_millis(4500),
        "cut off after {elapsed:?}"
    );
    assert!(got.is_empty() || status_of(&got) == 408, "got {got:?}");
    assert!(served >= 10, "only {served} requests served meanwhile");
    assert!(b.targets().iter().all(|t| t == "/fast"));
}

/// `IdleTimeout 1s`: an idle keep-alive connection, and one that never sent
/// anything, are closed after about a second.
fn idle_timeout(d: Driver) {
    let b = Backend::fixed("ok");
    let p = start(d, &conf1("IdleTimeout 1s", &b.addr()));
    let mut c = p.client();
    let mut silent = p.client();
    let t0 = Instant::now();
    assert_eq!(c.get("/").status, 200);
    let t = Instant::now();
    c.expect_closed(Duration::from_secs(5));
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle <= Duration::from_secs(3),
        "keep-alive connection closed after {idle:?}"
    );
    silent.expect_closed(Duration::from_secs(5));
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_millis(800) && e <= Duration::from_secs(4),
        "silent connection closed after {e:?}"
    );
}

/// SPEC section 12 (found by the `rewrite` fuzz target): a response whose
/// `Content-Length` is a list or is repeated with equal values reaches the client
/// as one canonical line, not as received (a cache in front could frame it
/// otherwise).
fn response_content_length_list_forwarded_canonical(d: Driver) {
    let b =
        Backend::start(|r| {
            Reply::Raw(match r.target.as_str() {
            "/list" => b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc".to_vec(),
            // Without a body: a HEAD answer and a 304 say what the body would be.
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
                .to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\ncontent-length: 3\r\n\r\nabc"
                .to_vec(),
        })
        });
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    for target in ["/list", "/twice", "/list"] {
        let r = c.get(target);
        assert_eq!((r.status, r.text().as_str()), (200, "abc"), "{target}");
        assert_eq!(
            r.head.get_all("content-length"),
            vec!["3"],
            "{target}: {:?}",
            r.head
        );
        assert_eq!(
            r.get("X-A"),
            (target == "/twice").then_some("1"),
            "{target}"
        );
    }
    c.send(b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(
        r.head.get_all("content-length"),
        vec!["3"],
        "HEAD: {:?}",
        r.head
    );
    let r = c.get("/304");
    assert_eq!(r.status, 304);
    assert_eq!(
        r.head.get_all("content-length"),
        vec!["3"],
        "304: {:?}",
        r.head
    );
}

/// SPEC section 12: an error answered while the client is still sending (here a
/// 400 for a bad Content-Length, with 1 MiB of body behind it) reaches the
/// client: simian shuts its write side and drains what still comes (lingering
/// close) instead of closing with unread bytes, which makes the kernel answer
/// with a reset that can destroy the response before the client reads it.
fn lingering_close_after_an_error(d: Driver) {
    use std::io::{Read, Write};
    let b = Backend::fixed("ok");
    let p = start(d, &conf1("", &b.addr()));
    for round in 0..5 {
        // A simple client: it writes its whole request, then reads the answer.
        let mut conn = std::net::TcpStream::connect(p.addr()).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut req = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n".to_vec();
        req.resize(req.len() + 512 * 1024, b'a');
        let w = conn.write_all(&req);
        let mut got = Vec::new();
        let r = conn.read_to_end(&mut got);
        assert!(
            w.is_ok() && r.is_ok() && got.starts_with(b"HTTP/1.1 400 "),
            "round {round}: write {w:?}, read {r:?} after {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// SPEC section 12: a panic in a worker's own task (accept loop, idle sweeper),
/// in the health checker, or one that ends a worker's runtime, is contained: the
/// part is started again, the log says which, and traffic goes on. The panics
/// are injected (`SIMIAN_FAULT`, debug builds only).
fn panics_are_contained(d: Driver) {
    let b = Backend::fixed("ok\n");
    for (fault, logged) in [
        ("accept-loop", "the accept loop panicked"),
        ("sweeper", "the idle sweeper panicked"),
        ("worker-runtime", "its runtime died"),
        ("health-checker", "the health checker panicked"),
    ] {
        let mut o = Options::driver(d).threads(1);
        o.env.push(("SIMIAN_FAULT".into(), fault.into()));
        let conf = conf1(
            "IdleTimeout 1s\nHealthCheck tcp\nHealthCheckInterval 100ms",
            &b.addr(),
        );
        let p = Proxy::start_with(&conf, o);
        for i in 0..5 {
            let mut c = p.client();
            c.set_timeout(Duration::from_secs(5));
            assert_eq!(c.get(&format!("/{fault}/{i}")).text(), "ok\n", "{fault}");
        }
        assert!(
            p.wait_log(logged, Duration::from_secs(3)),
            "{fault}: not logged\n{}",
            p.stderr()
        );
        // The sweeper (started again if it was the one) still closes idle
        // connections at IdleTimeout.
        let mut idle = p.client();
        assert_eq!(idle.get("/idle").status, 200);
        idle.expect_closed(Duration::from_secs(4));
    }
}

/// `(client_connections, parked_connections)` from the statistics JSON, read on a
/// connection of its own (closed, so not counted the next time).
fn connection_counts(p: &Proxy) -> (u64, u64) {
    util::metrics::after_cache_window(&p.addr());
    let mut c = p.client();
    let r = c.get_with("/stats?format=json", "Connection: close\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body.bytes).expect("statistics JSON");
    let n = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("no {k} in {j}"));
    (n("client_connections"), n("parked_connections"))
}

/// Wait until the counts are `want` (the statistics connection itself included
/// in the first), at most `within`.
fn wait_counts(p: &Proxy, want: (u64, u64), within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let got = connection_counts(p);
        if got == want || Instant::now() >= deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Keep-alive connections idle for more than half a second give up their task
/// and wait in the worker's epoll set (docs/decisions.md, "parked connections"):
/// each is served again on its next request, whatever arrives first; a parked
/// client that closes is counted out; IdleTimeout still applies; SIGTERM closes
/// them at once.
fn parked_connections(d: Driver) {
    let b = Backend::fixed("ok");
    let mut p = Proxy::start_with(
        &conf1("IdleTimeout 4s\nStatisticsURL /stats", &b.addr()),
        Options::driver(d).threads(2),
    );
    let mut clients: Vec<Client> = (0..20).map(|_| p.client()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/a").status, 200);
    }
    // Parked between 0.5 and 0.75 s of idleness.
    assert_eq!(wait_counts(&p, (21, 20), Duration::from_secs(3)), (21, 20));
    // Past the statistics page's cache window now, so that the count below is
    // read at once, before the three clients below can park again.
    thread::sleep(Duration::from_millis(300));
    // Served again: a GET, a pipelined pair, a request trickling in.
    assert_eq!(clients[0].get("/b").status, 200);
    clients[1].send(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\nGET /d HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(clients[1].read_response().status, 200);
    assert_eq!(clients[1].read_response().status, 200);
    clients[2].send(b"GET /e HT");
    thread::sleep(Duration::from_millis(100));
    clients[2].send(b"TP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(clients[2].read_response().status, 200);
    let (open, parked) = connection_counts(&p);
    assert_eq!(open, 21);
    assert!(
        parked <= 17,
        "{parked} parked right after 3 of 20 were used"
    );
    // And parked again; five clients leave while parked.
    for c in clients.drain(15..) {
        drop(c);
    }
    assert_eq!(wait_counts(&p, (16, 15), Duration::from_secs(3)), (16, 15));
    // Each of the 15 still works after being parked twice.
    for c in &mut clients {
        let r = c.get("/f");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
    }
    // IdleTimeout (4 s from the last request) closes parked connections.
    let t = Instant::now();
    clients[0].expect_closed(Duration::from_secs(6));
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(3500) && e <= Duration::from_secs(6),
        "parked connection closed after {e:?}, IdleTimeout 4s"
    );
    assert_eq!(wait_counts(&p, (1, 0), Duration::from_secs(2)), (1, 0));
    // SIGTERM with parked connections: closed at once, exit 0.
    let mut more: Vec<Client> = (0..5).map(|_| p.client()).collect();
    for c in &mut more {
        assert_eq!(c.get("/g").status, 200);
    }
    assert_eq!(wait_counts(&p, (6, 5), Duration::from_secs(3)), (6, 5));
    let t = Instant::now();
    let st = p
        .terminate(Duration::from_secs(3))
        .expect("simian still running 3 s after SIGTERM");
    assert_eq!(st.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "exit took {:?}",
        t.elapsed()
    );
    for c in &mut more {
        c.expect_closed(Duration::from_secs(1));
    }
    assert_eq!(b.request_count(), 20 + 4 + 15 + 5);
}

/// When parking fails (here: no fd left for the duplicate, EMFILE), the idle
/// connection stays in its task and keeps working; the failure is logged once.
fn park_fails_connection_kept(d: Driver) {
    let b = Backend::fixed("ok");
    let p = Proxy::start_with(
        &conf1("IdleTimeout 30s", &b.addr()),
        Options::driver(d).threads(1),
    );
    let mut first = p.client();
    assert_eq!(first.get("/warm").status, 200);
    let mut clients: Vec<Client> = (0..24).map(|_| p.client()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/a").status, 200);
    }
    // Before they park (500 ms): not one fd more for the process (the limit is on
    // fd numbers, and 0-2 are taken).
    let pid = p.pid() as libc::pid_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain prlimit(2) on our own child, reading then lowering the soft limit.
    let r = unsafe {
        libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim);
        lim.rlim_cur = 3;
        libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut())
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    assert!(
        p.wait_log("cannot park an idle connection", Duration::from_secs(3)),
        "no park failure logged; stderr:\n{}",
        p.stderr()
    );
    thread::sleep(Duration::from_millis(500));
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.get("/b");
        assert_eq!(r.status, 200, "client {i}");
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(first.get("/c").status, 200);
    assert_eq!(p.stderr().matches("cannot park").count(), 1, "logged once");
}

/// `BackendTimeout 1s`: a backend that never answers gives 504 after about a
/// second; one that stalls mid-response gets the client connection closed; one
/// whose bytes keep coming is not cut.
fn backend_timeout_504(d: Driver) {
    let b = Backend::start(|r| match r.target.as_str() {
        "/slow" => Reply::Silent,
        "/stall" => Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial".to_vec()),
        "/trickle" => Reply::Trickle(
            [
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "2\r\nab\r\n",
                "2\r\ncd\r\n",
                "2\r\nef\r\n",
                "0\r\n\r\n",
            ]
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect(),
            Duration::from_millis(400),
        ),
        _ => Reply::ok("quick\n"),
    });
    let p = start(d, &conf1("BackendTimeout 1s", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(10));
    let t = Instant::now();
    let r = c.get("/slow");
    let e = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        e >= Duration::from_millis(800) && e <= Duration::from_secs(3),
        "504 after {e:?}"
    );
    let mut c = p.client();
    assert_eq!(c.get("/quick").text(), "quick\n");

    // The response started, then stalls: the client connection is closed.
    let mut c = p.client();
    c.send(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n");
    let t = Instant::now();
    let raw = c.expect_closed(Duration::from_secs(5));
    let e = t.elapsed();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
    assert!(raw.ends_with(b"\r\n\r\npartial"), "{raw:?}");
    assert!(
        e >= Duration::from_millis(800) && e <= Duration::from_secs(3),
        "closed after {e:?}"
    );

    // A response that keeps flowing is not cut, however long it takes in all.
    let mut c = p.client();
    let t = Instant::now();
    let r = c.get("/trickle");
    assert_eq!((r.status, r.text().as_str()), (200, "abcdef"));
    assert!(t.elapsed() >= Duration::from_millis(1500));
}

// ---------------------------------------------------------------------------
// Threads and drivers
// ---------------------------------------------------------------------------

/// `--threads 1` and `--threads 2`: eight concurrent clients, keep-alive and not.
fn threads_modes(d: Driver) {
    for threads in [1, 2] {
        let b = Backend::start(|r| Reply::ok(&r.target));
        let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(threads));
        let addr = p.addr();
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let addr = addr.clone();
                thread::spawn(move || {
                    let mut c = Client::tcp(&addr);
                    for i in 0..15 {
                        let path = format!("/w{w}/{i}");
                        let r = if i % 3 == 0 {
                            Client::tcp(&addr).get(&path)
                        } else {
                            c.get(&path)
                        };
                        assert_eq!((r.status, r.text()), (200, path));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(b.request_count(), 120, "--threads {threads}");
    }
}

/// The environment variable really selects the epoll driver, and the default
/// driver says which one it runs.
#[test]
fn driver_selection() {
    let b = Backend::fixed("ok");
    let p = start(Driver::Epoll, &conf1("", &b.addr()));
    assert!(
        p.wait_log("I/O driver: epoll", Duration::from_secs(5)),
        "stderr: {}",
        p.stderr()
    );
    let p = start(Driver::Uring, &conf1("", &b.addr()));
    assert!(p.wait_log("I/O driver:", Duration::from_secs(5)));
    if !p.stderr().contains("io_uring") {
        eprintln!("note: io_uring unavailable, the `uring` tests ran on epoll");
    }
}

// ---------------------------------------------------------------------------
// More edges
// ---------------------------------------------------------------------------

/// Routing looks at the normalised path (unreserved escapes decoded, dot
/// segments removed, query ignored, absolute-form reduced to its path); the
/// target is forwarded exactly as received.
#[test]
fn routing_normalized_path() {
    let admin = Backend::fixed("admin\n");
    let rest = Backend::fixed("rest\n");
    let p = Proxy::start(&conf(
        "",
        &[
            ("^/admin", admin.addr().as_str()),
            ("^/", rest.addr().as_str()),
        ],
    ));
    let mut c = p.client();
    let cases = [
        ("/static/../admin/x", "admin\n"),
        ("/%61dmin", "admin\n"),
        ("/./admin", "admin\n"),
        ("/other?to=/admin", "rest\n"),
        ("/%2Fadmin", "rest\n"),
        ("http://example.test/admin/abs", "admin\n"),
    ];
    for (target, who) in cases {
        let r = c.get(target);
        assert_eq!((r.status, r.text().as_str()), (200, who), "{target}");
    }
    let a: Vec<String> = admin.targets();
    assert_eq!(
        a,
        [
            "/static/../admin/x",
            "/%61dmin",
            "/./admin",
            "http://example.test/admin/abs"
        ]
    );
    assert_eq!(rest.targets(), ["/other?to=/admin", "/%2Fadmin"]);
}

/// A head just under 64 KiB is accepted and forwarded intact.
#[test]
fn large_head_under_limit() {
    let b = Backend::fixed("big head ok\n");
    let p = Proxy::start(&conf1("", &b.addr()));
    let mut c = p.client();
    let value = "v".repeat(60 * KIB);
    let r = c.get_with("/bighead", &format!("X-Large: {value}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(b.requests()[0].get("X-Large"), Some(value.as_str()));
    assert_eq!(c.get("/next").status, 200);
}

/// Backend responses that cannot be framed without doubt: 502 (RFC 9112 6.3),
/// or for CL+TE the chunked framing with Content-Length removed; either way the
/// backend connection is not reused and the next request is fine.
fn bad_backend_responses(d: Driver) {
    // SPEC section 12: at most 100 fields and 64 KiB in a response head.
    let many_fields = format!(
        "HTTP/1.1 200 OK\r\n{}Content-Length: 5\r\n\r\nhello",
        "X-F: 1\r\n".repeat(100)
    );
    let huge_head = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 5\r\n\r\nhello",
        "a".repeat(64 * 1024)
    );
    let b = Backend::start(move |r| {
        let raw: &[u8] = match r.target.as_str() {
            "/many-fields" => many_fields.as_bytes(),
            "/huge-head" => huge_head.as_bytes(),
            "/dup-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello",
            "/bad-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
            "/neg-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
            "/garbage" => b"SSH-2.0-OpenSSH\r\n\r\n",
            "/bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
            "/cl-te" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            }
            _ => return Reply::ok("fine\n"),
        };
        Reply::Raw(raw.to_vec())
    });
    let p = Proxy::start_with(&conf1("", &b.addr()), Options::driver(d).threads(1));
    for target in [
        "/dup-cl",
        "/bad-cl",
        "/neg-cl",
        "/garbage",
        "/bare-lf",
        "/cl-te",
        "/many-fields",
        "/huge-head",
    ] {
        let mut c = p.client();
        c.set_timeout(Duration::from_secs(5));
        let r = c.get(target);
        if target == "/cl-te" && r.status == 200 {
            assert_eq!(r.get("Content-Length"), None, "CL kept beside TE");
            assert_eq!((r.framing, r.text().as_str()), (Framing::Chunked, "hello"));
        } else {
            assert_eq!(r.status, 502, "{target}: {:?}", r.head);
        }
        let mut c = p.client();
        let r = c.get("/ok");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "fine\n"),
            "after {target}"
        );
    }
}

/// Interim 1xx responses (103 Early Hints) are relayed before the final one,
/// without their hop-by-hop fields.
fn interim_responses(d: Driver) {
    let b = Backend::start(|r| {
        if let Some(n) = r.target.strip_prefix("/hints/") {
            let n: usize = n.parse().unwrap_or(0);
            let mut raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n".repeat(n);
            raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            Reply::Raw(raw)
        } else if r.target == "/hints" {
            Reply::Raw(
                b"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nLink: </s.css>; rel=preload\r\n\
                  X-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                    .to_vec(),
            )
        } else {
            Reply::ok("next\n")
        }
    });
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    c.send(b"GET /hints HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response();
    assert_eq!(
        (r.status, r.get("Link")),
        (103, Some("</s.css>; rel=preload"))
    );
    for hop in ["Connection", "X-Hop", "Keep-Alive"] {
        assert_eq!(r.get(hop), None, "{hop} forwarded in {:?}", r.head);
    }
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "final"));
    assert_eq!(c.get("/next").text(), "next\n");

    // SPEC section 12: at most 10 interim responses per request; the 11th makes
    // the answer a 502 instead of an endless relay.
    for (n, want) in [(10, 200), (11, 502)] {
        let mut c = p.client();
        c.set_timeout(Duration::from_secs(5));
        c.send(format!("GET /hints/{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let mut relayed = 0;
        let r = loop {
            let r = c.read_response();
            if r.status != 103 {
                break r;
            }
            relayed += 1;
        };
        assert_eq!(
            (relayed, r.status),
            (n.min(10), want),
            "{n} interim responses"
        );
    }
}

/// A client that half-closes after its request still gets the response.
fn client_half_close(d: Driver) {
    let b = Backend::fixed("half\n");
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    c.send(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n");
    c.wire.conn.shutdown(std::net::Shutdown::Write);
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "half\n"));
    c.expect_closed(Duration::from_secs(3));
}

/// An upgrade the backend declines (plain 200) leaves an ordinary keep-alive
/// connection; an `h2c` upgrade offer is not passed on.
fn upgrade_declined(d: Driver) {
    let b = Backend::fixed("no upgrade\n");
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let r = c.request(WS_HEAD.as_bytes());
    assert_eq!((r.status, r.text().as_str()), (200, "no upgrade\n"));
    assert!(r.keep_alive());
    assert_eq!(c.get("/after").text(), "no upgrade\n");
    let r = c.get_with(
        "/h2c",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    );
    assert_eq!(r.status, 200);
    let reqs = b.requests();
    let h2c = &reqs[2];
    assert_eq!(
        h2c.get("Upgrade"),
        None,
        "h2c offer forwarded: {:?}",
        h2c.head
    );
    assert_eq!(h2c.get("HTTP2-Settings"), None);
    assert_eq!(c.get("/last").text(), "no upgrade\n");
}

/// A client that sends `Expect: 100-continue` and its body at once (without
/// waiting) gets its request through.
fn expect_100_continue_body_at_once(d: Driver) {
    let b = Backend::summary();
    let p = start(d, &conf1("", &b.addr()));
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    c.send(b"POST /eager HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 300000\r\n\r\n");
    c.send_pattern(300_000);
    let mut r = c.read_response();
    if r.status == 100 {
        r = c.read_response();
    }
    assert_eq!(r.status, 200);
    assert_eq!(r.get("X-Body-Len"), Some("300000"));
    assert_eq!(r.get("X-Body-Pattern"), Some("yes"));
}

/// A known transfer coding before `chunked` (`gzip, chunked`) is accepted and
/// forwarded as is, framed by its chunks.
#[test]
fn transfer_coding_gzip_chunked_forwarded() {
    let b = Backend::summary();
    let p = Proxy::start(&conf1("", &b.addr()));
    let mut c = p.client();
    let r = c.request(
        b"POST /gz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          4\r\nabcd\r\n0\r\n\r\n",
    );
    assert_eq!((r.status, r.get("X-Body-Len")), (200, Some("4")));
    let req = &b.requests()[0];
    assert_eq!(req.get("Transfer-Encoding"), Some("gzip, chunked"));
    assert_eq!(req.body.text(), "abcd");
    assert_eq!(c.get("/next").status, 200);
}

// ---------------------------------------------------------------------------
// Idle pooled backend connections
// ---------------------------------------------------------------------------

/// A pooled backend connection left idle is closed by the worker's sweeper once
/// older than a pooled connection may be reused (4 s), instead of staying open
/// until the next request for its server: after one keep-alive request, the
/// backend sees EOF within about 6 s while no other request is made. The next
/// request then goes over a new backend connection.
fn idle_pooled_backend_connection_closed(d: Driver) {
    let b = Backend::fixed("pooled\n");
    let p = Proxy::start_with(
        &conf1("IdleTimeout 60s", &b.addr()),
        Options::driver(d).threads(1),
    );
    let mut c = p.client();
    c.set_timeout(Duration::from_secs(5));
    let r = c.get("/once");
    assert_eq!((r.status, r.text().as_str()), (200, "pooled\n"));
    assert!(r.keep_alive());
    let t = Instant::now();
    assert_eq!(b.connections(), 1);
    assert!(
        b.wait_closed(1, Duration::from_secs(6)),
        "the idle pooled backend connection is still open {:?} after its request",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(3500),
        "closed after {:?}, before a pooled connection stops being reusable (4 s)",
        t.elapsed()
    );
    // The client's own connection stays; its next request connects anew.
    let r = c.get("/again");
    assert_eq!((r.status, r.text().as_str()), (200, "pooled\n"));
    assert_eq!(r.get("X-Conn"), Some("1"), "{r:?}");
    assert_eq!(b.connections(), 2);
}
