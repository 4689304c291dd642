//! TLS, end to end (SPEC section 8): termination on http listeners and tcp
//! entries, SNI, ALPN, protocol versions, session resumption (across workers and
//! reloads), client certificates, bad configurations and bad clients, reloads of
//! certificate files under load (and of TLS settings), TLS backends
//! (verification, failover, pooling, health checks, backends that close),
//! statistics, key formats, Upgrade tunnels, `Splice on`, close_notify,
//! half-close, graceful shutdown, and nginx as a TLS backend.
//!
//! Certificates are made here with `rcgen` (ECDSA P-256; see `util::tls`). Clients
//! are rustls (through `util::tls::connect`, which hands back an ordinary
//! [`Client`]), `openssl s_client` and `curl`; the TLS backend is rustls in front
//! of the recording [`Backend`]. Whatever exercises the data path runs on both
//! monoio drivers.

mod util;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::metrics::{sample, samples};
use util::nginx::Nginx;
use util::tls::{
    client_hello, connect, get_once, installed, run, s_client, unix_date, Ca, ClientOpts, Dir,
    Leaf, Run, TlsBackend, TlsInfo, Validity, EXPIRED,
};
use util::{
    free_port, pattern_vec, per_driver, write_pattern, Backend, Body, Client, Driver, Options,
    Proxy, Reply, Response, MIB,
};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Every certificate the tests use, written into one directory (removed on drop).
struct Pki {
    dir: Dir,
    ca: Ca,
    /// Certificate "cert A" for a.example.com (valid until 2040-06-15).
    a: Leaf,
    /// "cert B" for b.example.com (valid until 2041-01-02).
    b: Leaf,
    /// "cert W" for *.example.org.
    w: Leaf,
    /// "cert E" for exact.example.org; `e.pem` holds its key too.
    e: Leaf,
    /// "backend" for localhost and 127.0.0.1.
    localhost: Leaf,
    /// Self-signed "rogue" for localhost and 127.0.0.1 (not under `ca`).
    rogue: Leaf,
    /// Client certificates: `O=Example, CN=client one`; `O=Example, Inc, CN=client two`.
    client1: Leaf,
    client2: Leaf,
    /// A client certificate from another CA.
    stranger: Leaf,
    /// Expired server certificate for a.example.com.
    expired: Leaf,
}

const B_UNTIL: Validity = Validity {
    from: (2024, 1, 1),
    until: (2041, 1, 2),
};

impl Pki {
    fn new() -> Pki {
        let dir = Dir::new("tls-pki");
        let ca = Ca::new("Simian Test CA");
        let other = Ca::new("Another CA");
        ca.write(&dir.0, "ca");
        other.write(&dir.0, "other-ca");
        let a = ca.server("cert A", &["a.example.com"]);
        let b = ca.server_valid("cert B", &["b.example.com"], B_UNTIL);
        let w = ca.server("cert W", &["*.example.org"]);
        let e = ca.server("cert E", &["exact.example.org"]);
        let localhost = ca.server("backend", &["localhost", "127.0.0.1", "::1"]);
        let rogue = Leaf::self_signed("rogue", &["localhost", "127.0.0.1"]);
        let client1 = ca.client("client one", "Example");
        let client2 = ca.client("client two", "Example, Inc");
        let stranger = other.client("stranger", "Elsewhere");
        let expired = ca.server_valid("cert X", &["a.example.com"], EXPIRED);
        // chain.pem: a leaf signed by an intermediate CA, then the intermediate.
        let inter = ca.intermediate("Simian Intermediate");
        let chained = inter.server("cert C", &["chain.example.com"]);
        chained.write(&dir.0, "chain");
        std::fs::write(
            dir.path("chain.pem"),
            format!("{}{}", chained.cert_pem, inter.cert_pem),
        )
        .unwrap();
        for (leaf, name) in [
            (&a, "a"),
            (&b, "b"),
            (&w, "w"),
            (&e, "e"),
            (&localhost, "localhost"),
            (&rogue, "rogue"),
            (&client1, "client1"),
            (&expired, "expired"),
        ] {
            leaf.write(&dir.0, name);
        }
        // expired.pem: an expired server certificate for a.example.com.
        // `e.pem`: the certificate and its key in one file.
        std::fs::write(dir.path("e.pem"), format!("{}{}", e.cert_pem, e.key_pem)).unwrap();
        Pki {
            dir,
            ca,
            a,
            b,
            w,
            e,
            localhost,
            rogue,
            client1,
            client2,
            stranger,
            expired,
        }
    }

    fn p(&self, name: &str) -> String {
        self.dir.s(name)
    }

    /// `TLSCertificate NAME.pem NAME.key` lines.
    fn certs(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "    TLSCertificate {} {}\n",
                    self.p(&format!("{n}.pem")),
                    self.p(&format!("{n}.key"))
                )
            })
            .collect()
    }

    fn opts(&self) -> ClientOpts {
        ClientOpts::new(&self.ca)
    }
}

/// A TLS http listener on `@PORT@` with `certs`, more `[PROXY_DEFAULTS]` lines,
/// and one entry for `server`.
fn https_conf(pki: &Pki, certs: &[&str], defaults: &str, server: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@ tls\n{}{defaults}\
         [PROXY_ENTRY]\n    Name app\n    Match ^/\n    ServerList {server}\n",
        pki.certs(certs)
    )
}

/// A request over TLS that must succeed.
fn tls_get(p: &Proxy, opts: &ClientOpts, name: &str, path: &str) -> (TlsInfo, Response) {
    get_once(&p.addr(), name, &opts.build(), path)
        .unwrap_or_else(|e| panic!("https GET {path} (SNI {name}): {e}\n{}", p.stderr()))
}

/// The Prometheus text of `/stats` on a plain listener.
fn metrics(port: u16) -> String {
    util::metrics::after_cache_window(&port.to_string());
    let mut c = Client::tcp(format!("127.0.0.1:{port}"));
    c.set_timeout(Duration::from_secs(5));
    let r = c.get_with("/stats", "Connection: close\r\n");
    assert_eq!(r.status, 200, "statistics: {:?}\n{}", r.head, r.text());
    r.text()
}

/// Poll the metrics until `cond` holds (5 s at most); the last text either way.
fn wait_metrics(port: u16, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(port);
        if cond(&m) || Instant::now() >= deadline {
            return m;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn reloads(m: &str, result: &str) -> f64 {
    sample(m, "simian_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
}

fn sighup(p: &Proxy) {
    // SAFETY: plain kill(2) on our own child.
    let r = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(r, 0, "kill(SIGHUP)");
}

/// SIGHUP, then wait until `simian_config_reloads_total{result}` reaches `n`.
fn reload_and_wait(p: &Proxy, stats: u16, result: &str, n: f64) -> String {
    sighup(p);
    let m = wait_metrics(stats, |m| reloads(m, result) >= n);
    assert_eq!(
        reloads(&m, result),
        n,
        "reload #{n} ({result}) not counted\n{}",
        p.stderr()
    );
    m
}

/// Whether the peer closed the connection, and after how long, watching for at
/// most `within`.
fn closed_after(c: &mut Client, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    c.read_until_close(within).ok().map(|_| t.elapsed())
}

/// A TCP echo server on 127.0.0.1 (one thread per connection).
fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

/// `openssl` is there (it is needed by several tests).
fn have_openssl() -> bool {
    if installed("openssl", "version") {
        true
    } else {
        eprintln!("skipped: openssl not installed");
        false
    }
}

/// The first `New, ...` / `Reused, ...` line of an `s_client` run.
fn session_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or("")
        .to_string()
}

/// An `s_client` session line of a handshake that did not complete.
fn refused_line(line: &str) -> bool {
    line.is_empty() || line.contains("(NONE)")
}

/// The `subject=` line of an `s_client` run, spaces removed.
fn subject_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .replace(' ', "")
}

// ---------------------------------------------------------------------------
// 1. HTTPS with curl: bodies, keep-alive, X-Forwarded-Proto
// ---------------------------------------------------------------------------

fn curl(args: &[&str]) -> String {
    let r = run("curl", args, b"", Duration::from_secs(30));
    assert!(r.ok(), "curl {args:?} failed: {}", r.all());
    r.stdout
}

fn https_with_curl(driver: Driver) {
    if !installed("curl", "--version") {
        eprintln!("skipped: curl not installed");
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start(|r| match r.target.as_str() {
        "/big" => Reply::Pattern(4 * MIB as u64),
        "/chunked" => Reply::ChunkedPattern(vec![1000, 70_000, 5]),
        "/upload" => Reply::summary(r),
        _ => Reply::ok("hello over tls\n"),
    });
    let p = Proxy::start_with(
        &https_conf(&pki, &["a", "b"], "", &backend.addr()),
        Options::driver(driver),
    );
    let resolve = format!("a.example.com:{}:127.0.0.1", p.port);
    let ca = pki.p("ca.pem");
    let url = |path: &str| format!("https://a.example.com:{}{path}", p.port);
    let out = |name: &str| pki.p(name);
    let base = |extra: &[&str]| -> String {
        let mut a = vec![
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "--http1.1",
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
        ];
        a.extend_from_slice(extra);
        curl(&a)
    };

    // Two URLs in one curl: the second rides the first one's TLS connection.
    let w = base(&[
        "-w",
        "%{http_code} %{num_connects}\\n",
        "-o",
        &out("one"),
        "-o",
        &out("two"),
        &url("/one"),
        &url("/two"),
    ]);
    assert_eq!(w, "200 1\n200 0\n", "keep-alive over TLS not kept");
    for f in ["one", "two"] {
        assert_eq!(std::fs::read_to_string(out(f)).unwrap(), "hello over tls\n");
    }

    // A 1 MiB POST body, Content-Length, then chunked.
    let body = pattern_vec(MIB);
    std::fs::write(out("body.bin"), &body).unwrap();
    let data = format!("@{}", out("body.bin"));
    base(&["-o", "/dev/null", "--data-binary", &data, &url("/upload")]);
    base(&[
        "-o",
        "/dev/null",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url("/upload"),
    ]);

    // A 4 MiB response, and a chunked one.
    let w = base(&[
        "-o",
        &out("big"),
        "-w",
        "%{http_code} %{size_download}",
        &url("/big"),
    ]);
    assert_eq!(w, format!("200 {}", 4 * MIB));
    let got = std::fs::read(out("big")).unwrap();
    assert!(
        got == pattern_vec(4 * MIB),
        "4 MiB response altered over TLS"
    );
    base(&["-o", &out("chunked"), &url("/chunked")]);
    let got = std::fs::read(out("chunked")).unwrap();
    assert!(
        got == pattern_vec(71_005),
        "chunked response altered ({} bytes)",
        got.len()
    );

    let reqs = backend.wait_requests(6, Duration::from_secs(5));
    assert_eq!(
        reqs.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
        ["/one", "/two", "/upload", "/upload", "/big", "/chunked"]
    );
    for r in &reqs {
        assert_eq!(
            r.get("x-forwarded-proto"),
            Some("https"),
            "X-Forwarded-Proto of {}: {:?}",
            r.target,
            r.head
        );
    }
    let (cl, chunked) = (&reqs[2], &reqs[3]);
    assert!(cl.complete && !cl.chunked, "{:?}", cl.head);
    assert!(
        cl.body.is_pattern(MIB as u64),
        "1 MiB body altered: {} bytes",
        cl.body.len
    );
    assert_eq!(cl.body.sha256(), util::sha256_hex(&body));
    assert!(chunked.complete && chunked.chunked, "{:?}", chunked.head);
    assert!(
        chunked.body.is_pattern(MIB as u64),
        "1 MiB chunked body altered: {} bytes",
        chunked.body.len
    );
}

/// The same over the rustls client: several requests on one connection, the
/// client's own `X-Forwarded-Proto` replaced, a pipelined pair, heads bigger
/// than a TLS record, `Expect: 100-continue`, a client that leaves in the middle
/// of a response.
fn https_keepalive_raw(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::start(|r| match r.target.as_str() {
        "/upload" => Reply::summary(r),
        "/big" => Reply::Pattern(16 * MIB as u64),
        t => Reply::ok(&format!("got {t}")),
    });
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    let (mut c, info) = connect(&p.addr(), "a.example.com", &pki.opts().build())
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", p.stderr()));
    assert_eq!(info.leaf(), &pki.a.der);
    for i in 0..5 {
        let r = c.get(&format!("/k{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("got /k{i}"));
    }
    // Two requests in one write (one TLS record).
    c.send(b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: http\r\n\r\n");
    assert_eq!(c.read_response().text(), "got /p1");
    assert_eq!(c.read_response().text(), "got /p2");
    let reqs = backend.wait_requests(7, Duration::from_secs(5));
    for r in &reqs {
        assert_eq!(
            r.head.get_all("x-forwarded-proto"),
            ["https"],
            "{:?}",
            r.head
        );
        assert_eq!(r.get("x-forwarded-for"), Some("127.0.0.1"), "{:?}", r.head);
    }

    // A 40 KiB head spans several TLS records; a 70 KiB one is too big.
    let r = c.get_with("/long", &format!("X-Long: {}\r\n", "a".repeat(40 * 1024)));
    assert_eq!((r.status, r.text().as_str()), (200, "got /long"));
    assert_eq!(
        backend
            .requests()
            .last()
            .unwrap()
            .get("x-long")
            .map(str::len),
        Some(40 * 1024)
    );
    let (mut big_head, _) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
    let r = big_head.get_with("/huge", &format!("X-Long: {}\r\n", "a".repeat(70 * 1024)));
    assert_eq!(r.status, 431);

    // Expect: 100-continue.
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            MIB
        )
        .as_bytes(),
    );
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "{:?}", interim.head);
    c.send_pattern(MIB as u64);
    let r = c.read_response();
    assert_eq!(r.get("x-body-pattern"), Some("yes"), "{:?}", r.head);
    assert_eq!(r.get("x-body-len"), Some(&*MIB.to_string()));

    // A client that leaves in the middle of a 16 MiB response.
    let (mut quitter, _) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
    quitter.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut some = [0u8; 64 * 1024];
    std::io::Read::read_exact(&mut quitter.wire.conn, &mut some).unwrap();
    drop(quitter);

    // `Connection: close`: the response, then the close.
    let r = c.get_with("/last", "Connection: close\r\n");
    assert_eq!(r.text(), "got /last");
    c.expect_closed(Duration::from_secs(3));
    // Still serving.
    let (_, r) = tls_get(&p, &pki.opts(), "a.example.com", "/after");
    assert_eq!(r.text(), "got /after");
}

/// When the proxy closes a TLS connection it sends close_notify first (RFC 8446
/// section 6.1: "Each party MUST send a close_notify alert before closing its
/// write side of the connection"). Without it a client cannot tell a complete
/// close-delimited body from a truncated one: rustls reports `UnexpectedEof`,
/// OpenSSL 3 "unexpected eof while reading".
fn close_notify_before_close(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::start(|r| match r.target.as_str() {
        "/eof" => Reply::ClosePattern(100_000),
        _ => Reply::ok("bye"),
    });
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    let mut ends = Vec::new();
    for (what, path, extra) in [
        ("after `Connection: close`", "/bye", "Connection: close\r\n"),
        ("after a close-delimited response", "/eof", ""),
    ] {
        let (mut c, info) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
        let r = c.get_with(path, extra);
        assert_eq!(r.status, 200);
        c.expect_closed(Duration::from_secs(3));
        ends.push((what, info.wait_end(Duration::from_secs(3))));
    }
    for (what, end) in &ends {
        assert_eq!(
            end,
            &Some(util::tls::End::CloseNotify),
            "{what}: the proxy closed the TLS connection without close_notify (all: {ends:?})"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. SNI
// ---------------------------------------------------------------------------

fn sni_picks_the_certificate(driver: Driver) {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::fixed("ok");
    // cert E comes as one file holding both the certificate and its key.
    let conf = https_conf(
        &pki,
        &["a", "b", "w"],
        &format!(
            "    TLSCertificate {}\n{}",
            pki.p("e.pem"),
            pki.certs(&["chain"])
        ),
        &backend.addr(),
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    let ca = pki.p("ca.pem");
    let cases: [(Option<&str>, &str); 9] = [
        (Some("a.example.com"), "cert A"),
        // Served with its intermediate: verifies against the root alone.
        (Some("chain.example.com"), "cert C"),
        (Some("b.example.com"), "cert B"),
        (Some("x.example.org"), "cert W"),
        // An exact name wins over a wildcard listed before it.
        (Some("exact.example.org"), "cert E"),
        // A wildcard covers one label only.
        (Some("a.b.example.org"), "cert A"),
        (Some("example.org"), "cert A"),
        (Some("unknown.example.net"), "cert A"),
        (None, "cert A"),
    ];
    for (name, want) in cases {
        let mut args = vec!["-CAfile", &ca];
        match name {
            Some(n) => args.extend_from_slice(&["-servername", n]),
            None => args.push("-noservername"),
        }
        let r = s_client(&p.addr(), &args, b"");
        let out = r.all();
        assert_eq!(
            subject_line(&out),
            format!("subject=CN={}", want.replace(' ', "")),
            "SNI {name:?} should get {want}:\n{out}"
        );
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "SNI {name:?}: chain does not verify:\n{out}"
        );
    }
    let (info, r) = tls_get(&p, &pki.opts(), "chain.example.com", "/chain");
    assert_eq!(info.peer.len(), 2, "the intermediate is not sent");
    assert_eq!(r.status, 200);
    // The same with rustls, checking the exact certificate served.
    let insecure = ClientOpts::insecure().build();
    for (name, want) in [
        ("b.example.com", &pki.b),
        ("X.EXAMPLE.ORG", &pki.w),
        ("exact.example.org", &pki.e),
        ("nothing.invalid", &pki.a),
    ] {
        let (_, info) = connect(&p.addr(), name, &insecure).unwrap();
        assert!(info.leaf() == &want.der, "SNI {name}: wrong certificate");
    }
    let (_, info) = connect(&p.addr(), "a.example.com", &pki.opts().no_sni().build()).unwrap();
    assert!(
        info.leaf() == &pki.a.der,
        "no SNI: not the first certificate"
    );
}

// ---------------------------------------------------------------------------
// 3. ALPN (and 11. tcp entries with TLS)
// ---------------------------------------------------------------------------

fn alpn_http_and_tcp(driver: Driver) {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::fixed("alpn ok");
    let echo = echo_server();
    let tcp_port = free_port();
    let conf = format!(
        "{}[PROXY_ENTRY]\n    Name echo\n    Mode tcp\n    Listen 127.0.0.1:{tcp_port} tls\n    ServerList {echo}\n",
        https_conf(&pki, &["a"], "", &backend.addr())
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    let ca = pki.p("ca.pem");
    let base = ["-CAfile", &ca, "-servername", "a.example.com"];

    let r = s_client(
        &p.addr(),
        &[&base[..], &["-alpn", "http/1.1"]].concat(),
        b"",
    );
    assert!(
        r.all().contains("ALPN protocol: http/1.1"),
        "http/1.1 not negotiated:\n{}",
        r.all()
    );
    let r = s_client(
        &p.addr(),
        &[&base[..], &["-alpn", "h2,http/1.1"]].concat(),
        b"",
    );
    assert!(
        r.all().contains("ALPN protocol: http/1.1"),
        "h2,http/1.1 offered: http/1.1 must be chosen:\n{}",
        r.all()
    );
    let r = s_client(&p.addr(), &[&base[..], &["-alpn", "h2"]].concat(), b"");
    let out = r.all();
    assert!(
        out.contains("No ALPN negotiated") && session_line(&out).starts_with("New, TLSv1."),
        "h2 only: the handshake must complete without ALPN:\n{out}"
    );

    // Offered only h2: served HTTP/1.1 all the same.
    let opts = pki.opts().alpn(&["h2"]);
    let (info, r) = tls_get(&p, &opts, "a.example.com", "/h2-only");
    assert_eq!(info.alpn, None);
    assert_eq!((r.status, r.text().as_str()), (200, "alpn ok"));
    let (info, _) = tls_get(
        &p,
        &pki.opts().alpn(&["h2", "http/1.1"]),
        "a.example.com",
        "/",
    );
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));

    // The tcp entry: no ALPN, even when offered.
    let tcp_addr = format!("127.0.0.1:{tcp_port}");
    let r = s_client(
        &tcp_addr,
        &[&base[..], &["-alpn", "http/1.1"]].concat(),
        b"",
    );
    let out = r.all();
    assert!(
        out.contains("No ALPN negotiated") && session_line(&out).starts_with("New, TLSv1."),
        "tcp entry: handshake without ALPN expected:\n{out}"
    );
    assert!(subject_line(&out).contains("CN=certA"), "{out}");

    // 11. Bytes through the tcp entry, echoed by a plain backend.
    let (mut c, info) = connect(
        &tcp_addr,
        "a.example.com",
        &pki.opts().alpn(&["http/1.1"]).build(),
    )
    .unwrap_or_else(|e| panic!("tcp entry handshake: {e}\n{}", p.stderr()));
    assert_eq!(info.alpn, None, "ALPN negotiated on a tcp entry");
    const N: u64 = 300 * 1024;
    let mut w = c.wire.conn.try_clone().unwrap();
    let writer = thread::spawn(move || write_pattern(&mut w, 0, N));
    let mut body = Body::default();
    c.wire
        .read_exact_into(N, &mut body)
        .unwrap_or_else(|e| panic!("echo over tcp+tls: {e}\n{}", p.stderr()));
    writer.join().unwrap().unwrap();
    assert!(body.is_pattern(N), "echoed bytes altered");
}

// ---------------------------------------------------------------------------
// 4. Protocol versions
// ---------------------------------------------------------------------------

fn protocol_versions(driver: Driver) {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::fixed("v");
    let ca = pki.p("ca.pem");
    let args = |v: &'static str| -> Vec<String> {
        ["-CAfile", &ca, "-servername", "a.example.com", v]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let hs = |p: &Proxy, v: &'static str| -> String {
        let a = args(v);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = s_client(&p.addr(), &a, b"");
        let out = r.all();
        session_line(&out)
    };

    // Default: both.
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    assert!(
        hs(&p, "-tls1_2").starts_with("New, TLSv1.2,"),
        "TLS 1.2 by default"
    );
    assert!(
        hs(&p, "-tls1_3").starts_with("New, TLSv1.3,"),
        "TLS 1.3 by default"
    );
    let (i, _) = tls_get(&p, &pki.opts().tls12(), "a.example.com", "/");
    assert_eq!(i.version, Some(rustls::ProtocolVersion::TLSv1_2));
    // Nothing older than 1.2 (the client's own floor lowered, so a refusal is
    // the server's).
    for old in ["-tls1_1", "-tls1"] {
        let r = s_client(
            &p.addr(),
            &[
                "-servername",
                "a.example.com",
                old,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
            b"",
        );
        let line = session_line(&r.all());
        assert!(refused_line(&line), "{old} accepted: {line}");
    }
    drop(p);

    // 1.3 only.
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "    TLSProtocols 1.3\n", &backend.addr()),
        Options::driver(driver),
    );
    let line = hs(&p, "-tls1_2");
    assert!(
        refused_line(&line),
        "TLSProtocols 1.3 accepted TLS 1.2: {line}"
    );
    assert!(
        get_once(&p.addr(), "a.example.com", &pki.opts().tls12().build(), "/").is_err(),
        "TLSProtocols 1.3 served a TLS 1.2 client"
    );
    assert!(hs(&p, "-tls1_3").starts_with("New, TLSv1.3,"));
    drop(p);

    // 1.2 only.
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "    TLSProtocols 1.2\n", &backend.addr()),
        Options::driver(driver),
    );
    let line = hs(&p, "-tls1_3");
    assert!(
        refused_line(&line),
        "TLSProtocols 1.2 accepted TLS 1.3: {line}"
    );
    assert!(hs(&p, "-tls1_2").starts_with("New, TLSv1.2,"));
    let (i, r) = tls_get(&p, &pki.opts(), "a.example.com", "/");
    assert_eq!(i.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// 5. Session resumption
// ---------------------------------------------------------------------------

/// One `s_client` run that sends a request and reads until the proxy closes
/// (so TLS 1.3 tickets arrive), reading and/or writing the session file.
fn s_client_session(
    addr: &str,
    ca: &str,
    version: &str,
    sess_in: Option<&str>,
    sess_out: &str,
) -> String {
    let mut args = vec![
        "-CAfile",
        ca,
        "-servername",
        "a.example.com",
        version,
        "-ign_eof",
        "-sess_out",
        sess_out,
    ];
    if let Some(f) = sess_in {
        args.extend_from_slice(&["-sess_in", f]);
    }
    let r = s_client(
        addr,
        &args,
        b"GET /resume HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n",
    );
    let out = r.all();
    assert!(
        out.contains("HTTP/1.1 200"),
        "no response through s_client ({version}):\n{out}"
    );
    session_line(&out)
}

fn session_resumption(driver: Driver) {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::fixed("resumed?");
    let stats = free_port();
    let p = Proxy::start_with(
        &https_conf(
            &pki,
            &["a"],
            &format!("    Listen 127.0.0.1:{stats}\n    StatisticsURL /stats\n"),
            &backend.addr(),
        ),
        Options::driver(driver).threads(2),
    );
    let ca = pki.p("ca.pem");
    for (version, tag) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let f = pki.p(&format!("sess{version}"));
        let first = s_client_session(&p.addr(), &ca, version, None, &f);
        assert!(first.starts_with(&format!("New, {tag},")), "{first}");
        // Several connections: with two workers, some land on each.
        for i in 0..6 {
            let line = s_client_session(&p.addr(), &ca, version, Some(&f), &f);
            assert!(
                line.starts_with(&format!("Reused, {tag},")),
                "{tag}: resumption #{i} failed: {line}\n{}",
                p.stderr()
            );
        }
    }
    // After a reload the tickets still work.
    reload_and_wait(&p, stats, "success", 1.0);
    for (version, tag) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let f = pki.p(&format!("sess{version}"));
        for i in 0..3 {
            let line = s_client_session(&p.addr(), &ca, version, Some(&f), &f);
            assert!(
                line.starts_with(&format!("Reused, {tag},")),
                "{tag}: resumption #{i} after SIGHUP failed: {line}\n{}",
                p.stderr()
            );
        }
    }
    // A session from another simian process is not resumed (the check above can
    // tell the difference).
    let q = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    let f = pki.p("sess-tls1_3");
    let line = s_client_session(&q.addr(), &ca, "-tls1_3", Some(&f), &pki.p("other"));
    assert!(line.starts_with("New, TLSv1.3,"), "{line}");
}

// ---------------------------------------------------------------------------
// 6. Client certificates
// ---------------------------------------------------------------------------

/// A GET over TLS that must fail: at the handshake, or (TLS 1.3, where the
/// client finishes first) with no response.
fn refused(p: &Proxy, opts: &ClientOpts, what: &str) {
    match get_once(&p.addr(), "a.example.com", &opts.build(), "/refused") {
        Err(_) => {}
        Ok((_, r)) => panic!("{what}: served ({} {:?})", r.status, r.head),
    }
}

fn client_certificates(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::start(|r| {
        Reply::ok(&format!(
            "subject={:?}",
            r.head.get_all("x-client-cert-subject")
        ))
    });
    let ca = pki.p("ca.pem");
    let forged = "X-Client-Cert-Subject: CN=forged,O=Evil\r\n";

    // Required (the default with a CA).
    let p = Proxy::start_with(
        &https_conf(
            &pki,
            &["a"],
            &format!("    TLSClientCA {ca}\n"),
            &backend.addr(),
        ),
        Options::driver(driver),
    );
    refused(&p, &pki.opts(), "required, no certificate");
    refused(&p, &pki.opts().tls12(), "required, no certificate, TLS 1.2");
    refused(
        &p,
        &pki.opts().cert(&pki.stranger),
        "required, certificate of another CA",
    );
    refused(
        &p,
        &pki.opts().cert(&pki.stranger).tls12(),
        "required, certificate of another CA, TLS 1.2",
    );
    assert_eq!(backend.request_count(), 0, "a refused client got through");

    let good = |opts: ClientOpts, want: &str| {
        let (mut c, _) = connect(&p.addr(), "a.example.com", &opts.build()).unwrap_or_else(|e| {
            panic!(
                "handshake with a good client certificate: {e}\n{}",
                p.stderr()
            )
        });
        let r = c.get_with("/me", forged);
        assert_eq!(r.status, 200, "{}", p.stderr());
        assert_eq!(r.text(), format!("subject=[{want:?}]"));
    };
    good(pki.opts().cert(&pki.client1), "CN=client one,O=Example");
    good(
        pki.opts().cert(&pki.client1).tls12(),
        "CN=client one,O=Example",
    );
    // RFC 4514 escapes the comma in a value.
    good(
        pki.opts().cert(&pki.client2),
        "CN=client two,O=Example\\, Inc",
    );
    // A resumed session still carries the client's identity.
    for opts in [pki.opts().tls13(), pki.opts().tls12()] {
        let cfg = opts.cert(&pki.client1).build();
        for round in 0..3 {
            let (mut c, info) = connect(&p.addr(), "a.example.com", &cfg).unwrap();
            let r = c.get_with("/again", &format!("{forged}Connection: close\r\n"));
            assert_eq!(
                r.text(),
                "subject=[\"CN=client one,O=Example\"]",
                "{:?} round {round}, resumed: {}",
                info.version,
                info.resumed()
            );
            assert_eq!(
                info.resumed(),
                round > 0,
                "{:?} round {round}",
                info.version
            );
        }
    }
    drop(p);

    // Optional.
    let p = Proxy::start_with(
        &https_conf(
            &pki,
            &["a"],
            &format!("    TLSClientCA {ca}\n    TLSClientAuth optional\n"),
            &backend.addr(),
        ),
        Options::driver(driver),
    );
    let (mut c, _) = connect(&p.addr(), "a.example.com", &pki.opts().build())
        .unwrap_or_else(|e| panic!("optional, no certificate: {e}\n{}", p.stderr()));
    let r = c.get_with("/anon", forged);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "subject=[]",
        "the client's own header got through"
    );
    let r = c.get("/anon2");
    assert_eq!(r.text(), "subject=[]");
    let (mut c, _) = connect(
        &p.addr(),
        "a.example.com",
        &pki.opts().cert(&pki.client1).build(),
    )
    .unwrap();
    assert_eq!(
        c.get_with("/me", forged).text(),
        "subject=[\"CN=client one,O=Example\"]"
    );
    let before = backend.request_count();
    refused(
        &p,
        &pki.opts().cert(&pki.stranger),
        "optional, certificate of another CA",
    );
    assert_eq!(backend.request_count(), before);
    drop(p);

    // No client authentication: the forged header is removed all the same.
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    let (mut c, _) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
    assert_eq!(c.get_with("/plain", forged).text(), "subject=[]");
    drop(p);

    // `TLSClientAuth off` beside a CA: no certificate asked for, none needed.
    let p = Proxy::start_with(
        &https_conf(
            &pki,
            &["a"],
            &format!("    TLSClientCA {ca}\n    TLSClientAuth off\n"),
            &backend.addr(),
        ),
        Options::driver(driver),
    );
    for opts in [pki.opts(), pki.opts().cert(&pki.stranger)] {
        let (mut c, _) = connect(&p.addr(), "a.example.com", &opts.build())
            .unwrap_or_else(|e| panic!("TLSClientAuth off: {e}\n{}", p.stderr()));
        assert_eq!(c.get_with("/off", forged).text(), "subject=[]");
    }
}

// ---------------------------------------------------------------------------
// 7. Bad configurations (`--check`) and bad clients
// ---------------------------------------------------------------------------

fn check(conf_path: &Path) -> Run {
    run(
        env!("CARGO_BIN_EXE_simian"),
        &["--check", "-c", conf_path.to_str().unwrap()],
        b"",
        Duration::from_secs(20),
    )
}

/// A config whose line 3 is `line3`.
fn check_conf(dir: &Dir, name: &str, line3: &str, rest: &str) -> (PathBuf, Run) {
    check_conf_to(dir, name, line3, rest, "127.0.0.1:1")
}

/// [`check_conf`] with the entry's `ServerList`.
fn check_conf_to(dir: &Dir, name: &str, line3: &str, rest: &str, server: &str) -> (PathBuf, Run) {
    let path = dir.path(&format!("{name}.conf"));
    std::fs::write(
        &path,
        format!(
            "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:{} tls\n{line3}\n{rest}\
             [PROXY_ENTRY]\n    Match ^/\n    ServerList {server}\n",
            free_port()
        ),
    )
    .unwrap();
    let r = check(&path);
    (path, r)
}

#[test]
fn check_rejects_bad_certificate_files() {
    let pki = Pki::new();
    let d = &pki.dir;
    std::fs::write(d.path("empty.pem"), "").unwrap();
    std::fs::write(d.path("junk.pem"), "this is not a certificate\n").unwrap();
    std::fs::write(
        d.path("der.pem"),
        pki.a.der.as_ref(), // DER, not PEM
    )
    .unwrap();
    std::fs::create_dir_all(d.path("adir")).unwrap();
    // A passphrase-protected key (when openssl is there to make one).
    let encrypted = installed("openssl", "version")
        && run(
            "openssl",
            &[
                "pkey",
                "-in",
                &pki.p("a.key"),
                "-aes256",
                "-passout",
                "pass:secret",
                "-out",
                &pki.p("enc.key"),
            ],
            b"",
            Duration::from_secs(10),
        )
        .ok();
    let (a, akey, bkey) = (pki.p("a.pem"), pki.p("a.key"), pki.p("b.key"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing certificate file",
            format!("    TLSCertificate {} {akey}", pki.p("missing.pem")),
            "missing.pem",
        ),
        (
            "missing key file",
            format!("    TLSCertificate {a} {}", pki.p("missing.key")),
            "missing.key",
        ),
        (
            "a directory instead of a file",
            format!("    TLSCertificate {} {akey}", pki.p("adir")),
            "adir",
        ),
        (
            "empty certificate file",
            format!("    TLSCertificate {} {akey}", pki.p("empty.pem")),
            "",
        ),
        (
            "not PEM",
            format!("    TLSCertificate {} {akey}", pki.p("junk.pem")),
            "",
        ),
        (
            "DER instead of PEM",
            format!("    TLSCertificate {} {akey}", pki.p("der.pem")),
            "",
        ),
        (
            "a PEM without a certificate (a key)",
            format!("    TLSCertificate {akey} {akey}"),
            "",
        ),
        (
            "key not matching its certificate",
            format!("    TLSCertificate {a} {bkey}"),
            "",
        ),
        (
            "empty key file",
            format!("    TLSCertificate {a} {}", pki.p("empty.pem")),
            "",
        ),
        (
            "certificate without key, file has none",
            format!("    TLSCertificate {a}"),
            "",
        ),
    ];
    let mut cases = cases;
    // Unreadable by permission: only meaningful when not running as root (root
    // reads a mode 000 file); the directory case above covers root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let locked = d.path("locked.pem");
        std::fs::write(&locked, &pki.a.cert_pem).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        cases.push((
            "an unreadable certificate file (mode 000)",
            format!("    TLSCertificate {} {akey}", locked.display()),
            "locked.pem",
        ));
    } else {
        eprintln!("mode 000 case skipped: running as root (a directory stands in for it)");
    }
    if encrypted {
        cases.push((
            "an encrypted key",
            format!("    TLSCertificate {a} {}", pki.p("enc.key")),
            "",
        ));
    }
    let mut failures = Vec::new();
    for (i, (what, line3, needle)) in cases.iter().enumerate() {
        let (path, r) = check_conf(d, &format!("bad{i}"), line3, "");
        let at = format!("{}:3:", path.display());
        let ok = r.code == Some(1) && r.stderr.contains(&at) && r.stderr.contains(needle);
        if !ok {
            failures.push(format!(
                "{what}: want exit 1 and an error at {at}; got {:?}\n{}",
                r.code,
                r.all()
            ));
        }
    }
    // Controls: the same shapes with good files pass.
    for (i, (line3, rest)) in [
        (format!("    TLSCertificate {a} {akey}"), String::new()),
        (
            format!("    TLSCertificate {}", pki.p("e.pem")),
            String::new(),
        ),
        (
            format!("    TLSCertificate {a}"),
            format!("    TLSKey {akey}\n"),
        ),
    ]
    .iter()
    .enumerate()
    {
        let (_, r) = check_conf(d, &format!("good{i}"), line3, rest);
        if r.code != Some(0) {
            failures.push(format!("good config #{i} refused:\n{}", r.all()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn check_rejects_bad_tls_settings() {
    let pki = Pki::new();
    let d = &pki.dir;
    std::fs::write(d.path("junk.pem"), "not a CA bundle\n").unwrap();
    let (a, akey) = (pki.p("a.pem"), pki.p("a.key"));
    let good = format!("    TLSCertificate {a} {akey}");
    let mut failures = Vec::new();
    let mut expect_error = |what: &str, name: &str, line3: &str, rest: &str, line: usize| {
        let (path, r) = check_conf_to(d, name, line3, rest, "tls:localhost:4443");
        let at = format!("{}:{line}:", path.display());
        if !(r.code == Some(1) && r.stderr.contains(&at)) {
            failures.push(format!(
                "{what}: want exit 1 and an error at {at}; got {:?}\n{}",
                r.code,
                r.all()
            ));
        }
    };
    // A tls listener without any certificate: the error names the listener.
    expect_error(
        "tls listener without TLSCertificate",
        "nocert",
        "    StatisticsURL /stats",
        "",
        2,
    );
    expect_error(
        "TLSKey beside two certificates",
        "twokeys",
        &format!("    TLSCertificate {a}"),
        &format!("    TLSCertificate {}\n    TLSKey {akey}\n", pki.p("b.pem")),
        5,
    );
    expect_error(
        "missing TLSClientCA",
        "noclientca",
        &good,
        &format!("    TLSClientCA {}\n", pki.p("missing-ca.pem")),
        4,
    );
    expect_error(
        "TLSClientCA not PEM",
        "junkclientca",
        &good,
        &format!("    TLSClientCA {}\n", pki.p("junk.pem")),
        4,
    );
    expect_error(
        "TLSProtocols 1.1",
        "tls11",
        &good,
        "    TLSProtocols 1.1\n",
        4,
    );
    expect_error(
        "missing BackendCA",
        "nobackendca",
        &good,
        &format!("    BackendCA {}\n", pki.p("missing-ca.pem")),
        4,
    );
    // A tcp entry's tls listener without any certificate.
    let path = d.path("tcpnocert.conf");
    std::fs::write(
        &path,
        format!(
            "[PROXY_ENTRY]\n    Mode tcp\n    Listen 127.0.0.1:{} tls\n    ServerList 127.0.0.1:1\n",
            free_port()
        ),
    )
    .unwrap();
    let r = check(&path);
    if !(r.code == Some(1) && r.stderr.contains(&format!("{}:3:", path.display()))) {
        failures.push(format!(
            "tcp entry tls listener without TLSCertificate: want exit 1 at line 3; got {:?}\n{}",
            r.code,
            r.all()
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Today's date (UTC) plus `days`.
fn date_in(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let z = now / 86_400 + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y as i32, m as u8, d as u8)
}

#[test]
fn check_warns_about_expiry_and_lists_certificates() {
    let pki = Pki::new();
    let d = &pki.dir;
    // Expired: a warning, not an error.
    let (_, r) = check_conf(
        d,
        "expired",
        &format!(
            "    TLSCertificate {} {}",
            pki.p("expired.pem"),
            pki.p("expired.key")
        ),
        "",
    );
    assert_eq!(
        r.code,
        Some(0),
        "an expired certificate is only a warning:\n{}",
        r.all()
    );
    assert!(
        r.stderr.to_lowercase().contains("expire"),
        "no warning about the expired certificate:\n{}",
        r.all()
    );
    // Expiring within 14 days: a warning too.
    let soon = pki.ca.server_valid(
        "cert S",
        &["soon.example.com"],
        Validity {
            from: (2024, 1, 1),
            until: date_in(7),
        },
    );
    let (sc, sk) = soon.write(&d.0, "soon");
    let (_, r) = check_conf(
        d,
        "soon",
        &format!("    TLSCertificate {} {}", sc.display(), sk.display()),
        "",
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(
        r.stderr.to_lowercase().contains("expire"),
        "no warning about a certificate expiring in 7 days:\n{}",
        r.all()
    );
    // A good one: no warning about expiry.
    let (_, r) = check_conf(
        d,
        "fine",
        &format!("    TLSCertificate {} {}", pki.p("a.pem"), pki.p("a.key")),
        &pki.certs(&["b"]),
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(
        !r.stderr.to_lowercase().contains("expire"),
        "expiry warning for certificates valid until 2040:\n{}",
        r.all()
    );
    // Started with an expired certificate: it serves, and says so in the log.
    let p = Proxy::start(&https_conf(&pki, &["expired"], "", "127.0.0.1:1"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !p.stderr().to_lowercase().contains("expire") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        p.stderr().to_lowercase().contains("expire"),
        "no warning in the log about the expired certificate:\n{}",
        p.stderr()
    );
    let (_, info) = connect(&p.addr(), "a.example.com", &ClientOpts::insecure().build()).unwrap();
    assert!(info.leaf() == &pki.expired.der);
    drop(p);
    // --check prints, for the tls listener, each certificate's names and expiry.
    for want in ["a.example.com", "2040-06-15", "b.example.com", "2041-01-02"] {
        assert!(
            r.stdout.contains(want),
            "--check output lacks {want:?}:\n{}",
            r.stdout
        );
    }
}

/// Plain HTTP, garbage and a broken record on a tls port: closed at once (well
/// under HeadTimeout 10s), and the proxy goes on serving.
fn bad_clients_closed_at_once(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::fixed("still fine");
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "    HeadTimeout 10s\n", &backend.addr()),
        Options::driver(driver),
    );
    let inputs: [(&str, Vec<u8>); 3] = [
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n".to_vec(),
        ),
        ("garbage", (0u8..200).map(|i| i.wrapping_mul(37)).collect()),
        (
            "a handshake record with a garbage body",
            [&[0x16u8, 0x03, 0x01, 0x00, 0x20][..], &[0x5a; 32][..]].concat(),
        ),
    ];
    for (what, bytes) in inputs {
        let mut c = Client::tcp(p.addr());
        c.send(&bytes);
        match closed_after(&mut c, Duration::from_secs(3)) {
            Some(t) => assert!(t < Duration::from_secs(1), "{what}: closed after {t:?}"),
            None => panic!("{what}: still open after 3 s"),
        }
    }
    let (_, r) = tls_get(&p, &pki.opts(), "a.example.com", "/after");
    assert_eq!(r.text(), "still fine");
}

/// A handshake that stalls (nothing sent, or half a ClientHello) is closed at
/// HeadTimeout (1 s), not before and not much after.
fn stalled_handshake_closed_at_head_timeout(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::fixed("still fine");
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "    HeadTimeout 1s\n", &backend.addr()),
        Options::driver(driver),
    );
    let hello = client_hello("a.example.com");
    assert!(hello.len() > 100 && hello[0] == 0x16);
    let mut clients: Vec<(&str, Client, Instant)> = Vec::new();
    for (what, bytes) in [
        ("half a ClientHello", &hello[..hello.len() / 2]),
        ("a record header only", &hello[..5]),
        ("nothing", &hello[..0]),
    ] {
        let mut c = Client::tcp(p.addr());
        let t = Instant::now();
        c.send(bytes);
        clients.push((what, c, t));
    }
    // A ClientHello trickled one byte every 100 ms: trickling does not extend
    // the deadline.
    let c = Client::tcp(p.addr());
    let mut w = c.wire.conn.try_clone().unwrap();
    let trickle = hello.clone();
    thread::spawn(move || {
        for b in trickle {
            if w.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    c.set_timeout(Duration::from_secs(5));
    clients.push(("a ClientHello trickled byte by byte", c, Instant::now()));
    for (what, mut c, t) in clients {
        let closed = c.read_until_close(Duration::from_secs(5)).is_ok();
        let after = t.elapsed();
        assert!(closed, "{what}: still open after 5 s (HeadTimeout 1s)");
        assert!(
            after >= Duration::from_millis(800) && after <= Duration::from_secs(3),
            "{what}: closed after {after:?}, HeadTimeout is 1s"
        );
    }
    let (_, r) = tls_get(&p, &pki.opts(), "a.example.com", "/after");
    assert_eq!(r.text(), "still fine");
}

// ---------------------------------------------------------------------------
// 8. Reloads
// ---------------------------------------------------------------------------

/// Full handshakes in a loop while the certificate files alternate between two
/// certificates and SIGHUP arrives 20 times: none fails, both are served, and
/// each reload's certificate is the one new handshakes get.
fn reload_certificates_under_handshakes(driver: Driver) {
    let pki = Pki::new();
    let one = pki.ca.server("reload one", &["www.example.com"]);
    let two = pki.ca.server("reload two", &["www.example.com"]);
    let (cert, key) = one.write(&pki.dir.0, "srv");
    let backend = Backend::fixed("r");
    let stats = free_port();
    let conf = format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@ tls\n    Listen 127.0.0.1:{stats}\n\
         \x20   StatisticsURL /stats\n    TLSCertificate {} {}\n\
         [PROXY_ENTRY]\n    Match ^/\n    ServerList {}\n",
        cert.display(),
        key.display(),
        backend.addr()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    let cfg = ClientOpts::new(&pki.ca).no_resumption().build();
    let addr = p.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let total = Arc::new(AtomicUsize::new(0));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen, errors, total) =
                (stop.clone(), seen.clone(), errors.clone(), total.clone());
            let (cfg, addr) = (cfg.clone(), addr.clone());
            let (d1, d2) = (one.der.clone(), two.der.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match connect(&addr, "www.example.com", &cfg) {
                        Ok((_, info)) => {
                            if info.leaf() == &d1 {
                                seen[0].fetch_add(1, Ordering::SeqCst);
                            } else if info.leaf() == &d2 {
                                seen[1].fetch_add(1, Ordering::SeqCst);
                            } else {
                                errors.lock().unwrap().push("unknown certificate".into());
                            }
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                    total.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    for i in 1..=20 {
        let leaf = if i % 2 == 1 { &two } else { &one };
        leaf.replace(&cert, &key);
        reload_and_wait(&p, stats, "success", i as f64);
        // New handshakes get the new certificate.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (_, info) = connect(&addr, "www.example.com", &cfg)
                .unwrap_or_else(|e| panic!("handshake after reload {i}: {e}"));
            if info.leaf() == &leaf.der {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reload {i}: the old certificate is still served 2 s later"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // Let the loops run a little under each configuration.
        let t = total.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while total.load(Ordering::SeqCst) < t + 4 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    let (n1, n2) = (
        seen[0].load(Ordering::SeqCst),
        seen[1].load(Ordering::SeqCst),
    );
    assert!(
        errors.is_empty(),
        "{} of {} handshakes failed across reloads: {:?}",
        errors.len(),
        total.load(Ordering::SeqCst),
        &errors[..errors.len().min(5)]
    );
    assert!(n1 > 0 && n2 > 0, "certificates seen: one {n1}, two {n2}");
    let m = metrics(stats);
    assert_eq!(reloads(&m, "failure"), 0.0);
}

/// A reload with a broken certificate file changes nothing; fixing it takes.
fn reload_with_broken_certificate_keeps_the_old(driver: Driver) {
    let pki = Pki::new();
    let (cert, key) = pki.a.write(&pki.dir.0, "srv");
    let backend = Backend::fixed("r");
    let stats = free_port();
    let conf = format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@ tls\n    Listen 127.0.0.1:{stats}\n\
         \x20   StatisticsURL /stats\n    TLSCertificate {} {}\n\
         [PROXY_ENTRY]\n    Match ^/\n    ServerList {}\n",
        cert.display(),
        key.display(),
        backend.addr()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    let opts = ClientOpts::insecure().no_resumption();
    let served = || tls_get(&p, &opts, "a.example.com", "/").0.leaf().clone();
    assert!(served() == pki.a.der);
    // An open connection made before the reloads keeps working after them.
    let (mut open, _) = connect(&p.addr(), "a.example.com", &opts.build()).unwrap();
    assert_eq!(open.get("/before").status, 200);

    // Garbage in the certificate file.
    std::fs::write(&cert, "garbage\n").unwrap();
    reload_and_wait(&p, stats, "failure", 1.0);
    assert!(
        served() == pki.a.der,
        "a broken file replaced the certificate"
    );
    let at = format!("{}:5:", p.dir.join("simian.conf").display());
    p.wait_log(&at, Duration::from_secs(3));
    let log = p.stderr();
    assert!(
        log.contains(&at),
        "the failed reload is not logged with the line of the certificate:\n{log}"
    );
    // A certificate with a key that is not its own.
    std::fs::write(&cert, &pki.b.cert_pem).unwrap();
    reload_and_wait(&p, stats, "failure", 2.0);
    assert!(
        served() == pki.a.der,
        "a mismatched key replaced the certificate"
    );
    // Fixed: the new certificate is served.
    pki.b.replace(&cert, &key);
    let m = reload_and_wait(&p, stats, "success", 1.0);
    assert_eq!(reloads(&m, "failure"), 2.0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while served() != pki.b.der {
        assert!(
            Instant::now() < deadline,
            "the fixed certificate is not served"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        open.get("/after").status,
        200,
        "open connection broken by reloads"
    );
}

// ---------------------------------------------------------------------------
// 9. TLS backends
// ---------------------------------------------------------------------------

/// A plain listener with `StatisticsURL /stats`, `BackendCA`, and one entry for
/// `servers` with `extra` lines.
fn backend_conf(pki: &Pki, extra: &str, servers: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@\n    StatisticsURL /stats\n    BackendCA {}\n\
         [PROXY_ENTRY]\n    Name app\n    Match ^/\n    ServerList {servers}\n{extra}",
        pki.p("ca.pem")
    )
}

/// `tls:localhost:PORT` verified against BackendCA: SNI `localhost`, one pooled
/// connection for many requests, large bodies intact; `tls:127.0.0.1:PORT`
/// sends no SNI.
fn tls_backend_pooled(driver: Driver) {
    let pki = Pki::new();
    let handler = |r: &util::Request| match r.target.as_str() {
        "/big" => Reply::Pattern(4 * MIB as u64),
        "/upload" => Reply::summary(r),
        t => Reply::ok(&format!("tls backend {t}")),
    };
    let named = TlsBackend::start(&pki.localhost, handler);
    let by_ip = TlsBackend::start(&pki.localhost, handler);
    // Entries are tried in file order: `/ip...` first.
    let conf = format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@\n    BackendCA {}\n\
         [PROXY_ENTRY]\n    Name ip\n    Match ^/ip\n    ServerList tls:127.0.0.1:{}\n\
         [PROXY_ENTRY]\n    Name app\n    Match ^/\n    ServerList tls:localhost:{}\n",
        pki.p("ca.pem"),
        by_ip.port(),
        named.port()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver).threads(1));
    let mut c = p.client();
    for i in 0..3 {
        let r = c.get(&format!("/r{i}"));
        assert_eq!(r.status, 200, "{}", p.stderr());
        assert_eq!(r.text(), format!("tls backend /r{i}"));
    }
    for i in 3..5 {
        let r = p
            .client()
            .get_with(&format!("/r{i}"), "Connection: close\r\n");
        assert_eq!(r.text(), format!("tls backend /r{i}"));
    }
    // Bodies through the TLS backend connection.
    let mut c = p.client();
    c.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {MIB}\r\n\r\n").as_bytes());
    c.send_pattern(MIB as u64);
    let r = c.read_response();
    assert_eq!(r.get("x-body-pattern"), Some("yes"), "{:?}", r.head);
    assert_eq!(r.get("x-body-len"), Some(&*MIB.to_string()));
    let r = c.get("/big");
    assert!(
        r.body.is_pattern(4 * MIB as u64),
        "4 MiB from a TLS backend altered"
    );

    assert_eq!(named.http.request_count(), 7);
    assert_eq!(
        named.handshakes(),
        1,
        "7 requests on one worker should share one pooled TLS connection"
    );
    assert_eq!(named.http.connections(), 1);
    assert_eq!(named.sni(), vec![Some("localhost".to_string())]);

    let r = p.client().get("/ip");
    assert_eq!((r.status, r.text()), (200, "tls backend /ip".to_string()));
    assert_eq!(by_ip.sni(), vec![None], "SNI sent for an IP literal");
    drop(p);

    // `tls:[::1]:PORT`.
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("IPv6 part skipped: no IPv6 loopback");
        return;
    }
    let v6 = TlsBackend::start_on("[::1]:0", &pki.localhost, handler);
    let p = Proxy::start_with(
        &backend_conf(&pki, "", &format!("tls:{}", v6.addr())),
        Options::driver(driver),
    );
    assert!(v6.addr().starts_with("[::1]:"));
    let r = p.client().get("/v6");
    assert_eq!(
        (r.status, r.text()),
        (200, "tls backend /v6".to_string()),
        "{}",
        p.stderr()
    );
    assert_eq!(v6.sni(), vec![None], "SNI sent for an IPv6 literal");
}

/// A backend whose certificate does not verify counts as a failed connect: the
/// next server takes the request, at once.
fn tls_backend_verification_failover(driver: Driver) {
    let pki = Pki::new();
    let rogue = TlsBackend::start(&pki.rogue, |_| Reply::ok("rogue"));
    let good = TlsBackend::start(&pki.localhost, |_| Reply::ok("good"));
    let p = Proxy::start_with(
        &backend_conf(
            &pki,
            "    LoadBalancer FirstAlive\n",
            &format!(
                "tls:localhost:{} tls:localhost:{}",
                rogue.port(),
                good.port()
            ),
        ),
        Options::driver(driver),
    );
    for i in 0..4 {
        let t = Instant::now();
        let r = p
            .client()
            .get_with(&format!("/f{i}"), "Connection: close\r\n");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "good"),
            "request {i}\n{}",
            p.stderr()
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    assert!(
        rogue.wait_failed(1, Duration::from_secs(2)) >= 1,
        "the rogue backend was never tried"
    );
    assert_eq!(
        rogue.http.request_count(),
        0,
        "a request reached an unverified backend"
    );

    // Only the rogue one: 502, not a hang.
    let p = Proxy::start_with(
        &backend_conf(&pki, "", &format!("tls:localhost:{}", rogue.port())),
        Options::driver(driver),
    );
    let t = Instant::now();
    let r = p.client().get_with("/x", "Connection: close\r\n");
    assert!(
        r.status == 502 || r.status == 503,
        "unverifiable backend: {} {:?}",
        r.status,
        r.head
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(rogue.http.request_count(), 0);

    // BackendTLSVerify off: accepted.
    let p = Proxy::start_with(
        &backend_conf(
            &pki,
            "    BackendTLSVerify off\n",
            &format!("tls:localhost:{}", rogue.port()),
        ),
        Options::driver(driver),
    );
    let r = p.client().get_with("/x", "Connection: close\r\n");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "rogue"),
        "{}",
        p.stderr()
    );
    assert_eq!(rogue.http.request_count(), 1);
}

/// Health checks over TLS: the good server answers `GET /health` over TLS and
/// stays up; one whose certificate does not verify goes down.
fn tls_backend_health_checks(driver: Driver) {
    let pki = Pki::new();
    let good = TlsBackend::start(&pki.localhost, |_| Reply::ok("healthy"));
    let rogue = TlsBackend::start(&pki.rogue, |_| Reply::ok("rogue"));
    let p = Proxy::start_with(
        &backend_conf(
            &pki,
            "    HealthCheck /health\n    HealthCheckInterval 1s\n    UnhealthyThreshold 1\n    HealthyThreshold 1\n",
            &format!("tls:localhost:{} tls:localhost:{}", good.port(), rogue.port()),
        ),
        Options::driver(driver),
    );
    let up = |m: &str, port: u16| -> Option<f64> {
        samples(m, "simian_server_up")
            .into_iter()
            .find(|(l, _)| {
                l.iter()
                    .any(|(k, v)| k == "server" && v.ends_with(&format!(":{port}")))
            })
            .map(|(_, v)| v)
    };
    let m = wait_metrics(p.port, |m| {
        up(m, rogue.port()) == Some(0.0) && good.http.targets().iter().any(|t| t == "/health")
    });
    assert!(
        good.http.targets().iter().any(|t| t == "/health"),
        "no health check reached the TLS backend:\n{}",
        p.stderr()
    );
    assert!(good.handshakes() >= 1);
    assert_eq!(
        up(&m, good.port()),
        Some(1.0),
        "good TLS server not up:\n{m}"
    );
    assert_eq!(
        up(&m, rogue.port()),
        Some(0.0),
        "unverifiable TLS server not marked down:\n{m}"
    );
    let r = p.client().get_with("/", "Connection: close\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "healthy"));
}

// ---------------------------------------------------------------------------
// 10. Statistics
// ---------------------------------------------------------------------------

fn tls_statistics(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::fixed("s");
    let stats = free_port();
    let tcp_port = free_port();
    let echo = echo_server();
    let p = Proxy::start_with(
        &format!(
            "{}[PROXY_ENTRY]\n    Name echo\n    Mode tcp\n    Listen 127.0.0.1:{tcp_port} tls\n    ServerList {echo}\n",
            https_conf(
                &pki,
                &["a", "b"],
                &format!("    Listen 127.0.0.1:{stats}\n    StatisticsURL /stats\n"),
                &backend.addr(),
            )
        ),
        Options::driver(driver).threads(1),
    );
    let tcp_listener = format!("127.0.0.1:{tcp_port}");
    let listener = p.addr();
    let hs = |m: &str, result: &str| -> f64 {
        sample(
            m,
            "simian_tls_handshakes_total",
            &[("listener", &listener), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    // Settle (the harness's readiness probe was a connection without a handshake).
    let mut m = metrics(stats);
    loop {
        thread::sleep(Duration::from_millis(200));
        let n = metrics(stats);
        let same = ["success", "resumed", "failure"]
            .iter()
            .all(|r| hs(&m, r) == hs(&n, r));
        m = n;
        if same {
            break;
        }
    }
    let base = |r: &str| hs(&m, r);
    let tcp_hs = |m: &str| {
        sample(
            m,
            "simian_tls_handshakes_total",
            &[("listener", &tcp_listener), ("result", "success")],
        )
        .unwrap_or(0.0)
    };
    let tcp_base = tcp_hs(&m);

    // Three full handshakes.
    let full = pki.opts().no_resumption();
    for _ in 0..3 {
        tls_get(&p, &full, "a.example.com", "/full");
    }
    // One full, then two resumed (TLS 1.3 tickets).
    let cfg = pki.opts().tls13().build();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (i, _) = get_once(&p.addr(), "a.example.com", &cfg, "/res").unwrap();
        kinds.push(i.resumed());
    }
    assert_eq!(kinds, [false, true, true], "rustls client did not resume");
    // Two failures: garbage, and a client that refuses the certificate.
    let mut c = Client::tcp(p.addr());
    c.send(b"\x16\x03\x01\x00\x10garbage-garbage!");
    let _ = c.read_until_close(Duration::from_secs(3));
    let other = Ca::new("unrelated");
    assert!(connect(&p.addr(), "a.example.com", &ClientOpts::new(&other).build()).is_err());

    // One on the tcp entry's listener.
    let (mut c, _) = connect(&tcp_listener, "a.example.com", &full.build()).unwrap();
    assert!(echo_through(&mut c, 10));
    drop(c);

    let want = [
        ("success", base("success") + 4.0),
        ("resumed", base("resumed") + 2.0),
        ("failure", base("failure") + 2.0),
    ];
    let m = wait_metrics(stats, |m| want.iter().all(|(r, v)| hs(m, r) == *v));
    for (r, v) in want {
        assert_eq!(
            hs(&m, r),
            v,
            "simian_tls_handshakes_total{{listener=\"{listener}\",result=\"{r}\"}}:\n{}",
            m.lines()
                .filter(|l| l.contains("simian_tls"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let m = wait_metrics(stats, |m| tcp_hs(m) == tcp_base + 1.0);
    assert_eq!(
        tcp_hs(&m),
        tcp_base + 1.0,
        "handshake on the tcp entry's listener not counted"
    );
    assert_eq!(
        sample(
            &m,
            "simian_tls_certificate_expiry_timestamp_seconds",
            &[("name", "a.example.com")]
        ),
        Some(unix_date(2040, 6, 15) as f64)
    );
    // The statistics URL is served on the tls listener too.
    let (_, r) = tls_get(&p, &pki.opts(), "a.example.com", "/stats");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("simian_tls_handshakes_total"),
        "{}",
        r.text()
    );
    if installed("promtool", "--version") {
        let r = run(
            "promtool",
            &["check", "metrics"],
            m.as_bytes(),
            Duration::from_secs(20),
        );
        assert!(r.ok(), "promtool check metrics: {}\ninput:\n{m}", r.all());
    } else {
        eprintln!("promtool part skipped: promtool not installed");
    }
    assert_eq!(
        sample(
            &m,
            "simian_tls_certificate_expiry_timestamp_seconds",
            &[("name", "b.example.com")]
        ),
        Some(unix_date(2041, 1, 2) as f64)
    );
}

// ---------------------------------------------------------------------------
// 12. nginx as a TLS backend
// ---------------------------------------------------------------------------

/// nginx answering over TLS with `cert`; its access log records the request, the
/// SNI, the protocol, which request of its connection it was and the
/// X-Forwarded-Proto simian sent.
fn start_tls_nginx(dir: &Path, cert: &Path, key: &Path) -> Nginx {
    Nginx::start(
        dir,
        "$request|$ssl_server_name|$ssl_protocol|$connection_requests|$http_x_forwarded_proto",
        |port| {
            format!(
                "keepalive_timeout 60s;\n\
                 server {{\n\
                   listen 127.0.0.1:{port} ssl;\n\
                   ssl_certificate {};\n\
                   ssl_certificate_key {};\n\
                   location / {{ return 200 \"nginx tls ok\\n\"; }}\n\
                 }}",
                cert.display(),
                key.display()
            )
        },
    )
}

#[test]
fn nginx_as_tls_backend() {
    if !installed("nginx", "-v") {
        eprintln!("skipped: nginx not installed (.ci/run installs it)");
        return;
    }
    let pki = Pki::new();
    let ndir = Dir::new("tls-nginx");
    let nginx = start_tls_nginx(
        &ndir.0,
        &pki.dir.path("localhost.pem"),
        &pki.dir.path("localhost.key"),
    );
    for driver in util::DRIVERS {
        let conf = format!(
            "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@ tls\n{}    BackendCA {}\n\
             [PROXY_ENTRY]\n    Match ^/\n    ServerList tls:localhost:{}\n",
            pki.certs(&["a"]),
            pki.p("ca.pem"),
            nginx.port
        );
        let p = Proxy::start_with(&conf, Options::driver(driver).threads(1));
        let (mut c, _) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
        for i in 0..3 {
            let r = c.get(&format!("/n{i}"));
            assert_eq!(r.status, 200, "{}\n{}", p.stderr(), nginx.logs());
            assert_eq!(r.text(), "nginx tls ok\n");
        }
        drop(c);
        drop(p);
    }
    let log = nginx.access();
    assert_eq!(log.len(), 6, "{log:?}");
    for l in &log {
        assert_eq!(l.len(), 5, "{l:?}");
        assert_eq!(l[1], "localhost", "SNI seen by nginx: {l:?}");
        assert!(l[2].starts_with("TLSv1."), "{l:?}");
        assert_eq!(l[4], "https", "X-Forwarded-Proto: {l:?}");
    }
    assert!(
        log.iter().any(|l| l[3] != "1"),
        "simian never reused its TLS connection to nginx: {log:?}"
    );
}

// ---------------------------------------------------------------------------
// More of the data path over TLS: Upgrade tunnels, `Splice on`, backends that
// close, tcp entries to TLS backends
// ---------------------------------------------------------------------------

const WS_HEAD: &str = "Host: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Echo `n` bytes of the pattern through `c` (writing from another thread).
fn echo_through(c: &mut Client, n: u64) -> bool {
    let mut w = c.wire.conn.try_clone().unwrap();
    let writer = thread::spawn(move || write_pattern(&mut w, 0, n));
    let mut body = Body::default();
    let got = c.wire.read_exact_into(n, &mut body);
    let sent = writer.join().unwrap();
    got.is_ok() && sent.is_ok() && body.is_pattern(n)
}

/// `Upgrade: websocket` on a TLS listener, to a plain backend and to a TLS
/// backend: 101, bytes both ways, and a half-close that travels.
fn upgrade_over_tls(driver: Driver) {
    let pki = Pki::new();
    let handler = |r: &util::Request| {
        if r.head.has_token("Upgrade", "websocket") {
            Reply::Upgrade
        } else {
            Reply::ok("plain")
        }
    };
    let plain = Backend::start(handler);
    let tls_b = TlsBackend::start(&pki.localhost, handler);
    let conf = format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@ tls\n{}    BackendCA {}\n\
         [PROXY_ENTRY]\n    Match ^/tls\n    ServerList tls:localhost:{}\n\
         [PROXY_ENTRY]\n    Match ^/\n    ServerList {}\n",
        pki.certs(&["a"]),
        pki.p("ca.pem"),
        tls_b.port(),
        plain.addr()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    for path in ["/ws", "/tls-ws"] {
        let (mut c, _) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
        c.set_timeout(Duration::from_secs(5));
        let r = c.request(format!("GET {path} HTTP/1.1\r\n{WS_HEAD}").as_bytes());
        assert_eq!(r.status, 101, "{path}: {:?}\n{}", r.head, p.stderr());
        for n in [5u64, 70_000, 2 * MIB as u64] {
            assert!(echo_through(&mut c, n), "{path}: {n} bytes echoed wrong");
        }
        // Our close_notify/EOF reaches the backend, which closes, which closes us.
        c.wire.conn.shutdown(std::net::Shutdown::Write);
        c.expect_closed(Duration::from_secs(5));
    }
    assert_eq!(tls_b.sni(), vec![Some("localhost".to_string())]);
}

/// `Splice on` must not bypass TLS: large bodies on a TLS listener, from a TLS
/// backend, and through a tcp entry with TLS arrive intact.
fn splice_on_keeps_tls(driver: Driver) {
    let pki = Pki::new();
    let handler = |r: &util::Request| match r.target.as_str() {
        "/upload" | "/tls/upload" => Reply::summary(r),
        "/close" => Reply::ClosePattern(3 * MIB as u64),
        _ => Reply::Pattern(8 * MIB as u64),
    };
    let plain = Backend::start(handler);
    let tls_b = TlsBackend::start(&pki.localhost, handler);
    let echo = echo_server();
    let tcp_port = free_port();
    let conf = format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@ tls\n{}    BackendCA {}\n    Splice on\n\
         [PROXY_ENTRY]\n    Match ^/tls\n    ServerList tls:localhost:{}\n\
         [PROXY_ENTRY]\n    Match ^/\n    ServerList {}\n\
         [PROXY_ENTRY]\n    Mode tcp\n    Listen 127.0.0.1:{tcp_port} tls\n    ServerList {echo}\n",
        pki.certs(&["a"]),
        pki.p("ca.pem"),
        tls_b.port(),
        plain.addr()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    let (mut c, _) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
    for path in ["/big", "/tls/big"] {
        let r = c.get(path);
        assert!(
            r.body.is_pattern(8 * MIB as u64),
            "{path}: 8 MiB with Splice on altered ({} bytes)",
            r.body.len
        );
    }
    for path in ["/upload", "/tls/upload"] {
        c.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                2 * MIB
            )
            .as_bytes(),
        );
        c.send_pattern(2 * MIB as u64);
        let r = c.read_response();
        assert_eq!(r.get("x-body-pattern"), Some("yes"), "{path}: {:?}", r.head);
        assert_eq!(r.get("x-body-len"), Some(&*(2 * MIB).to_string()), "{path}");
    }
    // A close-delimited response.
    let r = c.get("/close");
    assert_eq!(r.framing, util::Framing::Close);
    assert!(
        r.body.is_pattern(3 * MIB as u64),
        "close-delimited body altered"
    );

    let (mut c, _) = connect(
        &format!("127.0.0.1:{tcp_port}"),
        "a.example.com",
        &pki.opts().build(),
    )
    .unwrap();
    assert!(
        echo_through(&mut c, 3 * MIB as u64),
        "tcp entry: echo altered"
    );
}

/// A TLS backend that closes its connection after every response, with and
/// without saying so: every request still succeeds.
fn tls_backend_closing_connections(driver: Driver) {
    let pki = Pki::new();
    let announced = TlsBackend::start(&pki.localhost, |r| {
        Reply::RawClose(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                r.target.len(),
                r.target
            )
            .into_bytes(),
        )
    });
    // Says nothing, closes anyway (an idle timeout on the backend's side).
    let silent = TlsBackend::start(&pki.localhost, |r| {
        Reply::RawClose(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                r.target.len(),
                r.target
            )
            .into_bytes(),
        )
    });
    let conf = format!(
        "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@\n    BackendCA {}\n\
         [PROXY_ENTRY]\n    Match ^/s\n    ServerList tls:localhost:{}\n\
         [PROXY_ENTRY]\n    Match ^/\n    ServerList tls:localhost:{}\n",
        pki.p("ca.pem"),
        silent.port(),
        announced.port()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver).threads(1));
    let mut c = p.client();
    for i in 0..4 {
        for path in [format!("/a{i}"), format!("/s{i}")] {
            let r = c.get(&path);
            assert_eq!(
                (r.status, r.text()),
                (200, path.clone()),
                "{path}\n{}",
                p.stderr()
            );
            // Give the close time to arrive before the next request.
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(announced.handshakes(), 4);
    assert_eq!(silent.http.request_count(), 4);
}

/// A tcp entry (plain listener) in front of a TLS backend: TLS is spoken to the
/// backend, with SNI.
fn tcp_entry_to_tls_backend(driver: Driver) {
    let pki = Pki::new();
    let tls_b = TlsBackend::start(&pki.localhost, |r| {
        Reply::ok(&format!("tcp->tls {}", r.target))
    });
    let conf = format!(
        "[PROXY_ENTRY]\n    Mode tcp\n    Listen 127.0.0.1:@PORT@\n    BackendCA {}\n    ServerList tls:localhost:{}\n",
        pki.p("ca.pem"),
        tls_b.port()
    );
    let p = Proxy::start_with(&conf, Options::driver(driver));
    let mut c = p.client();
    for i in 0..3 {
        let r = c.get(&format!("/t{i}"));
        assert_eq!(r.text(), format!("tcp->tls /t{i}"), "{}", p.stderr());
    }
    assert!(tls_b
        .sni()
        .iter()
        .all(|s| s.as_deref() == Some("localhost")));
    let reqs = tls_b.http.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter().all(|r| r.conn == reqs[0].conn),
        "one client connection must be one backend connection"
    );
}

// ---------------------------------------------------------------------------
// Key formats
// ---------------------------------------------------------------------------

/// Keys in the PEM forms users have: PKCS#8 (EC and RSA), SEC1 `EC PRIVATE
/// KEY` and PKCS#1 `RSA PRIVATE KEY` (SPEC: "PKCS#8, RSA or EC").
fn key_formats(driver: Driver) {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let d = &pki.dir.0;
    let sec1 = pki.ca.server("cert SEC1", &["sec1.example.com"]);
    let rsa8 = pki.ca.server_rsa("cert RSA8", &["rsa8.example.com"]);
    let rsa1 = pki.ca.server_rsa("cert RSA1", &["rsa1.example.com"]);
    sec1.write(d, "sec1");
    rsa8.write(d, "rsa8");
    rsa1.write(d, "rsa1");
    for (name, header) in [
        ("sec1", "BEGIN EC PRIVATE KEY"),
        ("rsa1", "BEGIN RSA PRIVATE KEY"),
    ] {
        let (src, dst) = (
            pki.p(&format!("{name}.key")),
            pki.p(&format!("{name}.trad")),
        );
        let r = run(
            "openssl",
            &["pkey", "-in", &src, "-traditional", "-out", &dst],
            b"",
            Duration::from_secs(10),
        );
        assert!(r.ok(), "openssl pkey: {}", r.all());
        std::fs::rename(&dst, &src).unwrap();
        let text = std::fs::read_to_string(&src).unwrap();
        assert!(text.contains(header), "{name}: {text}");
    }
    let backend = Backend::fixed("keys");
    let p = Proxy::start_with(
        &https_conf(&pki, &["a", "sec1", "rsa8", "rsa1"], "", &backend.addr()),
        Options::driver(driver),
    );
    for (name, leaf) in [
        ("sec1.example.com", &sec1),
        ("rsa8.example.com", &rsa8),
        ("rsa1.example.com", &rsa1),
    ] {
        for opts in [pki.opts().tls13(), pki.opts().tls12()] {
            let (info, r) = tls_get(&p, &opts, name, "/");
            assert!(info.leaf() == &leaf.der, "{name}: wrong certificate");
            assert_eq!(r.text(), "keys");
        }
    }
}

/// A TLS 1.3 client that half-closes (close_notify, then FIN) after its request
/// still gets the response, as a plain one does (TLS 1.3 allows half-close,
/// RFC 8446 section 6.1).
fn client_half_close_tls13(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::fixed("half\n");
    let p = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    let (mut c, _) = connect(&p.addr(), "a.example.com", &pki.opts().tls13().build()).unwrap();
    c.set_timeout(Duration::from_secs(5));
    c.send(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n");
    c.wire.conn.shutdown(std::net::Shutdown::Write);
    let r = c.try_read_response(false);
    let r = r.unwrap_or_else(|e| panic!("no response after a TLS 1.3 half-close: {e}"));
    assert_eq!((r.status, r.text().as_str()), (200, "half\n"));
    c.expect_closed(Duration::from_secs(3));
}

/// Reloads that turn TLS on and off on a listener, and change `TLSProtocols`.
fn reload_tls_settings(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::fixed("served");
    let stats = free_port();
    let conf = |tls: &str, extra: &str| {
        format!(
            "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:@PORT@{tls}\n    Listen 127.0.0.1:{stats}\n\
             \x20   StatisticsURL /stats\n{}{extra}\
             [PROXY_ENTRY]\n    Match ^/\n    ServerList {}\n",
            pki.certs(&["a"]),
            backend.addr()
        )
    };
    let p = Proxy::start_with(&conf("", ""), Options::driver(driver));
    let write = |text: String| {
        let path = p.dir.join("simian.conf");
        let text = text.replace("@PORT@", &p.port.to_string());
        std::fs::write(path.with_extension("new"), text).unwrap();
        std::fs::rename(path.with_extension("new"), &path).unwrap();
    };
    let plain_ok = || {
        let mut c = Client::tcp(p.addr());
        c.set_timeout(Duration::from_secs(3));
        c.try_send(b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()
            .and_then(|_| c.try_read_response(false).ok())
            .is_some_and(|r| r.status == 200)
    };
    let tls_ok = |opts: &ClientOpts| {
        get_once(&p.addr(), "a.example.com", &opts.build(), "/tls")
            .is_ok_and(|(_, r)| r.status == 200)
    };
    assert!(plain_ok());

    // Wait (2 s at most) until `cond` holds, as a listener may be reopened.
    let eventually = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}\n{}", p.stderr());
            thread::sleep(Duration::from_millis(20));
        }
    };
    write(conf(" tls", ""));
    reload_and_wait(&p, stats, "success", 1.0);
    eventually("`tls` added by a reload: no TLS on the listener", &|| {
        tls_ok(&pki.opts())
    });
    assert!(!plain_ok(), "plain HTTP still served on a tls listener");

    write(conf(" tls", "    TLSProtocols 1.3\n"));
    reload_and_wait(&p, stats, "success", 2.0);
    eventually(
        "TLSProtocols 1.3 by a reload: TLS 1.2 still accepted",
        &|| !tls_ok(&pki.opts().tls12()),
    );
    assert!(tls_ok(&pki.opts().tls13()));

    write(conf("", ""));
    reload_and_wait(&p, stats, "success", 3.0);
    eventually(
        "`tls` removed by a reload: plain HTTP not served",
        &plain_ok,
    );
}

/// SIGTERM: an in-flight request over TLS finishes, an idle keep-alive TLS
/// connection is closed, and the process exits 0 soon.
fn graceful_shutdown_with_tls(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::start(|r| match r.target.as_str() {
        "/slow" => Reply::Trickle(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n".to_vec(),
                b"sl".to_vec(),
                b"ow".to_vec(),
                b"-done".to_vec(),
            ],
            Duration::from_millis(250),
        ),
        _ => Reply::ok("idle"),
    });
    let mut p = Proxy::start_with(
        &https_conf(&pki, &["a"], "", &backend.addr()),
        Options::driver(driver),
    );
    let cfg = pki.opts().build();
    let (mut idle, _) = connect(&p.addr(), "a.example.com", &cfg).unwrap();
    assert_eq!(idle.get("/first").text(), "idle");
    let (mut busy, _) = connect(&p.addr(), "a.example.com", &cfg).unwrap();
    busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    let reader = thread::spawn(move || busy.try_read_response(false).map(|r| r.text()));
    backend.wait_requests(2, Duration::from_secs(5));
    let t = Instant::now();
    let st = p.terminate(Duration::from_secs(10));
    let reply = reader.join().unwrap();
    assert_eq!(
        reply.as_deref().ok(),
        Some("slow-done"),
        "in-flight TLS request cut by SIGTERM: {reply:?}"
    );
    assert!(
        st.is_some_and(|s| s.success()),
        "exit after SIGTERM: {st:?} ({:?})",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} (an idle TLS connection held it?)",
        t.elapsed()
    );
    idle.expect_closed(Duration::from_secs(1));
}

/// An idle keep-alive TLS connection is parked (its task goes, its session stays)
/// and serves its next request as before; one left idle past IdleTimeout is closed
/// with close_notify, from the parked set.
fn idle_tls_connections_park_and_resume(driver: Driver) {
    let pki = Pki::new();
    let backend = Backend::fixed("parked");
    let stats = free_port();
    let p = Proxy::start_with(
        &https_conf(
            &pki,
            &["a"],
            &format!(
                "    Listen 127.0.0.1:{stats}\n    StatisticsURL /stats\n    IdleTimeout 3s\n"
            ),
            &backend.addr(),
        ),
        Options::driver(driver).threads(1),
    );
    let parked = |m: &str| sample(m, "simian_client_connections_parked", &[]).unwrap_or(0.0);
    let (mut c, info) = connect(&p.addr(), "a.example.com", &pki.opts().build()).unwrap();
    for round in 0..3 {
        // Parked after 500 ms idle (the sweeper runs every 250 ms).
        let m = wait_metrics(stats, |m| parked(m) >= 1.0);
        assert!(parked(&m) >= 1.0, "round {round}: not parked:\n{m}");
        let r = c.get("/again");
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(r.text(), "parked");
    }
    assert_eq!(backend.request_count(), 3);
    // Left alone past IdleTimeout: closed by the parked set, with close_notify.
    c.expect_closed(Duration::from_secs(6));
    assert_eq!(
        info.wait_end(Duration::from_secs(3)),
        Some(util::tls::End::CloseNotify)
    );
}

per_driver!(
    https_with_curl,
    idle_tls_connections_park_and_resume,
    https_keepalive_raw,
    close_notify_before_close,
    sni_picks_the_certificate,
    alpn_http_and_tcp,
    protocol_versions,
    session_resumption,
    client_certificates,
    bad_clients_closed_at_once,
    stalled_handshake_closed_at_head_timeout,
    reload_certificates_under_handshakes,
    reload_with_broken_certificate_keeps_the_old,
    tls_backend_pooled,
    tls_backend_verification_failover,
    tls_backend_health_checks,
    tls_statistics,
    upgrade_over_tls,
    splice_on_keeps_tls,
    tls_backend_closing_connections,
    tcp_entry_to_tls_backend,
    key_formats,
    client_half_close_tls13,
    reload_tls_settings,
    graceful_shutdown_with_tls,
);
