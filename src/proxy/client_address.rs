//! Who the client is (SPEC section 10): the PROXY protocol header a `proxy`
//! listener requires, and `TrustedProxies`' reading of `X-Forwarded-For`.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::Cidr;
use crate::http::RequestHead;
use crate::net::listen::Peer;
use crate::net::proxy_protocol::{self, Parse};
use crate::net::{io as nio, Stream};

/// Read the PROXY protocol header that must start the connection, within
/// `timeout`; the client address it carries (or the peer's, for a `LOCAL` or
/// `UNKNOWN` header). `None`: no valid header; the caller closes without a word.
///
/// The header is peeked, then exactly its bytes are consumed, so what follows
/// (a request, a TLS ClientHello) stays in the socket for the next step.
pub async fn accept(client: &Stream, peer: Peer, timeout: Duration) -> Option<Peer> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; proxy_protocol::MAX_LEN];
    let mut have = 0;
    loop {
        match peek(client, &mut buf) {
            Ok(0) => return None,
            Ok(n) if n > have => {
                have = n;
                match proxy_protocol::parse(&buf[..n]) {
                    Ok(Parse::Done(h)) => {
                        if consume(client, h.len).is_err() {
                            return None;
                        }
                        return Some(match h.source {
                            Some(addr) => Peer {
                                addr: Some(addr),
                                dest: h.dest,
                            },
                            None => peer,
                        });
                    }
                    Ok(Parse::Incomplete) if n < buf.len() => {}
                    Ok(Parse::Incomplete) => return None,
                    Err(e) => {
                        crate::debug!("PROXY header from {:?} refused: {e}", peer.addr);
                        return None;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        // More bytes may come: wait (peeked bytes do not clear readiness, so a
        // short pause, not a readiness wait, when nothing new arrived).
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if have == 0 {
            if nio::readable(client, left).await.is_err() {
                return None;
            }
        } else {
            monoio::time::sleep(left.min(Duration::from_millis(5))).await;
        }
    }
}

fn peek(s: &Stream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a buffer we own, of its length.
    let n = unsafe {
        libc::recv(
            s.fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Take `len` bytes already peeked (they are in the socket buffer).
fn consume(s: &Stream, len: usize) -> io::Result<()> {
    let mut scratch = [0u8; 512];
    let mut left = len;
    while left > 0 {
        let want = left.min(scratch.len());
        // SAFETY: recv into a buffer we own, at most its length.
        let n = unsafe {
            libc::recv(
                s.fd(),
                scratch.as_mut_ptr().cast(),
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return Err(io::Error::last_os_error());
        }
        left -= n as usize;
    }
    Ok(())
}

/// `TrustedProxies`: when the peer is trusted, the client is the right-most
/// address of `X-Forwarded-For` that is not itself trusted (the left-most when
/// all are); otherwise the peer. nginx's `real_ip_recursive on`.
pub fn trusted_client(
    trusted: &[Cidr],
    peer: Option<IpAddr>,
    buf: &[u8],
    head: &RequestHead,
) -> Option<IpAddr> {
    let ip = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(ip) || !head.omit.scan {
        return Some(ip);
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for h in head.headers(buf) {
        if h.name.eq_ignore_ascii_case(b"x-forwarded-for") {
            for item in h.value.split(|&b| b == b',') {
                let t = String::from_utf8_lossy(item.trim_ascii()).into_owned();
                // A bad item ends the trust: nothing left of it can be believed.
                match t.parse::<IpAddr>() {
                    Ok(a) => chain.push(a),
                    Err(_) => chain.clear(),
                }
            }
        }
    }
    let mut client = ip;
    for a in chain.iter().rev() {
        client = *a;
        if !is_trusted(*a) {
            break;
        }
    }
    Some(client)
}

/// The PROXY protocol header `SendProxy` writes first on a backend connection:
/// the client's address, and the local address it connected to. A client with
/// no address (a unix socket) is sent as `UNKNOWN` (v1) or `LOCAL` (v2).
pub fn send_proxy_header(
    version: crate::config::ProxyVersion,
    client: Peer,
    client_stream: &Stream,
    out: &mut Vec<u8>,
) {
    use crate::config::ProxyVersion;
    // A relayed header keeps the destination the one in front was told.
    let local = client.dest.or_else(|| {
        socket2::SockRef::from(&FdRef(client_stream.fd()))
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
    });
    match (version, client.addr, local) {
        (ProxyVersion::V1, Some(src), Some(dst)) => proxy_protocol::encode_v1(src, dst, out),
        (ProxyVersion::V2, Some(src), Some(dst)) => proxy_protocol::encode_v2(src, dst, out),
        (ProxyVersion::V1, _, _) => out.extend_from_slice(proxy_protocol::V1_UNKNOWN),
        (ProxyVersion::V2, _, _) => out.extend_from_slice(&proxy_protocol::V2_LOCAL),
    }
}

/// A borrowed fd for `socket2::SockRef` (which wants `AsFd`).
struct FdRef(std::os::fd::RawFd);

impl std::os::fd::AsFd for FdRef {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the caller's stream keeps the fd open while this lives.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}
