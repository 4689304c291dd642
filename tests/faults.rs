//! Fault injection (issue 13, SPEC section 12): the real `simian` binary on
//! loopback in front of in-process backends that misbehave on purpose (a reset in
//! the middle of a body, a response nobody asked for), on a host that runs short
//! (no file descriptors, a log nobody reads), against clients that read slowly or
//! bring a new cookie with every request, and through reloads ten times a second.
//!
//! Each test says which defect it guards against. Those whose outcome depends on
//! the I/O path run once per monoio driver (names ending in `uring` / `epoll`);
//! the sticky table does not touch I/O and runs once. Every wait has a deadline,
//! so a proxy that hangs fails a test instead of blocking it.

mod util;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::metrics::{sample, samples};
use util::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `[PROXY_DEFAULTS]` on `@PORT@` with the statistics at `/stats` and the
/// `defaults` lines, then the entry `web`, for every path, in front of `servers`.
fn conf(defaults: &str, servers: &str, entry: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\nStatisticsURL /stats\n{defaults}\n\n\
         [PROXY_ENTRY]\nName web\nMatch ^/\nServerList {servers}\n{entry}\n"
    )
}

/// simian on driver `d` with two workers (so that pools, tables and limits are
/// shared or split across threads as in production).
fn start(d: Driver, config: &str) -> Proxy {
    start_with(d, config, &[])
}

fn start_with(d: Driver, config: &str, args: &[&str]) -> Proxy {
    let mut opts = Options::driver(d).threads(2);
    opts.args = args.iter().map(|a| a.to_string()).collect();
    Proxy::start_with(config, opts)
}

/// A client of `addr` (`HOST:PORT`) whose reads give up after `timeout`.
fn connect(addr: &str, timeout: Duration) -> io::Result<Client> {
    let a: std::net::SocketAddr = addr.parse().unwrap();
    let s = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    let c = Client {
        wire: Wire::new(Conn::Tcp(s)),
    };
    c.set_timeout(timeout);
    Ok(c)
}

/// A client of the proxy whose reads give up after `timeout`.
fn client(p: &Proxy, timeout: Duration) -> Client {
    let c = p.client();
    c.set_timeout(timeout);
    c
}

/// The Prometheus text of `/stats`, read on a connection of its own.
fn stats(p: &Proxy) -> String {
    let r = client(p, Duration::from_secs(5)).get_with("/stats", "Connection: close\r\n");
    assert_eq!(r.status, 200, "statistics: {:?}", r.head);
    r.text()
}

/// The sum of the samples of `name` over all their labels; `None` when there is
/// no such metric.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let s = samples(text, name);
    (!s.is_empty()).then(|| s.iter().map(|(_, v)| v).sum())
}

/// The sample `name{labels}`, which must exist: a missing metric fails with its
/// name, not with an `unwrap` on `None`.
fn required(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| {
        let mine: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
        panic!("the statistics have no {name}{labels:?} (lines with that name: {mine:?})")
    })
}

/// A response (status and body) or why there is none, for failure lists.
fn describe(r: &io::Result<Response>) -> String {
    match r {
        Ok(r) => format!("{} {:?}", r.status, r.text()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            "no answer before the read timeout".to_string()
        }
        Err(e) => format!("error: {e}"),
    }
}

/// Send every request of `batch` in one write (pipelined), then read their
/// responses in order.
fn pipeline(c: &mut Client, batch: &[String]) -> io::Result<Vec<Response>> {
    c.try_send(batch.concat().as_bytes())?;
    batch.iter().map(|_| c.try_read_response(false)).collect()
}

/// One GET of `target` with the `extra` header lines (each ending in CRLF) on
/// `c`, and its response.
fn try_get(c: &mut Client, target: &str, extra: &str) -> io::Result<Response> {
    c.try_send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes())?;
    c.try_read_response(false)
}

/// A backend that answers every request with its own target as the body (so
/// that a client can tell its answer from anyone else's) and closes the
/// connection after it (so that every request needs a new backend connection).
fn echo_target_and_close() -> Backend {
    Backend::start(|r| Reply::status(200, &[("Connection", "close")], &r.target))
}

/// The configuration of a running proxy, rewritten for SIGHUP on tmpfs: the
/// proxy's own directory is under /tmp, on disk on the test machines, where a
/// write was seen to stall for 2 s while a build ran (ops.rs saw 6 s), which
/// would pause the reloads this file sends ten times a second. The proxy's
/// `simian.conf` becomes a symbolic link to `current.conf` in a directory of
/// /dev/shm (or the temporary directory where there is no /dev/shm).
struct TmpfsConfig {
    dir: std::path::PathBuf,
    pid: u32,
    /// What `@PORT@` and `@DIR@` stand for in this proxy's configurations.
    port: String,
    proxy_dir: String,
}

impl TmpfsConfig {
    fn attach(p: &Proxy) -> TmpfsConfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "simian-faults-{}-{}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        );
        let shm = Path::new("/dev/shm");
        let dir = if std::fs::create_dir_all(shm.join(&name)).is_ok() {
            shm.join(&name)
        } else {
            temp_dir("faults-conf")
        };
        std::fs::write(dir.join("current.conf"), &p.config).unwrap();
        let link = p.dir.join("simian.conf.link");
        std::os::unix::fs::symlink(dir.join("current.conf"), &link).unwrap();
        std::fs::rename(&link, p.dir.join("simian.conf")).unwrap();
        TmpfsConfig {
            dir,
            pid: p.pid(),
            port: p.port.to_string(),
            proxy_dir: p.dir.display().to_string(),
        }
    }

    /// Replace the file (atomically: a reload never reads half a file) and send
    /// SIGHUP.
    fn reload(&self, config: &str) {
        let tmp = self.dir.join("next.conf");
        let text = config
            .replace("@PORT@", &self.port)
            .replace("@DIR@", &self.proxy_dir);
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("current.conf")).unwrap();
        // SAFETY: plain kill(2) on our own child.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGHUP) };
        assert_eq!(r, 0, "SIGHUP: {}", io::Error::last_os_error());
    }
}

impl Drop for TmpfsConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The largest RSS of `pid` seen while `work` runs (sampled every 10 ms), with
/// what `work` returned.
fn peak_rss_during<T>(pid: u32, work: impl FnOnce() -> T) -> (u64, T) {
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(util::process::rss_bytes(pid).unwrap_or(0));
    let out = thread::scope(|s| {
        s.spawn(|| {
            while !done.load(SeqCst) {
                if let Some(rss) = util::process::rss_bytes(pid) {
                    peak.fetch_max(rss, SeqCst);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        let out = work();
        done.store(true, SeqCst);
        out
    });
    (peak.load(SeqCst), out)
}

// ---------------------------------------------------------------------------
// 1. A backend that resets mid-body
// ---------------------------------------------------------------------------

/// Body bytes the resetting backend sends before its reset, and what it declares.
const BEFORE_RESET: usize = 100 * KIB;
const DECLARED: u64 = 1_000_000;

/// A backend that answers `GET /reset` with [`reset_mid_body`] and any other
/// request with `200 ok`. Its address.
fn resetting_backend() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut wire = Wire::new(Conn::Tcp(s));
                while let Ok(Some(raw)) = wire.read_head() {
                    if raw.starts_with(b"GET /reset ") {
                        return reset_mid_body(wire);
                    }
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                    if wire.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A head declaring 1,000,000 bytes, 100 KiB of them, and a reset: SO_LINGER 0,
/// so that close(2) sends an RST.
fn reset_mid_body(mut wire: Wire) {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {DECLARED}\r\n\r\n");
    let _ = wire.write_all(head.as_bytes());
    let _ = write_pattern(&mut wire.conn, 0, BEFORE_RESET as u64);
    // Time for simian to take the bytes: the reset comes after them, not
    // instead of them.
    thread::sleep(Duration::from_millis(100));
    if let Conn::Tcp(s) = &wire.conn {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
}

/// A backend that resets its connection in the middle of a body: the client's
/// response ends early (its connection closes with fewer bytes than declared,
/// those it got intact) at once, and the entry goes on serving. Guards against a
/// proxy that waits for the rest of a body that will never come (the client hangs
/// until some timeout), completes or pads a cut body, or dies on ECONNRESET.
fn backend_reset_mid_body(d: Driver) {
    let backend = resetting_backend();
    let mut p = start(d, &conf("", &backend, ""));
    let mut c = client(&p, Duration::from_secs(10));
    let t = Instant::now();
    c.send(b"GET /reset HTTP/1.1\r\nHost: test\r\n\r\n");
    let raw = c.expect_closed(Duration::from_secs(5));
    let took = t.elapsed();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&raw)));
    let head = Head::parse(&raw[..end + 4]);
    assert_eq!(status_of(&raw), 200, "{head:?}");
    assert_eq!(head.get("content-length"), Some("1000000"), "{head:?}");
    let body = &raw[end + 4..];
    println!("{} body bytes, closed after {took:?}", body.len());
    assert!(
        body.len() <= BEFORE_RESET,
        "{} body bytes reached the client, the backend sent {BEFORE_RESET}",
        body.len()
    );
    assert!(
        body == &pattern_vec(body.len())[..],
        "the {} body bytes that came are not the backend's",
        body.len()
    );
    // The backend resets 100 ms after its bytes; the client must know soon after.
    assert!(
        took < Duration::from_secs(3),
        "the cut response took {took:?} to end"
    );
    let mut c = client(&p, Duration::from_secs(5));
    assert_eq!(c.get("/after").text(), "ok\n", "the next client");
    assert!(p.alive(), "simian exited");
}

// ---------------------------------------------------------------------------
// 2. Stray bytes after a response
// ---------------------------------------------------------------------------

/// What the stray backend writes, unasked, 50 ms after each answer to `/stray...`.
const STOLEN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen";

/// Answers every request with its own target as the body. To `/stray...` it
/// answers after 50 ms (so that the requests of a round are in flight together,
/// each on a backend connection of its own), and 50 ms later writes [`STOLEN`] on
/// the same connection.
fn stray_backend() -> Backend {
    Backend::start(|r| {
        let own = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            r.target.len(),
            r.target
        )
        .into_bytes();
        if r.target.starts_with("/stray") {
            Reply::Trickle(
                vec![vec![], own, STOLEN.to_vec()],
                Duration::from_millis(50),
            )
        } else {
            Reply::Raw(own)
        }
    })
}

/// One GET of `target` on `c`; anything but `200` with `target` as its body is
/// added to `failures`.
fn check_own_answer(c: &mut Client, target: &str, failures: &Mutex<Vec<String>>) {
    let r = try_get(c, target, "");
    match &r {
        Ok(r) if r.status == 200 && r.text() == target => {}
        _ => failures
            .lock()
            .unwrap()
            .push(format!("{target}: {}", describe(&r))),
    }
}

/// A backend writes a whole second response after some of its answers; it sits
/// on pooled connections, four at once over both workers. The clients that come
/// next, several at once and keep-alive (the polluting clients too), each get
/// their own answer, and no one ever reads `stolen`. Guards against a pool that
/// reuses an idle connection without noticing the bytes on it, which hands a
/// response to a client that did not ask for it (or shifts every later answer on
/// that connection by one). http.rs checks one polluted connection and one later
/// client; this is several of each, over three rounds.
fn stray_bytes_never_reach_another_client(d: Driver) {
    let b = stray_backend();
    let p = start(d, &conf("", &b.addr(), ""));
    let addr = p.addr();
    let failures = Mutex::new(Vec::new());
    let mut polluters: Vec<Client> = (0..4).map(|_| client(&p, Duration::from_secs(5))).collect();
    for round in 0..3 {
        // Four requests in flight together: four backend connections, each to
        // get a stray response 50 ms after its answer.
        let sent = Barrier::new(polluters.len());
        thread::scope(|s| {
            for (i, c) in polluters.iter_mut().enumerate() {
                let (sent, failures) = (&sent, &failures);
                s.spawn(move || {
                    let target = format!("/stray/{round}/{i}");
                    c.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
                    sent.wait();
                    let r = c.try_read_response(false);
                    if !matches!(&r, Ok(r) if r.status == 200 && r.text() == target) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{target}: {}", describe(&r)));
                    }
                });
            }
        });
        // The stray responses have arrived on the idle pooled connections.
        thread::sleep(Duration::from_millis(150));
        thread::scope(|s| {
            for t in 0..6 {
                let (addr, failures) = (&addr, &failures);
                s.spawn(move || {
                    let mut c = connect(addr, Duration::from_secs(5)).unwrap();
                    for i in 0..8 {
                        check_own_answer(&mut c, &format!("/c/{round}/{t}/{i}"), failures);
                    }
                });
            }
            for (i, c) in polluters.iter_mut().enumerate() {
                let failures = &failures;
                s.spawn(move || {
                    for k in 0..4 {
                        check_own_answer(c, &format!("/p/{round}/{i}/{k}"), failures);
                    }
                });
            }
        });
    }
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} wrong answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. Out of file descriptors during traffic
// ---------------------------------------------------------------------------

/// Where the fd test is, as the traffic threads see it. Each phase is entered
/// before (`LOWERING`, `RAISING`) or after (`STARVED`, `RESTORED`) the limit
/// changes, so that a request sent and answered within `STARVED` certainly ran
/// without a free fd, whatever the timing.
const NORMAL: u8 = 0;
const LOWERING: u8 = 1;
/// simian's soft RLIMIT_NOFILE is 3: not one new fd.
const STARVED: u8 = 2;
const RAISING: u8 = 3;
/// The limit is back.
const RESTORED: u8 = 4;

/// One request of the fd test's traffic.
struct Outcome {
    target: String,
    /// Phase when it was sent and when its answer (or error) came.
    sent: u8,
    answered: u8,
    took: Duration,
    result: io::Result<Response>,
}

/// A client thread of the fd test: requests on a keep-alive connection until
/// `stop`; a closed connection is replaced, except around the starved phase (a
/// connection made then waits in the listen backlog, which the test checks
/// separately).
fn fd_traffic(addr: &str, t: usize, phase: &AtomicU8, stop: &AtomicBool) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut conn: Option<Client> = None;
    for i in 0.. {
        if stop.load(SeqCst) {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None if (LOWERING..=RAISING).contains(&phase.load(SeqCst)) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            None => conn.insert(connect(addr, Duration::from_secs(5)).unwrap()),
        };
        let target = format!("/t/{t}/{i}");
        let sent = phase.load(SeqCst);
        let t0 = Instant::now();
        let result = try_get(c, &target, "");
        if !matches!(&result, Ok(r) if r.keep_alive()) {
            conn = None;
        }
        out.push(Outcome {
            target,
            sent,
            answered: phase.load(SeqCst),
            took: t0.elapsed(),
            result,
        });
    }
    out
}

/// simian runs out of file descriptors while eight clients send requests (every
/// backend answer closes its connection, so each request needs a new fd) and four
/// idle ones hold theirs. Requests that cannot get a backend fd get 503 at once
/// (not a 200 after waiting for an fd, not a hang, not a 502); the one server is
/// not blamed (`AttemptsCount 1` would take it offline at the first counted
/// failure): once the limit is back every request succeeds, a connection that
/// waited in the backlog meanwhile is served, the idle clients are still served,
/// `simian_server_up` is 1 and `simian_local_errors_total{cause="fds"}` counts the
/// failures. http.rs checks one request on an idle proxy; this is the same under
/// concurrent traffic.
fn out_of_fds_during_traffic(d: Driver) {
    let b = echo_target_and_close();
    let p = start(
        d,
        &conf("", &b.addr(), "AttemptsCount 1\nOfflineTimeOut 60s"),
    );
    let addr = p.addr();
    let pid = p.pid();
    let (soft, _) = util::process::nofile(pid);
    let mut holders: Vec<Client> = (0..4).map(|_| client(&p, Duration::from_secs(5))).collect();
    for (i, c) in holders.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/hold/{i}")).text(), format!("/hold/{i}"));
    }
    let phase = AtomicU8::new(NORMAL);
    let stop = AtomicBool::new(false);
    let (outcomes, late) = thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (addr, phase, stop) = (&addr, &phase, &stop);
                s.spawn(move || fd_traffic(addr, t, phase, stop))
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        phase.store(LOWERING, SeqCst);
        util::process::set_soft_nofile(pid, 3);
        phase.store(STARVED, SeqCst);
        // Accepting needs an fd: this connection waits in the backlog.
        let mut late = connect(&addr, Duration::from_secs(5)).unwrap();
        late.send(b"GET /late HTTP/1.1\r\nHost: test\r\n\r\n");
        thread::sleep(Duration::from_millis(1000));
        phase.store(RAISING, SeqCst);
        util::process::set_soft_nofile(pid, soft);
        phase.store(RESTORED, SeqCst);
        let t = Instant::now();
        let late = (late.try_read_response(false), t.elapsed());
        thread::sleep(Duration::from_millis(700));
        stop.store(true, SeqCst);
        let outcomes: Vec<Outcome> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (outcomes, late)
    });

    let mut wrong = Vec::new();
    let mut refused = 0;
    for o in &outcomes {
        let what = format!(
            "{} (sent {}, answered {}, {:?}): {}",
            o.target,
            o.sent,
            o.answered,
            o.took,
            describe(&o.result)
        );
        // Sent and answered while starved: a 200 would have waited for an fd.
        let starved = o.sent == STARVED && o.answered == STARVED;
        match &o.result {
            Ok(r) if r.status == 200 && r.text() == o.target && !starved => {}
            // Out of fds: only between the lowering and the raising.
            Ok(r) if r.status == 503 && o.answered >= LOWERING && o.sent <= RAISING => refused += 1,
            _ => wrong.push(what.clone()),
        }
        // Beyond the second a connection may wait in the backlog: a hang.
        if o.took > Duration::from_secs(3) {
            wrong.push(format!("slow: {what}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests went wrong:\n{}",
        wrong.len(),
        outcomes.len(),
        wrong.join("\n")
    );
    assert!(refused > 0, "no request was refused while out of fds");
    let restored = outcomes.iter().filter(|o| o.sent == RESTORED).count();
    println!(
        "{} requests, {refused} refused with 503, {restored} after the limit was back",
        outcomes.len()
    );
    assert!(restored >= 8, "only {restored} requests once fds were back");
    match late {
        (Ok(r), took) => {
            assert_eq!((r.status, r.text().as_str()), (200, "/late"), "backlogged");
            assert!(took < Duration::from_secs(3), "backlogged client: {took:?}");
        }
        (Err(e), _) => panic!("the client that waited in the backlog: {e}"),
    }
    for (i, c) in holders.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/again/{i}")).text(), format!("/again/{i}"));
    }
    let m = stats(&p);
    let server_addr = b.addr();
    let server = [("route", "web"), ("server", server_addr.as_str())];
    assert_eq!(required(&m, "simian_server_up", &server), 1.0, "{m}");
    assert_eq!(
        required(&m, "simian_server_offline_transitions_total", &server),
        0.0,
        "{m}"
    );
    let fds = required(&m, "simian_local_errors_total", &[("cause", "fds")]);
    assert!(
        fds >= refused as f64,
        "{fds} fd errors counted, {refused} 503s"
    );
}

// ---------------------------------------------------------------------------
// 4. A slow reader of a large response
// ---------------------------------------------------------------------------

const BIG: u64 = 64 * MIB as u64;
/// How much simian's RSS may grow while it relays the body.
const RSS_SLACK: u64 = 16 * MIB as u64;

/// Read a response to `GET /big` from `c`: 1 KiB every 10 ms for `slow`, then the
/// rest at full speed. Its head and body.
fn read_slowly(c: &mut Client, slow: Duration) -> (Head, Body) {
    assert!(c.wire.buffered().is_empty());
    c.send(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut head: Option<(Head, u64)> = None;
    let mut pending = Vec::new();
    let mut body = Body::default();
    let mut buf = vec![0u8; MAX_PIECE];
    let until = Instant::now() + slow;
    loop {
        let want = if Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
            KIB
        } else {
            MAX_PIECE
        };
        let n = c
            .wire
            .conn
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("after {} body bytes: {e}", body.len));
        assert!(n > 0, "closed after {} body bytes", body.len);
        match &head {
            Some(_) => body.push(&buf[..n]),
            None => {
                pending.extend_from_slice(&buf[..n]);
                if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let h = Head::parse(&pending[..i + 4]);
                    let len = h.get("content-length").and_then(|v| v.parse().ok());
                    let len = len.unwrap_or_else(|| panic!("no Content-Length: {h:?}"));
                    body.push(&pending[i + 4..]);
                    head = Some((h, len));
                }
            }
        }
        if let Some((_, len)) = &head {
            if body.len >= *len {
                return (head.unwrap().0, body);
            }
        }
    }
}

/// A backend sends 64 MiB as fast as it can to a client that reads 1 KiB every
/// 10 ms for 3 s, then the rest at full speed: simian's RSS stays within 16 MiB
/// of what it was before the request, and the body arrives whole and intact.
/// Guards against buffering what the client cannot take yet in memory (a slow
/// client costing the proxy the size of the response). With `Splice off`, where
/// every byte goes through simian's own buffers.
fn slow_reader_of_64_mib(d: Driver) {
    let b = Backend::start(|r| match r.target.as_str() {
        "/big" => Reply::Pattern(BIG),
        _ => Reply::ok("warm\n"),
    });
    let p = start(d, &conf("Splice off", &b.addr(), ""));
    let mut c = client(&p, Duration::from_secs(10));
    // Buffers and pools that exist after any first request are not growth.
    assert_eq!(c.get("/warm").text(), "warm\n");
    let pid = p.pid();
    let before = util::process::rss_bytes(pid).expect("simian's RSS");
    let t = Instant::now();
    let (peak, (head, body)) = peak_rss_during(pid, || read_slowly(&mut c, Duration::from_secs(3)));
    println!(
        "RSS {} KiB before, {} KiB at most; {:?}",
        before / 1024,
        peak / 1024,
        t.elapsed()
    );
    assert_eq!(status_of(&head.raw), 200, "{head:?}");
    assert!(
        body.is_pattern(BIG),
        "body of {} bytes, intact: {}",
        body.len,
        body.pattern_ok
    );
    assert!(
        peak <= before + RSS_SLACK,
        "simian's RSS went from {} KiB to {} KiB while relaying 64 MiB to a slow reader",
        before / 1024,
        peak / 1024
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(c.get("/warm").text(), "warm\n", "the connection goes on");
}

// ---------------------------------------------------------------------------
// 5. Logs that nobody reads
// ---------------------------------------------------------------------------

/// A FIFO at `path` with a reader that never reads: simian's open for writing
/// does not block, its writes do once the pipe (64 KiB) is full. Keep the reader
/// open as long as simian must find the log stuck.
fn stuck_fifo(path: &Path) -> File {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid C string.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo: {}", io::Error::last_os_error());
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// Requests the log tests drive through a stuck log.
const LOGGED_REQUESTS: usize = 20_000;
/// Each response must come within this: a worker blocked on a log write stalls
/// every connection it serves, which this catches.
const NO_STALL: Duration = Duration::from_secs(2);

/// `LOGGED_REQUESTS` GETs over 4 keep-alive connections, 50 pipelined at a time,
/// each with a long User-Agent (longer log lines fill a pipe, or a queue bounded
/// in bytes, sooner). The first failure of each connection.
fn drive_keepalive(addr: &str) -> Vec<String> {
    let failures = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..4 {
            let failures = &failures;
            s.spawn(move || {
                let mut c = connect(addr, NO_STALL).unwrap();
                for first in (0..LOGGED_REQUESTS / 4).step_by(50) {
                    let batch: Vec<String> = (first..first + 50)
                        .map(|i| long_agent_get(&format!("/n/{t}/{i}")))
                        .collect();
                    let bad = match pipeline(&mut c, &batch) {
                        Ok(rs) => rs
                            .into_iter()
                            .find(|r| r.status != 200)
                            .map(|r| describe(&Ok(r))),
                        Err(e) => Some(describe(&Err(e))),
                    };
                    if let Some(bad) = bad {
                        let mut f = failures.lock().unwrap();
                        return f.push(format!("client {t}, batch from {first}: {bad}"));
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// A GET of `target` with a 400-byte User-Agent.
fn long_agent_get(target: &str) -> String {
    let agent = "x".repeat(400);
    format!("GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: {agent}\r\n\r\n")
}

/// `AccessLog` on a FIFO that nobody reads: 20,000 requests all succeed, none
/// waits (SPEC 12: "Logging never blocks a worker"), and the lines that could not
/// be written are dropped and counted in `simian_log_lines_dropped_total{log="access"}`.
/// Guards against a worker blocked on a slow log (every connection it serves
/// stalls) and against an unbounded queue that grows with every line the log
/// cannot take. Fails on the code before the bounded log queues (686167b).
fn access_log_nobody_reads(d: Driver) {
    let b = Backend::fixed("ok");
    let dir = temp_dir("faults-log");
    let fifo = dir.join("access.fifo");
    let reader = stuck_fifo(&fifo);
    let p = start(
        d,
        &conf(&format!("AccessLog {}", fifo.display()), &b.addr(), ""),
    );
    // Dropped before `p`: the reader's close unblocks a writer (EPIPE), so that a
    // simian stuck on the FIFO can still exit promptly when the test fails.
    let _reader = reader;
    let t = Instant::now();
    let failures = drive_keepalive(&p.addr());
    let took = t.elapsed();
    assert!(
        failures.is_empty(),
        "requests failed or stalled with the access log stuck:\n{}",
        failures.join("\n")
    );
    assert!(
        took < Duration::from_secs(30),
        "{LOGGED_REQUESTS} requests took {took:?}"
    );
    let m = stats(&p);
    let dropped = required(&m, "simian_log_lines_dropped_total", &[("log", "access")]);
    println!("{LOGGED_REQUESTS} requests in {took:?}, {dropped} access log lines dropped");
    assert!(
        dropped > 0.0,
        "{LOGGED_REQUESTS} lines to a log that takes 64 KiB, none dropped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ErrorLog` on a FIFO that nobody reads, and a server that refuses connections
/// (`AttemptsCount 1`: offline at once), so that every request writes a warning
/// ("503 for client ...: no server available"): 20,000 of them (more than the
/// error log's queue of 10,000 lines and the pipe hold), each on a new connection,
/// all answered at once, and the lines that could not be written counted in
/// `simian_log_lines_dropped_total{log="error"}`. Guards against the
/// error log's write(2) on the worker, which blocks every worker once the pipe is
/// full, exactly when a backend outage makes every request log. Fails (requests
/// stall) on the code before the bounded log queues (686167b).
fn error_log_nobody_reads(d: Driver) {
    let dead = DeadPort::new();
    let dir = temp_dir("faults-log");
    let fifo = dir.join("error.fifo");
    let reader = stuck_fifo(&fifo);
    let p = start_with(
        d,
        &conf(
            &format!("ErrorLog {}", fifo.display()),
            &dead.addr(),
            "AttemptsCount 1\nOfflineTimeOut 60s",
        ),
        &["--log-level", "info"],
    );
    // Dropped before `p` (see access_log_nobody_reads).
    let _reader = reader;
    let addr = p.addr();
    let failures = Mutex::new(Vec::new());
    let t = Instant::now();
    thread::scope(|s| {
        for t in 0..4 {
            let (addr, failures) = (&addr, &failures);
            s.spawn(move || {
                for i in 0..LOGGED_REQUESTS / 4 {
                    let r = connect(addr, NO_STALL).and_then(|mut c| try_get(&mut c, "/down", ""));
                    if !matches!(&r, Ok(r) if r.status == 502 || r.status == 503) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("client {t}, request {i}: {}", describe(&r)));
                        return;
                    }
                }
            });
        }
    });
    let took = t.elapsed();
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed or stalled with the error log stuck:\n{}",
        failures.join("\n")
    );
    assert!(
        took < Duration::from_secs(30),
        "{LOGGED_REQUESTS} requests took {took:?}"
    );
    let m = stats(&p);
    let dropped = required(&m, "simian_log_lines_dropped_total", &[("log", "error")]);
    println!("{LOGGED_REQUESTS} requests in {took:?}, {dropped} error log lines dropped");
    assert!(
        dropped > 0.0,
        "{LOGGED_REQUESTS} warnings to a log that takes 64 KiB, none dropped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 6. A new sticky cookie with every request
// ---------------------------------------------------------------------------

/// What the sticky table may hold (`StickyTableSize`).
const TABLE_SIZE: f64 = 1000.0;

/// One GET with cookie `SID=value`: the answering backend's name.
fn sticky_get(c: &mut Client, value: &str) -> String {
    let r = c.get_with("/s", &format!("Cookie: SID={value}\r\n"));
    assert_eq!(r.status, 200, "cookie {value}: {r:?}");
    r.text()
}

/// A keep-alive client of `addr` sending GETs that each bring a new `SID` value,
/// 50 pipelined at a time, until `deadline` or until `sent` (all clients) is
/// 30,000.
fn new_cookies(addr: &str, t: usize, deadline: Instant, sent: &AtomicUsize) {
    let mut c = connect(addr, Duration::from_secs(5)).unwrap();
    for first in (0..).step_by(50) {
        if Instant::now() >= deadline || sent.load(SeqCst) >= 30_000 {
            return;
        }
        let batch: Vec<String> = (first..first + 50)
            .map(|k| format!("GET /s HTTP/1.1\r\nHost: test\r\nCookie: SID=n{t}x{k}\r\n\r\n"))
            .collect();
        for r in pipeline(&mut c, &batch).unwrap() {
            assert_eq!(r.status, 200, "{r:?}");
        }
        sent.fetch_add(50, SeqCst);
    }
}

/// `StickyCookie SID table` with `StickyTableSize 1000`: 4 keep-alive clients
/// bring a new cookie value with every request, up to 30,000 in about 3 s; then
/// the table holds at most 1,000 assignments (`simian_sticky_table_entries`, over
/// all its labels), simian's RSS grew by less than 16 MiB, and the values sent
/// last still stick (the least recently used went first, not the newest). Guards
/// against a table that any client can grow without bound by inventing cookie
/// values (SPEC 12). Fails (`StickyTableSize` refused) on the code before
/// 686167b. The table does no I/O: one driver.
#[test]
fn sticky_table_bounded_under_new_cookies() {
    let bs: Vec<Backend> = (0..3)
        .map(|i| Backend::start(move |_| Reply::ok(&format!("s{i}"))))
        .collect();
    let servers: Vec<String> = bs.iter().map(Backend::addr).collect();
    let p = start(
        Driver::Uring,
        &conf(
            "StickyTableSize 1000",
            &servers.join(" "),
            "LoadBalancer Random\nStickyCookie SID table",
        ),
    );
    let addr = p.addr();
    let before = util::process::rss_bytes(p.pid()).expect("simian's RSS");
    let sent = AtomicUsize::new(0);
    let (peak, ()) = peak_rss_during(p.pid(), || {
        let deadline = Instant::now() + Duration::from_secs(3);
        thread::scope(|s| {
            for t in 0..4 {
                let (addr, sent) = (&addr, &sent);
                s.spawn(move || new_cookies(addr, t, deadline, sent));
            }
        });
    });
    let sent = sent.load(SeqCst);
    assert!(
        sent >= 10_000,
        "only {sent} new cookies in 3 s: not enough to test the bound"
    );
    // The values sent last stick, each sent again after all the others.
    let mut c = client(&p, Duration::from_secs(5));
    let recent: Vec<(String, String)> = (0..20)
        .map(|i| {
            let v = format!("recent{i}");
            let server = sticky_get(&mut c, &v);
            (v, server)
        })
        .collect();
    for (v, server) in &recent {
        assert_eq!(&sticky_get(&mut c, v), server, "cookie {v} moved");
    }
    let m = stats(&p);
    let entries = metric_sum(&m, "simian_sticky_table_entries")
        .unwrap_or_else(|| panic!("the statistics have no simian_sticky_table_entries"));
    println!(
        "{sent} new cookies, {entries} assignments kept; RSS {} KiB before, {} KiB at most",
        before / 1024,
        peak / 1024
    );
    assert!(
        entries <= TABLE_SIZE,
        "{entries} sticky assignments after {sent} new cookies (StickyTableSize 1000)"
    );
    assert!(
        entries >= 20.0,
        "{entries}: the recent cookies are not counted"
    );
    assert!(
        peak <= before + RSS_SLACK,
        "simian's RSS went from {} KiB to {} KiB under {sent} new cookies",
        before / 1024,
        peak / 1024
    );
}

// ---------------------------------------------------------------------------
// 7. SIGHUP ten times a second under load
// ---------------------------------------------------------------------------

/// What a load run saw: 2xx answers per body, and every failure.
#[derive(Default)]
struct Load {
    by_body: HashMap<String, u64>,
    failures: Vec<String>,
}

/// A load client until `deadline`: keep-alive (a closed connection is replaced)
/// or `Connection: close` on every request. Anything but a 2xx read whole
/// (including a refused connect) is a failure.
fn load_client(addr: &str, keepalive: bool, deadline: Instant) -> Load {
    let mut load = Load::default();
    let mut conn: Option<Client> = None;
    let extra = if keepalive {
        ""
    } else {
        "Connection: close\r\n"
    };
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(addr, Duration::from_secs(5)) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    load.failures.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let r = try_get(c, "/load", extra);
        match &r {
            Ok(r) if (200..300).contains(&r.status) => {
                *load.by_body.entry(r.text()).or_default() += 1;
            }
            _ => load.failures.push(describe(&r)),
        }
        if !keepalive || !matches!(&r, Ok(r) if r.keep_alive()) {
            conn = None;
        }
    }
    load
}

/// Three servers under `WeightedRoundRobin`, the one at `heavy` with weight 3.
fn weighted(servers: &[String], heavy: usize) -> String {
    let list: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == heavy {
                format!("{s} weight=3")
            } else {
                s.clone()
            }
        })
        .collect();
    conf("", &list.join(" "), "LoadBalancer WeightedRoundRobin")
}

/// The success count of reloads once it has not moved for 300 ms.
fn settled_reloads(p: &Proxy) -> f64 {
    let mut last = -1.0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = required(
            &stats(p),
            "simian_config_reloads_total",
            &[("result", "success")],
        );
        if n == last || Instant::now() > deadline {
            return n;
        }
        last = n;
        thread::sleep(Duration::from_millis(300));
    }
}

/// Four keep-alive clients and four that close after each request, for 4 s, while
/// the configuration alternates between two (another server weighted 3) with a
/// SIGHUP every 100 ms: not one request fails (refused connect, reset, non-2xx),
/// every server answers, no reload fails, and afterwards the last configuration
/// is the one in force (its weights, exactly). Guards against reloads that drop
/// or refuse connections, lose in-flight or pooled requests, or leave an older
/// configuration running when they come faster than they finish. ops.rs reloads
/// once a second under keep-alive load only.
fn sighup_ten_times_a_second_under_load(d: Driver) {
    let names = ["A", "B", "C"];
    let bs: Vec<Backend> = names.iter().map(|n| Backend::fixed(n)).collect();
    let servers: Vec<String> = bs.iter().map(Backend::addr).collect();
    let confs = [weighted(&servers, 0), weighted(&servers, 1)];
    let mut p = start(d, &confs[0]);
    let config = TmpfsConfig::attach(&p);
    let addr = p.addr();
    let stop = AtomicBool::new(false);
    let hups = AtomicUsize::new(0);
    let load = thread::scope(|s| {
        s.spawn(|| {
            let mut next = Instant::now();
            while !stop.load(SeqCst) {
                next += Duration::from_millis(100);
                thread::sleep(next.saturating_duration_since(Instant::now()));
                let n = hups.fetch_add(1, SeqCst) + 1;
                config.reload(&confs[n % 2]);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(4);
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let addr = &addr;
                s.spawn(move || load_client(addr, i % 2 == 0, deadline))
            })
            .collect();
        let mut all = Load::default();
        for c in clients {
            let l = c.join().unwrap();
            for (body, n) in l.by_body {
                *all.by_body.entry(body).or_default() += n;
            }
            all.failures.extend(l.failures);
        }
        stop.store(true, SeqCst);
        all
    });
    let hups = hups.load(SeqCst);
    let total: u64 = load.by_body.values().sum();
    println!("{total} requests {:?}, {hups} SIGHUPs", load.by_body);
    assert!(
        load.failures.is_empty(),
        "{} of {} requests failed during {hups} reloads, e.g.:\n{}",
        load.failures.len(),
        total + load.failures.len() as u64,
        load.failures[..load.failures.len().min(20)].join("\n")
    );
    assert!(hups >= 25, "only {hups} SIGHUPs in 4 s");
    assert!(total >= 500, "only {total} requests: {:?}", load.by_body);
    for n in names {
        assert!(
            load.by_body.get(n).is_some_and(|&k| k > 0),
            "{n} never answered: {:?}",
            load.by_body
        );
    }
    assert!(p.alive(), "simian exited");
    let m = stats(&p);
    assert_eq!(
        sample(&m, "simian_config_reloads_total", &[("result", "failure")]),
        Some(0.0),
        "{m}"
    );
    // SIGHUPs that come while a reload runs may merge into one, not most of them.
    let done = settled_reloads(&p);
    println!("{done} reloads");
    assert!(
        done >= (hups / 4) as f64,
        "{done} reloads for {hups} SIGHUPs"
    );
    // One more, to a known file, and its weights rule: 3:1:1, exactly, over ten
    // whole cycles of the smooth weighted round robin.
    config.reload(&confs[1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while required(
        &stats(&p),
        "simian_config_reloads_total",
        &[("result", "success")],
    ) <= done
    {
        assert!(Instant::now() < deadline, "the last SIGHUP did not reload");
        thread::sleep(Duration::from_millis(20));
    }
    let mut c = client(&p, Duration::from_secs(5));
    let mut got: HashMap<String, u32> = HashMap::new();
    for _ in 0..50 {
        *got.entry(c.get("/after").text()).or_default() += 1;
    }
    let want: HashMap<String, u32> = [("A", 10), ("B", 30), ("C", 10)]
        .map(|(n, k)| (n.to_string(), k))
        .into();
    assert_eq!(got, want, "after the last reload (B weighted 3)");
}

per_driver!(
    backend_reset_mid_body,
    stray_bytes_never_reach_another_client,
    out_of_fds_during_traffic,
    slow_reader_of_64_mib,
    access_log_nobody_reads,
    error_log_nobody_reads,
    sighup_ten_times_a_second_under_load,
);
