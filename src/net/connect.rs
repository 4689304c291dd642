//! Nonblocking connect to a backend, bounded by `ConnectTimeout`.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use super::Stream;
use crate::config::Address;

/// A connect that failed for a reason of this host, not of the server (out of
/// fds, sockets, memory or local ports): it must not count against the server's
/// availability, or a busy proxy would take healthy servers offline.
pub fn local_failure(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Connect to a backend as its `ServerList` entry says: plain, or over TLS (the
/// handshake within the same `timeout`; a certificate that does not verify is a
/// failed connect).
pub async fn connect_server(
    server: &crate::config::Server,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> io::Result<Stream> {
    let started = std::time::Instant::now();
    let sock = connect(&server.addr, timeout).await?;
    match (&server.tls, tls) {
        (Some(name), Some(config)) => {
            let left = timeout.saturating_sub(started.elapsed());
            super::tls::connect(sock, config.clone(), name.clone(), left).await
        }
        _ => Ok(sock),
    }
}

pub async fn connect(addr: &Address, timeout: Duration) -> io::Result<Stream> {
    let (domain, sockaddr, tcp) = match addr {
        Address::Inet(a) => (Domain::for_address(*a), SockAddr::from(*a), true),
        Address::Unix(p) => (Domain::UNIX, SockAddr::unix(p)?, false),
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    if tcp {
        socket.set_nodelay(true)?;
    }
    let pending = match socket.connect(&sockaddr) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        // A unix socket whose backlog is full says EAGAIN: treat as a failed connect,
        // like nginx, rather than waiting.
        Err(e) => return Err(e),
    };
    let fd: OwnedFd = socket.into();
    let stream = Stream::from_fd(fd, tcp)?;
    if pending {
        match monoio::time::timeout(timeout, stream.writable()).await {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            Ok(r) => r?,
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid out-pointers for an int-sized socket option.
        let rc = unsafe {
            libc::getsockopt(
                stream.fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_failures_are_not_the_servers() {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(local_failure(&io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(
                !local_failure(&io::Error::from_raw_os_error(code)),
                "{code}"
            );
        }
        assert!(!local_failure(&io::Error::other("certificate")));
    }
}
