//! A connected socket, TCP or unix, registered with the worker's monoio driver,
//! or a TLS session over one: the data path reads and writes all three through
//! `net::io`, and only asks `can_splice` where the kernel would move the bytes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use monoio::net::{TcpStream, UnixStream};

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Boxed: a TLS session is ~1 KB of state, and most connections are plain.
    Tls(Box<super::tls::TlsStream>),
}

impl Stream {
    /// Wrap a nonblocking connected socket fd. `tcp` says which kind it is.
    pub fn from_fd(fd: OwnedFd, tcp: bool) -> io::Result<Stream> {
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: `raw` was an OwnedFd we just released; the std wrapper takes it over.
        if tcp {
            let s = unsafe { std::net::TcpStream::from_raw_fd(raw) };
            TcpStream::from_std(s).map(Stream::Tcp)
        } else {
            let s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(raw) };
            UnixStream::from_std(s).map(Stream::Unix)
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.sock.fd(),
        }
    }

    pub fn is_tcp(&self) -> bool {
        match self {
            Stream::Tcp(_) => true,
            Stream::Unix(_) => false,
            Stream::Tls(t) => t.sock.is_tcp(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The kernel can move this stream's bytes (splice): not through TLS, whose
    /// records are made in userspace (no kTLS on this kernel, see TLS.md).
    pub fn can_splice(&self) -> bool {
        !self.is_tls()
    }

    /// The socket and, for TLS, the session apart (to park an idle connection,
    /// which keeps only its fd and its session).
    pub fn split_session(self) -> (Stream, Option<Box<super::tls::TlsSession>>) {
        match self {
            Stream::Tls(t) => {
                let (sock, session) = t.into_parts();
                (sock, Some(session))
            }
            plain => (plain, None),
        }
    }

    /// Undo `split_session`.
    pub fn rejoin(sock: Stream, session: Option<Box<super::tls::TlsSession>>) -> Stream {
        match session {
            Some(s) => super::tls::TlsStream::resume(sock, s),
            None => sock,
        }
    }

    /// The name a backend TLS session was opened for; `None` for plain sockets.
    pub fn backend_name(&self) -> Option<&rustls::pki_types::ServerName<'static>> {
        match self {
            Stream::Tls(t) => t.server_name.as_ref(),
            _ => None,
        }
    }

    /// The subject of the client's verified TLS certificate (RFC 4514).
    pub fn client_subject(&self) -> Option<&str> {
        match self {
            Stream::Tls(t) => t.client_subject.as_deref(),
            _ => None,
        }
    }

    /// Wait until a read would not block. Cancellation-safe: dropping it loses nothing.
    pub async fn readable(&self) -> io::Result<()> {
        // relaxed=false: we do the I/O ourselves, outside monoio, so its cached
        // readiness state on the legacy driver is not to be trusted.
        // TLS: decrypted bytes already held are readable now, whatever the socket.
        let plain = match self {
            Stream::Tls(t) if t.has_buffered() => return Ok(()),
            Stream::Tls(t) => &t.sock,
            s => s,
        };
        match plain {
            Stream::Tcp(s) => s.readable(false).await,
            Stream::Unix(s) => s.readable(false).await,
            Stream::Tls(_) => Err(io::Error::other("TLS inside TLS")),
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        let plain = match self {
            Stream::Tls(t) => &t.sock,
            s => s,
        };
        match plain {
            Stream::Tcp(s) => s.writable(false).await,
            Stream::Unix(s) => s.writable(false).await,
            Stream::Tls(_) => Err(io::Error::other("TLS inside TLS")),
        }
    }

    pub fn shutdown_write(&self) {
        if let Stream::Tls(t) = self {
            t.close_notify();
        }
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
    }

    /// Close with RST instead of FIN: for a backend connection that is in an unknown
    /// state, so the backend does not keep processing a request nobody waits for.
    pub fn set_linger_zero(&self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid pointer and size for SO_LINGER.
        unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }

    /// True when the peer has closed or sent something unexpected: a pooled idle
    /// backend connection in this state must not carry a request.
    pub fn is_stale(&self) -> bool {
        if let Stream::Tls(t) = self {
            return t.is_stale();
        }
        let mut b = [0u8; 1];
        // SAFETY: 1-byte buffer we own; MSG_PEEK leaves the data in the socket.
        let n = unsafe {
            libc::recv(
                self.fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
        } else {
            // 0: FIN; >0: bytes nobody asked for.
            true
        }
    }
}
