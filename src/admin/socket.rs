//! The `AdminSocket`: a unix socket, mode 0600, owned by the process's user, on
//! which one thread answers one command per connection (`simian ctl`).
//!
//! The socket is bound under a temporary name and renamed over the path, so a
//! new process (a binary upgrade) takes the path over from the old one without
//! a moment where `simian ctl` finds nothing; each process removes the path at
//! exit only if it still names its own socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;

use crate::context::live::Live;

/// A running admin socket; dropping it stops the thread (within a poll period)
/// and removes the path if it is still ours.
pub struct AdminSocket {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// (device, inode) of the socket file we created.
    ours: (u64, u64),
    /// Leave the path alone at drop (the process that took over uses it).
    keep_path: bool,
}

/// How often the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);
/// A client gets this long to send its command line and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_LINE: u64 = 4096;
/// The longest path a unix socket can be bound to (sun_path is 108 bytes).
pub const MAX_PATH: usize = 107;

impl AdminSocket {
    pub fn start(path: &Path, live: Arc<ArcSwap<Live>>) -> anyhow::Result<AdminSocket> {
        let listener = bind(path).with_context(|| format!("AdminSocket {}", path.display()))?;
        let meta =
            std::fs::metadata(path).with_context(|| format!("AdminSocket {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("simian-admin".into())
            .spawn(move || serve(listener, live, stop2))
            .context("cannot start the admin thread")?;
        Ok(AdminSocket {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
            ours: (meta.dev(), meta.ino()),
            keep_path: false,
        })
    }

    /// Stop answering but leave the path: the new process of an upgrade has it.
    pub fn hand_over(mut self) {
        self.keep_path = true;
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stop.store(true, Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.keep_path {
            let still_ours =
                std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ours);
            if still_ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Bind under a temporary name, restrict it to the owner, listen, then rename
/// over `path` (atomic: the path always names a socket someone answers on).
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A path with no room for the suffix: bound in place (a stale socket file
    // is removed first), without the atomic takeover.
    let tmp = if tmp.as_os_str().len() <= MAX_PATH {
        tmp
    } else {
        let _ = std::fs::remove_file(path);
        path.to_path_buf()
    };
    let _ = std::fs::remove_file(&tmp);
    let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    s.bind(&SockAddr::unix(&tmp)?)
        .with_context(|| format!("cannot bind {}", tmp.display()))?;
    let done = (|| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        // Before listen(): nobody can connect while the mode is still the umask's.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        s.listen(16)?;
        if tmp != path {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename it to {}", path.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    s.set_nonblocking(true)?;
    Ok(UnixListener::from(std::os::fd::OwnedFd::from(s)))
}

fn serve(listener: UnixListener, live: Arc<ArcSwap<Live>>, stop: Arc<AtomicBool>) {
    while !stop.load(Acquire) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
        if n <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, &live) {
                    crate::debug!("admin socket: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                crate::error!("admin socket: accept: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// One connection: a command line in, `ok` or `error` and the text out.
fn answer(conn: UnixStream, live: &ArcSwap<Live>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&conn, MAX_LINE)).read_line(&mut line)?;
    let reply = match super::commands::execute(&live.load(), line.trim()) {
        Ok(text) => format!("ok\n{text}"),
        Err(e) => format!("error\n{e}\n"),
    };
    (&conn).write_all(reply.as_bytes())
}
