//! Listening sockets: one SO_REUSEPORT socket per worker and TCP address (the kernel
//! spreads connections across workers), one shared socket per unix path.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Socket, Type};

use super::Stream;
use crate::config::Address;

const BACKLOG: i32 = 4096;

/// A bound, listening, nonblocking socket.
pub struct Listener {
    pub addr: Address,
    fd: OwnedFd,
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// `None` for unix-socket clients.
    pub addr: Option<SocketAddr>,
    /// The address the client connected to, when a PROXY protocol header said
    /// it (`None`: this socket's own local address).
    pub dest: Option<SocketAddr>,
}

impl Peer {
    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.map(|a| match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        })
    }
    pub fn port(&self) -> u16 {
        self.addr.map_or(0, |a| a.port())
    }
}

/// Fail early and clearly when someone else holds a TCP address: with SO_REUSEPORT
/// a second process of the same user would otherwise bind it silently and steal
/// half the connections.
pub fn probe_free(addr: &Address) -> io::Result<()> {
    if let Address::Inet(a) = addr {
        let s = Socket::new(Domain::for_address(*a), Type::STREAM.cloexec(), None)?;
        // As the real bind does: connections in TIME_WAIT from a previous run must
        // not make a restart fail; only a live listener should.
        s.set_reuse_address(true)?;
        if a.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&(*a).into())?;
    }
    Ok(())
}

impl Listener {
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        let socket = match addr {
            Address::Inet(a) => {
                let s = Socket::new(
                    Domain::for_address(*a),
                    Type::STREAM.nonblocking().cloexec(),
                    None,
                )?;
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                if a.is_ipv6() {
                    // `[::]:80` and `0.0.0.0:80` are two distinct listeners here.
                    s.set_only_v6(true)?;
                }
                s.set_nodelay(true)?;
                s.bind(&(*a).into())?;
                s
            }
            Address::Unix(p) => {
                // A stale socket file from a previous run would make bind fail;
                // one a running process still accepts on is not ours to take.
                if let Ok(meta) = std::fs::symlink_metadata(p) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        if std::os::unix::net::UnixStream::connect(p).is_ok() {
                            return Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                "a running process is listening on this socket",
                            ));
                        }
                        let _ = std::fs::remove_file(p);
                    }
                }
                let s = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
                s.bind(&socket2::SockAddr::unix(p)?)?;
                s
            }
        };
        socket.listen(BACKLOG)?;
        Ok(Listener {
            addr: addr.clone(),
            fd: socket.into(),
        })
    }

    /// HTTP listeners: let the kernel hand over a connection only once its first
    /// bytes are in (TCP_DEFER_ACCEPT, as HAProxy's `defer-accept`), so the first
    /// read of a new connection needs no readiness round trip. Not for tcp
    /// entries: a server-speaks-first protocol would stall.
    pub fn defer_accept(&self) {
        if matches!(self.addr, Address::Inet(_)) {
            let secs: libc::c_int = 1;
            // SAFETY: valid pointer and size for an int socket option.
            unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    &secs as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
    }

    /// A listening socket received from the process this one replaces (SIGUSR2):
    /// its address is what the kernel says it is bound to.
    pub fn adopt(fd: OwnedFd) -> io::Result<Listener> {
        let s = socket2::SockRef::from(&fd);
        if !s.is_listener()? {
            return Err(io::Error::other("not a listening socket"));
        }
        let local = s.local_addr()?;
        let addr = match (local.as_socket(), local.as_pathname()) {
            (Some(a), _) => Address::Inet(a),
            (None, Some(p)) => Address::Unix(p.to_path_buf()),
            _ => return Err(io::Error::other("neither a TCP nor a named unix socket")),
        };
        s.set_cloexec(true)?;
        s.set_nonblocking(true)?;
        Ok(Listener { addr, fd })
    }

    /// The descriptor, to hand over to a new process.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Another handle on the same socket (unix listeners are shared by workers).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            addr: self.addr.clone(),
            fd: self.fd.try_clone()?,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        let s = socket2::SockRef::from(&self.fd);
        s.local_addr().ok().and_then(|a| a.as_socket())
    }

    /// Register with the current worker's driver, for readiness.
    pub fn register(self) -> io::Result<Registered> {
        let tcp = matches!(self.addr, Address::Inet(_));
        let raw = std::os::fd::IntoRawFd::into_raw_fd(self.fd);
        // SAFETY: `raw` came from an OwnedFd we own; the std type takes it over.
        let io = if tcp {
            let l = unsafe { std::net::TcpListener::from_raw_fd(raw) };
            ListenIo::Tcp(monoio::net::TcpListener::from_std(l)?)
        } else {
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(raw) };
            ListenIo::Unix(monoio::net::UnixListener::from_std(l)?)
        };
        Ok(Registered {
            addr: self.addr,
            io,
        })
    }
}

enum ListenIo {
    Tcp(monoio::net::TcpListener),
    Unix(monoio::net::UnixListener),
}

/// A listener registered with a worker's driver.
pub struct Registered {
    pub addr: Address,
    io: ListenIo,
}

impl Registered {
    pub fn fd(&self) -> i32 {
        match &self.io {
            ListenIo::Tcp(l) => l.as_raw_fd(),
            ListenIo::Unix(l) => l.as_raw_fd(),
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        match &self.io {
            ListenIo::Tcp(l) => l.readable(false).await,
            ListenIo::Unix(l) => l.readable(false).await,
        }
    }

    /// One nonblocking accept. WouldBlock when the queue is empty.
    pub fn try_accept(&self) -> io::Result<(Stream, Peer)> {
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid out-pointers; accept4 returns a new fd or -1.
        let fd = unsafe {
            libc::accept4(
                self.fd(),
                &mut storage as *mut _ as *mut libc::sockaddr,
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept4 succeeded: `fd` is a new open socket we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let tcp = matches!(self.io, ListenIo::Tcp(_));
        let peer = if tcp {
            // TCP_NODELAY is inherited from the listener: no setsockopt per accept.
            // SAFETY: the kernel filled `len` bytes of a sockaddr_storage.
            let sa = unsafe { socket2::SockAddr::new(storage, len) };
            Peer {
                addr: sa.as_socket(),
                dest: None,
            }
        } else {
            Peer {
                addr: None,
                dest: None,
            }
        };
        Ok((Stream::from_fd(owned, tcp)?, peer))
    }
}
