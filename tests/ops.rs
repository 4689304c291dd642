//! Operations, end to end (SPEC section 5, issue 5): reload on SIGHUP, graceful
//! shutdown, the access log, the statistics URL, `--pid-file` and the connection
//! limits, on the real `simian` binary with real sockets and in-process backends.
//!
//! The process is driven by [`Simian`] (defined here, not in `util`): these tests
//! need its pid for signals, its exit status and a config file they can rewrite.
//!
//! External tools are optional: a test that needs `wrk`, `promtool` (Debian package
//! `prometheus`) or `goaccess` prints `skipped: X not installed` and returns when
//! the tool is absent (the load test falls back to its own keep-alive client).
//! Nothing sleeps for a fixed time where polling can decide; every wait has a
//! deadline.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use util::metrics::sample;
use util::{free_port, pattern_vec, temp_dir, Backend, Client, Conn, Reply, Response, Wire};

// ---------------------------------------------------------------------------
// The process under test
// ---------------------------------------------------------------------------

/// `simian -c DIR/simian.conf` in the foreground; killed on drop. In configs and
/// arguments `@PORT@` becomes a free port and `@DIR@` a fresh temporary directory.
struct Simian {
    child: Child,
    port: u16,
    dir: PathBuf,
    config_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Simian {
    fn start(config: &str) -> Simian {
        Self::start_args(config, &[])
    }

    fn start_args(config: &str, args: &[&str]) -> Simian {
        let dir = scratch_dir();
        let port = free_port();
        let config_path = dir.join("simian.conf");
        let stderr_path = dir.join("stderr.log");
        let fill = |s: &str| {
            s.replace("@PORT@", &port.to_string())
                .replace("@DIR@", &dir.display().to_string())
        };
        std::fs::write(&config_path, fill(config)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_simian"))
            .arg("-c")
            .arg(&config_path)
            .args(args.iter().map(|a| fill(a)))
            .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn simian");
        let mut s = Simian {
            child,
            port,
            dir,
            config_path,
            stderr_path,
            exited: None,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = self.sockaddr();
        loop {
            if let Some(st) = self.try_exit() {
                panic!("simian exited ({st}) before listening:\n{}", self.stderr());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "simian not listening after 10s:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn fill(&self, s: &str) -> String {
        s.replace("@PORT@", &self.port.to_string())
            .replace("@DIR@", &self.dir.display().to_string())
    }

    fn sockaddr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid());
    }

    /// Replace the config file (atomically: a reload never reads half a file).
    fn write_config(&self, config: &str) {
        let tmp = self.dir.join("simian.conf.new");
        std::fs::write(&tmp, self.fill(config)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Write the config file and send SIGHUP.
    fn reload(&self, config: &str) {
        self.write_config(config);
        self.signal(libc::SIGHUP);
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The exit status, if the process exits within `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait until `needle` occurs at least `n` times in stderr.
    fn wait_stderr(&self, needle: &str, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.stderr().matches(needle).count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn client(&self) -> Client {
        let c = Client::tcp(self.sockaddr());
        c.set_timeout(Duration::from_secs(10));
        c
    }

    /// One request on a fresh connection.
    fn get_with(&self, target: &str, extra: &str) -> Response {
        self.client()
            .get_with(target, &format!("{extra}Connection: close\r\n"))
    }

    fn get(&self, target: &str) -> Response {
        self.get_with(target, "")
    }

    /// The Prometheus text of `/stats` (the tests' `StatisticsURL`).
    fn metrics(&self) -> String {
        util::metrics::after_cache_window(&self.sockaddr().to_string());
        let r = self.get("/stats");
        assert_eq!(r.status, 200, "statistics: {:?}\n{}", r.head, r.text());
        r.text()
    }

    /// Poll the metrics until `name{labels}` equals `want` (or panic after 5 s).
    fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics();
            let v = sample(&text, name, labels);
            if v == Some(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {v:?}, expected {want}; metrics:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Simian {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = self.stderr();
        let _ = std::fs::remove_dir_all(&self.dir);
        if thread::panicking() {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- simian stderr (last lines) ----\n{}\n----",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        } else if log.contains("panicked") {
            panic!("simian panicked during the test; stderr:\n{log}");
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fresh directory for one simian (config, logs, pid file): on tmpfs when
/// there is one, so that writing a config or a log never waits for a disk busy
/// with other work (a 6 s stall was seen on a loaded CI machine).
fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let shm = Path::new("/dev/shm");
    let probe = shm.join(format!("simian-ops-probe-{}", std::process::id()));
    if std::fs::create_dir_all(&probe).is_ok() {
        let _ = std::fs::remove_dir(&probe);
        let d = shm.join(format!(
            "simian-ops-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        if std::fs::create_dir_all(&d).is_ok() {
            return d;
        }
    }
    temp_dir("ops")
}

/// `[PROXY_DEFAULTS]` on `@PORT@` with `defaults`, then the entries.
fn conf(defaults: &str, entries: &[String]) -> String {
    format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\n{defaults}\n{}",
        entries.concat()
    )
}

fn entry(name: &str, pattern: &str, servers: &str, extra: &str) -> String {
    format!("\n[PROXY_ENTRY]\nName {name}\nMatch {pattern}\nServerList {servers}\n{extra}\n")
}

/// Whether `tool` can be run.
fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether `tool` can be run; prints the skip line when not.
fn need(tool: &str) -> bool {
    let ok = have(tool);
    if !ok {
        println!("skipped: {tool} not installed");
    }
    ok
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until the file has at least `n` lines; its lines.
fn wait_lines(path: &Path, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let l = lines_of(path);
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines after {within:?}, expected {n}:\n{}",
            path.display(),
            l.len(),
            l.join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes the client received for a response (head and body).
fn wire_len(r: &Response) -> u64 {
    r.head.raw.len() as u64 + r.body.len
}

/// Days since 1970-01-01 of a civil date (the inverse of the log's formatter).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A backend that waits `delay` after each request head, then sends a 200 with
/// `pieces` x `piece` bytes of the pattern, one piece every `gap`.
struct SlowBackend {
    addr: String,
    seen: Arc<AtomicUsize>,
}

impl SlowBackend {
    fn start(delay: Duration, pieces: usize, piece: usize, gap: Duration) -> SlowBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                let seen = s2.clone();
                thread::spawn(move || slow_serve(s, &seen, delay, pieces, piece, gap));
            }
        });
        SlowBackend { addr, seen }
    }

    fn body(&self, pieces: usize, piece: usize) -> Vec<u8> {
        pattern_vec(pieces * piece)
    }
}

fn slow_serve(
    mut s: TcpStream,
    seen: &AtomicUsize,
    delay: Duration,
    pieces: usize,
    piece: usize,
    gap: Duration,
) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = pattern_vec(pieces * piece);
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        // Bodiless requests only.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        };
        buf.drain(..end);
        seen.fetch_add(1, Ordering::SeqCst);
        thread::sleep(delay);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        for p in body.chunks(piece) {
            if s.write_all(p).is_err() {
                return;
            }
            thread::sleep(gap);
        }
    }
}

/// A backend answering 200 `text` that records how many requests it had in
/// flight at once (each held for `hold`).
fn counting_backend(hold: Duration) -> (Backend, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let m = max.clone();
    let b = Backend::start(move |_| {
        let cur = now.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(cur, Ordering::SeqCst);
        thread::sleep(hold);
        now.fetch_sub(1, Ordering::SeqCst);
        Reply::ok("slow")
    });
    (b, max)
}

// ---------------------------------------------------------------------------
// 1-3. Reload
// ---------------------------------------------------------------------------

fn one_server(server: &str) -> String {
    conf("StatisticsURL /stats", &[entry("web", "^/", server, "")])
}

#[test]
fn reload_switches_serverlist_for_the_next_request() {
    let a = Backend::fixed("A");
    let b = Backend::fixed("B");
    let s = Simian::start(&one_server(&a.addr()));
    assert_eq!(s.get("/x").text(), "A");

    s.reload(&one_server(&b.addr()));
    let t0 = Instant::now();
    loop {
        let r = s.get("/poll");
        assert_eq!(r.status, 200, "{:?}", r.head);
        if r.text() == "B" {
            break;
        }
        assert_eq!(r.text(), "A");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still served by A 5 s after SIGHUP:\n{}",
            s.stderr()
        );
        thread::sleep(Duration::from_millis(10));
    }
    println!("reload took effect after {:?}", t0.elapsed());
    // From the first request served by B on, none goes to A any more.
    let a_before = a.request_count();
    let mut c = s.client();
    for i in 0..5 {
        assert_eq!(s.get(&format!("/n{i}")).text(), "B");
        assert_eq!(c.get(&format!("/k{i}")).text(), "B");
    }
    assert_eq!(
        a.request_count(),
        a_before,
        "A got requests after the switch"
    );
    assert!(s.wait_stderr("configuration reloaded", 1, Duration::from_secs(5)));
    let m = s.metrics();
    assert_eq!(
        sample(&m, "simian_config_reloads_total", &[("result", "success")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "simian_config_reloads_total", &[("result", "failure")]),
        Some(0.0),
        "{m}"
    );
    // The statistics follow the new ServerList.
    assert!(m.contains(&format!("server=\"{}\"", b.addr())), "{m}");
    assert!(!m.contains(&format!("server=\"{}\"", a.addr())), "{m}");
}

/// Every request on a client connection is routed on its own (SPEC 4), with the
/// configuration current when it arrives: a keep-alive connection that sat idle
/// across a reload must not route its next request with the old one.
#[test]

fn reload_applies_to_idle_keepalive_connections() {
    let a = Backend::fixed("A");
    let b = Backend::fixed("B");
    let s = Simian::start(&one_server(&a.addr()));
    let mut keep = s.client();
    assert_eq!(keep.get("/before").text(), "A");
    s.reload(&one_server(&b.addr()));
    assert!(s.wait_stderr("configuration reloaded", 1, Duration::from_secs(5)));
    // The reload is done (swapped, then logged): a new connection sees it...
    assert_eq!(s.get("/fresh").text(), "B");
    // ...and so must the connection that was idle during the reload.
    let a_before = a.request_count();
    for i in 0..3 {
        let r = keep.get(&format!("/after/{i}"));
        assert_eq!(
            r.text(),
            "B",
            "request {i} on the idle keep-alive connection"
        );
    }
    assert_eq!(a.request_count(), a_before);
}

#[test]
fn broken_reload_keeps_serving_and_is_counted() {
    let a = Backend::fixed("A");
    let good = one_server(&a.addr());
    let s = Simian::start(&good);
    let m = s.metrics();
    for (result, want) in [("success", 0.0), ("failure", 0.0)] {
        assert_eq!(
            sample(&m, "simian_config_reloads_total", &[("result", result)]),
            Some(want),
            "{m}"
        );
    }
    let last_ok = sample(
        &m,
        "simian_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .expect("last reload timestamp");
    assert!((last_ok - unix_now() as f64).abs() < 60.0, "{last_ok}");

    // An invalid regex in a new entry: the whole file must be refused.
    let broken = format!("{good}{}", entry("bad", "^/ok ^/(api", &a.addr(), ""));
    let (line, col) = broken
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("^/(api").map(|c| (i + 1, c + 1)))
        .unwrap();
    s.reload(&broken);
    assert!(
        s.wait_stderr("reload failed", 1, Duration::from_secs(5)),
        "no reload error logged:\n{}",
        s.stderr()
    );
    let err = s.stderr();
    let at = format!("{}:{line}:{col}", s.config_path.display());
    assert!(err.contains(&at), "the error does not name {at}:\n{err}");
    assert!(
        err.contains("^/(api"),
        "the error does not quote the text:\n{err}"
    );

    for i in 0..5 {
        let r = s.get(&format!("/still/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "A"));
    }
    let m = s.wait_metric("simian_config_reloads_total", &[("result", "failure")], 1.0);
    assert_eq!(
        sample(&m, "simian_config_reloads_total", &[("result", "success")]),
        Some(0.0),
        "{m}"
    );
    assert!(
        !m.contains("route=\"bad\""),
        "the broken entry is live:\n{m}"
    );
    assert_eq!(
        sample(
            &m,
            "simian_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        Some(last_ok),
        "a failed reload moved the last-success timestamp"
    );

    // A good file afterwards is taken.
    s.reload(&good);
    s.wait_metric("simian_config_reloads_total", &[("result", "success")], 1.0);
}

/// `(requests, non-2xx, errors)` of `conns` keep-alive clients for `dur`.
fn keepalive_load(addr: SocketAddr, conns: usize, dur: Duration) -> (u64, u64, u64) {
    let deadline = Instant::now() + dur;
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            thread::spawn(move || {
                let (mut ok, mut bad, mut err) = (0u64, 0u64, 0u64);
                let mut conn: Option<Client> = None;
                while Instant::now() < deadline {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let c = Client {
                                    wire: Wire::new(Conn::Tcp(s)),
                                };
                                c.set_timeout(Duration::from_secs(5));
                                conn.insert(c)
                            }
                            Err(_) => {
                                err += 1;
                                thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    let r = c
                        .try_send(b"GET /load HTTP/1.1\r\nHost: test\r\n\r\n")
                        .and_then(|_| c.try_read_response(false));
                    match r {
                        Ok(r) => {
                            if (200..300).contains(&r.status) {
                                ok += 1;
                            } else {
                                bad += 1;
                            }
                            if !r.keep_alive() {
                                conn = None;
                            }
                        }
                        Err(_) => {
                            err += 1;
                            conn = None;
                        }
                    }
                }
                (ok, bad, err)
            })
        })
        .collect();
    threads.into_iter().fold((0, 0, 0), |acc, t| {
        let (o, b, e) = t.join().unwrap_or((0, 0, 1));
        (acc.0 + o + b, acc.1 + b, acc.2 + e)
    })
}

#[test]
fn sighup_every_second_under_load_loses_nothing() {
    let a = Backend::fixed("A");
    let b = Backend::fixed("B");
    let confs = [one_server(&a.addr()), one_server(&b.addr())];
    let s = Simian::start(&confs[0]);
    let stop = AtomicBool::new(false);
    let hups = AtomicUsize::new(0);
    let t_start = Instant::now();
    let sent_at = std::sync::Mutex::new(Vec::new());
    let use_wrk = have("wrk");
    let report = thread::scope(|sc| {
        sc.spawn(|| {
            let mut next = Instant::now() + Duration::from_secs(1);
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    let n = hups.fetch_add(1, Ordering::SeqCst) + 1;
                    s.reload(&confs[n % 2]);
                    sent_at.lock().unwrap().push(t_start.elapsed().as_millis());
                    next = Instant::now() + Duration::from_secs(1);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        let report = if use_wrk {
            let out = Command::new("wrk")
                // A request slower than wrk's default 2 s timeout on a loaded
                // 2-core machine is not what this test is about; a lost one
                // still shows as a read error or a timeout after 10 s.
                .args(["-t2", "-c64", "-d10s", "--timeout", "10s"])
                .arg(format!("http://{}/load", s.sockaddr()))
                .stdin(Stdio::null())
                .output()
                .expect("run wrk");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "wrk failed:\n{text}");
            text
        } else {
            println!("wrk not installed: using the built-in keep-alive client (64 connections)");
            let (n, bad, err) = keepalive_load(s.sockaddr(), 64, Duration::from_secs(10));
            let mut t = format!("{n} requests in 10s\n");
            if bad > 0 {
                t += &format!("Non-2xx or 3xx responses: {bad}\n");
            }
            if err > 0 {
                t += &format!("Socket errors: {err}\n");
            }
            t
        };
        stop.store(true, Ordering::SeqCst);
        report
    });
    println!("{report}");
    let hups = hups.load(Ordering::SeqCst);
    let sent_at = sent_at.into_inner().unwrap();
    println!("SIGHUPs sent at (ms): {sent_at:?}");
    // One a second; a loaded machine (2 cores, wrk, simian, the backends, other
    // tests) may delay a few, which does not weaken what is checked.
    assert!(hups >= 6, "only {hups} SIGHUPs sent, at {sent_at:?} ms");
    assert!(
        !report.contains("Non-2xx or 3xx responses"),
        "non-2xx responses during reloads:\n{report}"
    );
    assert!(
        !report.contains("Socket errors"),
        "socket errors during reloads:\n{report}"
    );
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{report}"));
    assert!(requests > 1000, "only {requests} requests:\n{report}");
    // Both configurations served, and every SIGHUP was one successful reload.
    assert!(a.request_count() > 0 && b.request_count() > 0);
    s.wait_metric(
        "simian_config_reloads_total",
        &[("result", "success")],
        hups as f64,
    );
    let m = s.metrics();
    assert_eq!(
        sample(&m, "simian_config_reloads_total", &[("result", "failure")]),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------
// 4. Shutdown
// ---------------------------------------------------------------------------

/// Pieces and piece size of the slow response.
const PIECES: usize = 10;
const PIECE: usize = 1000;

type InFlight = thread::JoinHandle<(std::io::Result<Response>, Duration, Client)>;

/// simian with a slow response in flight (1 s to its head, then 10 pieces 100 ms
/// apart: about 2 s) and, if `with_idle`, an idle keep-alive client; just sent
/// SIGTERM.
struct Draining {
    s: Simian,
    slow: SlowBackend,
    _fast: Backend,
    /// An idle keep-alive client, when asked for.
    idle: Option<Client>,
    /// The slow response has ended (well or not).
    done: Arc<AtomicBool>,
    inflight: InFlight,
    t_term: Instant,
}

fn start_draining(with_idle: bool) -> Draining {
    let slow = SlowBackend::start(
        Duration::from_secs(1),
        PIECES,
        PIECE,
        Duration::from_millis(100),
    );
    let fast = Backend::fixed("fast");
    let s = Simian::start(&conf(
        "ShutdownTimeout 10s\nIdleTimeout 60s",
        &[
            entry("slow", "^/slow", &slow.addr, ""),
            entry("fast", "^/", &fast.addr(), ""),
        ],
    ));
    let idle = with_idle.then(|| {
        let mut idle = s.client();
        let r = idle.get("/fast");
        assert!(r.status == 200 && r.keep_alive(), "{:?}", r.head);
        idle
    });

    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let mut c = s.client();
    let t_req = Instant::now();
    let inflight = thread::spawn(move || {
        c.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n");
        let r = c.try_read_response(false);
        d2.store(true, Ordering::SeqCst);
        (r, t_req.elapsed(), c)
    });
    wait_until(
        Duration::from_secs(5),
        "the slow request reaches the backend",
        || slow.seen.load(Ordering::SeqCst) == 1,
    );
    let t_term = Instant::now();
    s.signal(libc::SIGTERM);
    Draining {
        s,
        slow,
        _fast: fast,
        idle,
        done,
        inflight,
        t_term,
    }
}

impl Draining {
    /// The slow response arrives whole, then simian exits 0.
    fn finish(mut self) {
        let (r, took, _c) = self.inflight.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("the in-flight response was cut: {e}"));
        assert_eq!(r.status, 200);
        assert!(
            r.body.is_pattern((PIECES * PIECE) as u64),
            "body of {} bytes, pattern ok: {}",
            r.body.len,
            r.body.pattern_ok
        );
        assert_eq!(r.body.bytes, self.slow.body(PIECES, PIECE));
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        // The issue: the last response of a draining connection says so.
        assert!(
            r.head.has_token("connection", "close"),
            "no `Connection: close` on a response written during the drain: {:?}",
            r.head
        );
        let st = self
            .s
            .wait_exit(Duration::from_secs(5))
            .expect("simian still running 5 s after the drain");
        assert_eq!(st.code(), Some(0), "{st}\n{}", self.s.stderr());
    }
}

#[test]
fn sigterm_lets_a_slow_response_finish_and_closes_idle_connections_at_once() {
    let mut d = start_draining(true);
    // The idle connection is closed at once, not after IdleTimeout (60 s) nor
    // after the drain.
    d.idle
        .as_mut()
        .unwrap()
        .expect_closed(Duration::from_secs(1));
    println!(
        "idle connection closed {:?} after SIGTERM",
        d.t_term.elapsed()
    );
    assert!(!d.done.load(Ordering::SeqCst));
    assert!(
        d.s.try_exit().is_none(),
        "simian exited before the drain ended"
    );
    d.finish();
}

/// A connection attempt during the drain is refused (the listening sockets are
/// closed), never left in a backlog that nobody accepts any more.
#[test]

fn sigterm_refuses_new_connections_during_the_drain() {
    // The bug shows in some runs only (about one in three to one in ten here).
    for round in 0..5 {
        // Without an idle client (with one, the bug does not show).
        let mut d = start_draining(false);
        let addr = d.s.sockaddr();
        // Clients keep connecting through the drain and send a request on what
        // they get. From 100 ms on (workers look at the shutdown flag every
        // 50 ms) each attempt must be refused.
        thread::sleep(Duration::from_millis(20));
        let mut outcomes = Vec::new();
        while d.t_term.elapsed() < Duration::from_secs(1) {
            let at = d.t_term.elapsed();
            let what = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
                // The listener closed with this handshake in its queue.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
                Err(e) => panic!("round {round}: connect during the drain: {e}"),
                Ok(conn) => {
                    let mut c = Client {
                        wire: Wire::new(Conn::Tcp(conn)),
                    };
                    let sent = c.try_send(b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n");
                    match c.read_until_close(Duration::from_millis(300)) {
                        Ok(got) if !got.is_empty() => "served",
                        Ok(_) => "closed",
                        Err(_) if sent.is_ok() => "hung",
                        Err(_) => "closed",
                    }
                }
            };
            outcomes.push((at.as_millis(), what));
            thread::sleep(Duration::from_millis(20));
        }
        println!("round {round}: {outcomes:?}");
        let late: Vec<_> = outcomes
            .iter()
            .filter(|(ms, what)| *ms >= 100 && *what != "refused")
            .collect();
        assert!(
            late.is_empty(),
            "round {round}: attempts 100 ms or more after SIGTERM not refused \
             (ms after SIGTERM, outcome): {late:?}"
        );
        assert!(
            !d.done.load(Ordering::SeqCst),
            "the slow response ended before the refusal was seen"
        );
        assert!(
            d.s.try_exit().is_none(),
            "simian exited before the drain ended"
        );
        d.finish();
    }
}

#[test]
fn sigterm_and_sigint_close_idle_keepalive_connections_promptly() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let b = Backend::fixed("ok");
        let mut s = Simian::start(&conf(
            "ShutdownTimeout 30s\nIdleTimeout 60s",
            &[entry("web", "^/", &b.addr(), "")],
        ));
        let mut c = s.client();
        let mut c2 = s.client();
        assert!(c.get("/a").keep_alive());
        assert!(c2.get("/b").keep_alive());
        let t = Instant::now();
        s.signal(sig);
        c.expect_closed(Duration::from_secs(1));
        c2.expect_closed(Duration::from_secs(1));
        let st = s
            .wait_exit(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("{name}: still running 2 s later with only idle clients"));
        assert_eq!(st.code(), Some(0), "{name}: {st}");
        println!(
            "{name}: idle clients closed and exit after {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn sigquit_exits_at_once() {
    let slow = SlowBackend::start(Duration::from_secs(2), 1, 10, Duration::ZERO);
    let mut s = Simian::start(&conf(
        "ShutdownTimeout 30s",
        &[entry("slow", "^/", &slow.addr, "")],
    ));
    let mut c = s.client();
    c.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n");
    wait_until(
        Duration::from_secs(5),
        "the request reaches the backend",
        || slow.seen.load(Ordering::SeqCst) == 1,
    );
    let t = Instant::now();
    s.signal(libc::SIGQUIT);
    s.wait_exit(Duration::from_secs(1))
        .expect("still running 1 s after SIGQUIT");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        c.try_read_response(false).is_err(),
        "a response arrived after SIGQUIT"
    );
}

// ---------------------------------------------------------------------------
// 5, 8. Access log
// ---------------------------------------------------------------------------

/// What one access log line must say.
struct Expect {
    request_line: String,
    status: u16,
    to_client: u64,
    from_client: u64,
    referer: String,
    ua: String,
    server: String,
    route: String,
}

/// Send `raw` on a fresh connection; the expected log line.
#[allow(clippy::too_many_arguments)]
fn logged(
    s: &Simian,
    raw: &str,
    head_only: bool,
    status: u16,
    referer: &str,
    ua: &str,
    server: &str,
    route: &str,
) -> Expect {
    let mut c = s.client();
    c.send(raw.as_bytes());
    let r = if head_only {
        c.read_head_response()
    } else {
        c.read_response()
    };
    assert_eq!(r.status, status, "{raw:?}: {:?}", r.head);
    Expect {
        request_line: raw.split("\r\n").next().unwrap().to_string(),
        status,
        to_client: wire_len(&r),
        from_client: raw.len() as u64,
        referer: referer.to_string(),
        ua: ua.to_string(),
        server: server.to_string(),
        route: route.to_string(),
    }
}

/// Send a varied set of requests: each expected line, keyed by request line.
fn varied_requests(s: &Simian, backend: &str) -> Vec<Expect> {
    let mut out = vec![
        logged(
            s,
            "GET /app/1 HTTP/1.1\r\nHost: test\r\nReferer: http://ref.example/x?y=1\r\nUser-Agent: ops-test/1.0 (linux)\r\nConnection: close\r\n\r\n",
            false, 200, "http://ref.example/x?y=1", "ops-test/1.0 (linux)", backend, "web",
        ),
        logged(
            s,
            "GET /app/2?q=1&r=2 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
            false, 200, "-", "-", backend, "web",
        ),
        logged(
            s,
            "POST /app/3 HTTP/1.1\r\nHost: test\r\nUser-Agent: poster\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
            false, 200, "-", "poster", backend, "web",
        ),
        logged(
            s,
            "HEAD /app/4 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
            true, 200, "-", "-", backend, "web",
        ),
        logged(
            s,
            "GET /nomatch/5 HTTP/1.1\r\nHost: test\r\nUser-Agent: lost\r\nConnection: close\r\n\r\n",
            false, 404, "-", "lost", "-", "-",
        ),
        logged(
            s,
            "GET /app/6 HTTP/1.0\r\nHost: test\r\n\r\n",
            false, 200, "-", "-", backend, "web",
        ),
        // A quote in a header cannot break the line's fields.
        logged(
            s,
            "GET /app/7 HTTP/1.1\r\nHost: test\r\nUser-Agent: evil\"agent\r\nConnection: close\r\n\r\n",
            false, 200, "-", "evil\\x22agent", backend, "web",
        ),
    ];
    // Three on one keep-alive connection.
    let mut c = s.client();
    for i in 8..11 {
        let raw = format!("GET /app/{i} HTTP/1.1\r\nHost: test\r\nUser-Agent: ka\r\n\r\n");
        c.send(raw.as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200);
        out.push(Expect {
            request_line: raw.split("\r\n").next().unwrap().to_string(),
            status: 200,
            to_client: wire_len(&r),
            from_client: raw.len() as u64,
            referer: "-".into(),
            ua: "ka".into(),
            server: backend.into(),
            route: "web".into(),
        });
    }
    out
}

const LINE_RE: &str = r#"^(\S+) - - \[(\d{2})/(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/(\d{4}):(\d{2}):(\d{2}):(\d{2}) \+0000\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" (\d+) (\d+) (\S+) (\S+)$"#;

/// Check every line against the expectations: one line per request, every field.
fn check_lines(lines: &[String], expect: &[Expect], t0: i64, t1: i64, max_ms: u64) {
    let re = regex::Regex::new(LINE_RE).unwrap();
    assert_eq!(lines.len(), expect.len(), "lines:\n{}", lines.join("\n"));
    let mut by_line: HashMap<&str, &Expect> = expect
        .iter()
        .map(|e| (e.request_line.as_str(), e))
        .collect();
    for l in lines {
        let c = re
            .captures(l)
            .unwrap_or_else(|| panic!("malformed access log line: {l:?}"));
        let f = |i: usize| c.get(i).unwrap().as_str();
        let e = by_line
            .remove(f(8))
            .unwrap_or_else(|| panic!("unexpected or repeated line: {l:?}"));
        assert_eq!(f(1), "127.0.0.1", "{l}");
        let mon = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == f(3))
        .unwrap() as i64
            + 1;
        let num = |i: usize| f(i).parse::<i64>().unwrap();
        let t =
            days_from_civil(num(4), mon, num(2)) * 86_400 + num(5) * 3600 + num(6) * 60 + num(7);
        assert!(
            (t0 - 1..=t1 + 1).contains(&t),
            "date {t} outside [{t0}, {t1}]: {l}"
        );
        assert_eq!(f(9).parse::<u16>().unwrap(), e.status, "status: {l}");
        assert_eq!(
            f(10).parse::<u64>().unwrap(),
            e.to_client,
            "bytes to client: {l}"
        );
        assert_eq!(f(11), e.referer, "referer: {l}");
        assert_eq!(f(12), e.ua, "user agent: {l}");
        assert_eq!(
            f(13).parse::<u64>().unwrap(),
            e.from_client,
            "bytes from client: {l}"
        );
        assert!(f(14).parse::<u64>().unwrap() <= max_ms, "duration: {l}");
        assert_eq!(f(15), e.server, "server: {l}");
        assert_eq!(f(16), e.route, "route: {l}");
    }
}

fn access_log_conf(backend: &str) -> String {
    conf(
        "AccessLog @DIR@/access.log",
        &[entry("web", "^/app", backend, "")],
    )
}

#[test]
fn access_log_has_one_line_per_request_and_reopens_on_sighup() {
    let b = Backend::start(|r| Reply::ok(&format!("hello {}", r.target)));
    let s = Simian::start(&access_log_conf(&b.addr()));
    let log = s.dir.join("access.log");
    let (t0, i0) = (unix_now(), Instant::now());
    let expect = varied_requests(&s, &b.addr());
    let lines = wait_lines(&log, expect.len(), Duration::from_secs(5));
    // No extra line comes later (lines are flushed at least every 500 ms).
    thread::sleep(Duration::from_millis(700));
    let lines2 = lines_of(&log);
    assert_eq!(lines, lines2, "lines appeared after the first flush");
    check_lines(
        &lines,
        &expect,
        t0,
        unix_now(),
        i0.elapsed().as_millis() as u64,
    );

    // logrotate: rename, SIGHUP, and the next lines go to a new file.
    let rotated = s.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    s.signal(libc::SIGHUP);
    assert!(s.wait_stderr("configuration reloaded", 1, Duration::from_secs(5)));
    wait_until(Duration::from_secs(5), "access.log recreated", || {
        log.exists()
    });
    let (t0, i0) = (unix_now(), Instant::now());
    let after: Vec<Expect> = (0..3)
        .map(|i| {
            logged(
                &s,
                &format!("GET /app/after/{i} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
                false,
                200,
                "-",
                "-",
                &b.addr(),
                "web",
            )
        })
        .collect();
    let new_lines = wait_lines(&log, after.len(), Duration::from_secs(5));
    check_lines(
        &new_lines,
        &after,
        t0,
        unix_now(),
        i0.elapsed().as_millis() as u64,
    );
    assert_eq!(
        lines_of(&rotated),
        lines,
        "the rotated file changed after the reopen"
    );
}

#[test]
fn goaccess_parses_the_access_log_as_combined() {
    if !need("goaccess") {
        return;
    }
    let b = Backend::start(|r| Reply::ok(&format!("hello {}", r.target)));
    let s = Simian::start(&access_log_conf(&b.addr()));
    let log = s.dir.join("access.log");
    let expect = varied_requests(&s, &b.addr());
    let n = expect.len();
    wait_lines(&log, n, Duration::from_secs(5));
    let report = s.dir.join("goaccess.json");
    let out = Command::new("goaccess")
        .arg(&log)
        .args(["--log-format=COMBINED", "--json-pretty-print", "-o"])
        .arg(&report)
        .stdin(Stdio::null())
        .output()
        .expect("run goaccess");
    assert!(
        out.status.success(),
        "goaccess failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).expect("goaccess JSON");
    let g = &v["general"];
    assert_eq!(g["total_requests"], n, "{g:#}");
    assert_eq!(g["valid_requests"], n, "{g:#}");
    assert_eq!(g["failed_requests"], 0, "{g:#}");
    // GoAccess sums the size column: simian's bytes to the client.
    let bytes: u64 = expect.iter().map(|e| e.to_client).sum();
    assert_eq!(g["bandwidth"], bytes, "{g:#}");
}

// ---------------------------------------------------------------------------
// 6, 7. Statistics URL
// ---------------------------------------------------------------------------

/// SPEC section 12: the statistics page is built at most once per 250 ms per
/// worker, so reading it in a loop cannot take a worker from its traffic. Within
/// the window a reader gets the same page even though traffic went by; after
/// it, a fresh one. One thread, so every read meets the same worker's cache.
#[test]
fn statistics_page_is_cached_for_250ms() {
    let b = Backend::fixed("hello");
    let s = Simian::start(&conf(
        "StatisticsURL /stats\nThreads 1",
        &[entry("app", "^/app", &b.addr(), "")],
    ));
    let server = b.addr();
    let count = |m: &str| {
        let labels = [
            ("route", "app"),
            ("server", server.as_str()),
            ("code", "2xx"),
        ];
        sample(m, "simian_requests_total", &labels).unwrap_or(0.0)
    };
    let mut reader = s.client();
    reader.get("/stats");
    let first = reader.get("/stats").text();
    let started = Instant::now();
    assert_eq!(s.get("/app/1").status, 200);
    let again = reader.get("/stats").text();
    if started.elapsed() < Duration::from_millis(200) {
        assert_eq!(again, first, "rebuilt within 250 ms");
    }
    thread::sleep(Duration::from_millis(300));
    let later = reader.get("/stats").text();
    assert_eq!(count(&later), count(&first) + 1.0, "{later}");
}

#[test]
fn statistics_pass_promtool_count_traffic_and_render_json_and_html() {
    let b = Backend::fixed("hello");
    let s = Simian::start(&conf(
        "StatisticsURL /stats",
        &[
            entry("app", "^/app", &b.addr(), ""),
            entry("esc", "^/<x>", &b.addr(), ""),
        ],
    ));
    let server = b.addr();
    let req = |route| {
        [
            ("route", route),
            ("server", server.as_str()),
            ("code", "2xx"),
        ]
    };
    let m = s.metrics();
    assert_eq!(
        sample(&m, "simian_requests_total", &req("app")),
        Some(0.0),
        "{m}"
    );

    let k = 7;
    let mut c = s.client();
    let (mut rx, mut tx) = (0u64, 0u64);
    for i in 0..k {
        let raw = format!("GET /app/{i} HTTP/1.1\r\nHost: test\r\n\r\n");
        let r = c.request(raw.as_bytes());
        assert_eq!(r.status, 200);
        rx += raw.len() as u64;
        tx += wire_len(&r);
    }
    let k = k as f64;
    // Counted when the response is done: poll, then it must be exact.
    let m = s.wait_metric("simian_requests_total", &req("app"), k);
    let app = [("route", "app")];
    assert_eq!(
        sample(&m, "simian_request_duration_seconds_count", &app),
        Some(k),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "simian_request_duration_seconds_bucket",
            &[("route", "app"), ("le", "+Inf")]
        ),
        Some(k),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "simian_match_requests_total",
            &[("route", "app"), ("pattern", "^/app")]
        ),
        Some(k),
        "{m}"
    );
    assert_eq!(
        sample(&m, "simian_received_bytes_total", &app),
        Some(rx as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "simian_sent_bytes_total", &app),
        Some(tx as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "simian_requests_total", &req("esc")),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "simian_match_requests_total",
            &[("route", "esc"), ("pattern", "^/<x>")]
        ),
        Some(0.0),
        "{m}"
    );
    let srv = [("route", "app"), ("server", server.as_str())];
    assert_eq!(sample(&m, "simian_server_up", &srv), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "simian_server_active_requests", &srv),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "simian_server_connect_failures_total", &srv),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "simian_server_offline_transitions_total", &srv),
        Some(0.0),
        "{m}"
    );
    // The keep-alive client above is still open, and so may be this request's.
    let conns = sample(&m, "simian_client_connections", &[]).expect("client connections");
    assert!((1.0..=3.0).contains(&conns), "{conns}\n{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("simian_build_info{version=\"") && l.ends_with(" 1")),
        "{m}"
    );
    for family in [
        "simian_requests_total counter",
        "simian_request_duration_seconds histogram",
        "simian_client_connections gauge",
        "simian_health_checks_total counter",
        "simian_config_reloads_total counter",
        "simian_config_last_reload_success_timestamp_seconds gauge",
    ] {
        assert!(
            m.contains(&format!("# TYPE {family}\n")),
            "no {family}:\n{m}"
        );
    }

    if need("promtool") {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        p.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}\n{}{}\ninput:\n{m}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // ?format=json: the same numbers.
    let r = s.get("/stats?format=json");
    assert_eq!(r.status, 200);
    assert!(
        r.get("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        r.head
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body.bytes).expect("statistics JSON");
    assert_eq!(v["reloads"]["failure"], 0, "{v:#}");
    let routes = v["routes"].as_array().expect("routes");
    let route = |name: &str| {
        routes
            .iter()
            .find(|r| r["route"] == name)
            .unwrap_or_else(|| panic!("no route {name} in {v:#}"))
    };
    let app = route("app");
    assert_eq!(app["servers"][0]["server"], server.as_str(), "{v:#}");
    assert_eq!(app["servers"][0]["requests"]["2xx"], k as u64, "{v:#}");
    assert_eq!(app["servers"][0]["up"], true, "{v:#}");
    assert_eq!(app["received_bytes"], rx, "{v:#}");
    assert_eq!(app["sent_bytes"], tx, "{v:#}");
    assert_eq!(route("esc")["patterns"][0], "^/<x>", "{v:#}");

    // A browser gets HTML, with everything it prints escaped.
    let r = s.get_with(
        "/stats",
        "Accept: text/html,application/xhtml+xml;q=0.9\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.get("content-type").unwrap_or("").starts_with("text/html"),
        "{:?}",
        r.head
    );
    let html = r.text();
    assert!(html.contains("&lt;x&gt;"), "{html}");
    assert!(
        !html.contains("<x>"),
        "unescaped pattern in the HTML:\n{html}"
    );
    assert!(html.contains(">app<") && html.contains(">esc<"), "{html}");
    assert!(html.contains(&server), "{html}");
}

#[test]
fn statistics_allow_refuses_other_clients() {
    let b = Backend::fixed("hello");
    let s = Simian::start(&conf(
        "StatisticsURL /stats\nStatisticsAllow 10.0.0.0/8",
        &[entry("web", "^/", &b.addr(), "")],
    ));
    for (target, extra) in [
        ("/stats", ""),
        ("/stats?format=json", ""),
        ("/stats", "Accept: text/html\r\n"),
    ] {
        let r = s.get_with(target, extra);
        assert_eq!(r.status, 403, "{target} {extra:?}: {:?}", r.head);
        assert!(!r.text().contains("simian_"), "{}", r.text());
    }
    assert_eq!(
        b.request_count(),
        0,
        "the statistics URL went to the backend"
    );
    // Everything else is still proxied.
    assert_eq!(s.get("/other").text(), "hello");
}

// ---------------------------------------------------------------------------
// 9. --pid-file
// ---------------------------------------------------------------------------

#[test]
fn pid_file_is_written_and_removed_on_exit() {
    let b = Backend::fixed("ok");
    let mut s = Simian::start_args(
        &conf("", &[entry("web", "^/", &b.addr(), "")]),
        &["--pid-file", "@DIR@/simian.pid"],
    );
    let pid_file = s.dir.join("simian.pid");
    wait_until(Duration::from_secs(5), "pid file written", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    });
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", s.pid())
    );
    s.signal(libc::SIGTERM);
    let st = s
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0));
    assert!(!pid_file.exists(), "pid file left behind");
}

// ---------------------------------------------------------------------------
// 10. Connection limits
// ---------------------------------------------------------------------------

/// `simian_client_connections` read over an open keep-alive connection.
fn gauge(stats: &mut Client) -> f64 {
    let r = stats.get("/stats");
    assert_eq!(r.status, 200);
    assert!(r.keep_alive(), "the statistics connection was closed");
    sample(&r.text(), "simian_client_connections", &[]).expect("simian_client_connections")
}

#[test]
fn global_max_connections_keeps_the_rest_in_the_backlog() {
    let b = Backend::start(|r| Reply::ok(&r.target));
    let s = Simian::start(&conf(
        "GlobalMaxConnections 4\nStatisticsURL /stats\nIdleTimeout 60s",
        &[entry("web", "^/", &b.addr(), "")],
    ));
    let max_seen = std::cell::Cell::new(0.0f64);
    // The statistics are read over one of the four slots, kept open throughout.
    let mut st = s.client();
    let mut read = || {
        let g = gauge(&mut st);
        max_seen.set(max_seen.get().max(g));
        assert!(
            g <= 4.0,
            "simian_client_connections = {g} > GlobalMaxConnections 4"
        );
        g
    };
    // The readiness probe's connection is gone: only ours.
    wait_until(Duration::from_secs(5), "gauge back to 1", || read() == 1.0);

    let (tx, rx) = mpsc::channel::<(usize, u16)>();
    let mut closers = Vec::new();
    let mut threads = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..10 {
        // Connected (the kernel completes the handshake) whether accepted or not.
        conns.push(s.client());
    }
    wait_until(
        Duration::from_secs(5),
        "three idle clients accepted",
        || read() == 4.0,
    );
    for _ in 0..20 {
        read();
    }
    for (i, mut c) in conns.into_iter().enumerate() {
        let (ctx, crx) = mpsc::channel::<()>();
        closers.push(ctx);
        let tx = tx.clone();
        threads.push(thread::spawn(move || {
            c.set_timeout(Duration::from_secs(20));
            let r = c.get(&format!("/c{i}"));
            assert_eq!(r.text(), format!("/c{i}"));
            tx.send((i, r.status)).unwrap();
            // Hold the connection (keep-alive) until told to close it.
            let _ = crx.recv();
        }));
    }
    // Exactly three are answered; the other seven wait in the backlog.
    let mut answered = Vec::new();
    for _ in 0..3 {
        let (i, status) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("an accepted client answered");
        assert_eq!(status, 200);
        answered.push(i);
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a fourth client was served while 4 connections were open"
    );
    assert_eq!(read(), 4.0);
    // Each close lets exactly one more in.
    let mut closed = 0;
    while answered.len() < 10 {
        closers[answered[closed]].send(()).unwrap();
        closed += 1;
        let (i, status) = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no client admitted after {closed} closed"));
        assert_eq!(status, 200);
        answered.push(i);
        assert!(read() <= 4.0);
    }
    for c in &closers {
        let _ = c.send(());
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(b.request_count(), 10);
    assert_eq!(max_seen.get(), 4.0);
    wait_until(Duration::from_secs(5), "gauge back to 1", || read() == 1.0);
}

#[test]
fn max_connections_answers_503_with_retry_after_beyond_the_limit() {
    let hold = Duration::from_millis(1500);
    let (b, max) = counting_backend(hold);
    let s = Simian::start(&conf(
        "StatisticsURL /stats",
        &[entry("slow", "^/", &b.addr(), "MaxConnections 2")],
    ));
    let n = 10;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let mut c = s.client();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let r = c.get(&format!("/slow/{i}"));
                (r, t.elapsed())
            })
        })
        .collect();
    let results: Vec<(Response, Duration)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<_> = results.iter().filter(|(r, _)| r.status == 200).collect();
    let busy: Vec<_> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(
        (ok.len(), busy.len()),
        (2, 8),
        "statuses: {:?}",
        results.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );
    for (r, took) in &busy {
        assert_eq!(r.get("retry-after"), Some("1"), "{:?}", r.head);
        // Answered at once, not queued until a slot freed.
        assert!(*took < hold, "503 after {took:?}");
        assert!(!r.keep_alive(), "{:?}", r.head);
    }
    for (r, took) in &ok {
        assert_eq!(r.text(), "slow");
        assert!(*took >= hold);
    }
    assert_eq!(max.load(Ordering::SeqCst), 2, "backend concurrency");
    assert_eq!(b.request_count(), 2);
    let m = s.wait_metric(
        "simian_requests_total",
        &[("route", "slow"), ("server", "-"), ("code", "5xx")],
        8.0,
    );
    let srv = b.addr();
    assert_eq!(
        sample(
            &m,
            "simian_requests_total",
            &[("route", "slow"), ("server", srv.as_str()), ("code", "2xx")]
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "simian_server_active_requests",
            &[("route", "slow"), ("server", srv.as_str())]
        ),
        Some(0.0),
        "{m}"
    );
}
