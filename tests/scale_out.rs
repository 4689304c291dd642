//! Several simian instances behind an L4 balancer (SPEC section 11), built for
//! real with network namespaces, as docs/scale-out.md describes it:
//!
//! ```text
//!   ns cl (clients)                ns lb (router)                     ns s1 / s2
//!   10.10.1.10-40 ── veth ── 10.10.1.1   nftables: 10.99.0.1:80 ─DNAT─┬─ 10.10.2.2:80 simian
//!                                        numgen inc mod 2             └─ 10.10.3.2:80 simian
//!                            lo: 10.10.9.1-3:8080 (the backends, in this process)
//! ```
//!
//! The router namespace DNATs the virtual address to the two instances with
//! `numgen inc mod 2`, the mechanism of kube-proxy's nftables mode, and routes
//! without SNAT, so each simian sees the real client address. The backends are
//! in-process HTTP servers whose listening sockets live in the router namespace;
//! clients are sockets made by threads that joined the client namespace
//! (setns(2) is per thread), each bound to a chosen source address. Every instance
//! adds `X-Instance: s1` or `s2` to its responses and every backend `X-Backend`,
//! so a response says which way it went.
//!
//! Checked: `SourceHash` and `StickyCookie NAME hash` place a client (an address,
//! a cookie value) on the same backend through either instance and through the
//! virtual address; and a rolling binary upgrade (`SIGUSR2`) of one instance under
//! keep-alive and `Connection: close` load fails no request, hands the listening
//! sockets over (same socket inodes) and leaves the new process serving with its
//! pid in the pid file.
//!
//! It needs root, iproute2 and nftables: without them each test prints
//! `skipped: <why>` and passes. Namespaces are named after this process' pid and
//! deleted on drop, panic or not, after the simian processes are stopped.

mod util;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use util::{Backend, Client, Conn, Reply, Request, Response, Wire};

/// The virtual address the router balances over the two instances.
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80);
/// Instance s1 and s2, reached directly (routed through `lb`, no DNAT).
const S1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 10, 2, 2), 80);
const S2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 10, 3, 2), 80);
/// Last octets of the client namespace's source addresses, 10.10.1.X.
const CLIENTS: std::ops::RangeInclusive<u8> = 10..=40;
/// The three backends, on the loopback interface of the router namespace (a
/// dummy interface would do as well, where the kernel has the module).
const BACKENDS: [&str; 3] = ["10.10.9.1:8080", "10.10.9.2:8080", "10.10.9.3:8080"];
const COOKIE: &str = "SID";

fn client_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 1, last)
}

// ---------------------------------------------------------------------------
// Namespaces and tools
// ---------------------------------------------------------------------------

/// `name` from PATH or the sbin directories (not always in a test's PATH).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Run a command; its stderr (or stdout) on failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Put the calling thread into network namespace `ns` (setns(2) moves only this
/// thread; what it creates from then on, sockets and threads, lives there).
fn enter_ns(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /var/run/netns/{ns}: {e}"));
    // SAFETY: setns(2) on an fd we own, for this thread only.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", io::Error::last_os_error());
}

/// `f` on a thread inside namespace `ns`; its panic is this thread's panic.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|sc| {
        match sc
            .spawn(|| {
                enter_ns(ns);
                f()
            })
            .join()
        {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    })
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Running processes whose command line contains `needle` (a configuration
/// path unique to one lab).
fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
                && running(pid)
        })
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2); pids come from our children, their pid files or a /proc
    // scan for this lab's configuration path.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Inodes of the sockets listening on TCP `port` (IPv4) in `pid`'s network
/// namespace that `pid` holds open.
fn listening_inodes(pid: u32, port: u16) -> BTreeSet<u64> {
    let local = format!(":{port:04X}");
    let listening: BTreeSet<u64> = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&local) && f[3] == "0A")
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect();
    let held: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let s = link.to_str()?;
                s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    listening.intersection(&held).copied().collect()
}

// ---------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------

/// One simian in its own namespace.
struct Instance {
    name: &'static str,
    addr: SocketAddrV4,
    conf: PathBuf,
    pid_file: PathBuf,
    stderr: PathBuf,
    /// `ip netns exec NS simian ...` (ip execs simian: the child is simian).
    child: Child,
}

impl Instance {
    /// The pid the pid file names.
    fn pid(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    /// `pid` has exited (reaped if it is our child).
    fn gone(&mut self, pid: u32) -> bool {
        if pid == self.child.id() {
            !matches!(self.child.try_wait(), Ok(None))
        } else {
            !running(pid)
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Four namespaces, three backends, two simian instances; everything undone
/// on drop.
struct Lab {
    tag: String,
    /// Namespaces made so far (deleted on drop).
    made: Vec<String>,
    lb: String,
    cl: String,
    dir: PathBuf,
    ip: PathBuf,
    backends: Vec<Backend>,
    instances: Vec<Instance>,
}

impl Lab {
    /// The whole setup, or why it cannot be made here (the test is skipped).
    fn build() -> Result<Lab, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
        }
        let ip = tool("ip").ok_or("`ip` (iproute2) not installed")?;
        let nft = tool("nft").ok_or("`nft` (nftables) not installed")?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("smn{}x{}", std::process::id(), N.fetch_add(1, SeqCst));
        let mut lab = Lab {
            lb: format!("{tag}-lb"),
            cl: format!("{tag}-cl"),
            tag,
            made: vec![],
            dir: util::temp_dir("scale-out"),
            ip,
            backends: vec![],
            instances: vec![],
        };
        for role in ["lb", "s1", "s2", "cl"] {
            let ns = format!("{}-{role}", lab.tag);
            run(Command::new(&lab.ip).args(["netns", "add", &ns]))
                .map_err(|e| format!("cannot make a network namespace: {e}"))?;
            lab.made.push(ns);
        }
        lab.wire_up();
        let rules = format!(
            "table ip simian_lb {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr {} tcp dport {} dnat to numgen inc mod 2 map {{ 0 : {}, 1 : {} }}\n\
             \t}}\n\
             }}\n",
            VIP.ip(),
            VIP.port(),
            S1.ip(),
            S2.ip()
        );
        let rules_path = lab.dir.join("lb.nft");
        std::fs::write(&rules_path, rules).unwrap();
        run(Command::new(&lab.ip)
            .args(["netns", "exec", &lab.lb])
            .arg(&nft)
            .arg("-f")
            .arg(&rules_path))
        .map_err(|e| format!("nftables cannot load a DNAT rule in a namespace: {e}"))?;

        // The backends: their listening sockets are made inside `lb`.
        lab.backends = in_ns(&lab.lb, || {
            BACKENDS
                .iter()
                .enumerate()
                .map(|(i, addr)| backend(format!("b{}", i + 1), addr))
                .collect()
        });
        for (name, addr) in [("s1", S1), ("s2", S2)] {
            let inst = lab.start_instance(name, addr);
            lab.instances.push(inst);
        }
        for i in 0..lab.instances.len() {
            lab.wait_serving(i, Duration::from_secs(10));
        }
        Ok(lab)
    }

    /// Links, addresses, routes, forwarding.
    fn wire_up(&self) {
        let (lb, s1, s2, cl) = (&self.lb, &self.made[1], &self.made[2], &self.cl);
        let mut lb_cmds = vec![
            format!("link add c0 type veth peer name eth0 netns {cl}"),
            format!("link add i1 type veth peer name eth0 netns {s1}"),
            format!("link add i2 type veth peer name eth0 netns {s2}"),
            "addr add 10.10.1.1/24 dev c0".into(),
            "addr add 10.10.2.1/24 dev i1".into(),
            "addr add 10.10.3.1/24 dev i2".into(),
        ];
        for b in BACKENDS {
            let ip = b.split(':').next().unwrap();
            lb_cmds.push(format!("addr add {ip}/32 dev lo"));
        }
        for l in ["lo", "c0", "i1", "i2"] {
            lb_cmds.push(format!("link set {l} up"));
        }
        self.ip_batch(lb, &lb_cmds);
        for (ns, inst, gw) in [(s1, S1, "10.10.2.1"), (s2, S2, "10.10.3.1")] {
            self.ip_batch(
                ns,
                &[
                    "link set lo up".into(),
                    format!("addr add {}/24 dev eth0", inst.ip()),
                    "link set eth0 up".into(),
                    format!("route add default via {gw}"),
                ],
            );
        }
        let mut cl_cmds: Vec<String> = CLIENTS
            .map(|i| format!("addr add {}/24 dev eth0", client_ip(i)))
            .collect();
        cl_cmds.extend([
            "link set lo up".into(),
            "link set eth0 up".into(),
            "route add default via 10.10.1.1".into(),
        ]);
        self.ip_batch(cl, &cl_cmds);
        // /proc/sys/net is the namespace of the thread that opens it.
        in_ns(lb, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward=1 in lb")
        });
    }

    /// `ip -n NS -batch -` with these commands.
    fn ip_batch(&self, ns: &str, cmds: &[String]) {
        let mut child = Command::new(&self.ip)
            .args(["-n", ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cmds.join("\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ip -n {ns} -batch failed: {}\ncommands:\n{}",
            String::from_utf8_lossy(&out.stderr),
            cmds.join("\n")
        );
    }

    fn start_instance(&self, name: &'static str, addr: SocketAddrV4) -> Instance {
        let ns = format!("{}-{name}", self.tag);
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(&conf, instance_config(name)).unwrap();
        let pid_file = self.dir.join(format!("{name}.pid"));
        let stderr = self.dir.join(format!("{name}.stderr"));
        let child = Command::new(&self.ip)
            .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_simian"), "-c"])
            .arg(&conf)
            .arg("--pid-file")
            .arg(&pid_file)
            .args(["--threads", "2"])
            .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn ip netns exec simian");
        Instance {
            name,
            addr,
            conf,
            pid_file,
            stderr,
            child,
        }
    }

    /// Wait until instance `i` wrote its pid file and answers through its own
    /// address from the client namespace.
    fn wait_serving(&mut self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let cl = self.cl.clone();
        loop {
            let inst = &mut self.instances[i];
            if let Ok(Some(st)) = inst.child.try_wait() {
                panic!(
                    "simian {} exited ({st}) at start; stderr:\n{}",
                    inst.name,
                    inst.log()
                );
            }
            let addr = inst.addr;
            let up = inst.pid().is_some()
                && in_ns(&cl, || {
                    connect_from(client_ip(10), addr)
                        .and_then(|mut c| get(&mut c, "/hash/ready", "Connection: close\r\n"))
                        .is_ok_and(|r| r.status == 200)
                });
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "simian {} not serving on {addr} after {within:?}; stderr:\n{}",
                inst.name,
                inst.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn instance(&mut self, name: &str) -> &mut Instance {
        self.instances.iter_mut().find(|i| i.name == name).unwrap()
    }

    /// SIGTERM to every simian of this lab (whatever pid it has now); Ok when
    /// all of them exited within `within`.
    fn stop_all(&mut self, within: Duration) -> Result<(), String> {
        let mut pids = BTreeSet::new();
        for inst in &mut self.instances {
            pids.extend(inst.pid());
            if matches!(inst.child.try_wait(), Ok(None)) {
                pids.insert(inst.child.id());
            }
            pids.extend(processes_with(inst.conf.to_str().unwrap()));
        }
        for &pid in &pids {
            signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            let left: Vec<u32> = self
                .instances
                .iter_mut()
                .flat_map(|inst| {
                    let conf = inst.conf.to_str().unwrap().to_string();
                    let mine = inst.child.id();
                    let child_running = matches!(inst.child.try_wait(), Ok(None));
                    let mut v = processes_with(&conf);
                    v.retain(|&p| p != mine);
                    if child_running {
                        v.push(mine);
                    }
                    v
                })
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "still running {within:?} after SIGTERM: pids {left:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            for inst in &self.instances {
                let log = inst.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "---- simian {} stderr (last lines) ----\n{}\n----",
                    inst.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        // Every simian of this lab: SIGTERM, then SIGKILL.
        if self.stop_all(Duration::from_secs(3)).is_err() {
            for inst in &mut self.instances {
                for pid in processes_with(inst.conf.to_str().unwrap()) {
                    signal(pid, libc::SIGKILL);
                }
                let _ = inst.child.kill();
            }
        }
        for inst in &mut self.instances {
            let _ = inst.child.wait();
        }
        // The backends' drop wakes their accept loops with a connect to their own
        // address, which exists only inside `lb`.
        let backends = std::mem::take(&mut self.backends);
        if !backends.is_empty() && self.made.contains(&self.lb) {
            in_ns(&self.lb, move || drop(backends));
        }
        for ns in self.made.iter().rev() {
            if let Err(e) = run(Command::new(&self.ip).args(["netns", "del", ns])) {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Build the lab, or print why not and return `None` (the test passes).
fn lab_or_skip() -> Option<Lab> {
    match Lab::build() {
        Ok(lab) => Some(lab),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

fn instance_config(name: &str) -> String {
    let servers = BACKENDS.join(" ");
    format!(
        "[PROXY_DEFAULTS]\n\
         \x20   Listen 0.0.0.0:80\n\
         \x20   ShutdownTimeout 5s\n\
         \x20   ResponseHeader set X-Instance {name}\n\
         \n\
         [PROXY_ENTRY]\n\
         \x20   Name hashed\n\
         \x20   Match ^/hash/\n\
         \x20   ServerList {servers}\n\
         \x20   LoadBalancer SourceHash\n\
         \n\
         [PROXY_ENTRY]\n\
         \x20   Name sticky\n\
         \x20   Match ^/sticky/\n\
         \x20   ServerList {servers}\n\
         \x20   LoadBalancer RoundRobin\n\
         \x20   StickyCookie {COOKIE} hash\n"
    )
}

/// A backend answering 200 with `X-Backend: NAME` and `X-Client:` the
/// `X-Forwarded-For` it got; to a `/sticky/` request without the cookie it
/// also sets a new session cookie, as an application would.
fn backend(name: String, addr: &str) -> Backend {
    let sessions = AtomicUsize::new(0);
    Backend::start_on(addr, move |req: &Request| {
        let mut headers = vec![
            ("X-Backend".to_string(), name.clone()),
            (
                "X-Client".to_string(),
                req.get("x-forwarded-for").unwrap_or("-").to_string(),
            ),
        ];
        if req.target.starts_with("/sticky/") && cookie_in(req.get("cookie")).is_none() {
            let n = sessions.fetch_add(1, SeqCst);
            headers.push((
                "Set-Cookie".to_string(),
                format!("{COOKIE}={name}.{n}.{}; Path=/", std::process::id()),
            ));
        }
        Reply::Full {
            status: 200,
            headers,
            body: b"ok\n".to_vec(),
        }
    })
}

/// The value of `COOKIE` in a `Cookie` header.
fn cookie_in(header: Option<&str>) -> Option<&str> {
    header?
        .split(';')
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

// ---------------------------------------------------------------------------
// Clients (threads inside the client namespace)
// ---------------------------------------------------------------------------

/// A connection from `src` to `dst` (the caller is in the client namespace).
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Client> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // The port is chosen at connect, per destination (many short connections
    // from one address would otherwise run out of ports sooner).
    let one: libc::c_int = 1;
    // SAFETY: setsockopt(2) with a c_int option value on our own socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&SocketAddr::V4(dst).into(), Duration::from_secs(3))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    let c = Client {
        wire: Wire::new(Conn::Tcp(s)),
    };
    c.set_timeout(Duration::from_secs(5));
    Ok(c)
}

/// `GET path` with `Host: test` and the extra header lines; its response.
fn get(c: &mut Client, path: &str, extra: &str) -> io::Result<Response> {
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes())?;
    c.try_read_response(false)
}

/// One request on a new connection from `src` to `dst`; must be a 200.
fn fetch(src: Ipv4Addr, dst: SocketAddrV4, path: &str, extra: &str) -> Response {
    let mut c = connect_from(src, dst).unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
    let r = get(&mut c, path, &format!("{extra}Connection: close\r\n"))
        .unwrap_or_else(|e| panic!("GET {path} {src} -> {dst}: {e}"));
    assert_eq!(r.status, 200, "GET {path} {src} -> {dst}: {:?}", r.head);
    r
}

/// `X-Instance` and `X-Backend` of a response.
fn way(r: &Response) -> (String, String) {
    (
        r.get("x-instance").unwrap_or("?").to_string(),
        r.get("x-backend").unwrap_or("?").to_string(),
    )
}

// ---------------------------------------------------------------------------
// 1 and 2: hash placement agrees across instances
// ---------------------------------------------------------------------------

/// Requests through the virtual address per client (new connections).
const VIA_VIP: usize = 4;

#[test]
fn hash_placement_agrees_across_instances() {
    let Some(mut lab) = lab_or_skip() else {
        return;
    };
    let cl = lab.cl.clone();
    in_ns(&cl, || {
        // 1. SourceHash: each client address, directly through s1, directly
        //    through s2, and VIA_VIP times through the virtual address.
        let mut via_vip: BTreeMap<String, usize> = BTreeMap::new();
        let mut placement: BTreeMap<String, usize> = BTreeMap::new();
        for i in CLIENTS {
            let src = client_ip(i);
            let path = format!("/hash/client-{i}");
            let mut seen = vec![];
            for (dst, inst) in [(S1, "s1"), (S2, "s2")] {
                let r = fetch(src, dst, &path, "");
                let (got, b) = way(&r);
                assert_eq!(got, inst, "{src} -> {dst} answered by {got}");
                // The L4 hop keeps the client address (DNAT, no SNAT).
                assert_eq!(r.get("x-client"), Some(src.to_string().as_str()));
                seen.push((format!("{inst} direct"), b));
            }
            for n in 0..VIA_VIP {
                let r = fetch(src, VIP, &path, "");
                let (inst, b) = way(&r);
                *via_vip.entry(inst.clone()).or_default() += 1;
                seen.push((format!("VIP #{n} via {inst}"), b));
            }
            let first = &seen[0].1;
            assert!(
                seen.iter().all(|(_, b)| b == first),
                "SourceHash: client {src} reached different backends: {seen:?}"
            );
            *placement.entry(first.clone()).or_default() += 1;
        }
        eprintln!("SourceHash: clients per backend {placement:?}; VIP connections per instance {via_vip:?}");
        let total = CLIENTS.count() * VIA_VIP;
        for inst in ["s1", "s2"] {
            let n = via_vip.get(inst).copied().unwrap_or(0);
            assert!(
                n >= total / 4,
                "numgen should alternate the instances: {via_vip:?} of {total}"
            );
        }
        assert!(
            placement.len() >= 2,
            "all {} clients on one backend: {placement:?}",
            CLIENTS.count()
        );

        // 2. StickyCookie hash: a session cookie from a first response, then the
        //    same backend with it through s1, s2 and the virtual address, and
        //    from another client address too (the cookie decides, not the address).
        let mut sessions: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..12u8 {
            let src = client_ip(10 + i);
            let other = client_ip(40 - i);
            let first = fetch(src, VIP, "/sticky/login", "");
            let set = first
                .get("set-cookie")
                .unwrap_or_else(|| panic!("no Set-Cookie on a first request: {:?}", first.head));
            let value = cookie_in(set.split(';').next())
                .unwrap_or_else(|| panic!("no {COOKIE} in {set:?}"))
                .to_string();
            let with = format!("Cookie: theme=dark; {COOKIE}={value}\r\n");
            let mut seen = vec![];
            for (from, dst, what) in [
                (src, S1, "s1 direct"),
                (src, S2, "s2 direct"),
                (other, S1, "s1 direct, other address"),
                (other, S2, "s2 direct, other address"),
            ] {
                let r = fetch(from, dst, "/sticky/page", &with);
                assert!(
                    r.get("set-cookie").is_none(),
                    "cookie not seen: {:?}",
                    r.head
                );
                seen.push((what.to_string(), way(&r).1));
            }
            for n in 0..VIA_VIP {
                let from = if n.is_multiple_of(2) { src } else { other };
                let r = fetch(from, VIP, "/sticky/page", &with);
                let (inst, b) = way(&r);
                seen.push((format!("VIP #{n} via {inst}"), b));
            }
            let b = &seen[0].1;
            assert!(
                seen.iter().all(|(_, x)| x == b),
                "StickyCookie hash: {COOKIE}={value} reached different backends: {seen:?}"
            );
            *sessions.entry(b.clone()).or_default() += 1;
        }
        eprintln!("StickyCookie hash: sessions per backend {sessions:?}");
        assert!(
            sessions.len() >= 2,
            "all sessions on one backend: {sessions:?}"
        );
    });
    lab.stop_all(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("stopping the instances: {e}"));
}

// ---------------------------------------------------------------------------
// 3. Rolling upgrade of one instance under load
// ---------------------------------------------------------------------------

/// One request's outcome.
#[derive(Clone, Debug)]
struct Event {
    at: Instant,
    thread: &'static str,
    /// What the placement must not change for: `source 10.10.1.20`, `cookie V`.
    key: String,
    /// (instance, backend), or why the request failed.
    outcome: Result<(String, String), String>,
}

struct Load {
    name: &'static str,
    src: u8,
    dst: SocketAddrV4,
    keep_alive: bool,
    /// Keep-alive connections used in turn.
    conns: usize,
}

/// Send requests until `stop`: alternately `/hash/` and `/sticky/` (with a fixed
/// cookie), a 2 ms pause between two. A request fails when it gets no response
/// or a non-2xx one; a response with `Connection: close` just means the next
/// request opens a new connection.
fn load(l: &Load, stop: &AtomicBool, events: &Mutex<Vec<Event>>) {
    let src = client_ip(l.src);
    let cookie = format!("{}.{}", l.name, std::process::id());
    let mut conns: Vec<Option<(Client, usize)>> = (0..l.conns).map(|_| None).collect();
    let mut k = 0usize;
    while !stop.load(SeqCst) {
        let slot = &mut conns[k % l.conns];
        let (path, extra, key) = if k.is_multiple_of(2) {
            (
                format!("/hash/{}/{k}", l.name),
                String::new(),
                format!("source {src}"),
            )
        } else {
            (
                format!("/sticky/{}/{k}", l.name),
                format!("Cookie: {COOKIE}={cookie}\r\n"),
                format!("cookie {cookie}"),
            )
        };
        k += 1;
        let extra = if l.keep_alive {
            extra
        } else {
            extra + "Connection: close\r\n"
        };
        let outcome = (|| {
            if slot.is_none() {
                let c =
                    connect_from(src, l.dst).map_err(|e| format!("connect to {}: {e}", l.dst))?;
                *slot = Some((c, 0));
            }
            let (c, used) = slot.as_mut().unwrap();
            let r = get(c, &path, &extra).map_err(|e| {
                format!(
                    "{} to {}: {e} (request {} on its connection)",
                    path,
                    l.dst,
                    *used + 1
                )
            })?;
            *used += 1;
            if !(200..300).contains(&r.status) {
                return Err(format!("{path} to {}: status {}", l.dst, r.status));
            }
            let w = way(&r);
            Ok((r, w))
        })();
        let outcome = match outcome {
            Ok((r, w)) => {
                if !l.keep_alive || !r.keep_alive() {
                    *slot = None;
                }
                Ok(w)
            }
            Err(e) => {
                *slot = None;
                Err(e)
            }
        };
        events.lock().unwrap().push(Event {
            at: Instant::now(),
            thread: l.name,
            key,
            outcome,
        });
        thread::sleep(Duration::from_millis(2));
    }
}

/// What kind of failure a request's error is, for the summary.
fn failure_kind(e: &str) -> &'static str {
    if e.starts_with("connect to") && e.contains("refused") {
        "connection refused"
    } else if e.starts_with("connect to") {
        "connect failed"
    } else if e.contains("reset by peer") {
        "reset"
    } else if e.contains("closed before a response") || e.contains("EOF") {
        "closed without a (whole) response"
    } else if e.contains("status") {
        "non-2xx status"
    } else if e.contains("temporarily unavailable") || e.contains("timed out") {
        "timed out"
    } else {
        "other"
    }
}

#[test]
fn rolling_upgrade_of_one_instance_fails_no_request() {
    let Some(mut lab) = lab_or_skip() else {
        return;
    };
    let loads = [
        Load {
            name: "vip-keepalive",
            src: 20,
            dst: VIP,
            keep_alive: true,
            conns: 4,
        },
        Load {
            name: "vip-close-a",
            src: 21,
            dst: VIP,
            keep_alive: false,
            conns: 1,
        },
        Load {
            name: "vip-close-b",
            src: 22,
            dst: VIP,
            keep_alive: false,
            conns: 1,
        },
        Load {
            name: "s1-keepalive",
            src: 23,
            dst: S1,
            keep_alive: true,
            conns: 2,
        },
        Load {
            name: "s1-close",
            src: 24,
            dst: S1,
            keep_alive: false,
            conns: 1,
        },
    ];
    let old = lab.instance("s1").pid().expect("s1 pid file");
    let old_inodes = listening_inodes(old, 80);
    assert!(
        !old_inodes.is_empty(),
        "s1 (pid {old}) holds no socket listening on port 80"
    );
    let stop = AtomicBool::new(false);
    let events = Mutex::new(Vec::<Event>::new());
    let cl = lab.cl.clone();
    let t_sig;
    // Ok((new pid, when the upgrade was over)) or what went wrong.
    let upgrade: Result<(u32, Instant), String>;
    {
        let (stop, events) = (&stop, &events);
        let lab = &mut lab;
        (t_sig, upgrade) = thread::scope(|sc| {
            for l in &loads {
                let cl = cl.clone();
                sc.spawn(move || {
                    enter_ns(&cl);
                    load(l, stop, events)
                });
            }
            // Every load thread is under way (its keep-alive connections open
            // on the old process) before the signal.
            let warm = Instant::now() + Duration::from_secs(10);
            while loads.iter().any(|l| {
                events
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|e| e.thread == l.name && e.outcome.is_ok())
                    .count()
                    < 20
            }) && Instant::now() < warm
            {
                thread::sleep(Duration::from_millis(20));
            }
            let t_sig = Instant::now();
            signal(old, libc::SIGUSR2);
            let s1 = lab.instance("s1");
            let deadline = t_sig + Duration::from_secs(15);
            let mut new = None;
            let mut old_gone_at = None;
            let upgrade = loop {
                if let Some(p) = s1.pid().filter(|&p| p != old && running(p)) {
                    new = Some(p);
                }
                if old_gone_at.is_none() && s1.gone(old) {
                    old_gone_at = Some(Instant::now());
                }
                match (new, old_gone_at) {
                    (Some(p), Some(_)) => break Ok((p, Instant::now())),
                    (None, Some(at)) if at.elapsed() > Duration::from_secs(3) => {
                        let st = s1.child.try_wait().ok().flatten();
                        break Err(format!(
                            "the old process (pid {old}) exited ({st:?}) {:?} after SIGUSR2 \
                             and no new process wrote the pid file (it says {:?})",
                            at - t_sig,
                            s1.pid()
                        ));
                    }
                    _ => {}
                }
                if Instant::now() >= deadline {
                    break Err(format!(
                        "15 s after SIGUSR2: pid file says {:?} (old pid {old}), \
                         old process {}",
                        s1.pid(),
                        if old_gone_at.is_some() {
                            "exited"
                        } else {
                            "still running"
                        }
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            };
            // Traffic goes on a while against the new process.
            thread::sleep(Duration::from_secs(1));
            stop.store(true, SeqCst);
            (t_sig, upgrade)
        });
    }
    let events = events.into_inner().unwrap();
    let ms = |at: Instant| -> i128 {
        if at >= t_sig {
            (at - t_sig).as_millis() as i128
        } else {
            -((t_sig - at).as_millis() as i128)
        }
    };

    let mut problems: Vec<String> = vec![];
    match &upgrade {
        Err(e) => problems.push(format!("upgrade: {e}")),
        Ok((new, done)) => {
            let new = *new;
            eprintln!(
                "upgrade: pid {old} -> {new} in {} ms",
                done.duration_since(t_sig).as_millis()
            );
            // Requests to s1 after the old process had gone: the new one served.
            let after = events
                .iter()
                .filter(|e| e.at > *done)
                .filter(|e| matches!(&e.outcome, Ok((i, _)) if i == "s1"))
                .count();
            if after == 0 {
                problems.push("no request answered by s1 after the upgrade".into());
            }
            // It serves now, on the very sockets the old one listened on.
            let r = in_ns(&cl, || {
                connect_from(client_ip(30), S1)
                    .and_then(|mut c| get(&mut c, "/hash/after", "Connection: close\r\n"))
            });
            match r {
                Ok(r) if r.status == 200 && way(&r).0 == "s1" => {}
                Ok(r) => problems.push(format!("s1 after the upgrade: {:?}", r.head)),
                Err(e) => problems.push(format!("s1 after the upgrade: {e}")),
            }
            let new_inodes = listening_inodes(new, 80);
            if new_inodes != old_inodes {
                problems.push(format!(
                    "listening sockets not handed over: old pid {old} had inodes \
                     {old_inodes:?}, new pid {new} has {new_inodes:?}"
                ));
            }
            let s1 = lab.instance("s1");
            if s1.pid() != Some(new) {
                problems.push(format!(
                    "the pid file names {:?}, not the new process {new}",
                    s1.pid()
                ));
            }
        }
    }
    // No request failed.
    let failed: Vec<&Event> = events.iter().filter(|e| e.outcome.is_err()).collect();
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        if let Ok((inst, _)) = &e.outcome {
            *per_instance.entry(inst.clone()).or_default() += 1;
        }
    }
    eprintln!(
        "{} requests, {} failed; answered per instance: {per_instance:?}",
        events.len(),
        failed.len()
    );
    if !failed.is_empty() {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &failed {
            *kinds
                .entry(failure_kind(e.outcome.as_ref().unwrap_err()))
                .or_default() += 1;
        }
        let show = |e: &&Event| {
            format!(
                "  {:+} ms {}: {}",
                ms(e.at),
                e.thread,
                e.outcome.as_ref().unwrap_err()
            )
        };
        let mut shown: Vec<String> = failed.iter().take(8).map(show).collect();
        if failed.len() > 8 {
            let from = failed.len().saturating_sub(3).max(8);
            shown.push("  ...".into());
            shown.extend(failed[from..].iter().map(show));
        }
        problems.push(format!(
            "{} of {} requests failed, {kinds:?}; times from SIGUSR2:\n{}",
            failed.len(),
            events.len(),
            shown.join("\n")
        ));
    }
    // Placement by source address and by cookie never changed.
    let mut placed: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for e in &events {
        if let Ok((_, b)) = &e.outcome {
            placed.entry(&e.key).or_default().insert(b);
        }
    }
    for (key, bs) in &placed {
        if bs.len() > 1 {
            problems.push(format!("{key} reached several backends: {bs:?}"));
        }
    }
    for inst in ["s1", "s2"] {
        if !per_instance.contains_key(inst) {
            problems.push(format!("no request was answered by {inst}"));
        }
    }

    if let Err(e) = lab.stop_all(Duration::from_secs(10)) {
        problems.push(format!("stopping the instances: {e}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
