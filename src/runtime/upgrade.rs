//! The old process's side of a binary upgrade (SPEC section 11): start the
//! binary at the path this process was started from, with the same arguments and
//! the listening sockets, and wait for its report. Runs on a thread of its own so
//! the signal loop keeps answering (a second SIGUSR2 is refused while this runs).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handover::{ADMIN_STATE, LISTEN_FDS, REPORT_FD};
use crate::net::listen::Listener;

/// How long the new process has to load its configuration and accept.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// An upgrade under way.
pub struct Pending {
    result: flume::Receiver<Result<u32, String>>,
    /// The new process, once started (0 before).
    child: Arc<AtomicU32>,
}

impl Pending {
    /// The outcome, once known: the new process's pid, or why it failed.
    pub fn outcome(&self) -> Option<Result<u32, String>> {
        match self.result.try_recv() {
            Ok(r) => Some(r),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => {
                Some(Err("the upgrade thread ended without an answer".into()))
            }
        }
    }

    /// This process stops (SIGTERM) before the new one is ready: stop that one
    /// too, or two would serve.
    pub fn abort(&self) {
        let pid = self.child.load(Acquire);
        if pid != 0 {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Start the upgrade: `exe` with this process's arguments, inheriting `sockets`
/// (descriptors this process keeps open until the outcome is known) and the
/// admin states (`simian ctl` commands).
pub fn start(exe: PathBuf, sockets: Vec<Listener>, admin: String) -> Pending {
    let (tx, rx) = flume::bounded(1);
    let child = Arc::new(AtomicU32::new(0));
    let slot = child.clone();
    let spawned = std::thread::Builder::new()
        .name("simian-upgrade".into())
        .spawn(move || {
            let _ = tx.send(run(&exe, &sockets, &admin, &slot));
        });
    if let Err(e) = spawned {
        let (tx, rx2) = flume::bounded(1);
        let _ = tx.send(Err(format!("cannot start the upgrade thread: {e}")));
        return Pending { result: rx2, child };
    }
    Pending { result: rx, child }
}

fn run(exe: &Path, sockets: &[Listener], admin: &str, slot: &AtomicU32) -> Result<u32, String> {
    check_executable(exe)?;
    let (report, report_w) = pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut handed: Vec<RawFd> = sockets.iter().map(Listener::raw_fd).collect();
    let list = handed
        .iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(",");
    handed.push(report_w.as_raw_fd());
    let env = [
        (LISTEN_FDS, list),
        (REPORT_FD, report_w.as_raw_fd().to_string()),
        (ADMIN_STATE, admin.to_string()),
    ];
    let image = Image::new(exe, &env, handed, report_w.as_raw_fd())
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    image
        .spawn_detached()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(report_w);
    let outcome = read_report(report, READY_WITHIN, slot);
    let pid = slot.load(Acquire);
    match outcome {
        Report::Ready if pid != 0 => Ok(pid),
        Report::Ready => Err("the new process said it was ready but not who it is".into()),
        Report::Failed(why) => Err(format!(
            "the new process (pid {pid}) could not start:\n{}",
            why.trim_end()
        )),
        Report::Gone => Err(format!(
            "the new process (pid {pid}) ended before it was ready (its own errors are in the log)"
        )),
        Report::Late => {
            if pid != 0 {
                // SAFETY: plain kill(2) on the process we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            Err(format!(
                "the new process (pid {pid}) was not ready within {}s; killed it",
                READY_WITHIN.as_secs()
            ))
        }
    }
}

/// What to exec, prepared before fork: after it only async-signal-safe calls.
struct Image {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Descriptors the new process inherits (close-on-exec cleared in the child).
    keep: Vec<RawFd>,
    /// Where the intermediate process writes the new process's pid.
    report: RawFd,
}

impl Image {
    fn new(
        exe: &Path,
        env: &[(&str, String)],
        keep: Vec<RawFd>,
        report: RawFd,
    ) -> std::io::Result<Image> {
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| std::io::Error::other("a NUL byte in an argument"))
        };
        let path = c(exe.as_os_str().as_encoded_bytes())?;
        let mut argv = vec![path.clone()];
        for a in std::env::args_os().skip(1) {
            argv.push(c(a.as_encoded_bytes())?);
        }
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if env.iter().any(|(name, _)| k == *name) {
                continue;
            }
            let mut kv = k.as_encoded_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_encoded_bytes());
            envp.push(c(&kv)?);
        }
        for (k, v) in env {
            envp.push(c(format!("{k}={v}").as_bytes())?);
        }
        Ok(Image {
            path,
            argv,
            envp,
            keep,
            report,
        })
    }

    /// Start the new process as a grandchild whose parent exits at once, so it
    /// is reparented to the service manager (PID 1, or the nearest subreaper):
    /// systemd then supervises it as its own child once it names itself the main
    /// process, and sees it exit (a child of this process, which exits after
    /// the drain, would be an "alien" main PID systemd cannot wait for). The
    /// intermediate writes the new pid into the report pipe.
    fn spawn_detached(&self) -> std::io::Result<()> {
        let (argv, envp) = (pointers(&self.argv), pointers(&self.envp));
        // SAFETY: fork(2); the children call only async-signal-safe functions
        // (fork, fcntl, sigprocmask, signal, execve, write, _exit) on memory
        // prepared before the fork.
        let mid = unsafe { libc::fork() };
        if mid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if mid == 0 {
            unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    self.exec(&argv, &envp);
                }
                if pid > 0 {
                    let mut line = [0u8; 32];
                    let n = pid_line(pid as u32, &mut line);
                    libc::write(self.report, line.as_ptr().cast(), n);
                }
                libc::_exit(if pid > 0 { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, which exits at once.
        unsafe { libc::waitpid(mid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(std::io::Error::other("could not fork the new process"))
        }
    }

    /// In the new process, before exec: inherit what it needs, start with the
    /// default signal state, exec. Never returns.
    unsafe fn exec(&self, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> ! {
        for &fd in &self.keep {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// The NULL-terminated array of C strings exec takes.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `pid N\n` into `buf` without allocating (after fork); its length.
fn pid_line(pid: u32, buf: &mut [u8; 32]) -> usize {
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (pid, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf[..4].copy_from_slice(b"pid ");
    for i in 0..k {
        buf[4 + i] = digits[k - 1 - i];
    }
    buf[4 + k] = b'\n';
    5 + k
}

/// Refuse early, with the reason, what exec would refuse anyway.
fn check_executable(exe: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(exe)
        .map_err(|e| format!("the binary {} is missing: {e}", exe.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let path = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("the binary path {} has a NUL byte", exe.display()))?;
    // SAFETY: a valid C string.
    let runnable = unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 || !runnable {
        return Err(format!("the binary {} is not executable", exe.display()));
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

enum Report {
    Ready,
    Failed(String),
    /// The pipe closed without a word: the process died.
    Gone,
    Late,
}

/// Read the reports: the new pid from the intermediate process (stored in
/// `slot` at once, so a stop can kill it), then the new process's `ready`, or
/// `error` and why, or nothing (it died), within `limit`.
fn read_report(fd: OwnedFd, limit: Duration, slot: &AtomicU32) -> Report {
    let deadline = Instant::now() + limit;
    let mut file = std::fs::File::from(fd);
    let mut got = Vec::new();
    let mut announced = false;
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        let mut lines = text.split_inclusive('\n');
        for line in lines.by_ref() {
            let Some(line) = line.strip_suffix('\n') else {
                break;
            };
            if let Some(pid) = line.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
                slot.store(pid, Release);
                if !announced {
                    announced = true;
                    crate::info!(
                        "upgrade: started pid {pid}; waiting up to {}s for it to serve",
                        limit.as_secs()
                    );
                }
            } else if line == "ready" {
                return Report::Ready;
            } else if line == "error" {
                // The reason follows, up to EOF.
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Report::Late;
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        if n <= 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    match text.split_once("error\n") {
        Some((_, why)) => Report::Failed(why.to_string()),
        None => Report::Gone,
    }
}
