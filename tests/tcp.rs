//! `Mode tcp` entries and `simian forward`, end to end (SPEC sections 1 and 2,
//! issue 6): the real binary, raw TCP / unix backends in this process, and clients
//! that check every byte against a deterministic pattern as it streams.
//!
//! simian is started by [`Sim`] rather than `util::Proxy`: `Proxy` checks that a
//! listener is up by connecting to it, and on a tcp entry such a probe is a real
//! tunnel (a backend connect, a connect failure on a dead server) that would skew
//! the accept and failure counts checked here. [`Sim`] instead waits until the
//! process owns a listening socket on each address (`/proc/PID/fd` against
//! `/proc/net/{tcp,tcp6,unix}`), and it gives the pid for the fd counts.
//!
//! Scenarios that exercise I/O run on both monoio drivers (io_uring, and epoll
//! forced with `MONOIO_FORCE_LEGACY_DRIVER=1`), the byte streams with each
//! `Splice` mode as well.

mod util;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    free_ports, pattern, per_driver, temp_dir, write_pattern, Client, Conn, DeadPort, Driver, MIB,
};

/// Read/write timeout of every socket in this file.
const IO: Duration = Duration::from_secs(20);
/// Pattern offset of the backend → client stream (the other way starts at 0), so
/// that bytes sent back the wrong way round do not match.
const DOWN: u64 = 7777;

// ---------------------------------------------------------------------------
// simian
// ---------------------------------------------------------------------------

/// A listener simian must own before a test starts: a TCP port or a unix path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum At {
    Port(u16),
    Path(PathBuf),
}

/// The `simian` binary (a configuration or `forward` arguments); killed on drop.
struct Sim {
    child: Child,
    dir: PathBuf,
    /// The listeners, as addresses a client connects to (`IP:PORT`, `[::1]:PORT`,
    /// `unix:/path`), in the order of the configuration or arguments.
    listens: Vec<String>,
    what: String,
    stderr_path: PathBuf,
}

/// `@P0@`...`@P9@` become free ports (one per placeholder), `@DIR@` the directory.
fn subst(text: &str, ports: &[u16], dir: &Path) -> String {
    let mut t = text.replace("@DIR@", &dir.display().to_string());
    for (i, p) in ports.iter().enumerate() {
        t = t.replace(&format!("@P{i}@"), &p.to_string());
    }
    t
}

/// The client-side address of a listen address in configuration syntax.
fn client_addr(listen: &str) -> String {
    if let Some(p) = listen.strip_prefix("unix:") {
        return format!("unix:{p}");
    }
    if listen.starts_with('/') {
        return format!("unix:{listen}");
    }
    let a: SocketAddr = listen
        .parse()
        .unwrap_or_else(|_| panic!("listen address {listen:?}"));
    if a.ip().is_unspecified() {
        format!("127.0.0.1:{}", a.port())
    } else {
        a.to_string()
    }
}

fn at_of(addr: &str) -> At {
    match addr.strip_prefix("unix:") {
        Some(p) => At::Path(PathBuf::from(p)),
        None => At::Port(addr.parse::<SocketAddr>().unwrap().port()),
    }
}

impl Sim {
    /// `simian -c FILE` with `template` (see [`subst`]) and extra arguments.
    fn config(d: Driver, template: &str, args: &[&str]) -> Sim {
        Self::launch(d, |ports, dir| {
            let text = subst(template, ports, dir);
            let path = dir.join("simian.conf");
            std::fs::write(&path, &text).unwrap();
            let mut argv = vec!["-c".to_string(), path.display().to_string()];
            argv.extend(args.iter().map(|a| a.to_string()));
            let listens = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    match (w.next(), w.next()) {
                        (Some(k), Some(a)) if k.eq_ignore_ascii_case("listen") => {
                            Some(client_addr(a))
                        }
                        _ => None,
                    }
                })
                .collect();
            (argv, listens, text)
        })
    }

    /// `simian forward ARGS...`; `listens` are the listen arguments (substituted
    /// like the others), for the readiness check and [`Sim::at`].
    fn forward(d: Driver, args: &[&str], listens: &[&str]) -> Sim {
        Self::launch(d, |ports, dir| {
            let mut argv = vec!["forward".to_string()];
            argv.extend(args.iter().map(|a| subst(a, ports, dir)));
            let listens = listens
                .iter()
                .map(|l| {
                    let l = subst(l, ports, dir);
                    if l.bytes().all(|b| b.is_ascii_digit()) {
                        format!("127.0.0.1:{l}")
                    } else {
                        client_addr(&l)
                    }
                })
                .collect();
            let what = format!("simian {}", argv.join(" "));
            (argv, listens, what)
        })
    }

    fn launch(
        d: Driver,
        make: impl Fn(&[u16], &Path) -> (Vec<String>, Vec<String>, String),
    ) -> Sim {
        for _ in 0..4 {
            let dir = temp_dir("tcp");
            let ports = free_ports(10);
            let (argv, listens, what) = make(&ports, &dir);
            match Self::start_once(d, dir, argv, listens, what) {
                Ok(sim) => return sim,
                Err(log) => eprintln!("port taken, retrying: {log}"),
            }
        }
        panic!("simian could not bind free ports four times");
    }

    /// Start simian once; `Err(stderr)` if it exited because an address was taken.
    fn start_once(
        d: Driver,
        dir: PathBuf,
        argv: Vec<String>,
        listens: Vec<String>,
        what: String,
    ) -> Result<Sim, String> {
        let stderr_path = dir.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_simian"));
        cmd.args(&argv)
            // `forward` writes its generated configuration to the temp dir.
            .env("TMPDIR", &dir)
            .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        if d == Driver::Epoll {
            cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        }
        let child = cmd.spawn().expect("spawn simian");
        let mut sim = Sim {
            child,
            dir,
            listens,
            what,
            stderr_path,
        };
        if sim.wait_listening(Duration::from_secs(10)) {
            Ok(sim)
        } else {
            let log = sim.stderr();
            let _ = std::fs::remove_dir_all(&sim.dir);
            sim.listens.clear();
            Err(log)
        }
    }

    /// True once the process owns a listening socket on every address; false if
    /// it exited because an address was taken (panics on any other exit).
    fn wait_listening(&mut self, within: Duration) -> bool {
        let want: Vec<At> = self.listens.iter().map(|a| at_of(a)).collect();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                let log = self.stderr();
                if log.contains("in use") {
                    return false;
                }
                panic!(
                    "simian exited ({st}) at start\n{}\nstderr:\n{log}",
                    self.what
                );
            }
            let have = listening(self.pid());
            if want.iter().all(|a| have.contains(a)) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "simian not listening on {want:?} after {within:?} (has {have:?})\n{}\nstderr:\n{}",
                self.what,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The i-th listener, as a client address.
    fn at(&self, i: usize) -> String {
        self.listens[i].clone()
    }

    fn connect(&self, i: usize) -> Conn {
        connect(&self.listens[i])
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.listens.is_empty() {
            return; // a failed start, already reported
        }
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        if !exited {
            // SIGQUIT: exit at once (SIGTERM would drain open tunnels for 30 s).
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = self.stderr();
        let _ = std::fs::remove_dir_all(&self.dir);
        if thread::panicking() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("---- {} ----\n{}\n----", self.what, tail.join("\n"));
            return;
        }
        assert!(!exited, "simian exited during the test; stderr:\n{log}");
        assert!(
            !log.contains("panicked"),
            "simian panicked during the test; stderr:\n{log}"
        );
    }
}

/// Inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> HashSet<String> {
    let mut out = HashSet::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(l) = std::fs::read_link(e.path()) {
                let l = l.to_string_lossy().into_owned();
                if let Some(i) = l.strip_prefix("socket:[") {
                    out.insert(i.trim_end_matches(']').to_string());
                }
            }
        }
    }
    out
}

/// The TCP ports and unix paths process `pid` listens on.
fn listening(pid: u32) -> Vec<At> {
    let inodes = socket_inodes(pid);
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if w.len() > 9 && w[3] == "0A" && inodes.contains(w[9]) {
                let port = w[1].rsplit(':').next().unwrap();
                out.push(At::Port(u16::from_str_radix(port, 16).unwrap()));
            }
        }
    }
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() > 7 && w[3] == "00010000" && inodes.contains(w[6]) {
            out.push(At::Path(PathBuf::from(w[7])));
        }
    }
    out
}

/// Open file descriptors of a process by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fds {
    sockets: usize,
    pipes: usize,
    total: usize,
}

fn fds(pid: u32) -> Fds {
    let mut f = Fds {
        sockets: 0,
        pipes: 0,
        total: 0,
    };
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(l) = std::fs::read_link(e.path()) else {
            continue;
        };
        let l = l.to_string_lossy();
        f.total += 1;
        if l.starts_with("socket:") {
            f.sockets += 1;
        } else if l.starts_with("pipe:") {
            f.pipes += 1;
        }
    }
    f
}

/// Run `simian ARGS` to completion (at most 10 s).
fn run(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_simian"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let watchdog = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    assert!(
        !watchdog.join().unwrap(),
        "simian {args:?} still running after 10 s"
    );
    out
}

// ---------------------------------------------------------------------------
// Sockets and streams
// ---------------------------------------------------------------------------

/// Connect to `IP:PORT`, `[v6]:PORT` or `unix:/path`, with timeouts set.
fn connect(addr: &str) -> Conn {
    let c = match addr.strip_prefix("unix:") {
        Some(p) => {
            Conn::Unix(UnixStream::connect(p).unwrap_or_else(|e| panic!("connect to {addr}: {e}")))
        }
        None => {
            let a: SocketAddr = addr.parse().unwrap();
            let s = TcpStream::connect_timeout(&a, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            s.set_nodelay(true).unwrap();
            Conn::Tcp(s)
        }
    };
    c.set_read_timeout(IO);
    c.set_write_timeout(IO);
    c
}

fn read_n(c: &mut Conn, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    c.read_exact(&mut b)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    b
}

/// Read until EOF (or a reset); `Err` with what came if still open after `within`.
fn read_until_close(c: &mut Conn, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut b = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(out);
        }
        c.set_read_timeout(left);
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(out)
            }
            Err(_) => break,
        }
    }
    c.set_read_timeout(IO);
    Ok(out)
}

/// What a checked reader saw: how many bytes, and where the first byte differing
/// from the pattern was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checked {
    len: u64,
    mismatch: Option<u64>,
}

impl Checked {
    fn is(&self, len: u64) -> bool {
        self.len == len && self.mismatch.is_none()
    }
}

/// Read until EOF, comparing each byte with the pattern starting at `from`.
fn read_checked(r: &mut impl Read, from: u64) -> io::Result<Checked> {
    let mut buf = vec![0u8; util::MAX_PIECE];
    let mut c = Checked {
        len: 0,
        mismatch: None,
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(c),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if c.mismatch.is_none() {
            let want = pattern(from + c.len, n);
            if buf[..n] != *want {
                let i = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                c.mismatch = Some(c.len + i as u64);
            }
        }
        c.len += n as u64;
    }
}

/// Copy everything back until EOF, then shut the write side.
fn echo(c: &mut Conn) {
    let mut b = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&b[..n]).is_err() {
                    return;
                }
            }
        }
    }
    c.shutdown(Shutdown::Write);
}

/// Send `data` and read it back through an echo backend.
fn roundtrip(c: &mut Conn, data: &[u8]) {
    c.write_all(data).unwrap();
    assert_eq!(read_n(c, data.len()), data, "echo");
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

type Handler = dyn Fn(Conn, usize) + Send + Sync;

struct SrvInner {
    handler: Box<Handler>,
    accepted: AtomicUsize,
    accept_times: Mutex<Vec<Instant>>,
    stop: AtomicBool,
}

/// A raw stream server: each accepted connection runs `handler(conn, index)` on its
/// own thread; accepts are counted and timed.
struct Server {
    /// As `ServerList` takes it: `127.0.0.1:P`, `[::1]:P`, `unix:/path`.
    addr: String,
    inner: Arc<SrvInner>,
}

impl Server {
    fn tcp(bind: &str, handler: impl Fn(Conn, usize) + Send + Sync + 'static) -> Server {
        Self::from_listener(TcpListener::bind(bind).unwrap(), handler)
    }

    fn from_listener(
        l: TcpListener,
        handler: impl Fn(Conn, usize) + Send + Sync + 'static,
    ) -> Server {
        let addr = l.local_addr().unwrap().to_string();
        let inner = Self::inner(Box::new(handler));
        let i = inner.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    let _ = s.set_nodelay(true);
                    Self::spawn_conn(&i, Conn::Tcp(s));
                }
            }
        });
        Server { addr, inner }
    }

    fn unix(path: &Path, handler: impl Fn(Conn, usize) + Send + Sync + 'static) -> Server {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        let inner = Self::inner(Box::new(handler));
        let i = inner.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    Self::spawn_conn(&i, Conn::Unix(s));
                }
            }
        });
        Server {
            addr: format!("unix:{}", path.display()),
            inner,
        }
    }

    fn echo(bind: &str) -> Server {
        Self::tcp(bind, |mut c, _| echo(&mut c))
    }

    /// Writes `name` and a newline on accept, then echoes.
    fn greeter(name: &'static str) -> Server {
        Self::tcp("127.0.0.1:0", move |mut c, _| {
            if c.write_all(format!("{name}\n").as_bytes()).is_ok() {
                echo(&mut c);
            }
        })
    }

    fn inner(handler: Box<Handler>) -> Arc<SrvInner> {
        Arc::new(SrvInner {
            handler,
            accepted: AtomicUsize::new(0),
            accept_times: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn spawn_conn(inner: &Arc<SrvInner>, conn: Conn) {
        inner.accept_times.lock().unwrap().push(Instant::now());
        let id = inner.accepted.fetch_add(1, Ordering::SeqCst);
        conn.set_read_timeout(IO);
        conn.set_write_timeout(IO);
        let inner = inner.clone();
        thread::spawn(move || (inner.handler)(conn, id));
    }

    fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    fn accept_times(&self) -> Vec<Instant> {
        self.inner.accept_times.lock().unwrap().clone()
    }

    /// Wait until `n` connections were accepted; false after `within`.
    fn wait_accepted(&self, n: usize, within: Duration) -> bool {
        poll(within, || self.accepted() >= n)
    }

    fn port(&self) -> u16 {
        self.addr.parse::<SocketAddr>().unwrap().port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        match self.addr.strip_prefix("unix:") {
            Some(p) => {
                let _ = UnixStream::connect(p);
                let _ = std::fs::remove_file(p);
            }
            None => {
                let a: SocketAddr = self.addr.parse().unwrap();
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
        }
    }
}

/// A 127.0.0.1 port that refuses connections (bound, not listening) until
/// [`LatePort::listen`]: a dead server that comes back, with no window in which
/// another test could take the port.
struct LatePort {
    fd: std::os::fd::OwnedFd,
    port: u16,
}

impl LatePort {
    fn new() -> LatePort {
        use std::os::fd::FromRawFd;
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(raw, &sa as *const _ as *const libc::sockaddr, len);
            assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
            let r = libc::getsockname(raw, &mut sa as *mut _ as *mut libc::sockaddr, &mut len);
            assert_eq!(r, 0, "getsockname: {}", io::Error::last_os_error());
            LatePort {
                fd,
                port: u16::from_be(sa.sin_port),
            }
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn listen(self) -> TcpListener {
        use std::os::fd::AsRawFd;
        let r = unsafe { libc::listen(self.fd.as_raw_fd(), 128) };
        assert_eq!(r, 0, "listen: {}", io::Error::last_os_error());
        TcpListener::from(self.fd)
    }
}

/// Poll `cond` every 10 ms; false if it is still false after `within`.
fn poll(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// One tcp entry named `t` listening on 127.0.0.1:@P0@ in front of `servers`.
fn tcp_conf(servers: &str, extra: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\n\n[PROXY_ENTRY]\nName t\nMode tcp\nListen 127.0.0.1:@P0@\n\
         ServerList {servers}\n{extra}\n"
    )
}

// ---------------------------------------------------------------------------
// Bulk streams
// ---------------------------------------------------------------------------

/// `size` bytes each way at the same time through a tcp entry with `Splice
/// splice`, both streams checked byte for byte, and both ends see EOF.
fn stream_both_ways(d: Driver, splice: &str, size: u64) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let backend = Server::tcp("127.0.0.1:0", move |mut c, _| {
        let mut w = c.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let r = write_pattern(&mut w, DOWN, size);
            w.shutdown(Shutdown::Write);
            r
        });
        let got = read_checked(&mut c, 0);
        let wrote = writer.join().unwrap();
        s.lock()
            .unwrap()
            .push((got.map_err(|e| e.to_string()), wrote.is_ok()));
    });
    let sim = Sim::config(
        d,
        &tcp_conf(&backend.addr, &format!("Splice {splice}")),
        &[],
    );
    let start = Instant::now();
    let mut c = sim.connect(0);
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let r = write_pattern(&mut w, 0, size);
        w.shutdown(Shutdown::Write);
        r
    });
    let got = read_checked(&mut c, DOWN).expect("client read");
    writer.join().unwrap().expect("client write");
    assert!(
        got.is(size),
        "client got {got:?}, want {size} bytes of the pattern"
    );
    assert!(
        poll(Duration::from_secs(20), || !seen.lock().unwrap().is_empty()),
        "the backend did not finish"
    );
    let (up, wrote) = seen.lock().unwrap()[0].clone();
    let up = up.expect("backend read");
    assert!(wrote, "backend write failed");
    assert!(
        up.is(size),
        "backend got {up:?}, want {size} bytes of the pattern"
    );
    assert_eq!(backend.accepted(), 1);
    let t = start.elapsed();
    eprintln!(
        "{} MiB each way, {d:?}, Splice {splice}: {t:.2?} ({:.0} MB/s total)",
        size / MIB as u64,
        2.0 * size as f64 / t.as_secs_f64() / 1e6
    );
}

mod stream {
    use super::{stream_both_ways, Driver, MIB};
    const BIG: u64 = 256 * MIB as u64;

    #[test]
    fn uring_splice_on_256m() {
        stream_both_ways(Driver::Uring, "on", BIG)
    }
    #[test]
    fn uring_splice_off_256m() {
        stream_both_ways(Driver::Uring, "off", BIG)
    }
    #[test]
    fn uring_splice_auto_256m() {
        stream_both_ways(Driver::Uring, "auto", BIG)
    }
    #[test]
    fn epoll_splice_on_256m() {
        stream_both_ways(Driver::Epoll, "on", BIG)
    }
    #[test]
    fn epoll_splice_off_256m() {
        stream_both_ways(Driver::Epoll, "off", BIG)
    }
    #[test]
    fn epoll_splice_auto_256m() {
        stream_both_ways(Driver::Epoll, "auto", BIG)
    }
}

// ---------------------------------------------------------------------------
// Half-close
// ---------------------------------------------------------------------------

const REQ_LEN: u64 = 300 * 1024;
const RESP_LEN: u64 = 3 * MIB as u64;

/// Client shuts its write side after a request: the backend reads to EOF, then
/// answers and closes, and the client gets all of it. The other way round: the
/// backend says everything and shuts its write side first, the client still
/// uploads after reading EOF, and the backend gets all of it.
fn half_close(d: Driver, splice: &str) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let backend = Server::tcp("127.0.0.1:0", move |mut c, _| {
        let mut kind = [0u8; 1];
        c.read_exact(&mut kind).unwrap();
        if &kind == b"Q" {
            // Request until EOF, then the answer, then close.
            let req = read_checked(&mut c, 0).unwrap();
            g.lock().unwrap().push(req);
            c.write_all(format!("got {}\n", req.len).as_bytes())
                .unwrap();
            write_pattern(&mut c, DOWN, RESP_LEN).unwrap();
        } else {
            // Speak first and shut the write side; then read the upload.
            write_pattern(&mut c, DOWN, RESP_LEN).unwrap();
            c.shutdown(Shutdown::Write);
            let up = read_checked(&mut c, 0).unwrap();
            g.lock().unwrap().push(up);
        }
    });
    let sim = Sim::config(
        d,
        &tcp_conf(&backend.addr, &format!("Splice {splice}")),
        &[],
    );

    // The client closes first.
    let mut c = sim.connect(0);
    c.write_all(b"Q").unwrap();
    write_pattern(&mut c, 0, REQ_LEN).unwrap();
    c.shutdown(Shutdown::Write);
    let line = read_n(&mut c, format!("got {REQ_LEN}\n").len());
    assert_eq!(String::from_utf8_lossy(&line), format!("got {REQ_LEN}\n"));
    let resp = read_checked(&mut c, DOWN).unwrap();
    assert!(resp.is(RESP_LEN), "response after half-close: {resp:?}");
    assert!(got.lock().unwrap()[0].is(REQ_LEN));

    // The backend closes first.
    let mut c = sim.connect(0);
    c.write_all(b"S").unwrap();
    let first = read_checked(&mut c, DOWN).unwrap();
    assert!(first.is(RESP_LEN), "backend's data: {first:?}");
    write_pattern(&mut c, 0, REQ_LEN).expect("upload after the backend's EOF");
    c.shutdown(Shutdown::Write);
    assert!(
        poll(Duration::from_secs(10), || got.lock().unwrap().len() == 2),
        "the backend did not get EOF after the upload"
    );
    let up = got.lock().unwrap()[1];
    assert!(up.is(REQ_LEN), "upload after the backend's EOF: {up:?}");
    // Both directions are done: the client sees the connection closed.
    assert!(read_until_close(&mut c, Duration::from_secs(5)).is_ok());
}

mod half_close {
    use super::{half_close, Driver};
    #[test]
    fn uring_splice_on() {
        half_close(Driver::Uring, "on")
    }
    #[test]
    fn uring_splice_off() {
        half_close(Driver::Uring, "off")
    }
    #[test]
    fn epoll_splice_on() {
        half_close(Driver::Epoll, "on")
    }
    #[test]
    fn epoll_splice_off() {
        half_close(Driver::Epoll, "off")
    }
}

// ---------------------------------------------------------------------------
// WaitBytes
// ---------------------------------------------------------------------------

/// An echo backend that also records, per connection, every byte it received.
fn recording_echo() -> (Server, Arc<Mutex<Vec<Vec<u8>>>>) {
    let rec = Arc::new(Mutex::new(Vec::new()));
    let r = rec.clone();
    let s = Server::tcp("127.0.0.1:0", move |mut c, id| {
        r.lock().unwrap().push(Vec::new());
        let mut b = [0u8; 4096];
        loop {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    r.lock().unwrap()[id].extend_from_slice(&b[..n]);
                    if c.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (s, rec)
}

/// With 6 wait bytes, the backend is connected only once 6 bytes came, and gets
/// them first. `at(0)` is the listener.
fn check_wait_bytes(sim: &Sim, backend: &Server, rec: &Mutex<Vec<Vec<u8>>>) {
    // A client that gives up before 6 bytes never costs a backend connection.
    let mut quitter = sim.connect(0);
    quitter.write_all(b"abc").unwrap();
    drop(quitter);

    let mut c = sim.connect(0);
    c.write_all(b"hello").unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        backend.accepted(),
        0,
        "the backend was connected before the 6th byte"
    );
    let sent = Instant::now();
    c.write_all(b"!").unwrap();
    assert!(
        backend.wait_accepted(1, Duration::from_secs(5)),
        "no backend connection after 6 bytes"
    );
    assert!(backend.accept_times()[0] >= sent);
    // The 6 bytes come back first, then the tunnel goes on both ways.
    assert_eq!(read_n(&mut c, 6), b"hello!");
    roundtrip(&mut c, b" world");
    assert_eq!(rec.lock().unwrap()[0], b"hello! world");
    c.shutdown(Shutdown::Write);
    assert_eq!(read_until_close(&mut c, Duration::from_secs(5)), Ok(vec![]));
    assert_eq!(backend.accepted(), 1, "the quitter reached the backend");

    // More than 6 bytes at once: the rest follows the first 6, in order.
    let mut c = sim.connect(0);
    roundtrip(&mut c, b"0123456789abcdef");
    assert!(backend.wait_accepted(2, Duration::from_secs(5)));
    assert_eq!(rec.lock().unwrap()[1], b"0123456789abcdef");
}

fn wait_bytes(d: Driver) {
    let (backend, rec) = recording_echo();
    let sim = Sim::config(d, &tcp_conf(&backend.addr, "WaitBytes 6"), &[]);
    check_wait_bytes(&sim, &backend, &rec);
}

per_driver!(wait_bytes);

// ---------------------------------------------------------------------------
// Availability and balancers
// ---------------------------------------------------------------------------

/// GET the statistics page.
fn stats(addr: &str) -> String {
    util::metrics::after_cache_window(addr);
    let mut c = Client::tcp(addr);
    let r = c.get("/stats");
    assert_eq!(r.status, 200, "statistics: {}", r.text());
    r.text()
}

/// A sample's value: the line `name{...}` carrying every `label="value"`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (head, value) = rest.rsplit_once(' ')?;
        labels
            .iter()
            .all(|(k, v)| head.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// An http entry and the statistics on @P1@, the tcp entry `t` on @P0@.
fn tcp_conf_with_stats(servers: &str, extra: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@P1@\nStatisticsURL /stats\n\n\
         [PROXY_ENTRY]\nName web\nMatch ^/web/\nServerList {servers}\n\n\
         [PROXY_ENTRY]\nName t\nMode tcp\nListen 127.0.0.1:@P0@\nServerList {servers}\n{extra}\n"
    )
}

/// A dead server and a live one, RoundRobin, `AttemptsCount 2`, `OfflineTimeOut
/// 2s`: every client reaches the live one; the dead one is tried twice, then not
/// at all while offline, then probed once when the window is over.
fn dead_backend_skipped(d: Driver) {
    let dead = DeadPort::new();
    let live = Server::echo("127.0.0.1:0");
    let servers = format!("{} {}", dead.addr(), live.addr);
    let conf = tcp_conf_with_stats(
        &servers,
        "LoadBalancer RoundRobin\nAttemptsCount 2\nOfflineTimeOut 2s",
    );
    let sim = Sim::config(d, &conf, &[]);
    let stats_at = sim.at(0);
    let tcp_at = sim.at(1);
    let failures = || {
        metric(
            &stats(&stats_at),
            "simian_server_connect_failures_total",
            &[("route", "t"), ("server", &dead.addr())],
        )
        .expect("connect failures of the dead server")
    };
    assert_eq!(failures(), 0.0);

    let start = Instant::now();
    for i in 0..10 {
        let mut c = connect(&tcp_at);
        roundtrip(&mut c, format!("ping {i}").as_bytes());
    }
    assert_eq!(live.accepted(), 10);
    let s = stats(&stats_at);
    // Exactly 2 failures, unless a busy machine let the 2 s window run out.
    let exact = start.elapsed() < Duration::from_millis(1900);
    let dead_addr = dead.addr();
    let dead_l = [("route", "t"), ("server", dead_addr.as_str())];
    let f = metric(&s, "simian_server_connect_failures_total", &dead_l).unwrap();
    if exact {
        assert_eq!(f, 2.0, "{s}");
        assert_eq!(metric(&s, "simian_server_up", &dead_l), Some(0.0), "{s}");
    } else {
        eprintln!("busy machine: {:?} for 10 connections", start.elapsed());
        assert!((2.0..=3.0).contains(&f), "{s}");
    }
    assert_eq!(
        metric(&s, "simian_server_offline_transitions_total", &dead_l),
        Some(1.0)
    );
    let live_l = [("route", "t"), ("server", live.addr.as_str())];
    assert_eq!(
        metric(&s, "simian_server_connect_failures_total", &live_l),
        Some(0.0)
    );
    assert_eq!(metric(&s, "simian_server_up", &live_l), Some(1.0));

    // Once the window is over, one connection probes the dead server (and still
    // fails over to the live one).
    let mut n = 10;
    let f0 = failures();
    let probed = poll(Duration::from_secs(5), || {
        let mut c = connect(&tcp_at);
        roundtrip(&mut c, b"probe?");
        n += 1;
        thread::sleep(Duration::from_millis(40));
        failures() > f0
    });
    assert!(probed, "the dead server was never probed again");
    assert!(
        start.elapsed() >= Duration::from_millis(1950),
        "probed {:?} after the first failure, before OfflineTimeOut 2s",
        start.elapsed()
    );
    assert_eq!(failures(), f0 + 1.0, "more than one probe");
    assert_eq!(live.accepted(), n);
}

per_driver!(dead_backend_skipped);

/// No server can take the connection: the client is closed at once.
fn all_backends_dead(d: Driver) {
    let (a, b) = (DeadPort::new(), DeadPort::new());
    let sim = Sim::config(
        d,
        &tcp_conf(&format!("{} {}", a.addr(), b.addr()), "AttemptsCount 1"),
        &[],
    );
    for _ in 0..3 {
        let mut c = sim.connect(0);
        let _ = c.write_all(b"anyone?");
        assert!(
            read_until_close(&mut c, Duration::from_secs(3)).is_ok(),
            "client left open with every server dead"
        );
    }
    // Logged after the client's close, by the log thread: wait for it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !sim.stderr().contains("no server could take") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        sim.stderr().contains("no server could take"),
        "{}",
        sim.stderr()
    );
}

per_driver!(all_backends_dead);

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

/// Every balancer in a tcp entry fails over from a dead server to the live one.
#[test]
fn every_balancer_fails_over() {
    let dead = DeadPort::new();
    let live = Server::echo("127.0.0.1:0");
    let mut conf = String::from("[PROXY_DEFAULTS]\n");
    for (i, b) in BALANCERS.iter().enumerate() {
        // Half of them on TCP listeners, half on unix ones.
        let listen = if i % 2 == 0 {
            format!("127.0.0.1:@P{}@", i / 2)
        } else {
            format!("unix:@DIR@/{b}.sock")
        };
        conf += &format!(
            "\n[PROXY_ENTRY]\nName {b}\nMode tcp\nListen {listen}\n\
             ServerList {} {}\nLoadBalancer {b}\n",
            dead.addr(),
            live.addr
        );
    }
    let sim = Sim::config(Driver::Uring, &conf, &[]);
    for (i, b) in BALANCERS.iter().enumerate() {
        for k in 0..4 {
            let mut c = sim.connect(i);
            c.write_all(format!("{b} {k}").as_bytes()).unwrap();
            let want = format!("{b} {k}");
            let got = read_n(&mut c, want.len());
            assert_eq!(String::from_utf8_lossy(&got), want, "{b}, connection {k}");
        }
    }
    assert_eq!(live.accepted(), BALANCERS.len() * 4);
}

/// SourceHash keeps every connection of a client address on one server.
#[test]
fn source_hash_sticks() {
    let bs = [
        Server::greeter("b0"),
        Server::greeter("b1"),
        Server::greeter("b2"),
    ];
    let servers: Vec<&str> = bs.iter().map(|b| b.addr.as_str()).collect();
    let sim = Sim::config(
        Driver::Uring,
        &tcp_conf(&servers.join(" "), "LoadBalancer SourceHash"),
        &[],
    );
    let names: HashSet<Vec<u8>> = (0..8).map(|_| read_n(&mut sim.connect(0), 3)).collect();
    assert_eq!(names.len(), 1, "one client went to {names:?}");
}

// ---------------------------------------------------------------------------
// IdleTimeout
// ---------------------------------------------------------------------------

/// When each connection of a [`ticker`] closed, by its first byte.
type Closed = Arc<Mutex<Vec<(u8, Instant)>>>;

/// A backend for the idle tests: the first byte is `u` (the client will upload)
/// or `d` (the backend sends a `.` every 200 ms, 16 of them, then `!`); after
/// that every `?` received is answered `ok`. Records when the connection closed.
fn ticker() -> (Server, Closed) {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let cl = closed.clone();
    let s = Server::tcp("127.0.0.1:0", move |mut c, _| {
        let mut b = [0u8; 64];
        let Ok(n) = c.read(&mut b) else { return };
        let mode = if n > 0 { b[0] } else { 0 };
        let mut rest = b[1..n.max(1)].to_vec();
        if mode == b'd' {
            for _ in 0..16 {
                thread::sleep(Duration::from_millis(200));
                if c.write_all(b".").is_err() {
                    return;
                }
            }
            let _ = c.write_all(b"!");
        }
        loop {
            if rest.contains(&b'?') && c.write_all(b"ok").is_err() {
                break;
            }
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => rest = b[..n].to_vec(),
            }
        }
        cl.lock().unwrap().push((mode, Instant::now()));
    });
    (s, closed)
}

/// A steady one-way tunnel through `at` for 3.2 s: `u` the client sends a byte
/// every 200 ms, `d` the backend does; then a `?` must still get its `ok`.
/// `Err((what, longest gap))` if the tunnel was closed: the gap is the longest
/// pause the client saw between its sends (`u`) or its receipts (`d`).
fn steady(at: &str, mode: u8) -> Result<(), (String, Duration)> {
    let mut c = connect(at);
    let start = Instant::now();
    let mut gap = Duration::ZERO;
    let mut last = Instant::now();
    c.write_all(&[mode]).map_err(|e| (e.to_string(), gap))?;
    c.set_read_timeout(Duration::from_secs(3));
    let mut b = [0u8; 1];
    for i in 0..17 {
        if mode == b'u' {
            if i == 16 {
                break;
            }
            thread::sleep(Duration::from_millis(200));
            gap = gap.max(last.elapsed());
            last = Instant::now();
            c.write_all(b".")
                .map_err(|e| (format!("send {i}: {e}"), gap))?;
        } else {
            match c.read(&mut b) {
                Ok(1) => {
                    gap = gap.max(last.elapsed());
                    last = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    panic!("'d'-only tunnel stalled: no tick {i} for 3 s")
                }
                r => {
                    let pause = gap.max(last.elapsed());
                    return Err((format!("tick {i}: {r:?}"), pause));
                }
            }
        }
    }
    if mode == b'd' {
        assert_eq!(&b, b"!", "the backend's last tick");
    }
    let fail = |e: String| (e, gap.max(last.elapsed()));
    c.write_all(b"?")
        .map_err(|e| fail(format!("send ?: {e}")))?;
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok)
        .map_err(|e| fail(format!("read ok: {e}")))?;
    assert_eq!(&ok, b"ok");
    assert!(start.elapsed() > Duration::from_secs(3));
    Ok(())
}

/// [`steady`], again when the machine was too busy to keep the pace (a pause of
/// 800 ms or more); a tunnel closed while bytes moved every 200 ms fails the test.
fn steady_stays_open(at: &str, mode: u8) {
    for attempt in 0..3 {
        match steady(at, mode) {
            Ok(()) => return,
            Err((what, gap)) if gap >= Duration::from_millis(800) => {
                eprintln!(
                    "steady {:?} attempt {attempt}: {what} after a {gap:?} pause (busy machine), again",
                    mode as char
                );
            }
            Err((what, gap)) => panic!(
                "{:?}-only tunnel closed with traffic every <= {gap:?}: {what}",
                mode as char
            ),
        }
    }
    panic!("the machine was too busy three times");
}

/// With an idle timeout of 1 s at `at`: a quiet tunnel is closed on both sides
/// within ~1-2 s; a tunnel with steady traffic in one direction only (either one)
/// stays open past 3 s.
fn check_idle(at: &str, closed: &Closed) {
    let up = {
        let at = at.to_string();
        thread::spawn(move || steady_stays_open(&at, b'u'))
    };
    let down = {
        let at = at.to_string();
        thread::spawn(move || steady_stays_open(&at, b'd'))
    };

    // The quiet one.
    let mut c = connect(at);
    c.write_all(b"q?").unwrap();
    assert_eq!(read_n(&mut c, 2), b"ok");
    let quiet_since = Instant::now();
    let got = read_until_close(&mut c, Duration::from_secs(5));
    let t = quiet_since.elapsed();
    assert_eq!(got, Ok(vec![]), "idle tunnel still open after 5 s");
    // ~1 s; up to 3 s on a busy machine.
    assert!(
        t >= Duration::from_millis(900) && t <= Duration::from_secs(3),
        "idle tunnel closed after {t:?} (IdleTimeout 1s)"
    );
    let backend_closed = || {
        closed
            .lock()
            .unwrap()
            .iter()
            .find(|(m, _)| *m == b'q')
            .map(|c| c.1)
    };
    assert!(
        poll(Duration::from_secs(3), || backend_closed().is_some()),
        "the backend side of the idle tunnel is still open"
    );
    let t = backend_closed().unwrap().duration_since(quiet_since);
    assert!(
        t <= Duration::from_secs(3),
        "backend side closed after {t:?}"
    );

    up.join().expect("upload-only tunnel");
    down.join().expect("download-only tunnel");
}

fn idle_timeout(d: Driver) {
    let (backend, closed) = ticker();
    let sim = Sim::config(d, &tcp_conf(&backend.addr, "IdleTimeout 1s"), &[]);
    check_idle(&sim.at(0), &closed);
}

per_driver!(idle_timeout);

#[test]
fn idle_timeout_splice_off() {
    let (backend, closed) = ticker();
    let sim = Sim::config(
        Driver::Uring,
        &tcp_conf(&backend.addr, "IdleTimeout 1s\nSplice off"),
        &[],
    );
    check_idle(&sim.at(0), &closed);
}

// ---------------------------------------------------------------------------
// File descriptors
// ---------------------------------------------------------------------------

const TUNNELS: usize = 50;

/// `TUNNELS` established tunnels (one round trip each, then idle) through one
/// worker; the fd counts before and with them.
fn open_tunnels(sim: &Sim, backend: &Server) -> (Fds, Fds, Vec<Conn>) {
    let before = fds(sim.pid());
    let conns: Vec<Conn> = (0..TUNNELS)
        .map(|i| {
            let mut c = sim.connect(0);
            roundtrip(&mut c, format!("tunnel {i}").as_bytes());
            c
        })
        .collect();
    assert_eq!(backend.accepted(), TUNNELS);
    let with = fds(sim.pid());
    eprintln!(
        "{TUNNELS} idle tunnels: {:+} fds ({:+} sockets, {:+} pipe ends) = {:.2} fds per tunnel",
        with.total as i64 - before.total as i64,
        with.sockets as i64 - before.sockets as i64,
        with.pipes as i64 - before.pipes as i64,
        (with.total as f64 - before.total as f64) / TUNNELS as f64
    );
    (before, with, conns)
}

/// An idle tunnel holds its two sockets and nothing else: pipes are pooled and
/// held only while bytes are in flight (SPEC/issue 6: "never more than the file
/// descriptors it needs"; eproxy needed 4).
#[test]
fn fds_per_idle_tunnel() {
    let backend = Server::echo("127.0.0.1:0");
    let sim = Sim::config(
        Driver::Uring,
        &tcp_conf(&backend.addr, ""),
        &["--threads", "1"],
    );
    let (before, with, _conns) = open_tunnels(&sim, &backend);
    assert_eq!(
        with.sockets - before.sockets,
        2 * TUNNELS,
        "2 sockets per tunnel"
    );
    assert!(
        with.pipes - before.pipes <= 8,
        "{} pipe ends held by {TUNNELS} idle tunnels",
        with.pipes - before.pipes
    );
}

/// Closing the tunnels releases their sockets, and at most the pool's pipes stay.
#[test]
fn tunnel_fds_released() {
    let backend = Server::echo("127.0.0.1:0");
    let sim = Sim::config(
        Driver::Uring,
        &tcp_conf(&backend.addr, ""),
        &["--threads", "1"],
    );
    let (before, with, conns) = open_tunnels(&sim, &backend);
    assert_eq!(
        with.sockets - before.sockets,
        2 * TUNNELS,
        "2 sockets per tunnel"
    );
    for c in &conns {
        c.shutdown(Shutdown::Write);
    }
    drop(conns);
    let released = poll(Duration::from_secs(5), || {
        fds(sim.pid()).sockets == before.sockets
    });
    let after = fds(sim.pid());
    assert!(
        released,
        "sockets: {} before the tunnels, {} after closing them",
        before.sockets, after.sockets
    );
    // POOL_MAX pipes per worker may stay for reuse.
    assert!(
        after.pipes <= before.pipes + 2 * 64,
        "pipe ends: {} before, {} after",
        before.pipes,
        after.pipes
    );
    eprintln!(
        "after closing: {:+} fds ({:+} pipe ends kept in the pool)",
        after.total as i64 - before.total as i64,
        after.pipes as i64 - before.pipes as i64
    );
}

// ---------------------------------------------------------------------------
// Listeners and backends: IPv6, unix sockets
// ---------------------------------------------------------------------------

/// A 1 MiB echo round trip, streamed (a writer thread) and checked.
fn echo_stream(mut c: Conn) {
    const N: u64 = MIB as u64;
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        write_pattern(&mut w, 0, N).unwrap();
        w.shutdown(Shutdown::Write);
    });
    let got = read_checked(&mut c, 0).unwrap();
    writer.join().unwrap();
    assert!(got.is(N), "echo of 1 MiB: {got:?}");
}

/// Tcp entries listening on `[::1]:PORT` and `unix:/path`, in front of a unix
/// backend and an IPv6 backend.
fn ipv6_and_unix(d: Driver) {
    let bdir = temp_dir("tcp-backend");
    let ub = Server::unix(&bdir.join("b.sock"), |mut c, _| echo(&mut c));
    let v6 = Server::echo("[::1]:0");
    let conf = format!(
        "[PROXY_DEFAULTS]\n\n\
         [PROXY_ENTRY]\nName u\nMode tcp\nListen [::1]:@P0@\nListen unix:@DIR@/t.sock\n\
         ServerList {}\n\n\
         [PROXY_ENTRY]\nName v6\nMode tcp\nListen 127.0.0.1:@P1@\nServerList {}\n",
        ub.addr, v6.addr
    );
    let sim = Sim::config(d, &conf, &[]);
    assert!(sim.at(0).starts_with("[::1]:"));
    assert!(sim.at(1).starts_with("unix:"));
    echo_stream(sim.connect(0));
    echo_stream(sim.connect(1));
    echo_stream(sim.connect(2));
    assert_eq!(ub.accepted(), 2);
    assert_eq!(v6.accepted(), 1);
    drop(ub);
    let _ = std::fs::remove_dir_all(bdir);
}

per_driver!(ipv6_and_unix);

// ---------------------------------------------------------------------------
// Statistics of tcp entries
// ---------------------------------------------------------------------------

/// A configuration whose only entries are tcp ones still has a complete
/// statistics page (its server metrics included).
#[test]
fn statistics_with_tcp_entries_only() {
    let live = Server::echo("127.0.0.1:0");
    let conf = format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@P1@\nStatisticsURL /stats\n\n\
         [PROXY_ENTRY]\nName t\nMode tcp\nListen 127.0.0.1:@P0@\nServerList {}\n",
        live.addr
    );
    let sim = Sim::config(Driver::Uring, &conf, &[]);
    let s = stats(&sim.at(0));
    let l = [("route", "t"), ("server", live.addr.as_str())];
    assert_eq!(
        metric(&s, "simian_server_connect_failures_total", &l),
        Some(0.0),
        "{s}"
    );
    assert_eq!(metric(&s, "simian_server_up", &l), Some(1.0), "{s}");
    assert!(s.contains("simian_build_info"), "{s}");
}

/// An open tunnel counts as an active request of its server, and its bytes count
/// as received from / sent to clients of the route.
#[test]
fn statistics_of_a_tunnel() {
    let live = Server::echo("127.0.0.1:0");
    let sim = Sim::config(Driver::Uring, &tcp_conf_with_stats(&live.addr, ""), &[]);
    let l = [("route", "t"), ("server", live.addr.as_str())];
    let mut c = sim.connect(1);
    roundtrip(&mut c, &[b'x'; 1000]);
    let s = stats(&sim.at(0));
    assert_eq!(
        metric(&s, "simian_server_active_requests", &l),
        Some(1.0),
        "{s}"
    );
    c.shutdown(Shutdown::Write);
    assert!(read_until_close(&mut c, Duration::from_secs(5)).is_ok());
    assert!(poll(Duration::from_secs(5), || metric(
        &stats(&sim.at(0)),
        "simian_server_active_requests",
        &l
    ) == Some(0.0)));
}

/// The route's byte counters include tcp tunnels.
#[test]
fn statistics_count_tunnel_bytes() {
    let live = Server::echo("127.0.0.1:0");
    let sim = Sim::config(Driver::Uring, &tcp_conf_with_stats(&live.addr, ""), &[]);
    let mut c = sim.connect(1);
    roundtrip(&mut c, &[b'x'; 1000]);
    c.shutdown(Shutdown::Write);
    assert!(read_until_close(&mut c, Duration::from_secs(5)).is_ok());
    let l = [("route", "t")];
    let ok = poll(Duration::from_secs(5), || {
        let s = stats(&sim.at(0));
        metric(&s, "simian_received_bytes_total", &l) >= Some(1000.0)
            && metric(&s, "simian_sent_bytes_total", &l) >= Some(1000.0)
    });
    assert!(ok, "{}", stats(&sim.at(0)));
}

// ---------------------------------------------------------------------------
// simian forward
// ---------------------------------------------------------------------------

/// `-s 1` and `-s LeastConnections`: a new connection goes to the server with the
/// fewest open tunnels (ties by list order).
fn forward_least_connections(strategy: &str) {
    let (b0, b1) = (Server::greeter("b0"), Server::greeter("b1"));
    let sim = Sim::forward(
        Driver::Uring,
        &["-s", strategy, "127.0.0.1:@P0@", "--", &b0.addr, &b1.addr],
        &["127.0.0.1:@P0@"],
    );
    let name = |c: &mut Conn| String::from_utf8(read_n(c, 3)).unwrap();
    let mut c0 = sim.connect(0);
    assert_eq!(name(&mut c0), "b0\n");
    let mut c1 = sim.connect(0);
    assert_eq!(name(&mut c1), "b1\n");
    // Close the tunnel to b1 completely.
    c1.shutdown(Shutdown::Write);
    assert_eq!(
        read_until_close(&mut c1, Duration::from_secs(5)),
        Ok(vec![])
    );
    // The proxy drops its count right after passing the EOF on: no way to observe
    // that moment from outside, so give it a moment.
    thread::sleep(Duration::from_millis(300));
    // b0 still has a tunnel, b1 none: RoundRobin would say b0 now.
    let mut c2 = sim.connect(0);
    assert_eq!(name(&mut c2), "b1\n");
    let mut c3 = sim.connect(0);
    assert_eq!(name(&mut c3), "b0\n", "tie: list order");
    roundtrip(&mut c0, b"still there");
}

#[test]
fn forward_balance_by_number() {
    forward_least_connections("1")
}

#[test]
fn forward_balance_by_name() {
    forward_least_connections("LeastConnections")
}

/// `-t 1s`.
#[test]
fn forward_idle_timeout() {
    let (backend, closed) = ticker();
    let sim = Sim::forward(
        Driver::Uring,
        &["-t", "1s", "127.0.0.1:@P0@", "--", &backend.addr],
        &["127.0.0.1:@P0@"],
    );
    check_idle(&sim.at(0), &closed);
}

/// `-y 6`, on the epoll driver.
#[test]
fn forward_wait_bytes() {
    let (backend, rec) = recording_echo();
    let sim = Sim::forward(
        Driver::Epoll,
        &["-y", "6", "127.0.0.1:@P0@", "--", &backend.addr],
        &["127.0.0.1:@P0@"],
    );
    check_wait_bytes(&sim, &backend, &rec);
}

/// `-g 2s --attempts 2` with a dead backend: every connection reaches the live
/// one, the dead one goes offline after 2 refused connects, and is not tried again
/// for 2 s even though it listens again meanwhile.
#[test]
fn forward_grace_with_dead_backend() {
    let late = LatePort::new();
    let late_addr = late.addr();
    let live = Server::greeter("live");
    let sim = Sim::forward(
        Driver::Uring,
        &[
            "-g",
            "2s",
            "--attempts",
            "2",
            "127.0.0.1:@P0@",
            "--",
            &late_addr,
            &live.addr,
        ],
        &["127.0.0.1:@P0@"],
    );
    let name = |c: &mut Conn| String::from_utf8(read_n(c, 5)).unwrap();
    let start = Instant::now();
    // RoundRobin over two: within 6 connections the dead one is picked twice.
    for _ in 0..6 {
        assert_eq!(name(&mut sim.connect(0)), "live\n");
    }
    // The dead server comes back, but is offline for simian until 2 s are over.
    let back = Server::from_listener(late.listen(), |mut c, _| {
        if c.write_all(b"back\n").is_ok() {
            echo(&mut c);
        }
    });
    let mut seen = Vec::new();
    let came_back = poll(Duration::from_secs(5), || {
        let got = name(&mut sim.connect(0));
        let t = start.elapsed();
        seen.push((got.clone(), t));
        thread::sleep(Duration::from_millis(40));
        got == "back\n"
    });
    assert!(came_back, "the server never came back: {seen:?}");
    let t = seen.last().unwrap().1;
    assert!(
        t >= Duration::from_millis(1950),
        "tried again {t:?} after the first failure (-g 2s): {seen:?}"
    );
    assert_eq!(back.accepted(), 1);
}

/// `-t 0`: no idle timeout (fproxy), and tunnels work.
#[test]
fn forward_idle_timeout_zero() {
    let backend = Server::echo("127.0.0.1:0");
    let sim = Sim::forward(
        Driver::Uring,
        &["-t", "0", "127.0.0.1:@P0@", "--", &backend.addr],
        &["127.0.0.1:@P0@"],
    );
    let mut c = sim.connect(0);
    roundtrip(&mut c, b"one");
    thread::sleep(Duration::from_millis(1200));
    roundtrip(&mut c, b"two");
    let out = run(&["forward", "--check", "-t", "0", "8080", "--", "10.0.0.1:80"]);
    assert_eq!(out.status.code(), Some(0));
}

/// A forwarder restarted on the same port right after its previous instance
/// served (and closed first) a connection: the port is free to listen on again,
/// as with every server that sets SO_REUSEADDR (the old connection is only in
/// TIME_WAIT).
#[test]
fn forward_restarts_on_the_same_port() {
    // A backend that says goodbye and closes: simian then closes the client side
    // first, which leaves its end of that connection in TIME_WAIT.
    let backend = Server::tcp("127.0.0.1:0", |mut c, _| {
        let _ = c.write_all(b"bye\n");
    });
    // The port is free between the two runs, so a test running beside this one
    // may take it: then (a listener answers there) the run is made again on
    // another port. Anything else that keeps the restart from binding fails it.
    for attempt in 0..3 {
        let first = Sim::forward(
            Driver::Uring,
            &["127.0.0.1:@P0@", "--", &backend.addr],
            &["127.0.0.1:@P0@"],
        );
        let at = first.at(0);
        let mut c = first.connect(0);
        assert_eq!(
            read_until_close(&mut c, Duration::from_secs(5)),
            Ok(b"bye\n".to_vec())
        );
        drop(c);
        drop(first);
        let second = Sim::start_once(
            Driver::Uring,
            temp_dir("tcp"),
            vec![
                "forward".into(),
                at.clone(),
                "--".into(),
                backend.addr.clone(),
            ],
            vec![at.clone()],
            format!("simian forward {at} -- {}", backend.addr),
        );
        let second = match second {
            Ok(s) => s,
            Err(_) if attempt < 2 && TcpStream::connect(&at).is_ok() => continue,
            Err(log) => panic!("restart on {at} failed: {log}"),
        };
        let mut c = second.connect(0);
        assert_eq!(
            read_until_close(&mut c, Duration::from_secs(5)),
            Ok(b"bye\n".to_vec())
        );
        return;
    }
}

/// eproxy's shape: `simian forward PORT HOST PORT` (listens on every IPv4 address).
#[test]
fn forward_eproxy_shape() {
    let backend = Server::echo("127.0.0.1:0");
    let port = backend.port().to_string();
    let sim = Sim::forward(Driver::Uring, &["@P0@", "127.0.0.1", &port], &["@P0@"]);
    echo_stream(sim.connect(0));
    assert_eq!(backend.accepted(), 1);
}

/// A unix-socket listener (`/path`) in front of an IPv6 backend (`[::1]:PORT`),
/// with `--splice off`.
#[test]
fn forward_unix_listener_ipv6_backend() {
    let backend = Server::echo("[::1]:0");
    let sim = Sim::forward(
        Driver::Uring,
        &["--splice", "off", "@DIR@/fwd.sock", "--", &backend.addr],
        &["@DIR@/fwd.sock"],
    );
    assert!(sim.at(0).starts_with("unix:/"));
    echo_stream(sim.connect(0));
    echo_stream(sim.connect(0));
    assert_eq!(backend.accepted(), 2);
}

#[test]
fn forward_check_valid() {
    let out = run(&[
        "forward",
        "--check",
        "-s",
        "2",
        "-t",
        "1s",
        "-y",
        "6",
        "-g",
        "2s",
        "--attempts",
        "2",
        "--splice",
        "off",
        "127.0.0.1:8080",
        "/tmp/simian-check.sock",
        "--",
        "10.0.0.1:80",
        "[::1]:81",
        "/run/app.sock",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    for want in [
        "127.0.0.1:8080",
        "unix:/tmp/simian-check.sock",
        "10.0.0.1:80",
        "[::1]:81",
        "unix:/run/app.sock",
        "LeastBytes",
        "wait bytes:   6",
        "idle 1s",
        "offline after 2 failed connects, for 2s",
        "splice Off",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    assert!(
        !std::path::Path::new("/tmp/simian-check.sock").exists(),
        "--check listened"
    );
}

/// fproxy's `-s` numbers name the balancers 0-4.
#[test]
fn forward_check_balancer_numbers() {
    for (n, name) in [
        ("0", "RoundRobin"),
        ("1", "LeastConnections"),
        ("2", "LeastBytes"),
        ("3", "LeastTime"),
        ("4", "Workload"),
        ("SourceHash", "SourceHash"),
    ] {
        let out = run(&["forward", "--check", "-s", n, "8080", "--", "10.0.0.1:80"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "-s {n}");
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("balancer:"))
            .unwrap_or_else(|| panic!("no balancer line:\n{stdout}"));
        assert_eq!(line.split_whitespace().nth(1), Some(name), "-s {n}");
    }
    let out = run(&["forward", "--check", "-s", "9", "8080", "--", "10.0.0.1:80"]);
    assert_eq!(out.status.code(), Some(1), "-s 9 accepted");
}

#[test]
fn forward_check_bad_port() {
    let out = run(&["forward", "--check", "8080", "--", "1.2.3.4:99999"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("99999"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn forward_without_backends() {
    let out = run(&["forward", "8080"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one message, got:\n{stderr}");
    assert!(lines[0].contains("backend"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

// ---------------------------------------------------------------------------
// Allow / Deny on tcp entries
// ---------------------------------------------------------------------------

/// `Allow`/`Deny` apply to tcp entries too: a client inside `Deny 127.0.0.0/8`,
/// or outside `Allow 10.0.0.0/8`, is closed without a byte and costs no backend
/// connection; a client its entry allows is tunnelled.
fn allow_deny_on_tcp_entries(d: Driver) {
    let live = Server::echo("127.0.0.1:0");
    let conf = format!(
        "[PROXY_DEFAULTS]\n\n\
         [PROXY_ENTRY]\nName denied\nMode tcp\nListen 127.0.0.1:@P0@\nServerList {s}\nDeny 127.0.0.0/8\n\n\
         [PROXY_ENTRY]\nName outside\nMode tcp\nListen 127.0.0.1:@P1@\nServerList {s}\nAllow 10.0.0.0/8\n\n\
         [PROXY_ENTRY]\nName allowed\nMode tcp\nListen 127.0.0.1:@P2@\nServerList {s}\n\
         Allow 127.0.0.0/8\nDeny 10.0.0.0/8\n",
        s = live.addr
    );
    let sim = Sim::config(d, &conf, &[]);
    for (i, name) in [(0, "denied"), (1, "outside")] {
        let mut c = sim.connect(i);
        // The write may fail: the connection can be closed already.
        let _ = c.write_all(b"let me in");
        match read_until_close(&mut c, Duration::from_secs(3)) {
            Ok(got) => assert!(
                got.is_empty(),
                "entry `{name}`: the refused client got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Err(got) => panic!(
                "entry `{name}`: the refused client is still open after 3 s (tunnelled: got {:?} back)",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    assert_eq!(
        live.accepted(),
        0,
        "a client refused by Allow/Deny reached the backend"
    );
    // Allowed: tunnelled both ways.
    let mut c = sim.connect(2);
    roundtrip(&mut c, b"allowed in");
    c.shutdown(Shutdown::Write);
    assert_eq!(read_until_close(&mut c, Duration::from_secs(5)), Ok(vec![]));
    assert_eq!(live.accepted(), 1, "refused clients reached the backend");
}

per_driver!(allow_deny_on_tcp_entries);
