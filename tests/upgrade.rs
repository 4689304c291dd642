//! Binary upgrade on SIGUSR2 (SPEC section 11): the real binary on loopback, the
//! pid file followed from the old process to the new one, traffic running through
//! the handover, and every way the new process can fail to start.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::{free_port, temp_dir, Backend, Client};

/// A simian started with `--pid-file`; it may be replaced by upgrades, so it is
/// driven through the pid file, and whatever process the pid file names is
/// stopped on drop.
struct Proxy {
    child: Child,
    dir: PathBuf,
    port: u16,
    stderr: PathBuf,
}

impl Proxy {
    fn start(config: &str, legacy: bool) -> Proxy {
        Self::start_with(env!("CARGO_BIN_EXE_simian").as_ref(), config, legacy, &[])
    }

    fn start_with(bin: &Path, config: &str, legacy: bool, env: &[(&str, &str)]) -> Proxy {
        let dir = temp_dir("upgrade");
        let port = free_port();
        let config = fill(config, port, &dir);
        std::fs::write(dir.join("simian.conf"), config).unwrap();
        let stderr = dir.join("stderr.log");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(dir.join("simian.conf"))
            .arg("--pid-file")
            .arg(dir.join("simian.pid"))
            .arg("--threads")
            .arg("2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        if legacy {
            cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        } else {
            cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = Proxy {
            child: cmd.spawn().expect("spawn simian"),
            dir,
            port,
            stderr,
        };
        let first = p.child.id();
        p.wait(Duration::from_secs(10), "the pid file", |p| {
            p.pid() == Some(first)
        });
        p
    }

    fn fill(&self, s: &str) -> String {
        fill(s, self.port, &self.dir)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("simian.conf")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("simian.pid")
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process the pid file names.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn signal(&self, pid: u32, sig: libc::c_int) {
        // SAFETY: plain kill(2).
        assert_eq!(
            unsafe { libc::kill(pid as libc::pid_t, sig) },
            0,
            "kill {pid}"
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait(&mut self, within: Duration, what: &str, mut f: impl FnMut(&mut Proxy) -> bool) {
        let deadline = Instant::now() + within;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_log(&mut self, needle: &str, within: Duration) {
        self.wait(within, &format!("`{needle}` in the log"), |p| {
            p.log().contains(needle)
        });
    }

    /// SIGUSR2 to the current process; returns once the pid file names a new
    /// process and the old one has exited.
    fn upgrade(&mut self) -> u32 {
        let old = self.pid().expect("pid file");
        self.signal(old, libc::SIGUSR2);
        self.wait(
            Duration::from_secs(15),
            "the new pid in the pid file",
            |p| p.pid().is_some_and(|n| n != old),
        );
        self.wait(Duration::from_secs(35), "the old process to exit", |p| {
            reap(p, old);
            !alive(old)
        });
        self.pid().unwrap()
    }

    fn get(&self, path: &str) -> util::Response {
        let mut c = Client::tcp(self.addr());
        c.set_timeout(Duration::from_secs(5));
        c.get_with(path, "Connection: close\r\n")
    }
}

/// Reap `pid` if it is our direct child (the first process).
fn reap(p: &mut Proxy, pid: u32) {
    if p.child.id() == pid {
        let _ = p.child.try_wait();
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry: look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let mut pids = vec![self.child.id()];
        pids.extend(self.pid());
        for pid in pids {
            if alive(pid) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- simian log ----\n{}\n----", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fill(s: &str, port: u16, dir: &Path) -> String {
    s.replace("@PORT@", &port.to_string())
        .replace("@DIR@", &dir.display().to_string())
}

fn config(backend: &str, defaults: &str) -> String {
    format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\nShutdownTimeout 10s\n{defaults}\n\
         [PROXY_ENTRY]\nName app\nMatch ^/\nServerList {backend}\n"
    )
}

/// Clients that run until stopped: keep-alive ones (reconnecting after a
/// `Connection: close` answer, as any client does) and a `Connection: close`
/// loop; every request must get a 200 with the whole body.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Traffic {
    fn start(addr: SocketAddr, keep_alive: usize, closing: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for i in 0..keep_alive + closing {
            let (stop, ok) = (stop.clone(), ok.clone());
            let close = i >= keep_alive;
            threads.push(thread::spawn(move || {
                let mut failures = Vec::new();
                let mut conn: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    let c = conn.get_or_insert_with(|| {
                        let c = Client::tcp(addr);
                        c.set_timeout(Duration::from_secs(5));
                        c
                    });
                    let extra = if close { "Connection: close\r\n" } else { "" };
                    if let Err(e) =
                        c.try_send(format!("GET /x HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes())
                    {
                        failures.push(format!("send: {e}"));
                        conn = None;
                        continue;
                    }
                    match c.try_read_response(false) {
                        Ok(r) if r.status == 200 && r.text() == "hello" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if close || !r.keep_alive() {
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            failures.push(format!("status {} {:?}", r.status, r.text()));
                            conn = None;
                        }
                        Err(e) => {
                            failures.push(format!("read: {e}"));
                            conn = None;
                        }
                    }
                }
                failures
            }));
        }
        Traffic { stop, ok, threads }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn upgrades_under_traffic(legacy: bool) {
    let backend = Backend::fixed("hello");
    let mut p = Proxy::start(&config(&backend.addr(), ""), legacy);
    let traffic = Traffic::start(p.addr(), 4, 2);
    thread::sleep(Duration::from_millis(300));
    let first = p.pid().unwrap();
    let mut pids = vec![first];
    for _ in 0..3 {
        let before = traffic.ok.load(Ordering::Relaxed);
        pids.push(p.upgrade());
        // The new process serves: requests keep completing after the old is gone.
        let t0 = Instant::now();
        while traffic.ok.load(Ordering::Relaxed) < before + 200 {
            assert!(t0.elapsed() < Duration::from_secs(10), "traffic stalled");
            thread::sleep(Duration::from_millis(5));
        }
    }
    thread::sleep(Duration::from_millis(300));
    let (ok, failures) = traffic.finish();
    println!("{} requests through 3 upgrades, pids {pids:?}", ok);
    assert!(
        failures.is_empty(),
        "{} failed requests during the upgrades (of {ok}): {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let log = p.log();
    assert_eq!(
        log.matches("sockets taken over from the previous process")
            .count(),
        3,
        "{log}"
    );
    assert!(
        log.contains(&format!("upgrade: process {} serves", pids[1])),
        "{log}"
    );
    // The last process serves, and SIGTERM still stops it cleanly.
    assert_eq!(p.get("/x").status, 200);
    let last = p.pid().unwrap();
    p.signal(last, libc::SIGTERM);
    p.wait(Duration::from_secs(10), "the last process to exit", |_| {
        !alive(last)
    });
    assert!(!p.pid_path().exists(), "pid file left behind");
}

#[test]
fn sigusr2_hands_the_sockets_over_without_failing_a_request() {
    upgrades_under_traffic(false);
}

#[test]
fn sigusr2_hands_the_sockets_over_without_failing_a_request_legacy_driver() {
    upgrades_under_traffic(true);
}

/// The listening socket is the same one in the new process (inherited, not
/// bound again): its inode does not change.
#[test]
fn the_new_process_accepts_on_the_same_socket() {
    let backend = Backend::fixed("hello");
    let mut p = Proxy::start(&config(&backend.addr(), ""), false);
    let port = p.port;
    let inode = |pid: u32| listen_inode(pid, port);
    let before = inode(p.pid().unwrap());
    let new = p.upgrade();
    assert_eq!(inode(new), before, "the new process bound a new socket");
    assert_eq!(p.get("/x").status, 200);
}

/// The inodes of the sockets of `pid` listening on `port` (from /proc).
fn listen_inode(pid: u32, port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!(":{port:04X}");
    let listening: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A").then(|| f[9].parse().ok())?
        })
        .collect();
    let mut mine: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().to_string();
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|i| listening.contains(i))
        .collect();
    mine.sort();
    mine.dedup();
    assert!(!mine.is_empty(), "process {pid} has no listener on {port}");
    mine
}

/// A file that no longer validates: the new process refuses to start, says why,
/// and the old one keeps serving and keeps the pid file.
#[test]
fn sigusr2_with_a_broken_config_keeps_the_old_process() {
    let backend = Backend::fixed("hello");
    let mut p = Proxy::start(&config(&backend.addr(), ""), false);
    let old = p.pid().unwrap();
    std::fs::write(
        p.config_path(),
        p.fill("[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\n[PROXY_ENTRY]\nMatch ^/\nServerList\n"),
    )
    .unwrap();
    p.signal(old, libc::SIGUSR2);
    p.wait_log(
        "upgrade failed, this process keeps serving",
        Duration::from_secs(15),
    );
    let log = p.log();
    assert!(
        log.contains("could not start:") && log.contains("simian.conf:5:"),
        "the reason (with file:line:col) is not in the log:\n{log}"
    );
    assert_eq!(p.pid(), Some(old));
    assert_eq!(p.get("/x").status, 200);
    // And a later upgrade with a fixed file works.
    std::fs::write(p.config_path(), p.fill(&config(&backend.addr(), ""))).unwrap();
    let new = p.upgrade();
    assert_ne!(new, old);
    assert_eq!(p.get("/x").status, 200);
}

/// The binary at the path simian was started from is what SIGUSR2 runs: not
/// executable, then missing, each refused with the reason; then a new file at
/// that path is started.
#[test]
fn sigusr2_runs_the_binary_at_the_start_path_and_refuses_a_missing_one() {
    use std::os::unix::fs::PermissionsExt;
    let backend = Backend::fixed("hello");
    let bin_dir = temp_dir("upgrade-bin");
    let bin = bin_dir.join("simian");
    std::fs::copy(env!("CARGO_BIN_EXE_simian"), &bin).unwrap();
    let mut p = Proxy::start_with(&bin, &config(&backend.addr(), ""), false, &[]);
    let old = p.pid().unwrap();

    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.signal(old, libc::SIGUSR2);
    p.wait_log("is not executable", Duration::from_secs(10));
    assert_eq!(p.get("/x").status, 200);

    std::fs::remove_file(&bin).unwrap();
    p.signal(old, libc::SIGUSR2);
    p.wait_log("is missing", Duration::from_secs(10));
    assert!(p
        .log()
        .contains(&format!("the binary {} is missing", bin.display())));
    assert_eq!(p.pid(), Some(old));
    assert_eq!(p.get("/x").status, 200);

    // A package upgrade puts a new file there (a new inode): that one starts.
    std::fs::copy(env!("CARGO_BIN_EXE_simian"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let new = p.upgrade();
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).unwrap();
    assert_eq!(exe, bin, "the new process runs {}", exe.display());
    assert_eq!(p.get("/x").status, 200);
    let _ = std::fs::remove_dir_all(&bin_dir);
}

/// A new process that never reports ready is killed after 10 s; a SIGUSR2 in the
/// meantime is ignored and logged; the old process serves throughout.
#[test]
fn a_new_process_not_ready_in_10s_is_killed_and_a_second_sigusr2_is_ignored() {
    let backend = Backend::fixed("hello");
    let mut p = Proxy::start_with(
        env!("CARGO_BIN_EXE_simian").as_ref(),
        &config(&backend.addr(), ""),
        false,
        &[("SIMIAN_FAULT", "upgrade-never-ready")],
    );
    let old = p.pid().unwrap();
    p.signal(old, libc::SIGUSR2);
    p.wait_log("upgrade: started", Duration::from_secs(5));
    let log = p.log();
    let child: u32 = log
        .split("upgrade: started pid ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .expect("the new pid in the log");
    p.signal(old, libc::SIGUSR2);
    p.wait_log(
        "SIGUSR2 ignored: an upgrade is already under way",
        Duration::from_secs(5),
    );
    // The old process serves all along.
    for _ in 0..5 {
        assert_eq!(p.get("/x").status, 200);
        thread::sleep(Duration::from_millis(100));
    }
    p.wait_log(
        "was not ready within 10s; killed it",
        Duration::from_secs(15),
    );
    p.wait(
        Duration::from_secs(5),
        "the stuck process to be gone",
        |_| !alive(child),
    );
    assert_eq!(p.pid(), Some(old));
    assert_eq!(p.get("/x").status, 200);
}

/// systemd's notify protocol: READY=1 at start; on upgrade the old process says
/// MAINPID=<new> and the new one MAINPID=<itself> and READY=1.
#[test]
fn systemd_is_told_ready_and_the_new_main_pid() {
    let backend = Backend::fixed("hello");
    let dir = temp_dir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut p = Proxy::start_with(
        env!("CARGO_BIN_EXE_simian").as_ref(),
        &config(&backend.addr(), ""),
        false,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let recv = || {
        let mut b = [0u8; 512];
        let n = sock.recv(&mut b).expect("a notification");
        String::from_utf8_lossy(&b[..n]).to_string()
    };
    assert_eq!(recv(), "READY=1\n");
    let old = p.pid().unwrap();
    let new = p.upgrade();
    let mut got = vec![recv(), recv()];
    got.sort();
    let mut want = vec![
        format!("MAINPID={new}\n"),
        format!("MAINPID={new}\nREADY=1\n"),
    ];
    want.sort();
    assert_eq!(got, want, "old {old}, new {new}");
    // SIGTERM: STOPPING=1.
    p.signal(new, libc::SIGTERM);
    assert_eq!(recv(), "STOPPING=1\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Admin states (`simian ctl`) survive the upgrade, and the admin socket path
/// is the new process's at once.
#[test]
fn admin_states_survive_the_upgrade() {
    let a = Backend::fixed("hello");
    let b = Backend::fixed("hello");
    let mut p = Proxy::start(
        &config(
            &format!("{} {}", a.addr(), b.addr()),
            "AdminSocket @DIR@/admin.sock",
        ),
        false,
    );
    let sock = p.dir.join("admin.sock");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_simian"))
            .arg("ctl")
            .arg("-s")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    ctl(&["drain", "app", &a.addr()]);
    p.upgrade();
    let table = ctl(&["servers"]);
    let row = table
        .lines()
        .find(|l| l.contains(&a.addr()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("drain"), "{table}");
    // Drained: new requests all go to b.
    let before = a.request_count();
    for _ in 0..10 {
        assert_eq!(p.get("/x").status, 200);
    }
    assert_eq!(a.request_count(), before, "a drained server got requests");
    assert!(sock.exists());
}

/// `simian demo` turns on its statistics page and HealthURL and prints both.
#[test]
fn demo_prints_and_serves_its_statistics_and_health_urls() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_simian"))
        .args(["demo", "--listen", &listen])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while !text.contains("Ctrl-C stops") {
        let mut b = [0u8; 4096];
        let n = out.read(&mut b).unwrap();
        assert!(n > 0 && Instant::now() < deadline, "{text}");
        text.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    let stop = || {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    };
    let stats = format!("http://{listen}/simian-status");
    let health = format!("http://{listen}/healthz");
    let printed = text.contains(&stats) && text.contains(&health);
    let get = |path: &str, accept: &str| -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
                );
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                return (util::status_of(r.as_bytes()), r);
            }
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(20));
        }
    };
    let (hs, _) = get("/healthz", "*/*");
    let (ss, page) = get("/simian-status", "text/html");
    stop();
    let _ = child.wait();
    assert!(printed, "the demo does not print both URLs:\n{text}");
    assert_eq!(hs, 200);
    assert_eq!(ss, 200);
    assert!(
        page.contains("<html") || page.contains("<!DOCTYPE"),
        "{page}"
    );
}
