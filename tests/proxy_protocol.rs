//! Client addresses, end to end (SPEC section 10): `Listen ... proxy` (a PROXY
//! protocol v1 or v2 header first on every connection), `TrustedProxies` (the client
//! address from `X-Forwarded-For`), `SendProxy v1|v2` (a header first on every
//! backend connection), `simian forward --accept-proxy --send-proxy`, and the
//! interplay with curl, HAProxy and nginx.
//!
//! The headers sent and the ones the backends receive are written and read by hand
//! here, not with simian's own codec (src/net/proxy_protocol.rs), so that a bug
//! there cannot hide itself. The client address simian uses is read from the access
//! log's first field and from the `X-Forwarded-For` the backend receives.
//!
//! The core scenarios run on both monoio drivers (io_uring, and epoll forced with
//! `MONOIO_FORCE_LEGACY_DRIVER=1`). HAProxy, nginx and curl tests are skipped, with
//! a message, when the program is not installed.

mod util;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::*;

// ---------------------------------------------------------------------------
// PROXY headers, by hand
// ---------------------------------------------------------------------------

const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header (TCP4 or TCP6 by the addresses' family).
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 header: version/command byte, family/protocol byte, address block.
fn v2_raw(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut v = SIG.to_vec();
    v.push(ver_cmd);
    v.push(fam);
    v.extend_from_slice(&(block.len() as u16).to_be_bytes());
    v.extend_from_slice(block);
    v
}

/// A v2 `PROXY` header for TCP from `src` to `dst` (same family).
fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let fam = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            0x21
        }
        _ => panic!("mixed families"),
    };
    block.extend_from_slice(&src.port().to_be_bytes());
    block.extend_from_slice(&dst.port().to_be_bytes());
    v2_raw(0x21, fam, &block)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A header received by a backend: version, source, destination, length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Got {
    version: u8,
    source: SocketAddr,
    dest: SocketAddr,
    len: usize,
}

/// The PROXY header at the start of `b` (TCP4/TCP6 or v2 PROXY over TCP), if whole.
fn read_header(b: &[u8]) -> Result<Got, String> {
    let bad = || {
        format!(
            "no PROXY header at the start of {:?}",
            String::from_utf8_lossy(b)
        )
    };
    if b.starts_with(b"PROXY ") {
        let end = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let line = std::str::from_utf8(&b[..end]).map_err(|_| bad())?;
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 6 || !matches!(f[1], "TCP4" | "TCP6") {
            return Err(bad());
        }
        let addr = |ip: &str, port: &str| -> Result<SocketAddr, String> {
            Ok(SocketAddr::new(
                ip.parse().map_err(|_| bad())?,
                port.parse().map_err(|_| bad())?,
            ))
        };
        return Ok(Got {
            version: 1,
            source: addr(f[2], f[4])?,
            dest: addr(f[3], f[5])?,
            len: end + 2,
        });
    }
    if b.len() < 16 || &b[..12] != SIG || b[12] != 0x21 {
        return Err(bad());
    }
    let len = 16 + u16::from_be_bytes([b[14], b[15]]) as usize;
    let a = b.get(16..len).ok_or_else(bad)?;
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let (source, dest) = match b[13] {
        0x11 if a.len() >= 12 => (
            SocketAddr::new(<[u8; 4]>::try_from(&a[0..4]).unwrap().into(), port(8)),
            SocketAddr::new(<[u8; 4]>::try_from(&a[4..8]).unwrap().into(), port(10)),
        ),
        0x21 if a.len() >= 36 => (
            SocketAddr::new(<[u8; 16]>::try_from(&a[0..16]).unwrap().into(), port(32)),
            SocketAddr::new(<[u8; 16]>::try_from(&a[16..32]).unwrap().into(), port(34)),
        ),
        _ => return Err(bad()),
    };
    Ok(Got {
        version: 2,
        source,
        dest,
        len,
    })
}

// ---------------------------------------------------------------------------
// Configurations, clients, logs
// ---------------------------------------------------------------------------

const GET: &[u8] = b"GET /req HTTP/1.1\r\nHost: test\r\n\r\n";

/// `[PROXY_DEFAULTS]` listening on `127.0.0.1:@PORT@` followed by `flags` (` proxy`),
/// with an access log and the `defaults` lines; one catch-all entry `app` in front of
/// `server` with the `entry` lines.
fn conf(flags: &str, defaults: &str, server: &str, entry: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@{flags}\nAccessLog @DIR@/access.log\n\
         {defaults}\n\n[PROXY_ENTRY]\nName app\nMatch ^/\nServerList {server}\n{entry}\n"
    )
}

fn start(d: Driver, config: &str) -> Proxy {
    // One worker: access log lines in request order.
    Proxy::start_with(config, Options::driver(d).threads(1))
}

/// A backend that answers with the `X-Forwarded-For` it received (`-` for none).
fn xff_echo() -> Backend {
    Backend::start(|r| Reply::ok(r.get("x-forwarded-for").unwrap_or("-")))
}

fn client(p: &Proxy) -> Client {
    let c = p.client();
    c.set_timeout(Duration::from_secs(10));
    c
}

/// One request on a new connection that starts with `header`; the response body.
fn via_header(p: &Proxy, header: &[u8], extra: &str) -> (u16, String) {
    let mut c = client(p);
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(format!("GET /req HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes());
    let r = c.request(&bytes);
    (r.status, r.text())
}

/// The client field (the first) of each access log line so far.
fn access_lines(p: &Proxy) -> Vec<String> {
    std::fs::read_to_string(p.dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect()
}

/// The client field of each access log line, once there are `n` lines (or after
/// 5 s, whatever is there).
fn access_clients(p: &Proxy, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clients = access_lines(p);
        if clients.len() >= n || Instant::now() >= deadline {
            return clients;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn local_addr(c: &Client) -> SocketAddr {
    match &c.wire.conn {
        Conn::Tcp(s) => s.local_addr().unwrap(),
        Conn::Unix(_) => panic!("not a TCP client"),
    }
}

fn peer_addr(c: &Client) -> SocketAddr {
    match &c.wire.conn {
        Conn::Tcp(s) => s.peer_addr().unwrap(),
        Conn::Unix(_) => panic!("not a TCP client"),
    }
}

/// A TCP connection to `to` from the local address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src = SocketAddr::new(from.parse().unwrap(), 0);
    s.bind(&src.into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

fn installed(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Raw backends that record the PROXY header they get
// ---------------------------------------------------------------------------

/// A backend that records what each connection did (a `T`), served by `serve` on
/// a thread per connection; stopped when dropped.
struct Recorder<T> {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<T>>>>>,
    stop: Arc<AtomicBool>,
}

impl<T: Default + Clone + Send + 'static> Recorder<T> {
    fn spawn(serve: fn(TcpStream, &Mutex<T>)) -> Recorder<T> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Mutex<T>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (cs, st) = (conns.clone(), stop.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let rec = Arc::new(Mutex::new(T::default()));
                cs.lock().unwrap().push(rec.clone());
                thread::spawn(move || serve(s, &rec));
            }
        });
        Recorder { addr, conns, stop }
    }

    /// What every connection so far recorded.
    fn all(&self) -> Vec<T> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

impl<T> Drop for Recorder<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A raw TCP backend: records every byte, answers `world` to `hello`.
type TcpRecorder = Recorder<Vec<u8>>;

impl TcpRecorder {
    fn start() -> TcpRecorder {
        Recorder::spawn(|mut s, rec| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let mut answered = false;
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut b) {
                let mut r = rec.lock().unwrap();
                r.extend_from_slice(&b[..n]);
                if !answered && r.windows(5).any(|w| w == b"hello") {
                    answered = true;
                    let _ = s.write_all(b"world\n");
                }
            }
            let _ = s.shutdown(Shutdown::Both);
        })
    }

    /// The bytes of the connection that carried `marker` (waiting for it).
    fn conn_with(&self, marker: &[u8]) -> Vec<u8> {
        let mut found = None;
        wait_until(
            Duration::from_secs(5),
            "the marked backend connection",
            || {
                found = self
                    .conns
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|c| c.lock().unwrap().clone())
                    .find(|c| c.windows(marker.len()).any(|w| w == marker));
                found.is_some()
            },
        );
        found.unwrap()
    }
}

/// Through a tcp listener: `hello-TAG` out, `world` back.
fn tunnel(c: &mut Client, tag: &str) {
    c.send(format!("hello-{tag}").as_bytes());
    let mut b = [0u8; 6];
    c.wire
        .conn
        .read_exact(&mut b)
        .unwrap_or_else(|e| panic!("tunnel {tag}: no answer: {e}"));
    assert_eq!(&b, b"world\n");
}

/// What an [`HttpRecorder`] connection saw: its PROXY header, and the `X-Client` of
/// each request it carried.
#[derive(Clone, Debug, Default)]
struct Seen {
    header: Option<Got>,
    clients: Vec<String>,
    error: Option<String>,
}

/// An HTTP/1.1 backend whose connections must each start with a PROXY header; it
/// answers every request (GETs only) with 200 and keeps the connection.
type HttpRecorder = Recorder<Seen>;

impl HttpRecorder {
    fn start() -> HttpRecorder {
        Recorder::spawn(Self::serve)
    }

    fn serve(mut s: TcpStream, seen: &Mutex<Seen>) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| match s.read(&mut b) {
            Ok(n @ 1..) => {
                buf.extend_from_slice(&b[..n]);
                true
            }
            _ => false,
        };
        // The header.
        let plausible = |b: &[u8]| {
            let (n, m) = (b.len().min(6), b.len().min(12));
            b[..n] == b"PROXY "[..n] || b[..m] == SIG[..m]
        };
        loop {
            if !plausible(&buf) {
                seen.lock().unwrap().error = Some(read_header(&buf).unwrap_err());
                return;
            }
            match read_header(&buf) {
                Ok(h) => {
                    buf.drain(..h.len);
                    seen.lock().unwrap().header = Some(h);
                    break;
                }
                Err(e) if buf.len() >= 108 && !buf.starts_with(SIG) => {
                    seen.lock().unwrap().error = Some(e);
                    return;
                }
                Err(_) => {}
            }
            if !fill(&mut s, &mut buf) {
                if !buf.is_empty() {
                    seen.lock().unwrap().error = Some(read_header(&buf).unwrap_err());
                }
                return;
            }
        }
        // Requests.
        let mut id = 0;
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Head::parse(&buf[..end + 4]);
                buf.drain(..end + 4);
                if !head.line.starts_with("GET ") {
                    seen.lock().unwrap().error = Some(format!("not a GET: {head:?}"));
                    return;
                }
                let who = head.get("x-client").unwrap_or("-").to_string();
                seen.lock().unwrap().clients.push(who.clone());
                id += 1;
                let body = format!("{who}/{id}");
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
            if !fill(&mut s, &mut buf) {
                return;
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.all()
    }
}

// ---------------------------------------------------------------------------
// 1. The header's source is the client address
// ---------------------------------------------------------------------------

fn client_address_from_header(d: Driver) {
    let b = xff_echo();
    let p = start(d, &conf(" proxy", "", &b.addr(), ""));

    // v1, in one write with the request; a second request on the same connection
    // keeps the address (one header per connection).
    let mut c = client(&p);
    let mut bytes = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n".to_vec();
    bytes.extend_from_slice(GET);
    let r = c.request(&bytes);
    assert_eq!((r.status, r.text().as_str()), (200, "203.0.113.7"));
    assert_eq!(c.get("/again").text(), "203.0.113.7");

    // v1 split inside an address, the request in a later write.
    let mut c = client(&p);
    c.send(b"PROXY TCP4 198.51.1");
    thread::sleep(Duration::from_millis(100));
    c.send(b"00.9 10.0.0.1 5555 80\r\n");
    thread::sleep(Duration::from_millis(50));
    assert_eq!(c.get("/split").text(), "198.51.100.9");

    // v2, IPv6, the header alone first.
    let mut c = client(&p);
    c.send(&v2(sa("[2001:db8::7]:5555"), sa("[2001:db8::1]:80")));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(c.get("/v6").text(), "2001:db8::7");

    // v2 IPv4 with TLVs after the addresses (an AUTHORITY and a NOOP).
    let mut block = vec![192, 0, 2, 44, 10, 0, 0, 1, 0x15, 0xb3, 0, 80];
    block.extend_from_slice(&[0x02, 0, 11]);
    block.extend_from_slice(b"example.com");
    block.extend_from_slice(&[0x04, 0, 2, 0, 0]);
    assert_eq!(
        via_header(&p, &v2_raw(0x21, 0x11, &block), ""),
        (200, "192.0.2.44".to_string())
    );

    // v2 LOCAL (a health check of the balancer in front) and v1 UNKNOWN: the peer.
    assert_eq!(
        via_header(&p, &v2_raw(0x20, 0x00, &[]), ""),
        (200, "127.0.0.1".to_string())
    );
    assert_eq!(
        via_header(&p, b"PROXY UNKNOWN\r\n", ""),
        (200, "127.0.0.1".to_string())
    );

    let want = [
        "203.0.113.7",
        "203.0.113.7",
        "198.51.100.9",
        "2001:db8::7",
        "192.0.2.44",
        "127.0.0.1",
        "127.0.0.1",
    ];
    assert_eq!(access_clients(&p, want.len()), want, "access log clients");
}

/// `Deny` and `Allow` judge the header's address, not the balancer's.
fn allow_deny_use_the_header_address(d: Driver) {
    let b = Backend::fixed("ok");
    let config = format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@ proxy\n\n\
         [PROXY_ENTRY]\nName guarded\nMatch ^/\nServerList {}\n\
         Allow 203.0.113.0/24 198.51.100.0/24\nDeny 203.0.113.66\n",
        b.addr()
    );
    let p = start(d, &config);
    let h = |ip: &str| {
        v1(
            SocketAddr::new(ip.parse().unwrap(), 4000),
            sa("10.0.0.1:80"),
        )
    };
    assert_eq!(via_header(&p, &h("203.0.113.7"), "").0, 200);
    assert_eq!(via_header(&p, &h("198.51.100.1"), "").0, 200);
    assert_eq!(via_header(&p, &h("203.0.113.66"), "").0, 403);
    assert_eq!(via_header(&p, &h("192.0.2.1"), "").0, 403);
    // The peer (127.0.0.1) is not allowed: LOCAL keeps it.
    assert_eq!(via_header(&p, &v2_raw(0x20, 0x00, &[]), "").0, 403);
    assert_eq!(b.request_count(), 2);
}

/// curl's `--haproxy-protocol` (v1 with its own addresses), bound to 127.0.0.9.
fn curl_haproxy_protocol(d: Driver) {
    if !installed("curl", "--version") {
        eprintln!("skipped: curl not installed");
        return;
    }
    let b = xff_echo();
    let p = start(d, &conf(" proxy", "", &b.addr(), ""));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "--haproxy-protocol",
            "--interface",
            "127.0.0.9",
            &format!("http://{}/curl", p.addr()),
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "127.0.0.9");
    assert_eq!(access_clients(&p, 1), ["127.0.0.9"]);
}

// ---------------------------------------------------------------------------
// 2. No valid header: closed without an answer, nothing forwarded
// ---------------------------------------------------------------------------

fn bad_headers_closed_without_answer(d: Driver) {
    let b = Backend::fixed("ok");
    let p = start(d, &conf(" proxy", "HeadTimeout 2s", &b.addr(), ""));
    let with_get = |h: &[u8]| [h, GET].concat();
    let mut bad_sig = v2(sa("192.0.2.1:1"), sa("10.0.0.1:80"));
    bad_sig[8] = b'X';
    let v2_ok = v2(sa("192.0.2.1:1"), sa("10.0.0.1:80"));
    // (what, bytes sent, refused at once (else: waits for HeadTimeout))
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "truncated v1",
            b"PROXY TCP4 203.0.113.7 10.0".to_vec(),
            false,
        ),
        ("truncated v2", v2_ok[..20].to_vec(), false),
        ("silence", vec![], false),
        (
            "v1 over 107 bytes",
            with_get(format!("PROXY UNKNOWN {}\r\n", "f".repeat(93)).as_bytes()),
            true,
        ),
        ("v2 bad signature", with_get(&bad_sig), true),
        (
            "v2 unknown family",
            with_get(&v2_raw(0x21, 0x41, &[1; 12])),
            true,
        ),
        (
            "v2 version 1",
            with_get(&v2_raw(0x11, 0x11, &[1; 12])),
            true,
        ),
        (
            "v2 block too short",
            with_get(&v2_raw(0x21, 0x21, &[1; 12])),
            true,
        ),
        (
            "v1 port with a leading zero",
            with_get(b"PROXY TCP4 203.0.113.7 10.0.0.1 05555 80\r\n"),
            true,
        ),
        (
            "v1 TCP6 with IPv4 addresses",
            with_get(b"PROXY TCP6 203.0.113.7 10.0.0.1 5555 80\r\n"),
            true,
        ),
        ("v1 bare LF", with_get(b"PROXY UNKNOWN\n"), true),
        ("no header at all", GET.to_vec(), true),
    ];
    let t0 = Instant::now();
    let mut conns: Vec<Client> = cases
        .iter()
        .map(|(_, bytes, _)| {
            let mut c = client(&p);
            if !bytes.is_empty() {
                c.send(bytes);
            }
            c
        })
        .collect();
    thread::sleep(Duration::from_millis(1000).saturating_sub(t0.elapsed()));
    for ((what, _, at_once), c) in cases.iter().zip(&mut conns) {
        if *at_once {
            let got = c
                .read_until_close(Duration::from_millis(500))
                .unwrap_or_else(|v| panic!("{what}: still open after 1.5 s; received {v:?}"));
            assert!(
                got.is_empty(),
                "{what}: answered {:?}",
                String::from_utf8_lossy(&got)
            );
        } else {
            assert!(
                c.stays_quiet(Duration::from_millis(10)),
                "{what}: closed (or answered) before HeadTimeout"
            );
        }
    }
    for ((what, _, at_once), c) in cases.iter().zip(&mut conns) {
        if !*at_once {
            let got = c
                .read_until_close(Duration::from_secs(6))
                .unwrap_or_else(|v| panic!("{what}: still open after HeadTimeout; received {v:?}"));
            assert!(
                got.is_empty(),
                "{what}: answered {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(b.connections(), 0, "something was forwarded");
    // And the listener still serves a good header.
    assert_eq!(
        via_header(&p, &v2_ok, "").0,
        200,
        "a valid header after the bad ones"
    );
}

// ---------------------------------------------------------------------------
// 3. TrustedProxies
// ---------------------------------------------------------------------------

fn trusted_proxies(d: Driver) {
    let b = xff_echo();
    let spoof = "X-Forwarded-For: 198.51.100.1, 10.0.0.5\r\n";

    // Loopback trusted: the right-most untrusted address of X-Forwarded-For.
    let p = start(d, &conf("", "TrustedProxies 127.0.0.0/8", &b.addr(), ""));
    let bodies: Vec<String> = [spoof, "", "X-Forwarded-For: 10.0.0.5, 127.0.0.3\r\n"]
        .iter()
        .map(|h| via_header(&p, b"", h).1)
        .collect();
    // X-Forwarded-For to the backend: the received list, then the peer.
    assert_eq!(
        bodies,
        [
            "198.51.100.1, 10.0.0.5, 127.0.0.1",
            "127.0.0.1",
            "10.0.0.5, 127.0.0.3, 127.0.0.1",
        ]
    );
    assert_eq!(access_clients(&p, 3), ["10.0.0.5", "127.0.0.1", "10.0.0.5"]);
    drop(p);

    // 10.0.0.0/8 trusted too: past it; all trusted: the left-most.
    let p = start(
        d,
        &conf("", "TrustedProxies 127.0.0.0/8 10.0.0.0/8", &b.addr(), ""),
    );
    via_header(&p, b"", spoof);
    via_header(&p, b"", "X-Forwarded-For: 10.0.0.7, 10.0.0.5\r\n");
    assert_eq!(access_clients(&p, 2), ["198.51.100.1", "10.0.0.7"]);
    drop(p);

    // The peer is not trusted: X-Forwarded-For changes nothing (but is appended to).
    let p = start(d, &conf("", "TrustedProxies 10.0.0.0/8", &b.addr(), ""));
    assert_eq!(
        via_header(&p, b"", spoof).1,
        "198.51.100.1, 10.0.0.5, 127.0.0.1"
    );
    assert_eq!(access_clients(&p, 1), ["127.0.0.1"]);
    drop(p);

    // Behind a PROXY header, the peer is the header's source.
    let p = start(
        d,
        &conf(" proxy", "TrustedProxies 127.0.0.0/8", &b.addr(), ""),
    );
    let untrusted = v1(sa("192.0.2.1:4000"), sa("10.0.0.1:80"));
    let trusted = v1(sa("127.0.0.5:4000"), sa("10.0.0.1:80"));
    assert_eq!(
        via_header(&p, &untrusted, spoof).1,
        "198.51.100.1, 10.0.0.5, 192.0.2.1"
    );
    assert_eq!(
        via_header(&p, &trusted, spoof).1,
        "198.51.100.1, 10.0.0.5, 127.0.0.5"
    );
    assert_eq!(access_clients(&p, 2), ["192.0.2.1", "10.0.0.5"]);
}

// ---------------------------------------------------------------------------
// 4. SendProxy
// ---------------------------------------------------------------------------

/// tcp entries: each backend connection starts with a header for its client;
/// behind a `proxy` listener, the header received is relayed.
fn send_proxy_tcp(d: Driver) {
    let rec = TcpRecorder::start();
    let ports = util::free_ports(2);
    let (p2, p3) = (ports[0], ports[1]);
    let config = format!(
        "[PROXY_ENTRY]\nName t1\nMode tcp\nListen 127.0.0.1:@PORT@\nServerList {r}\nSendProxy v1\n\n\
         [PROXY_ENTRY]\nName t2\nMode tcp\nListen 127.0.0.1:{p2}\nServerList {r}\nSendProxy v2\n\n\
         [PROXY_ENTRY]\nName t3\nMode tcp\nListen 127.0.0.1:{p3} proxy\nServerList {r}\nSendProxy v2\n",
        r = rec.addr
    );
    let p = start(d, &config);

    // v1: the exact line, then the client's bytes.
    let mut c = client(&p);
    tunnel(&mut c, "t1");
    let (me, it) = (local_addr(&c), peer_addr(&c));
    let got = rec.conn_with(b"hello-t1");
    let line = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        me.port(),
        it.port()
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("{line}hello-t1"),
        "v1 on a tcp entry"
    );

    // v2.
    let mut c = Client::tcp(format!("127.0.0.1:{p2}"));
    tunnel(&mut c, "t2");
    let got = rec.conn_with(b"hello-t2");
    let h = read_header(&got).unwrap();
    assert_eq!(
        (h.version, h.source, h.dest),
        (2, local_addr(&c), peer_addr(&c)),
        "v2 on a tcp entry"
    );
    assert_eq!(&got[h.len..], b"hello-t2");
    assert_eq!(h.len, 28, "a v2 header without TLVs");

    // A `proxy` listener: the header received (v1) is relayed (as v2).
    let mut c = Client::tcp(format!("127.0.0.1:{p3}"));
    c.send(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n");
    tunnel(&mut c, "t3");
    let got = rec.conn_with(b"hello-t3");
    let h = read_header(&got).unwrap();
    assert_eq!(
        (h.source, h.dest),
        (sa("203.0.113.7:5555"), sa("10.0.0.1:80")),
        "relayed header"
    );
    assert_eq!(&got[h.len..], b"hello-t3");

    // Every backend connection (readiness probes included) began with a header.
    for conn in rec.all().into_iter().filter(|c| !c.is_empty()) {
        assert!(
            read_header(&conn).is_ok(),
            "a backend connection without a header: {:?}",
            String::from_utf8_lossy(&conn)
        );
    }
}

/// http entries: every backend connection starts with a header and carries the
/// requests of one client connection only.
fn send_proxy_http(d: Driver, version: &str) {
    let rec = HttpRecorder::start();
    let p = start(
        d,
        &conf(
            "",
            "",
            &rec.addr.to_string(),
            &format!("SendProxy {version}"),
        ),
    );
    let get = |c: &mut Client, who: &str| {
        let r = c.get_with("/r", &format!("X-Client: {who}\r\n"));
        assert_eq!(r.status, 200, "{who}: {r:?}");
        assert!(
            r.text().starts_with(&format!("{who}/")),
            "{who}: {}",
            r.text()
        );
    };
    let mut c1 = client(&p);
    get(&mut c1, "c1");
    get(&mut c1, "c1");
    // A second client while the first one's backend connection is idle.
    let mut c2 = client(&p);
    get(&mut c2, "c2");
    get(&mut c2, "c2");
    get(&mut c1, "c1");
    let a1 = local_addr(&c1);
    drop(c1);
    thread::sleep(Duration::from_millis(200));
    // A third after the first closed.
    let mut c3 = client(&p);
    get(&mut c3, "c3");
    let (a2, a3) = (local_addr(&c2), local_addr(&c3));

    let seen = rec.seen();
    let version: u8 = version[1..].parse().unwrap();
    for s in &seen {
        assert!(s.error.is_none(), "backend connection: {s:?}");
    }
    for (who, addr) in [("c1", a1), ("c2", a2), ("c3", a3)] {
        let mine: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.clients.iter().any(|c| c == who))
            .collect();
        assert!(!mine.is_empty(), "{who}: no backend connection: {seen:?}");
        for s in &mine {
            assert!(
                s.clients.iter().all(|c| c == who),
                "a backend connection carried two clients: {s:?}"
            );
            let h = s.header.as_ref().unwrap();
            assert_eq!((h.version, h.source), (version, addr), "{who}: {s:?}");
            assert_eq!(h.dest, sa(&p.addr()), "{who}: destination");
        }
        // Pooled for its client: one backend connection carried all its requests.
        assert_eq!(mine.len(), 1, "{who}: {seen:?}");
    }
}

fn send_proxy_http_v1(d: Driver) {
    send_proxy_http(d, "v1")
}

fn send_proxy_http_v2(d: Driver) {
    send_proxy_http(d, "v2")
}

/// `simian forward --accept-proxy --send-proxy v2`.
fn forward_accept_and_send_proxy(d: Driver) {
    let rec = TcpRecorder::start();
    let dir = temp_dir("ppfwd");
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simian"));
    cmd.args(["forward", "--accept-proxy", "--send-proxy", "v2"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--")
        .arg(rec.addr.to_string())
        // `forward` writes its generated configuration to the temp dir.
        .env("TMPDIR", &dir)
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    if d == Driver::Epoll {
        cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
    }
    let mut sim = Killed(cmd.spawn().expect("spawn simian forward"));
    let addr = sa(&format!("127.0.0.1:{port}"));
    wait_until(Duration::from_secs(10), "simian forward listening", || {
        if let Ok(Some(st)) = sim.0.try_wait() {
            panic!(
                "simian forward exited ({st}): {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });

    let mut c = Client::tcp(addr);
    c.set_timeout(Duration::from_secs(10));
    c.send(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n");
    tunnel(&mut c, "fwd");
    let got = rec.conn_with(b"hello-fwd");
    let h = read_header(&got).unwrap();
    assert_eq!((h.version, h.source), (2, sa("203.0.113.7:5555")));
    assert_eq!(&got[h.len..], b"hello-fwd");

    // Without a header: closed, nothing forwarded.
    let mut c = Client::tcp(addr);
    c.send(b"hello-bare");
    let got = c
        .read_until_close(Duration::from_secs(5))
        .expect("a connection without a header stays open");
    assert!(got.is_empty());
    thread::sleep(Duration::from_millis(100));
    assert!(
        !rec.all()
            .iter()
            .any(|c| c.windows(10).any(|w| w == b"hello-bare")),
        "forwarded without a header"
    );
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Listen ... tls proxy`: the header comes first, then the TLS handshake.
fn proxy_then_tls(d: Driver) {
    use util::tls::{ClientOpts, Leaf};
    let b = xff_echo();
    let dir = temp_dir("pptls");
    let (cert, key) = Leaf::self_signed("localhost", &["localhost"]).write(&dir, "srv");
    let config = format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@ tls proxy\n\
         TLSCertificate {} {}\n\n[PROXY_ENTRY]\nMatch ^/\nServerList {}\n",
        cert.display(),
        key.display(),
        b.addr()
    );
    let p = start(d, &config);
    let mut tcp = TcpStream::connect(p.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&v2(sa("[2001:db8::9]:4000"), sa("[2001:db8::1]:443")))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(ClientOpts::insecure().build(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("TLS after a PROXY header: {e}\n{}", p.stderr()));
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n2001:db8::9"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

per_driver!(
    client_address_from_header,
    allow_deny_use_the_header_address,
    curl_haproxy_protocol,
    bad_headers_closed_without_answer,
    trusted_proxies,
    send_proxy_tcp,
    send_proxy_http_v1,
    send_proxy_http_v2,
    forward_accept_and_send_proxy,
    proxy_then_tls,
    health_checks_send_proxy_v1,
    health_checks_send_proxy_v2,
);

// ---------------------------------------------------------------------------
// 5. Interoperability: HAProxy in front, nginx behind
// ---------------------------------------------------------------------------

/// HAProxy (L4, `send-proxy-v2`, health checks with `check-send-proxy`, which HAProxy
/// sends as v2 LOCAL) in front of a `proxy` listener: the backend sees the real client,
/// bound to 127.0.0.9 so that it differs from HAProxy's own 127.0.0.1.
#[test]
fn haproxy_in_front() {
    if !installed("haproxy", "-v") {
        eprintln!("skipped: haproxy not installed");
        return;
    }
    let b = Backend::start(|r| {
        let xff = r.get("x-forwarded-for").unwrap_or("-");
        Reply::ok(&format!("{} {xff}", r.target))
    });
    let p = start(Driver::Uring, &conf(" proxy", "", &b.addr(), ""));
    let dir = temp_dir("haproxy");
    let hport = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 64\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    timeout check 2s\n\
             frontend fe\n    bind 127.0.0.1:{hport}\n    default_backend be\n\
             backend be\n    option httpchk\n\
             \x20   http-check send meth GET uri /hc ver HTTP/1.1 hdr Host test\n\
             \x20   server s {} send-proxy-v2 check check-send-proxy inter 300ms\n",
            p.addr()
        ),
    )
    .unwrap();
    let log = dir.join("haproxy.log");
    let mut hap = Killed(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("haproxy.err")).unwrap())
            .spawn()
            .expect("spawn haproxy"),
    );
    let front = sa(&format!("127.0.0.1:{hport}"));
    wait_until(Duration::from_secs(10), "haproxy listening", || {
        if let Ok(Some(st)) = hap.0.try_wait() {
            panic!(
                "haproxy exited ({st}): {}",
                std::fs::read_to_string(dir.join("haproxy.err")).unwrap_or_default()
            );
        }
        TcpStream::connect_timeout(&front, Duration::from_millis(200)).is_ok()
    });

    // Health checks (LOCAL) pass through simian with the peer address.
    wait_until(Duration::from_secs(5), "a health check", || {
        b.targets().iter().any(|t| t == "/hc")
    });
    let hc = b
        .requests()
        .into_iter()
        .find(|r| r.target == "/hc")
        .unwrap();
    assert_eq!(hc.get("x-forwarded-for"), Some("127.0.0.1"));

    for i in 0..3 {
        let s = connect_from("127.0.0.9", front);
        let mut c = Client {
            wire: Wire::new(Conn::Tcp(s)),
        };
        c.set_timeout(Duration::from_secs(10));
        let r = c.get(&format!("/via-haproxy/{i}"));
        assert_eq!(r.status, 200, "{r:?}\n{}", p.stderr());
        assert_eq!(r.text(), format!("/via-haproxy/{i} 127.0.0.9"));
    }
    // The access log (health checks add lines of 127.0.0.1).
    wait_until(
        Duration::from_secs(5),
        "3 access log lines of 127.0.0.9",
        || {
            access_lines(&p)
                .iter()
                .filter(|c| *c == "127.0.0.9")
                .count()
                >= 3
        },
    );
    drop(hap);
    let _ = std::fs::remove_dir_all(&dir);
}

/// nginx behind simian with `listen ... proxy_protocol`: `$proxy_protocol_addr` and
/// `_port` are the client's, from `SendProxy v1` and `v2`, behind a `proxy` listener.
#[test]
fn nginx_behind() {
    if !installed("nginx", "-v") {
        eprintln!("skipped: nginx not installed");
        return;
    }
    let dir = temp_dir("ppnginx");
    let nginx = util::nginx::Nginx::start(&dir, "$proxy_protocol_addr|$request", |port| {
        format!(
            "server {{\n\
               listen 127.0.0.1:{port} proxy_protocol;\n\
               location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port\"; }}\n\
             }}"
        )
    });
    let server = format!("127.0.0.1:{}", nginx.port);
    let config = format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@ proxy\n\n\
         [PROXY_ENTRY]\nName one\nMatch ^/v1\nServerList {server}\nSendProxy v1\n\n\
         [PROXY_ENTRY]\nName two\nMatch ^/v2\nServerList {server}\nSendProxy v2\n"
    );
    for d in DRIVERS {
        let p = start(d, &config);
        for (path, header, want) in [
            (
                "/v1",
                v1(sa("203.0.113.7:5555"), sa("10.0.0.1:80")),
                "203.0.113.7 5555",
            ),
            (
                "/v2",
                v2(sa("203.0.113.8:6666"), sa("10.0.0.1:80")),
                "203.0.113.8 6666",
            ),
            (
                "/v2",
                v1(sa("[2001:db8::7]:7777"), sa("[2001:db8::1]:80")),
                "2001:db8::7 7777",
            ),
            (
                "/v1",
                v2(sa("[2001:db8::8]:8888"), sa("[2001:db8::1]:80")),
                "2001:db8::8 8888",
            ),
        ] {
            let mut c = client(&p);
            c.send(&header);
            for _ in 0..2 {
                let r = c.get(path);
                assert_eq!(
                    (r.status, r.text().as_str()),
                    (200, want),
                    "{d:?} {path}\n{}",
                    nginx.logs()
                );
            }
        }
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 6. Health checks of a SendProxy entry
// ---------------------------------------------------------------------------

/// What one connection to a [`ProxyFirst`] backend carried: the PROXY header it
/// began with, exactly as received, and the targets of its requests; or why the
/// backend closed it.
#[derive(Clone, Debug, Default)]
struct PpConn {
    header: Vec<u8>,
    targets: Vec<String>,
    error: Option<String>,
}

/// The length of the PROXY header (v1 line, or v2 block of any command) at the
/// start of `b`: `Ok(None)` while `b` may still become one, `Err` when it cannot.
fn any_header_len(b: &[u8]) -> Result<Option<usize>, ()> {
    if b.starts_with(b"PROXY ") {
        return match b.windows(2).position(|w| w == b"\r\n") {
            Some(end) => Ok(Some(end + 2)),
            None if b.len() > 107 => Err(()),
            None => Ok(None),
        };
    }
    if b[..b.len().min(12)] == SIG[..b.len().min(12)] {
        if b.len() < 16 {
            return Ok(None);
        }
        let len = 16 + u16::from_be_bytes([b[14], b[15]]) as usize;
        return Ok((b.len() >= len).then_some(len));
    }
    if b[..b.len().min(6)] == b"PROXY "[..b.len().min(6)] {
        return Ok(None);
    }
    Err(())
}

/// An HTTP/1.1 backend that wants a PROXY header (v1 or v2, `LOCAL` and `UNKNOWN`
/// included) before the first request, like a server behind `accept-proxy`:
/// without one it closes the connection unanswered. Each GET gets 200.
type ProxyFirst = Recorder<PpConn>;

impl ProxyFirst {
    fn start() -> ProxyFirst {
        Recorder::spawn(|s, conn| {
            Self::serve(&s, conn);
            let _ = s.shutdown(Shutdown::Both);
        })
    }

    fn serve(s: &TcpStream, conn: &Mutex<PpConn>) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        let mut fill = |buf: &mut Vec<u8>| match { s }.read(&mut b) {
            Ok(n @ 1..) => {
                buf.extend_from_slice(&b[..n]);
                true
            }
            _ => false,
        };
        // The header, or close.
        loop {
            match any_header_len(&buf) {
                Ok(Some(n)) => {
                    conn.lock().unwrap().header = buf.drain(..n).collect();
                    break;
                }
                Err(()) => {
                    conn.lock().unwrap().error = Some(format!(
                        "no PROXY header before {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                    return;
                }
                Ok(None) => {}
            }
            if !fill(&mut buf) {
                if !buf.is_empty() {
                    conn.lock().unwrap().error =
                        Some(format!("EOF inside {:?}", String::from_utf8_lossy(&buf)));
                }
                return;
            }
        }
        // Requests.
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Head::parse(&buf[..end + 4]);
                buf.drain(..end + 4);
                let Some(target) = head.line.strip_prefix("GET ") else {
                    conn.lock().unwrap().error = Some(format!("not a GET: {head:?}"));
                    return;
                };
                let target = target.split(' ').next().unwrap_or("").to_string();
                conn.lock().unwrap().targets.push(target);
                let close = head.has_token("connection", "close");
                let _ = { s }.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                if close {
                    return;
                }
            }
            if !fill(&mut buf) {
                return;
            }
        }
    }

    fn conns(&self) -> Vec<PpConn> {
        self.all()
    }
}

/// `HealthCheck /health` on an entry with `SendProxy`: each check first sends a
/// header saying the connection is simian's own (v2 `LOCAL`: the 16 bytes
/// signature, 0x20, 0x00, length 0; v1 `PROXY UNKNOWN`), so a backend that wants
/// PROXY headers answers the checks, and the server stays up check after check.
fn health_checks_send_proxy(d: Driver, version: &str) {
    let b = ProxyFirst::start();
    let p = start(
        d,
        &conf(
            "",
            "StatisticsURL /stats",
            &b.addr.to_string(),
            &format!(
                "SendProxy {version}\nHealthCheck /health\nHealthCheckInterval 200ms\n\
                 UnhealthyThreshold 1"
            ),
        ),
    );
    let want: &[u8] = match version {
        "v1" => b"PROXY UNKNOWN\r\n",
        _ => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    };
    let is_check = |c: &PpConn| c.targets.iter().any(|t| t == "/health");
    // Several check intervals.
    let deadline = Instant::now() + Duration::from_secs(5);
    let checks = loop {
        let checks: Vec<PpConn> = b.conns().into_iter().filter(is_check).collect();
        if checks.len() >= 4 {
            break checks;
        }
        assert!(
            Instant::now() < deadline,
            "{} health check(s) answered in 5 s at one per 200 ms; {} backend connection(s), the first: {:?}",
            checks.len(),
            b.conns().len(),
            b.conns().first()
        );
        thread::sleep(Duration::from_millis(20));
    };
    for c in &checks {
        assert_eq!(
            (String::from_utf8_lossy(&c.header), c.targets.as_slice()),
            (String::from_utf8_lossy(want), &["/health".to_string()][..]),
            "a health check connection: {c:?}"
        );
        assert!(c.error.is_none(), "{c:?}");
    }
    // The server is up, and requests reach it.
    util::metrics::after_cache_window(&p.addr());
    let text = client(&p).get("/stats").text();
    let server = b.addr.to_string();
    let up: Vec<f64> = util::metrics::samples(&text, "simian_server_up")
        .into_iter()
        .filter(|(l, _)| l.iter().any(|(k, v)| k == "server" && *v == server))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(up, [1.0], "simian_server_up of {server}:\n{text}");
    let mut c = client(&p);
    for _ in 0..3 {
        let r = c.get("/req");
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "{r:?}");
    }
    let bad: Vec<PpConn> = b
        .conns()
        .into_iter()
        .filter(|c| c.error.is_some())
        .collect();
    assert!(bad.is_empty(), "connections the backend refused: {bad:?}");
}

fn health_checks_send_proxy_v1(d: Driver) {
    health_checks_send_proxy(d, "v1")
}

fn health_checks_send_proxy_v2(d: Driver) {
    health_checks_send_proxy(d, "v2")
}
