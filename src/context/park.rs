//! Parked keep-alive connections: a client connection idle for a while gives up its
//! task, its monoio registration and its readiness op, and is kept as one small map
//! entry plus a registration in a worker-local epoll set. When its next request
//! arrives, the worker takes it out and serves it as if it had just been accepted.
//!
//! Why: an idle connection waiting in its own task costs the task, the future, the
//! fd's driver state and the in-flight poll op (~950 bytes measured). Parked, it
//! costs a map entry (~60 bytes); the epoll item lives in kernel memory, next to the
//! socket itself. HAProxy keeps ~1.2 KB and nginx ~0.7 KB per idle connection here.
//!
//! Only connections that stayed idle past `PARK_AFTER` are parked (the idle sweeper
//! decides), so a busy keep-alive connection never pays the extra syscalls.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::net::listen::Peer;
use crate::net::tls::TlsSession;

/// How long a keep-alive connection waits in its own task before it is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// A connection taken out of the parked set, to be served again.
pub struct Parked {
    pub fd: OwnedFd,
    pub peer: Peer,
    pub tcp: bool,
    pub tls: Option<Box<TlsSession>>,
}

/// What the set keeps per connection (24 bytes; its fd is the key, its peer
/// address is asked again with getpeername(2) when it wakes).
struct Slot {
    /// IdleTimeout deadline (crate clock, ms), carried over from its idle wait.
    deadline: u64,
    tcp: bool,
    /// A TLS connection's session (its keys and sequence numbers): the task and
    /// the socket's registration go, the session must stay.
    tls: Option<Box<TlsSession>>,
    /// The client as the connection knew it (from a PROXY header, maybe): the
    /// socket's own peer may be only the balancer in front.
    peer: Option<std::net::SocketAddr>,
    dest: Option<std::net::SocketAddr>,
}

pub struct Parking {
    /// The epoll set; wrapped as a monoio stream only to wait for its readiness
    /// (monoio has no public way to wait on an arbitrary fd). No socket call is
    /// ever made on it.
    ep: monoio::net::UnixStream,
    conns: RefCell<FxHashMap<RawFd, Slot>>,
}

const BATCH: usize = 64;

impl Parking {
    pub fn new() -> io::Result<Parking> {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(raw) };
        Ok(Parking {
            ep: monoio::net::UnixStream::from_std(std)?,
            conns: RefCell::new(FxHashMap::default()),
        })
    }

    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Park a connection; on error the session comes back (the fd is closed).
    pub fn park(
        &self,
        fd: OwnedFd,
        tcp: bool,
        deadline: u64,
        tls: Option<Box<TlsSession>>,
        peer: Peer,
    ) -> Result<(), (io::Error, Option<Box<TlsSession>>)> {
        let raw = fd.as_raw_fd();
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: raw as u64,
        };
        // SAFETY: valid epoll fd, valid fd, valid event pointer.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, raw, &mut ev) } < 0 {
            return Err((io::Error::last_os_error(), tls));
        }
        // The set owns the fd from here: closed by `expire`, `close_all` or drop,
        // or handed out again by `take_ready`.
        let fd = fd.into_raw_fd();
        self.conns.borrow_mut().insert(
            fd,
            Slot {
                deadline,
                tcp,
                tls,
                peer: peer.addr,
                dest: peer.dest,
            },
        );
        Ok(())
    }

    /// Resolves when some parked connection may have something to read.
    pub async fn ready(&self) -> io::Result<()> {
        self.ep.readable(false).await
    }

    /// Take out the connections that became readable (a request, or EOF).
    pub fn take_ready(&self, out: &mut Vec<Parked>) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: the buffer holds BATCH events; timeout 0 never blocks.
            let n =
                unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), BATCH as i32, 0) };
            if n <= 0 {
                return;
            }
            let mut conns = self.conns.borrow_mut();
            for ev in &evs[..n as usize] {
                let fd = ev.u64 as RawFd;
                if let Some(slot) = conns.remove(&fd) {
                    // SAFETY: plain syscall; the fd is open and owned by the set.
                    unsafe {
                        libc::epoll_ctl(
                            self.ep.as_raw_fd(),
                            libc::EPOLL_CTL_DEL,
                            fd,
                            std::ptr::null_mut(),
                        )
                    };
                    // SAFETY: the set owned `fd`; ownership moves to the caller.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    // Still connected (getpeername) and known by its address.
                    let connected = !slot.tcp || peer_addr(&fd).is_some();
                    let peer = Peer {
                        addr: slot.peer.filter(|_| connected),
                        dest: slot.dest,
                    };
                    out.push(Parked {
                        fd,
                        peer,
                        tcp: slot.tcp,
                        tls: slot.tls,
                    });
                }
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }

    /// Close the connections whose IdleTimeout passed; returns how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut n = 0;
        let ep = self.ep.as_raw_fd();
        self.conns.borrow_mut().retain(|fd, slot| {
            let keep = slot.deadline > now_ms;
            if !keep {
                n += 1;
                if let Some(tls) = &slot.tls {
                    tls.close_notify_on(*fd);
                }
                // Explicitly: closing leaves the set only once no other fd shares
                // the socket, and the driver may still hold the original briefly.
                // SAFETY: plain syscalls on an fd this set owns, closed once.
                unsafe {
                    libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, *fd, std::ptr::null_mut());
                    libc::close(*fd);
                }
            }
            keep
        });
        n
    }

    /// Close up to `n` parked connections, oldest first, to make room for new ones when the
    /// process is at `GlobalMaxConnections` (nginx drains its reusable
    /// connections the same way); returns how many.
    pub fn close_some(&self, n: usize) -> usize {
        let ep = self.ep.as_raw_fd();
        let mut conns = self.conns.borrow_mut();
        // Oldest first: the earliest IdleTimeout deadline was parked first.
        let mut by_age: Vec<(u64, RawFd)> = conns.iter().map(|(fd, s)| (s.deadline, *fd)).collect();
        if by_age.len() > n {
            by_age.select_nth_unstable(n);
            by_age.truncate(n);
        }
        let victims: Vec<RawFd> = by_age.into_iter().map(|(_, fd)| fd).collect();
        for fd in &victims {
            if let Some(slot) = conns.remove(fd) {
                if let Some(tls) = &slot.tls {
                    tls.close_notify_on(*fd);
                }
                // DEL first, as in `expire`: the driver may still hold the original fd.
                // SAFETY: the set owned `fd`; closed once.
                unsafe {
                    libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, *fd, std::ptr::null_mut());
                    libc::close(*fd);
                }
            }
        }
        victims.len()
    }

    /// Close every parked connection (shutdown); returns how many.
    pub fn close_all(&self) -> usize {
        let ep = self.ep.as_raw_fd();
        let mut conns = self.conns.borrow_mut();
        let n = conns.len();
        for fd in conns.drain().map(|(fd, _)| fd) {
            // DEL first, as in `expire`: the driver may still hold the original fd.
            // SAFETY: the set owns `fd`; closed once.
            unsafe {
                libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
                libc::close(fd);
            }
        }
        n
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// The client's address, as accept(2) gave it.
fn peer_addr(fd: &OwnedFd) -> Option<std::net::SocketAddr> {
    let sock = socket2::SockRef::from(fd);
    sock.peer_addr().ok().and_then(|a| a.as_socket())
}
