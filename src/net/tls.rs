//! TLS over the readiness-driven socket layer: rustls' `read_tls`/`write_tls` over
//! nonblocking recv/send, waiting on the socket's readiness when they would block.
//!
//! Written here rather than taken from monoio-rustls: that crate reads through
//! io_uring read ops, and a timeout that drops one loses the bytes the kernel
//! already read (../shared/MONOIO.md); its safe mode also leaves its buffer taken
//! when such a read is dropped. Here, as for plain sockets, every wait is a
//! readiness wait, so every timeout stays a timeout that loses nothing.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use rustls::{ClientConfig, ClientConnection, Connection, HandshakeKind};

use super::Stream;
use crate::tls::Termination;

/// A TLS session on a connected socket. Lives in `Stream::Tls`, so the data path
/// reads and writes it through `net::io` like any socket.
pub struct TlsStream {
    pub(super) sock: Stream,
    session: TlsSession,
}

impl std::ops::Deref for TlsStream {
    type Target = TlsSession;

    fn deref(&self) -> &TlsSession {
        &self.session
    }
}

/// The session without its socket: what a parked idle TLS connection keeps.
pub struct TlsSession {
    conn: RefCell<Connection>,
    /// Decrypted bytes rustls holds that nobody read yet: a readiness wait must
    /// not sleep on the socket while they are there (pipelined requests).
    plaintext: Cell<usize>,
    /// The peer sent close_notify or the socket reached EOF.
    eof: Cell<bool>,
    /// Our close_notify is queued (sent once).
    closed: Cell<bool>,
    /// A verified client certificate's subject (RFC 4514), for
    /// `X-Client-Cert-Subject`.
    pub client_subject: Option<Box<str>>,
    /// A backend session: the name it was opened for (SNI), so the pool never
    /// hands it to a server of another name on the same address.
    pub server_name: Option<ServerName<'static>>,
}

/// The socket as rustls' `io::Read`/`io::Write`: one nonblocking syscall each.
struct SockIo(std::os::fd::RawFd);

impl Read for SockIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and recv only
        // writes initialised bytes into it.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        super::io::recv(self.0, buf)
    }
}

impl Write for SockIo {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        super::io::send(self.0, data)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // One record (a response that fits in 16 KiB) is one buffer: send(2), whose
        // kernel path is shorter than sendmsg's. Several go out in one sendmsg.
        if let [one] = bufs {
            return super::io::send(self.0, one);
        }
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(1024) as _;
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
        super::io::retry_eintr(|| unsafe { libc::sendmsg(self.0, &msg, libc::MSG_NOSIGNAL) })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Wait for readiness until `deadline`; past it, TimedOut.
async fn wait(sock: &Stream, write: bool, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if write {
        super::io::writable(sock, left).await
    } else {
        super::io::readable(sock, left).await
    }
}

/// Send what rustls has queued until it is all out, or an error (alerts on a
/// failed handshake are sent this way, best effort).
async fn flush_conn(sock: &Stream, conn: &mut Connection, deadline: Instant) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut SockIo(sock.fd())) {
            Ok(_) => {}
            Err(e) if would_block(&e) => wait(sock, true, deadline).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Run a handshake to its end (both sides), within `deadline`.
async fn handshake(sock: &Stream, conn: &mut Connection, deadline: Instant) -> io::Result<()> {
    loop {
        flush_conn(sock, conn, deadline).await?;
        if !conn.is_handshaking() {
            return Ok(());
        }
        match conn.read_tls(&mut SockIo(sock.fd())) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ))
            }
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // The alert rustls queued tells the peer why; best effort.
                    let _ = conn.write_tls(&mut SockIo(sock.fd()));
                    return Err(tls_error(e));
                }
            }
            Err(e) if would_block(&e) => wait(sock, false, deadline).await?,
            Err(e) => return Err(e),
        }
    }
}

/// What a finished server handshake was, for the statistics.
pub enum Handshake {
    Full,
    Resumed,
}

/// Terminate TLS on an accepted socket: read the ClientHello, choose the
/// certificate (SNI) and ALPN, finish the handshake within `limit` of now.
/// Anything that is not a ClientHello (a plain-HTTP client, garbage) fails at its
/// first bytes, so such a client is closed at once.
pub async fn accept(
    sock: Stream,
    term: &Termination,
    http: bool,
    limit: Duration,
) -> io::Result<(Stream, Handshake)> {
    let deadline = Instant::now() + limit;
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match acceptor.read_tls(&mut SockIo(sock.fd())) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a ClientHello",
                ))
            }
            Ok(_) => {}
            Err(e) if would_block(&e) => {
                wait(&sock, false, deadline).await?;
                continue;
            }
            Err(e) => return Err(e),
        }
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => {}
            Err((e, mut alert)) => {
                let _ = alert.write(&mut SockIo(sock.fd()));
                return Err(tls_error(e));
            }
        }
    };
    let config = term.config_for(http, &accepted.client_hello());
    let server = match accepted.into_connection(config) {
        Ok(c) => c,
        Err((e, mut alert)) => {
            let _ = alert.write(&mut SockIo(sock.fd()));
            return Err(tls_error(e));
        }
    };
    let mut conn = Connection::Server(server);
    handshake(&sock, &mut conn, deadline).await?;
    let kind = match conn.handshake_kind() {
        Some(HandshakeKind::Resumed) => Handshake::Resumed,
        _ => Handshake::Full,
    };
    let client_subject = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::certificate::subject_rfc4514(c.as_ref()))
        .map(String::into_boxed_str);
    Ok((TlsStream::wrap(sock, conn, client_subject, None), kind))
}

/// Speak TLS to a backend on a connected socket; a certificate that does not
/// verify is an error (a failed connect, for availability and failover).
pub async fn connect(
    sock: Stream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    limit: Duration,
) -> io::Result<Stream> {
    let deadline = Instant::now() + limit;
    let client = ClientConnection::new(config, name.clone()).map_err(tls_error)?;
    let mut conn = Connection::Client(client);
    handshake(&sock, &mut conn, deadline).await?;
    Ok(TlsStream::wrap(sock, conn, None, Some(name)))
}

impl TlsStream {
    fn wrap(
        sock: Stream,
        conn: Connection,
        client_subject: Option<Box<str>>,
        server_name: Option<ServerName<'static>>,
    ) -> Stream {
        let t = TlsStream {
            sock,
            session: TlsSession {
                conn: RefCell::new(conn),
                plaintext: Cell::new(0),
                eof: Cell::new(false),
                closed: Cell::new(false),
                client_subject,
                server_name,
            },
        };
        // Early data of the peer (a request sent with its Finished) may be decrypted
        // already.
        t.refresh();
        Stream::Tls(Box::new(t))
    }

    /// Take the session off its socket (to park an idle connection): the
    /// connection goes on, so no close_notify.
    pub fn into_parts(self) -> (Stream, Box<TlsSession>) {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: each field is read exactly once and `me` is never used or dropped
        // again, so nothing is duplicated or leaked.
        unsafe {
            (
                std::ptr::read(&me.sock),
                Box::new(std::ptr::read(&me.session)),
            )
        }
    }

    /// Put a parked session back on its socket.
    pub fn resume(sock: Stream, session: Box<TlsSession>) -> Stream {
        Stream::Tls(Box::new(TlsStream {
            sock,
            session: *session,
        }))
    }
}

impl TlsSession {
    /// Re-read rustls' state after new records were processed.
    fn refresh(&self) {
        if let Ok(st) = self.conn.borrow_mut().process_new_packets() {
            self.plaintext.set(st.plaintext_bytes_to_read());
            if st.peer_has_closed() {
                self.eof.set(true);
            }
        }
    }

    /// True when a read would return at once (plaintext, or EOF) without the socket.
    pub fn has_buffered(&self) -> bool {
        self.plaintext.get() > 0 || self.eof.get()
    }

    pub fn wants_write(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Queue close_notify once and send what the socket `fd` takes now (RFC 8446
    /// 6.1: without it a client cannot tell a close-delimited body from a cut one).
    /// Also for the bare fd of a parked connection about to be closed.
    pub fn close_notify_on(&self, fd: std::os::fd::RawFd) {
        let mut conn = self.conn.borrow_mut();
        if !self.closed.replace(true) {
            conn.send_close_notify();
        }
        while conn.wants_write() {
            if conn.write_tls(&mut SockIo(fd)).is_err() {
                break;
            }
        }
    }
}

impl Drop for TlsStream {
    /// Every TLS connection simian closes ends with close_notify.
    fn drop(&mut self) {
        self.close_notify();
    }
}

impl TlsStream {
    /// Like `net::io::try_read`: decrypted bytes appended to `buf`, at most `max`;
    /// Ok(0) at EOF, WouldBlock when rustls has nothing and the socket is dry.
    pub fn try_read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        loop {
            let avail = self.plaintext.get();
            if avail > 0 {
                let n = avail.min(max.max(1));
                let len = buf.len();
                buf.resize(len + n, 0);
                let got = conn.reader().read(&mut buf[len..])?;
                buf.truncate(len + got);
                self.plaintext.set(avail - got);
                return Ok(got);
            }
            if self.eof.get() {
                return Ok(0);
            }
            // Alerts or a key update rustls queued go out before we wait on reads.
            if conn.wants_write() {
                match conn.write_tls(&mut SockIo(self.sock.fd())) {
                    Err(e) if !would_block(&e) => return Err(e),
                    _ => {}
                }
            }
            match conn.read_tls(&mut SockIo(self.sock.fd())) {
                Ok(0) => {
                    // EOF without close_notify: a truncation the HTTP framing
                    // detects where it matters (a body cut short).
                    self.eof.set(true);
                    return Ok(0);
                }
                Ok(_) => match conn.process_new_packets() {
                    Ok(st) => {
                        self.plaintext.set(st.plaintext_bytes_to_read());
                        if st.peer_has_closed() {
                            self.eof.set(true);
                        }
                    }
                    Err(e) => {
                        let _ = conn.write_tls(&mut SockIo(self.sock.fd()));
                        return Err(tls_error(e));
                    }
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Like `net::io::try_write`: the bytes are taken into rustls (encrypted) and
    /// sent as far as the socket takes them; WouldBlock when rustls' buffer is full
    /// and the socket is too. `flush` must follow before waiting for an answer.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        let mut blocked = false;
        while conn.wants_write() {
            match conn.write_tls(&mut SockIo(self.sock.fd())) {
                Ok(_) => {}
                Err(e) if would_block(&e) => {
                    blocked = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let n = conn.writer().write(data)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !blocked {
            while conn.wants_write() {
                match conn.write_tls(&mut SockIo(self.sock.fd())) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    /// Send everything rustls holds, waiting for the socket at most `t` each time.
    pub async fn flush(&self, t: Duration) -> io::Result<()> {
        loop {
            let r = {
                let mut conn = self.conn.borrow_mut();
                if !conn.wants_write() {
                    return Ok(());
                }
                conn.write_tls(&mut SockIo(self.sock.fd()))
            };
            match r {
                Ok(_) => {}
                Err(e) if would_block(&e) => super::io::writable(&self.sock, t).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// A pooled backend connection is stale when the peer closed it or sent
    /// application data nobody asked for; handshake messages sent after the
    /// handshake (TLS 1.3 session tickets) are taken in and do not count.
    pub fn is_stale(&self) -> bool {
        if self.has_buffered() {
            return true;
        }
        let mut conn = self.conn.borrow_mut();
        loop {
            match conn.read_tls(&mut SockIo(self.sock.fd())) {
                Ok(0) => return true,
                Ok(_) => match conn.process_new_packets() {
                    Ok(st) if st.plaintext_bytes_to_read() > 0 || st.peer_has_closed() => {
                        return true
                    }
                    Ok(_) => {}
                    Err(_) => return true,
                },
                Err(e) => return !would_block(&e),
            }
        }
    }

    /// Queue close_notify and send it if the socket takes it now (best effort: the
    /// FIN or RST that follows ends the connection anyway).
    pub fn close_notify(&self) {
        self.session.close_notify_on(self.sock.fd());
    }
}
