//! Runtime control and health (SPEC section 11), end to end: `AdminSocket` and
//! `simian ctl` (`servers`, `drain`, `maint`, `ready`, `weight`) checked on real
//! traffic, the states across `SIGHUP` and in the statistics, `HealthURL` and
//! `ShutdownDelay`. The real `simian` binary on loopback, in-process backends that
//! answer with their own name, and `simian ctl` run as a separate process exactly
//! as an operator would run it.
//!
//! What exercises the data path runs on both monoio drivers (`uring` / `epoll`);
//! the command-line refusals, the socket file and `--check` run once.
//!
//! Counts are exact where the balancer makes them so (RoundRobin and the smooth
//! WeightedRoundRobin cycle, one client sending one request at a time) and only
//! bounded where a tolerance says why.

mod util;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use util::metrics::{after_cache_window, sample};
use util::{
    per_driver, temp_dir, Backend, Client, Conn, Driver, Options, Proxy, Reply, Response, Wire,
};

const BIN: &str = env!("CARGO_BIN_EXE_simian");
/// Read timeout of the test clients: a misbehaving proxy fails a test quickly.
const T: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// simian on this driver; with `AdminSocket @DIR@/admin.sock`, once the socket
/// is there too (it is opened after the listeners accept, so a connection to
/// the port does not say the socket is up yet).
fn start(d: Driver, config: &str) -> Proxy {
    let p = Proxy::start_with(config, Options::driver(d));
    if config.contains("@DIR@/admin.sock") {
        let deadline = Instant::now() + T;
        while std::fs::symlink_metadata(admin_sock(&p)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no admin socket {:?}; stderr:\n{}",
                admin_sock(&p),
                p.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    p
}

/// A backend answering 200 with its own name as the body.
fn named(name: &'static str) -> Backend {
    Backend::start(move |_| Reply::ok(name))
}

fn client(p: &Proxy) -> Client {
    let c = p.client();
    c.set_timeout(T);
    c
}

/// A client connected to the proxy from the loopback address `src`.
fn client_from(p: &Proxy, src: Ipv4Addr) -> Client {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((src, 0)).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    let to: SocketAddr = p.addr().parse().unwrap();
    s.connect_timeout(&to.into(), T)
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    let c = Client {
        wire: Wire::new(Conn::Tcp(s)),
    };
    c.set_timeout(T);
    c
}

/// `AdminSocket @DIR@/admin.sock`, as the configs below say.
fn admin_sock(p: &Proxy) -> PathBuf {
    p.dir.join("admin.sock")
}

fn config_file(p: &Proxy) -> PathBuf {
    p.dir.join("simian.conf")
}

/// What one `simian ctl` run gave.
#[derive(Debug)]
struct Ctl {
    code: Option<i32>,
    out: String,
    err: String,
}

/// `simian ARGS...` (the caller puts `ctl` where it belongs).
fn simian(args: &[&str]) -> Ctl {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("MONOIO_FORCE_LEGACY_DRIVER");
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run simian ctl");
    let out = child.wait_with_output().expect("simian ctl output");
    Ctl {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `simian ctl -s SOCKET COMMAND...`.
fn ctl_s(sock: &Path, command: &str) -> Ctl {
    let s = sock.display().to_string();
    let mut args = vec!["ctl", "-s", s.as_str()];
    args.extend(command.split_whitespace());
    simian(&args)
}

/// `simian ctl -c FILE COMMAND...` (the socket is the file's `AdminSocket`).
fn ctl_c(file: &Path, command: &str) -> Ctl {
    let f = file.display().to_string();
    let mut args = vec!["ctl", "-c", f.as_str()];
    args.extend(command.split_whitespace());
    simian(&args)
}

/// A command that must succeed: exit 0, the answer on stdout, nothing on stderr.
fn ok(c: Ctl, what: &str) -> String {
    assert_eq!(c.code, Some(0), "`{what}` refused: {c:?}");
    assert!(c.err.is_empty(), "`{what}`: stderr on success: {c:?}");
    c.out
}

/// A command that must be refused: exit 1, nothing on stdout, the reason on
/// stderr (returned).
fn refused(c: Ctl, what: &str) -> String {
    assert_eq!(c.code, Some(1), "`{what}` not refused with exit 1: {c:?}");
    assert!(c.out.is_empty(), "`{what}`: stdout on a refusal: {c:?}");
    assert!(!c.err.trim().is_empty(), "`{what}`: no reason given: {c:?}");
    c.err
}

/// `ctl -s` that must succeed.
fn run(p: &Proxy, command: &str) -> String {
    ok(ctl_s(&admin_sock(p), command), command)
}

/// `ctl -c` that must succeed.
fn run_c(p: &Proxy, command: &str) -> String {
    ok(ctl_c(&config_file(p), command), command)
}

/// `ctl -s` that must be refused; its reason.
fn refuse(p: &Proxy, command: &str) -> String {
    refused(ctl_s(&admin_sock(p), command), command)
}

/// One row of `ctl servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    state: String,
    admin: String,
    weight: u32,
    in_flight: u32,
}

/// `ctl servers` parsed: (route, server) -> row. Checks the header and that
/// every row has the six columns.
fn parse_servers(text: &str) -> HashMap<(String, String), Row> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["ROUTE", "SERVER", "STATE", "ADMIN", "WEIGHT", "IN-FLIGHT"],
        "servers header:\n{text}"
    );
    let mut out = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 6, "servers row {l:?} in:\n{text}");
        let row = Row {
            state: f[2].into(),
            admin: f[3].into(),
            weight: f[4].parse().unwrap_or_else(|_| panic!("weight in {l:?}")),
            in_flight: f[5]
                .parse()
                .unwrap_or_else(|_| panic!("in-flight in {l:?}")),
        };
        assert!(
            out.insert((f[0].to_string(), f[1].to_string()), row)
                .is_none(),
            "row twice: {l:?}\n{text}"
        );
    }
    out
}

fn servers(p: &Proxy) -> HashMap<(String, String), Row> {
    parse_servers(&run(p, "servers"))
}

/// The row of `server` in `route`.
fn row<'a>(t: &'a HashMap<(String, String), Row>, route: &str, server: &str) -> &'a Row {
    t.get(&(route.to_string(), server.to_string()))
        .unwrap_or_else(|| panic!("no row {route} {server} in {t:?}"))
}

/// Which backend answered each of `n` GETs of `path` (`/path/0`, `/path/1`...),
/// sent one at a time on a keep-alive connection (a new one whenever simian
/// closes it), with `Cookie: sid=VALUE` when given: name -> count.
fn tally(p: &Proxy, path: &str, cookie: Option<&str>, n: usize) -> HashMap<String, usize> {
    let extra = cookie.map_or(String::new(), |v| format!("Cookie: sid={v}\r\n"));
    let mut c: Option<Client> = None;
    let mut out = HashMap::new();
    for i in 0..n {
        let cl = c.get_or_insert_with(|| client(p));
        let r = cl.get_with(&format!("{path}/{i}"), &extra);
        assert_eq!(r.status, 200, "{path}/{i}: {:?}\n{}", r.head, r.text());
        assert!(
            r.head.has("x-conn"),
            "{path}/{i}: not from a backend: {r:?}"
        );
        *out.entry(r.text()).or_insert(0) += 1;
        if !r.keep_alive() {
            c = None;
        }
    }
    out
}

fn count(t: &HashMap<String, usize>, name: &str) -> usize {
    t.get(name).copied().unwrap_or(0)
}

/// The one backend that answered `path` with this cookie.
fn who(p: &Proxy, path: &str, cookie: Option<&str>) -> String {
    let t = tally(p, path, cookie, 1);
    t.into_keys().next().unwrap()
}

/// The statistics page in `format` ("" Prometheus, "json", "html"), fresh
/// (after the 250 ms cache window).
fn stats(p: &Proxy, format: &str) -> String {
    after_cache_window(&p.addr());
    let mut c = client(p);
    let r = match format {
        "json" => c.get_with("/stats?format=json", "Connection: close\r\n"),
        "html" => c.get_with("/stats", "Accept: text/html\r\nConnection: close\r\n"),
        _ => c.get_with("/stats", "Connection: close\r\n"),
    };
    assert_eq!(
        r.status,
        200,
        "statistics {format}: {:?}\n{}",
        r.head,
        r.text()
    );
    r.text()
}

fn signal(p: &Proxy, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child, which has not been waited for.
    let r = unsafe { libc::kill(p.pid() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({sig})");
}

/// Rewrite the config file (atomically) with `@PORT@`/`@DIR@` filled in, send
/// SIGHUP and wait for the reload to be logged.
fn reload(p: &Proxy, config: &str) {
    let text = config
        .replace("@PORT@", &p.port.to_string())
        .replace("@DIR@", &p.dir.display().to_string());
    let before = p.stderr().matches("configuration reloaded").count();
    let tmp = p.dir.join("simian.conf.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, config_file(p)).unwrap();
    signal(p, libc::SIGHUP);
    let deadline = Instant::now() + T;
    while p.stderr().matches("configuration reloaded").count() <= before {
        assert!(
            Instant::now() < deadline,
            "reload not logged; stderr:\n{}",
            p.stderr()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// What a connection attempt to `addr` got.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Attempt {
    /// Refused (or reset by a listener that just closed).
    Refused,
    /// Accepted: the status of a GET of `path` on it (0 if closed unanswered).
    Served(u16),
}

fn attempt(addr: &SocketAddr, path: &str) -> Attempt {
    match TcpStream::connect_timeout(addr, Duration::from_millis(500)) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
            ) =>
        {
            Attempt::Refused
        }
        Err(e) => panic!("connect {addr}: {e}"),
        Ok(s) => {
            s.set_nodelay(true).unwrap();
            let mut c = Client {
                wire: Wire::new(Conn::Tcp(s)),
            };
            c.set_timeout(T);
            let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
            if c.try_send(req.as_bytes()).is_err() {
                return Attempt::Served(0);
            }
            match c.try_read_response(false) {
                Ok(r) => Attempt::Served(r.status),
                Err(_) => Attempt::Served(0),
            }
        }
    }
}

/// Send SIGTERM (through `Proxy::terminate`, so that the exit is expected) from
/// another thread; the join gives the proxy back with its exit status.
type Terminating = thread::JoinHandle<(Proxy, Option<ExitStatus>)>;

fn terminate_in_background(p: Proxy, within: Duration) -> Terminating {
    thread::spawn(move || {
        let mut p = p;
        let st = p.terminate(within);
        (p, st)
    })
}

/// The config of the traffic tests: four routes over the same two backends.
fn four_routes(a: &Backend, b: &Backend) -> String {
    let (a, b) = (a.addr(), b.addr());
    format!(
        "[PROXY_DEFAULTS]
    Listen        127.0.0.1:@PORT@
    AdminSocket   @DIR@/admin.sock
    StatisticsURL /stats

[PROXY_ENTRY]
    Name          table
    Match         ^/table
    ServerList    {a} {b}
    LoadBalancer  RoundRobin
    StickyCookie  sid table

[PROXY_ENTRY]
    Name          hash
    Match         ^/hash
    ServerList    {a} {b}
    LoadBalancer  RoundRobin
    StickyCookie  sid hash

[PROXY_ENTRY]
    Name          wrr
    Match         ^/wrr
    ServerList    {a} {b}
    LoadBalancer  WeightedRoundRobin

[PROXY_ENTRY]
    Name          rr
    Match         ^/
    ServerList    {a} {b}
    LoadBalancer  RoundRobin
"
    )
}

// ---------------------------------------------------------------------------
// 1. ctl on real traffic
// ---------------------------------------------------------------------------

/// RoundRobin: `drain` stops new requests to the server (on its route only),
/// `maint` too, `ready` brings it back; `-s` and `-c` reach the same socket.
fn drain_maint_ready_round_robin(d: Driver) {
    let (a, b) = (named("A"), named("B"));
    let p = start(d, &four_routes(&a, &b));
    let (sa, sb) = (a.addr(), b.addr());

    let t = tally(&p, "/rr", None, 20);
    assert_eq!((count(&t, "A"), count(&t, "B")), (10, 10), "{t:?}");

    // `servers` through the socket (-s), through the file's AdminSocket (-c),
    // and with -c before the subcommand: the same table.
    let table = run(&p, "servers");
    assert_eq!(table, run_c(&p, "servers"));
    let f = config_file(&p).display().to_string();
    assert_eq!(
        table,
        ok(simian(&["-c", &f, "ctl", "servers"]), "-c FILE ctl servers")
    );
    let t0 = parse_servers(&table);
    assert_eq!(t0.len(), 8, "{table}");
    for ((route, server), r) in &t0 {
        assert_eq!(
            (r.state.as_str(), r.admin.as_str(), r.weight, r.in_flight),
            ("up", "ready", 1, 0),
            "{route} {server}:\n{table}"
        );
    }

    let out = run(&p, &format!("drain rr {sa}"));
    assert_eq!(out, format!("rr {sa}: drain (was ready)\n"));
    let a_before = a.request_count();
    let t = tally(&p, "/rr", None, 40);
    assert_eq!(
        (count(&t, "A"), count(&t, "B")),
        (0, 40),
        "after drain: {t:?}"
    );
    assert_eq!(
        a.request_count(),
        a_before,
        "a request reached the drained server"
    );
    // Per route: the same backend in the other routes still takes requests.
    let t = tally(&p, "/wrr", None, 10);
    assert_eq!(
        count(&t, "A"),
        5,
        "wrr shares A's address but not its state: {t:?}"
    );
    let t = tally(&p, "/table", None, 10);
    assert_eq!(count(&t, "A"), 5, "{t:?}");
    let s = servers(&p);
    assert_eq!(row(&s, "rr", &sa).admin, "drain");
    assert_eq!(
        row(&s, "rr", &sa).state,
        "up",
        "drain is not a health state"
    );
    assert_eq!(row(&s, "wrr", &sa).admin, "ready");
    assert_eq!(row(&s, "rr", &sb).admin, "ready");

    // maint through -c.
    let out = run_c(&p, &format!("maint rr {sa}"));
    assert_eq!(out, format!("rr {sa}: maint (was drain)\n"));
    let t = tally(&p, "/rr", None, 20);
    assert_eq!(
        (count(&t, "A"), count(&t, "B")),
        (0, 20),
        "after maint: {t:?}"
    );
    assert_eq!(row(&servers(&p), "rr", &sa).admin, "maint");

    let out = run(&p, &format!("ready rr {sa}"));
    assert_eq!(out, format!("rr {sa}: ready (was maint)\n"));
    let t = tally(&p, "/rr", None, 20);
    assert_eq!(
        (count(&t, "A"), count(&t, "B")),
        (10, 10),
        "after ready: {t:?}"
    );
    assert_eq!(row(&servers(&p), "rr", &sa).admin, "ready");

    // Both servers drained: nothing may take a request without a cookie.
    run(&p, &format!("drain rr {sa}"));
    run(&p, &format!("drain rr {sb}"));
    let r = client(&p).get_with("/rr/x", "Connection: close\r\n");
    assert_eq!(r.status, 503, "every server drained: {:?}", r.head);
    assert!(!r.head.has("x-conn"), "answered by a backend: {r:?}");
}

/// Two cookie values, the first placed on A and the second on B (both ready).
fn cookies_on_a_and_b(p: &Proxy, path: &str, prefix: &str) -> (String, String) {
    let mut on: HashMap<String, String> = HashMap::new();
    for i in 0..64 {
        let v = format!("{prefix}{i}");
        on.entry(who(p, path, Some(&v))).or_insert(v);
        if on.len() == 2 {
            break;
        }
    }
    match (on.get("A"), on.get("B")) {
        (Some(x), Some(y)) => (x.clone(), y.clone()),
        _ => panic!("no cookie value placed on each server: {on:?}"),
    }
}

/// `StickyCookie sid table`: a client whose cookie names the drained server
/// still reaches it; new sessions and cookie-less requests do not; after
/// `maint` that client goes elsewhere (and its cookie is placed again).
fn sticky_table_through_drain_and_maint(d: Driver) {
    let (a, b) = (named("A"), named("B"));
    let p = start(d, &four_routes(&a, &b));
    let sa = a.addr();
    let (ca, cb) = cookies_on_a_and_b(&p, "/table", "t");
    assert_eq!(
        count(&tally(&p, "/table", Some(&ca), 6), "A"),
        6,
        "not sticky"
    );

    run_c(&p, &format!("drain table {sa}"));
    let t = tally(&p, "/table", None, 20);
    assert_eq!(
        count(&t, "A"),
        0,
        "cookie-less requests to a drained server: {t:?}"
    );
    let t = tally(&p, "/table", Some(&ca), 10);
    assert_eq!(
        count(&t, "A"),
        10,
        "the sticky client lost its drained server: {t:?}"
    );
    let t = tally(&p, "/table", Some(&cb), 10);
    assert_eq!(count(&t, "B"), 10, "{t:?}");
    for i in 0..6 {
        let v = format!("fresh{i}");
        assert_eq!(
            who(&p, "/table", Some(&v)),
            "B",
            "a new session placed on the drained server"
        );
    }

    run(&p, &format!("maint table {sa}"));
    let t = tally(&p, "/table", Some(&ca), 10);
    assert_eq!(
        count(&t, "B"),
        10,
        "a sticky client reached a server in maint: {t:?}"
    );

    run(&p, &format!("ready table {sa}"));
    let t = tally(&p, "/table", None, 20);
    assert_eq!(
        count(&t, "A"),
        10,
        "traffic did not come back after ready: {t:?}"
    );
    // Table mode (docs/configuration.md, StickyCookie): a value whose server
    // became unavailable is placed again, and stays where it was placed.
    assert_eq!(count(&tally(&p, "/table", Some(&ca), 4), "B"), 4);
}

/// `StickyCookie sid hash`: the same, with the server chosen by rendezvous
/// hashing; once the server is ready again its values come back to it.
fn sticky_hash_through_drain_and_maint(d: Driver) {
    let (a, b) = (named("A"), named("B"));
    let p = start(d, &four_routes(&a, &b));
    let sa = a.addr();
    let (ca, cb) = cookies_on_a_and_b(&p, "/hash", "h");
    assert_eq!(
        count(&tally(&p, "/hash", Some(&ca), 6), "A"),
        6,
        "not sticky"
    );

    run(&p, &format!("drain hash {sa}"));
    let t = tally(&p, "/hash", Some(&ca), 10);
    assert_eq!(
        count(&t, "A"),
        10,
        "the hash-sticky client lost its drained server: {t:?}"
    );
    let t = tally(&p, "/hash", Some(&cb), 10);
    assert_eq!(count(&t, "B"), 10, "{t:?}");
    let t = tally(&p, "/hash", None, 20);
    assert_eq!(
        count(&t, "A"),
        0,
        "cookie-less requests to a drained server: {t:?}"
    );

    run_c(&p, &format!("maint hash {sa}"));
    let t = tally(&p, "/hash", Some(&ca), 10);
    assert_eq!(
        count(&t, "B"),
        10,
        "a hash-sticky client reached a server in maint: {t:?}"
    );

    run(&p, &format!("ready hash {sa}"));
    let t = tally(&p, "/hash", Some(&ca), 10);
    assert_eq!(
        count(&t, "A"),
        10,
        "hash values did not come back after ready: {t:?}"
    );
    let t = tally(&p, "/hash", None, 20);
    assert_eq!((count(&t, "A"), count(&t, "B")), (10, 10), "{t:?}");
}

/// `weight` on WeightedRoundRobin changes the share at once.
fn weight_changes_the_share(d: Driver) {
    let (a, b) = (named("A"), named("B"));
    let p = start(d, &four_routes(&a, &b));
    let (sa, sb) = (a.addr(), b.addr());
    let t = tally(&p, "/wrr", None, 40);
    assert_eq!((count(&t, "A"), count(&t, "B")), (20, 20), "{t:?}");

    assert_eq!(
        run(&p, &format!("weight wrr {sb} 3")),
        format!("wrr {sb}: weight 3 (was 1)\n")
    );
    assert_eq!(
        run_c(&p, &format!("weight wrr {sa} 1")),
        format!("wrr {sa}: weight 1 (was 1)\n")
    );
    // One full smooth cycle is 4 picks: exact in principle; a tolerance of 5%
    // of the requests for a cycle that may start anywhere.
    let t = tally(&p, "/wrr", None, 400);
    let (na, nb) = (count(&t, "A"), count(&t, "B"));
    assert_eq!(na + nb, 400);
    assert!(
        (80..=120).contains(&na),
        "weights 1:3 over 400 requests gave A {na}, B {nb}"
    );
    let s = servers(&p);
    assert_eq!(row(&s, "wrr", &sb).weight, 3);
    assert_eq!(row(&s, "wrr", &sa).weight, 1);
    assert_eq!(row(&s, "rr", &sb).weight, 1, "a weight is per route");

    // And back to an even share; the highest weight is taken.
    run(&p, &format!("weight wrr {sa} 256"));
    run(&p, &format!("weight wrr {sb} 256"));
    let t = tally(&p, "/wrr", None, 100);
    let na = count(&t, "A");
    assert!((45..=55).contains(&na), "weights 256:256 gave {t:?}");
    assert_eq!(row(&servers(&p), "wrr", &sb).weight, 256);
}

per_driver!(
    drain_maint_ready_round_robin,
    sticky_table_through_drain_and_maint,
    sticky_hash_through_drain_and_maint,
    weight_changes_the_share,
);

// ---------------------------------------------------------------------------
// 2. Refusals
// ---------------------------------------------------------------------------

#[test]
fn ctl_refuses_bad_input_with_a_clear_line() {
    let (a, b) = (named("A"), named("B"));
    let p = start(Driver::Uring, &four_routes(&a, &b));
    let (sa, sb) = (a.addr(), b.addr());

    // No socket at the path: exit 1, and the path is named.
    let missing = p.dir.join("nope.sock");
    let e = refused(ctl_s(&missing, "servers"), "missing socket");
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("No such file"), "{e}");
    // A socket file nobody listens on any more.
    let stale = p.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let e = refused(ctl_s(&stale, "servers"), "stale socket");
    assert!(
        e.contains(&stale.display().to_string()) && e.contains("refused"),
        "{e}"
    );

    // -c FILE without AdminSocket: says to use -s, names the file.
    let other = temp_dir("admin-noadmin");
    let file = other.join("plain.conf");
    std::fs::write(
        &file,
        format!("[PROXY_ENTRY]\nName x\nMatch ^/\nServerList {sa}\n"),
    )
    .unwrap();
    let e = refused(ctl_c(&file, "servers"), "-c without AdminSocket");
    assert!(e.contains("has no AdminSocket") && e.contains("-s"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
    // -c FILE that does not exist.
    let gone = other.join("gone.conf");
    let e = refused(ctl_c(&gone, "servers"), "-c missing file");
    assert!(e.contains(&gone.display().to_string()), "{e}");
    let _ = std::fs::remove_dir_all(&other);

    // Unknown command: named, the commands listed; a typo gets a suggestion.
    let e = refuse(&p, "frobnicate");
    assert!(e.contains("unknown command `frobnicate`"), "{e}");
    assert!(e.contains("servers | drain ROUTE SERVER"), "{e}");
    let e = refuse(&p, &format!("drian rr {sa}"));
    assert!(
        e.contains("unknown command `drian`") && e.contains("`drain`"),
        "{e}"
    );

    // Unknown route: the routes listed.
    let e = refuse(&p, &format!("drain nope {sa}"));
    assert!(e.contains("unknown route `nope`"), "{e}");
    assert!(e.contains("table, hash, wrr, rr"), "{e}");
    let e = refuse(&p, &format!("weight wr {sa} 2"));
    assert!(
        e.contains("unknown route `wr`") && e.contains("`wrr`"),
        "{e}"
    );

    // Unknown server: the route's servers listed.
    let e = refuse(&p, "maint rr 127.0.0.1:1");
    assert!(e.contains("route rr has no server `127.0.0.1:1`"), "{e}");
    assert!(e.contains(&format!("{sa}, {sb}")), "{e}");

    // Weights out of range or not numbers.
    for n in ["0", "1000000", "abc", "-1", "2.5", "257"] {
        let e = refuse(&p, &format!("weight wrr {sa} {n}"));
        assert!(
            e.contains("from 1 to 256") && e.contains(&format!("`{n}`")),
            "weight {n}: {e}"
        );
    }
    // Weight on a RoundRobin route: refused, the balancer needed named.
    let e = refuse(&p, &format!("weight rr {sa} 5"));
    assert!(
        e.contains("RoundRobin") && e.contains("WeightedRoundRobin"),
        "{e}"
    );

    // Missing (or extra) arguments.
    for (cmd, name) in [
        ("drain rr".to_string(), "drain"),
        ("maint".to_string(), "maint"),
        (format!("ready rr {sa} extra"), "ready"),
        (format!("weight wrr {sa}"), "weight"),
        ("servers all".to_string(), "servers"),
    ] {
        let e = refuse(&p, &cmd);
        assert!(
            e.contains(&format!("wrong arguments for `{name}`")),
            "{cmd}: {e}"
        );
        assert!(e.contains("weight ROUTE SERVER N"), "{cmd}: the usage: {e}");
    }
    // No command at all: a usage error from the argument parser.
    let s = admin_sock(&p).display().to_string();
    let c = simian(&["ctl", "-s", &s]);
    assert_ne!(c.code, Some(0), "{c:?}");
    assert!(c.out.is_empty() && c.err.contains("COMMAND"), "{c:?}");

    // None of this changed anything.
    let t = servers(&p);
    assert_eq!(t.len(), 8);
    for ((route, server), r) in &t {
        assert_eq!(
            (r.admin.as_str(), r.weight),
            ("ready", 1),
            "{route} {server}"
        );
    }
    let t = tally(&p, "/rr", None, 10);
    assert_eq!((count(&t, "A"), count(&t, "B")), (5, 5), "{t:?}");
}

// ---------------------------------------------------------------------------
// 3. The socket file
// ---------------------------------------------------------------------------

#[test]
fn admin_socket_is_0600_owned_by_the_user_and_removed_at_exit() {
    let a = named("A");
    // The socket in a directory of our own, where a stale socket (what a killed
    // simian leaves) already is: simian replaces it.
    let dir = temp_dir("admin-sock");
    let path = dir.join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let p = Proxy::start(&format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\nAdminSocket {}\n\
         [PROXY_ENTRY]\nName app\nMatch ^/\nServerList {}\n",
        path.display(),
        a.addr()
    ));
    // The path is bound under a temporary name, then renamed: wait for the rename.
    let deadline = Instant::now() + T;
    let meta = loop {
        if ctl_s(&path, "servers").code == Some(0) {
            break std::fs::symlink_metadata(&path).unwrap();
        }
        assert!(Instant::now() < deadline, "the admin socket never answered");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(
        meta.mode() & 0o7777,
        0o600,
        "mode {:o}",
        meta.mode() & 0o7777
    );
    // SAFETY: geteuid(2) has no failure mode.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(meta.uid(), uid, "owner");
    let table = ok(ctl_s(&path, "servers"), "servers");
    assert!(table.contains(&format!("app    {}", a.addr())), "{table}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        ["admin.sock"],
        "temporary files left next to the socket"
    );

    let (p, st) = terminate_in_background(p, Duration::from_secs(10))
        .join()
        .unwrap();
    let st = st.expect("simian still running 10 s after SIGTERM");
    assert_eq!(st.code(), Some(0), "{st}\n{}", p.stderr());
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "the admin socket is still there after exit"
    );
    let e = refused(ctl_s(&path, "servers"), "after exit");
    assert!(e.contains(&path.display().to_string()), "{e}");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// simian started by hand (not through `Proxy`, whose start panics when the
/// process exits): killed on drop.
struct Bare(std::process::Child);

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An `AdminSocket` path that `--check` accepts must be one simian can bind:
/// either `--check` refuses the path (at its `file:line:col`), or simian starts
/// with it and `ctl` answers there. A unix socket path holds at most 107 bytes.
/// Two lengths: 104 bytes (a valid socket path: any program can bind it) and 120
/// (too long for any socket).
#[test]
fn admin_socket_paths_that_check_accepts_can_be_bound() {
    let dir = temp_dir("admin-long");
    let backend = named("A");
    let mut failures = Vec::new();
    for len in [104usize, 120] {
        let prefix = format!("{}/", dir.display());
        let sock = format!("{prefix}{}.sock", "s".repeat(len - prefix.len() - 5));
        assert_eq!(sock.len(), len);
        let file = dir.join(format!("long{len}.conf"));
        let f = file.display().to_string();
        std::fs::write(
            &file,
            format!(
                "[PROXY_DEFAULTS]\nListen 127.0.0.1:{}\nAdminSocket {sock}\n\
                 [PROXY_ENTRY]\nName app\nMatch ^/\nServerList {}\n",
                util::free_port(),
                backend.addr()
            ),
        )
        .unwrap();
        let check = simian(&["--check", "-c", &f]);
        if check.code == Some(1) {
            // Refused: it must say where.
            if !check.err.contains(&format!("{f}:3:13: error")) {
                failures.push(format!(
                    "{len} bytes: refused without file:line:col: {check:?}"
                ));
            }
            continue;
        }
        assert_eq!(check.code, Some(0), "{check:?}");
        let stderr = dir.join(format!("stderr{len}.log"));
        let child = Command::new(BIN)
            .args(["-c", &f])
            .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn simian");
        let mut p = Bare(child);
        let deadline = Instant::now() + T;
        let outcome = loop {
            if let Ok(Some(st)) = p.0.try_wait() {
                break Err(format!(
                    "{len} bytes: --check accepted the path, but simian exited ({st}): {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default().trim()
                ));
            }
            if std::fs::symlink_metadata(&sock).is_ok() {
                let c = ctl_s(Path::new(&sock), "servers");
                break if c.code == Some(0) {
                    Ok(())
                } else {
                    Err(format!("{len} bytes: ctl at the socket: {c:?}"))
                };
            }
            if Instant::now() >= deadline {
                break Err(format!("{len} bytes: no socket after {T:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        };
        if let Err(e) = outcome {
            failures.push(e);
        }
        drop(p);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// 4. --check
// ---------------------------------------------------------------------------

#[test]
fn check_refuses_an_admin_socket_in_a_missing_directory() {
    let dir = temp_dir("admin-check");
    let file = dir.join("admin.conf");
    let text = |sock: &str| {
        format!(
            "[PROXY_DEFAULTS]\n    Listen 127.0.0.1:1\n    AdminSocket {sock}\n\n\
             [PROXY_ENTRY]\n    Name app\n    Match ^/\n    ServerList 127.0.0.1:2\n"
        )
    };
    std::fs::write(&file, text("/nonexistent-dir/x.sock")).unwrap();
    let f = file.display().to_string();
    let c = simian(&["--check", "-c", &f]);
    assert_eq!(c.code, Some(1), "{c:?}");
    // Line 3, the value's column (4 spaces and `AdminSocket `: 17).
    let at = format!("{f}:3:17: error");
    let line = c
        .err
        .lines()
        .find(|l| l.starts_with(&at))
        .unwrap_or_else(|| panic!("no error at {at}:\n{}", c.err));
    assert!(
        line.contains("/nonexistent-dir") && line.contains("does not exist"),
        "{line}"
    );
    // Not started either: simian exits 1 with the same error.
    let c = simian(&["-c", &f]);
    assert_eq!(c.code, Some(1), "{c:?}");
    assert!(c.err.contains(&at), "{c:?}");
    // With a directory that exists, the file is fine.
    let sock = dir.join("x.sock").display().to_string();
    std::fs::write(&file, text(&sock)).unwrap();
    let c = simian(&["--check", "-c", &f]);
    assert_eq!(c.code, Some(0), "{c:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 5. Across SIGHUP, and in the statistics
// ---------------------------------------------------------------------------

fn reload_conf(a: &Backend, b: &Backend, c: &Backend, app_weights: [u32; 3], rr_c: bool) -> String {
    let [wa, wb, wc] = app_weights;
    let (a, b, c) = (a.addr(), b.addr(), c.addr());
    let rr = if rr_c {
        format!("{a} {b} {c}")
    } else {
        format!("{a} {b}")
    };
    format!(
        "[PROXY_DEFAULTS]
    Listen        127.0.0.1:@PORT@
    AdminSocket   @DIR@/admin.sock
    StatisticsURL /stats

[PROXY_ENTRY]
    Name          app
    Match         ^/app
    ServerList    {a} weight={wa} {b} weight={wb} {c} weight={wc}
    LoadBalancer  WeightedRoundRobin

[PROXY_ENTRY]
    Name          rr
    Match         ^/
    ServerList    {rr}
    LoadBalancer  RoundRobin
"
    )
}

/// The `app`/`rr` admin states and weights in all three statistics formats.
fn check_stats(p: &Proxy, want: &[(&str, &str, &str, u32)]) {
    let prom = stats(p, "");
    let json: serde_json::Value = serde_json::from_str(&stats(p, "json")).expect("statistics JSON");
    let html = stats(p, "html");
    assert!(
        html.contains("<th>admin</th><th>weight</th>"),
        "HTML header:\n{html}"
    );
    for &(route, server, admin, weight) in want {
        let l = [("route", route), ("server", server)];
        let code = match admin {
            "ready" => 0.0,
            "drain" => 1.0,
            _ => 2.0,
        };
        assert_eq!(
            sample(&prom, "simian_server_admin_state", &l),
            Some(code),
            "{route} {server}:\n{prom}"
        );
        assert_eq!(
            sample(&prom, "simian_server_weight", &l),
            Some(f64::from(weight)),
            "{route} {server}:\n{prom}"
        );
        let s = json["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["route"] == route))
            .and_then(|r| r["servers"].as_array())
            .and_then(|l| l.iter().find(|s| s["server"] == server))
            .unwrap_or_else(|| panic!("no {route} {server} in the JSON: {json}"));
        assert_eq!(s["admin_state"], admin, "{route} {server}: {s}");
        assert_eq!(s["weight"], weight, "{route} {server}: {s}");
        // The route's table, then the server's row: name, state, admin, weight.
        let table = html
            .split("<h2>")
            .find(|t| t.starts_with(&format!("{route}</h2>")))
            .unwrap_or_else(|| panic!("no table for {route}:\n{html}"));
        let cells =
            format!("<tr><td>{server}</td><td class=up>up</td><td>{admin}</td><td>{weight}</td>");
        assert!(table.contains(&cells), "{route}: no {cells} in:\n{table}");
    }
}

/// States and weights set with ctl survive SIGHUP, also for a server whose
/// `weight=` changed in the file, and show in Prometheus, JSON and HTML.
fn states_survive_sighup_and_show_in_statistics(d: Driver) {
    let (a, b, c) = (named("A"), named("B"), named("C"));
    let (sa, sb, sc) = (a.addr(), b.addr(), c.addr());
    let p = start(d, &reload_conf(&a, &b, &c, [1, 1, 1], false));

    run(&p, &format!("maint app {sa}"));
    run(&p, &format!("weight app {sb} 7"));
    run(&p, &format!("drain rr {sa}"));
    check_stats(
        &p,
        &[
            ("app", &sa, "maint", 1),
            ("app", &sb, "ready", 7),
            ("app", &sc, "ready", 1),
            ("rr", &sa, "drain", 1),
            ("rr", &sb, "ready", 1),
        ],
    );
    // 8 picks per cycle (7 + 1, A in maint): exact over whole cycles, ±1 cycle.
    let t = tally(&p, "/app", None, 80);
    assert_eq!(count(&t, "A"), 0, "{t:?}");
    assert!(
        (62..=78).contains(&count(&t, "B")),
        "B:C should be 7:1: {t:?}"
    );
    assert_eq!(count(&tally(&p, "/rr", None, 20), "A"), 0);

    // The file changes A's and B's weight in `app`, and adds C to `rr`.
    reload(&p, &reload_conf(&a, &b, &c, [3, 2, 1], true));
    let s = servers(&p);
    assert_eq!(s.len(), 6, "{s:?}");
    let got = |route: &str, server: &str| {
        let r = row(&s, route, server);
        (r.admin.clone(), r.weight)
    };
    assert_eq!(
        got("app", &sa),
        ("maint".into(), 3),
        "maint lost when weight= changed"
    );
    assert_eq!(
        got("app", &sb),
        ("ready".into(), 7),
        "ctl weight lost when weight= changed"
    );
    assert_eq!(got("app", &sc), ("ready".into(), 1));
    assert_eq!(
        got("rr", &sa),
        ("drain".into(), 1),
        "drain lost across SIGHUP"
    );
    assert_eq!(got("rr", &sb), ("ready".into(), 1));
    assert_eq!(
        got("rr", &sc),
        ("ready".into(), 1),
        "a new server starts ready"
    );
    check_stats(
        &p,
        &[
            ("app", &sa, "maint", 3),
            ("app", &sb, "ready", 7),
            ("app", &sc, "ready", 1),
            ("rr", &sa, "drain", 1),
            ("rr", &sb, "ready", 1),
            ("rr", &sc, "ready", 1),
        ],
    );
    // And on the traffic, with the reloaded balancers.
    let t = tally(&p, "/app", None, 80);
    assert_eq!(
        count(&t, "A"),
        0,
        "a server in maint took requests after SIGHUP: {t:?}"
    );
    assert!(
        (62..=78).contains(&count(&t, "B")),
        "weight 7 not in force after SIGHUP: {t:?}"
    );
    // (RoundRobin passes a drained server's turn to the next one: B takes A's
    // turns, so B:C is 2:1, not 1:1.)
    let t = tally(&p, "/rr", None, 30);
    assert_eq!(count(&t, "A"), 0, "drain not in force after SIGHUP: {t:?}");
    assert!(count(&t, "B") > 0 && count(&t, "C") > 0, "{t:?}");

    // ctl acts on the reloaded configuration: A back in app at its new weight 3.
    assert_eq!(
        run(&p, &format!("ready app {sa}")),
        format!("app {sa}: ready (was maint)\n")
    );
    let t = tally(&p, "/app", None, 110);
    assert!((20..=40).contains(&count(&t, "A")), "3:7:1 over 110: {t:?}");
    check_stats(&p, &[("app", &sa, "ready", 3)]);
}

per_driver!(states_survive_sighup_and_show_in_statistics);

// ---------------------------------------------------------------------------
// 6. HealthURL and ShutdownDelay
// ---------------------------------------------------------------------------

/// A response simian wrote itself (the test backends add `X-Conn`).
fn own(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {:?}\n{}", r.head, r.text());
    assert!(
        !r.head.has("x-conn"),
        "{what}: answered by a backend: {r:?}"
    );
}

fn health_conf(backend: &Backend, extra: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]
    Listen     127.0.0.1:@PORT@
    HealthURL  /healthz
    IdleTimeout 30s
{extra}
[PROXY_ENTRY]
    Name       app
    Match      ^/
    ServerList {}
",
        backend.addr()
    )
}

/// 200 on every listener, with a query, to HEAD, to a client the entries deny,
/// on keep-alive and pipelined; never forwarded, never logged; only the exact
/// path.
fn health_url_is_answered_by_simian(d: Driver) {
    let b = named("B");
    let port2 = util::free_port();
    let p = start(
        d,
        &health_conf(
            &b,
            &format!(
                "    Listen     127.0.0.1:{port2}\n    AccessLog  @DIR@/access.log\n    Deny       127.0.0.2\n"
            ),
        ),
    );
    let once = |c: &mut Client, path: &str| c.get_with(path, "Connection: close\r\n");

    let r = once(&mut client(&p), "/healthz");
    own(&r, 200, "GET /healthz");
    assert!(
        r.head.has_token("cache-control", "no-cache"),
        "{:?}",
        r.head
    );
    own(
        &once(&mut client(&p), "/healthz?probe=1&x=%2F"),
        200,
        "with a query",
    );
    own(
        &once(&mut client(&p), "/healthz?"),
        200,
        "with an empty query",
    );
    let mut c2 = Client::tcp(format!("127.0.0.1:{port2}"));
    c2.set_timeout(T);
    own(&once(&mut c2, "/healthz"), 200, "second listener");
    // Deny applies to the entries, not to the health check.
    let mut denied = client_from(&p, Ipv4Addr::new(127, 0, 0, 2));
    own(&once(&mut denied, "/app"), 403, "a denied client's request");
    let mut denied = client_from(&p, Ipv4Addr::new(127, 0, 0, 2));
    own(
        &once(&mut denied, "/healthz"),
        200,
        "a denied client's health check",
    );

    // HEAD: the head only, not one byte after it.
    let mut c = client(&p);
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_head_response();
    own(&r, 200, "HEAD /healthz");
    assert!(
        c.stays_quiet(Duration::from_millis(200)),
        "bytes after a HEAD answer"
    );
    // Then the same connection goes on (keep-alive), to the backend and back.
    own(&c.get("/healthz"), 200, "after HEAD on the same connection");
    let r = c.get("/app/1");
    assert_eq!((r.status, r.text().as_str()), (200, "B"), "{r:?}");
    own(&c.get("/healthz"), 200, "after a forwarded request");
    // Pipelined: health, a forwarded request, health, in one write.
    c.send(
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n\
          GET /app/2 HTTP/1.1\r\nHost: test\r\n\r\n\
          GET /healthz?again HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    own(&c.read_response(), 200, "pipelined health 1");
    let r = c.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "B"),
        "pipelined /app/2: {r:?}"
    );
    own(&c.read_response(), 200, "pipelined health 2");

    // The path is matched exactly: these go to the backend.
    for path in ["/healthz/", "/healthzz", "/x/healthz", "/HEALTHZ"] {
        let r = once(&mut client(&p), path);
        assert_eq!((r.status, r.text().as_str()), (200, "B"), "{path}: {r:?}");
    }
    let mut targets = b.targets();
    targets.sort();
    assert_eq!(
        targets,
        [
            "/HEALTHZ",
            "/app/1",
            "/app/2",
            "/healthz/",
            "/healthzz",
            "/x/healthz"
        ],
        "what reached the backend"
    );

    // Not in the access log: wait for the last forwarded request's line.
    let log = p.dir.join("access.log");
    let deadline = Instant::now() + T;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("/HEALTHZ") && text.contains("/app/2") {
            break text;
        }
        assert!(Instant::now() < deadline, "access log incomplete:\n{text}");
        thread::sleep(Duration::from_millis(20));
    };
    let logged: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("\"GET /healthz ")
                || l.contains("\"HEAD /healthz ")
                || l.contains("/healthz?")
        })
        .collect();
    assert!(
        logged.is_empty(),
        "health checks in the access log: {logged:#?}"
    );
    assert!(text.contains("\"GET /healthz/ "), "{text}");
}

/// `ShutdownDelay 1s`: from the SIGTERM the HealthURL answers 503, while new
/// connections are still accepted and served for the delay; then they are
/// refused and simian exits 0.
fn shutdown_delay_keeps_serving_with_health_503(d: Driver) {
    let b = named("B");
    let p = start(
        d,
        &health_conf(&b, "    ShutdownDelay 1s\n    ShutdownTimeout 5s\n"),
    );
    let addr: SocketAddr = p.addr().parse().unwrap();
    assert_eq!(attempt(&addr, "/healthz"), Attempt::Served(200));
    let mut kept = client(&p);
    assert!(kept.get("/app/kept").keep_alive());

    let t0 = Instant::now();
    let term = terminate_in_background(p, Duration::from_secs(10));

    // 503 at once (the signal thread looks every 20 ms).
    let flipped = loop {
        match attempt(&addr, "/healthz") {
            Attempt::Served(503) => break t0.elapsed(),
            Attempt::Served(200) => {}
            other => panic!(
                "health check at {:?} after SIGTERM: {other:?}",
                t0.elapsed()
            ),
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "HealthURL still 200 500 ms after SIGTERM"
        );
        thread::sleep(Duration::from_millis(5));
    };
    // Through the delay: new connections are accepted and served, the health
    // check says 503 on them and on a connection opened before.
    let mut served = 0;
    while t0.elapsed() < Duration::from_millis(750) {
        let at = t0.elapsed();
        assert_eq!(
            attempt(&addr, "/app/during"),
            Attempt::Served(200),
            "at {at:?}"
        );
        assert_eq!(
            attempt(&addr, "/healthz"),
            Attempt::Served(503),
            "at {at:?}"
        );
        served += 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(served >= 3, "only {served} rounds in the delay");
    let r = kept.get("/app/kept-again");
    assert_eq!((r.status, r.text().as_str()), (200, "B"), "{r:?}");
    own(
        &kept.get("/healthz"),
        503,
        "health on a connection opened before",
    );

    // After the delay: refused.
    let refused_at = loop {
        let at = t0.elapsed();
        match attempt(&addr, "/app/after") {
            Attempt::Refused => break at,
            Attempt::Served(s) => assert!(
                s == 200 || (s == 0 && at >= Duration::from_millis(900)),
                "at {at:?}: {s}"
            ),
        }
        assert!(
            at < Duration::from_secs(3),
            "still accepting 3 s after SIGTERM (delay 1 s)"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let (p, st) = term.join().unwrap();
    let st = st.expect("simian still running 10 s after SIGTERM");
    assert_eq!(st.code(), Some(0), "{st}\n{}", p.stderr());
    println!("health 503 after {flipped:?}, refused after {refused_at:?}, {served} rounds served");
    assert!(
        refused_at >= Duration::from_millis(950),
        "connections refused {refused_at:?} after SIGTERM: before the 1 s ShutdownDelay"
    );
    assert!(b.targets().iter().filter(|t| *t == "/app/during").count() >= 3);
    assert!(!b.targets().iter().any(|t| t.starts_with("/healthz")));
}

/// Without ShutdownDelay, SIGTERM drains as before: a request in flight
/// finishes, new connections are refused at once, exit 0.
fn sigterm_without_delay_drains_as_before(d: Driver) {
    let slow = Backend::start(|_| {
        thread::sleep(Duration::from_millis(800));
        Reply::ok("slow")
    });
    let p = start(d, &health_conf(&slow, ""));
    let addr: SocketAddr = p.addr().parse().unwrap();
    assert_eq!(attempt(&addr, "/healthz"), Attempt::Served(200));
    let mut c = client(&p);
    let inflight = thread::spawn(move || {
        c.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n");
        c.try_read_response(false)
    });
    assert_eq!(slow.wait_count(1, T), 1);
    let t0 = Instant::now();
    signal(&p, libc::SIGTERM);
    // The signal thread looks every 20 ms: a check that lands before it may
    // still get 200; from then on the listeners are closed.
    let refused_at = loop {
        let at = t0.elapsed();
        match attempt(&addr, "/healthz") {
            Attempt::Refused => break t0.elapsed(),
            Attempt::Served(s) => assert!(
                s == 503 || s == 0 || at < Duration::from_millis(50),
                "health {at:?} after SIGTERM: {s}"
            ),
        }
        assert!(
            at < Duration::from_millis(500),
            "still accepting 500 ms after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    };
    // (`terminate` sends SIGTERM again, which a draining simian ignores, and
    // collects the exit status.)
    let term = terminate_in_background(p, Duration::from_secs(10));
    let r = inflight
        .join()
        .unwrap()
        .expect("the request in flight was cut");
    assert_eq!((r.status, r.text().as_str()), (200, "slow"), "{r:?}");
    assert!(r.head.has_token("connection", "close"), "{:?}", r.head);
    let (p, st) = term.join().unwrap();
    let st = st.expect("simian still running 10 s after SIGTERM");
    assert_eq!(st.code(), Some(0), "{st}\n{}", p.stderr());
    println!("refused after {refused_at:?}");
}

per_driver!(
    health_url_is_answered_by_simian,
    shutdown_delay_keeps_serving_with_health_503,
    sigterm_without_delay_drains_as_before,
);

/// A second SIGTERM during the ShutdownDelay starts the drain at once.
#[test]
fn second_sigterm_cuts_the_shutdown_delay_short() {
    let b = named("B");
    let p = Proxy::start(&health_conf(&b, "    ShutdownDelay 30s\n"));
    let addr: SocketAddr = p.addr().parse().unwrap();
    signal(&p, libc::SIGTERM);
    assert!(
        p.wait_log("ShutdownDelay", T),
        "the delay is not logged:\n{}",
        p.stderr()
    );
    assert_eq!(attempt(&addr, "/healthz"), Attempt::Served(503));
    assert_eq!(attempt(&addr, "/app"), Attempt::Served(200));
    let t0 = Instant::now();
    let (p, st) = terminate_in_background(p, Duration::from_secs(5))
        .join()
        .unwrap();
    let st = st.expect("a second SIGTERM did not end the 30 s delay within 5 s");
    assert_eq!(st.code(), Some(0), "{st}\n{}", p.stderr());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(attempt(&addr, "/healthz"), Attempt::Refused);
}
