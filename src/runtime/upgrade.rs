//! The old process's side of a binary upgrade (SPEC section 11): start the
//! binary at the path this process was started from, with the same arguments and
//! the listening sockets, and wait for its report. Runs on a thread of its own so
//! the signal loop keeps answering (a second SIGUSR2 is refused while this runs).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handover::{ADMIN_STATE, LISTEN_FDS, REPORT_FD};

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
pub fn start(exe: PathBuf, sockets: Vec<OwnedFd>, admin: String) -> Pending {
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

fn run(exe: &Path, sockets: &[OwnedFd], admin: &str, slot: &AtomicU32) -> Result<u32, String> {
    check_executable(exe)?;
    let (report, report_w) = pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut handed: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let list = handed
        .iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(",");
    handed.push(report_w.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(LISTEN_FDS, list)
        .env(REPORT_FD, report_w.as_raw_fd().to_string())
        .env(ADMIN_STATE, admin);
    // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &handed {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(report_w);
    slot.store(child.id(), Release);
    crate::info!(
        "upgrade: started {} (pid {}); waiting up to {}s for it to serve",
        exe.display(),
        child.id(),
        READY_WITHIN.as_secs()
    );
    match read_report(report, READY_WITHIN) {
        Report::Ready => Ok(child.id()),
        Report::Failed(why) => {
            let st = reap(&mut child, Duration::from_secs(2));
            Err(format!(
                "the new process could not start ({st}):\n{}",
                why.trim_end()
            ))
        }
        Report::Gone => {
            let st = reap(&mut child, Duration::from_secs(2));
            Err(format!("the new process ended before it was ready ({st})"))
        }
        Report::Late => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the new process was not ready within {}s; killed it",
                READY_WITHIN.as_secs()
            ))
        }
    }
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

/// Read the new process's report: everything until it closes the pipe, or
/// "ready" (it keeps running), within `limit`.
fn read_report(fd: OwnedFd, limit: Duration) -> Report {
    let deadline = Instant::now() + limit;
    let mut file = std::fs::File::from(fd);
    let mut got = Vec::new();
    loop {
        if got.starts_with(b"ready\n") {
            return Report::Ready;
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
    match text.strip_prefix("error\n") {
        Some(why) => Report::Failed(why.to_string()),
        None if text.starts_with("ready\n") => Report::Ready,
        None => Report::Gone,
    }
}

/// Wait for the child to exit (it said it would, or it died), killing it after
/// `grace`; its exit status as text.
fn reap(child: &mut Child, grace: Duration) -> String {
    let until = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.to_string(),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return child
                    .wait()
                    .map_or_else(|e| e.to_string(), |st| format!("{st}, killed"));
            }
        }
    }
}
