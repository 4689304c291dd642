//! Helpers shared by the integration tests: the proxy under test (the real binary,
//! started with a generated configuration), recording HTTP/1.1 backends, and a raw
//! HTTP client. Everything uses `std::net` and threads, and every blocking call has
//! a timeout so that a misbehaving proxy fails a test instead of hanging it.
//!
//! Large bodies are a deterministic byte pattern with a prime period (see
//! [`pattern`]), checked byte for byte with `memcmp` as they stream: SHA-256 in an
//! unoptimised test build runs at about 13 MB/s, too slow for 64 MiB bodies, while
//! a byte-exact comparison against the generator is both cheaper and stricter.
//! Bodies up to [`KEEP`] bytes are also kept and can be hashed with SHA-256.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod metrics;
pub mod nginx;
pub mod process;
pub mod tls;

/// Default read/write timeout of every test socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Bodies are kept in memory up to this size (larger ones are only checked).
pub const KEEP: usize = 4 << 20;
pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Deterministic body pattern
// ---------------------------------------------------------------------------

/// Period of the pattern: prime, so that a body shifted, truncated or with a
/// duplicated piece of any power-of-two size no longer matches.
const PERIOD: usize = 65521;
/// Largest slice [`pattern`] returns.
pub const MAX_PIECE: usize = 256 * KIB;

fn pattern_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let period: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mut block = Vec::with_capacity(PERIOD + MAX_PIECE);
        while block.len() < PERIOD + MAX_PIECE {
            let n = (PERIOD + MAX_PIECE - block.len()).min(PERIOD);
            block.extend_from_slice(&period[..n]);
        }
        block
    })
}

/// The `len` bytes (at most [`MAX_PIECE`]) of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> &'static [u8] {
    assert!(len <= MAX_PIECE);
    let p = (offset % PERIOD as u64) as usize;
    &pattern_block()[p..p + len]
}

/// The first `len` bytes of the pattern, owned.
pub fn pattern_vec(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(MAX_PIECE);
        v.extend_from_slice(pattern(v.len() as u64, n));
    }
    v
}

/// Write `len` bytes of the pattern, starting at pattern offset `from`.
pub fn write_pattern(w: &mut impl Write, from: u64, len: u64) -> io::Result<()> {
    let mut off = from;
    while off < from + len {
        let n = (from + len - off).min(MAX_PIECE as u64) as usize;
        w.write_all(pattern(off, n))?;
        off += n as u64;
    }
    Ok(())
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Received bodies
// ---------------------------------------------------------------------------

/// A received body: its length, its first [`KEEP`] bytes, and whether it is a
/// prefix of the pattern.
#[derive(Clone, Debug)]
pub struct Body {
    pub len: u64,
    pub bytes: Vec<u8>,
    /// Every byte so far equals the pattern at its offset.
    pub pattern_ok: bool,
}

impl Default for Body {
    fn default() -> Self {
        Body {
            len: 0,
            bytes: Vec::new(),
            pattern_ok: true,
        }
    }
}

impl Body {
    pub fn push(&mut self, data: &[u8]) {
        if self.pattern_ok {
            let mut off = 0;
            while off < data.len() {
                let n = (data.len() - off).min(MAX_PIECE);
                if data[off..off + n] != *pattern(self.len + off as u64, n) {
                    self.pattern_ok = false;
                    break;
                }
                off += n;
            }
        }
        if self.bytes.len() < KEEP {
            let n = (KEEP - self.bytes.len()).min(data.len());
            self.bytes.extend_from_slice(&data[..n]);
        }
        self.len += data.len() as u64;
    }

    /// The body is exactly the first `len` bytes of the pattern.
    pub fn is_pattern(&self, len: u64) -> bool {
        self.pattern_ok && self.len == len
    }

    pub fn complete(&self) -> bool {
        self.len as usize == self.bytes.len()
    }

    /// SHA-256 of the whole body (it must have been kept whole).
    pub fn sha256(&self) -> String {
        assert!(self.complete(), "body of {} bytes not kept whole", self.len);
        sha256_hex(&self.bytes)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

// ---------------------------------------------------------------------------
// Connections and reading HTTP off them
// ---------------------------------------------------------------------------

/// A TCP or unix stream.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub fn set_read_timeout(&self, d: Duration) {
        let _ = match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(d)),
            Conn::Unix(s) => s.set_read_timeout(Some(d)),
        };
    }
    pub fn set_write_timeout(&self, d: Duration) {
        let _ = match self {
            Conn::Tcp(s) => s.set_write_timeout(Some(d)),
            Conn::Unix(s) => s.set_write_timeout(Some(d)),
        };
    }
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(b),
            Conn::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A parsed message head (request or response).
#[derive(Clone, Default)]
pub struct Head {
    /// The start line, without CRLF.
    pub line: String,
    /// Header fields in order, names as received, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The head exactly as received, final CRLF included.
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.raw))
    }
}

impl Head {
    pub fn parse(raw: &[u8]) -> Head {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or("").to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => (n.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        Head {
            line,
            headers,
            raw: raw.to_vec(),
        }
    }

    /// The first value of a header (name case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A comma-separated header contains `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn content_length(&self) -> Option<u64> {
        self.get("content-length").map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        })
    }

    fn chunked(&self) -> bool {
        self.get_all("transfer-encoding")
            .last()
            .is_some_and(|v| v.to_ascii_lowercase().trim_end().ends_with("chunked"))
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A buffered reader over a [`Conn`] that can also record every byte it reads.
pub struct Wire {
    pub conn: Conn,
    buf: Vec<u8>,
    pos: usize,
    scratch: Vec<u8>,
    tap: Option<Arc<Mutex<Vec<u8>>>>,
}

/// Cap on what a tap records per connection.
const TAP_MAX: usize = 2 * MIB;

impl Wire {
    pub fn new(conn: Conn) -> Wire {
        conn.set_read_timeout(IO_TIMEOUT);
        conn.set_write_timeout(IO_TIMEOUT);
        Wire {
            conn,
            buf: Vec::new(),
            pos: 0,
            scratch: vec![0; MAX_PIECE],
            tap: None,
        }
    }

    fn record(&self, data: &[u8]) {
        if let Some(t) = &self.tap {
            let mut t = t.lock().unwrap();
            let n = TAP_MAX.saturating_sub(t.len()).min(data.len());
            t.extend_from_slice(&data[..n]);
        }
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn take_buffered(&mut self) -> Vec<u8> {
        let v = self.buf[self.pos..].to_vec();
        self.buf.clear();
        self.pos = 0;
        v
    }

    /// Read more into the buffer; 0 at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let n = loop {
            match self.conn.read(&mut self.scratch) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        let data = &self.scratch[..n];
        self.record(data);
        self.buf.extend_from_slice(data);
        Ok(n)
    }

    /// Read directly (bypassing the buffer, which must be empty) into scratch.
    fn read_direct(&mut self, max: usize) -> io::Result<usize> {
        let max = max.min(self.scratch.len());
        let n = loop {
            match self.conn.read(&mut self.scratch[..max]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        let data = &self.scratch[..n];
        if let Some(t) = &self.tap {
            let mut t = t.lock().unwrap();
            let k = TAP_MAX.saturating_sub(t.len()).min(n);
            t.extend_from_slice(&data[..k]);
        }
        Ok(n)
    }

    /// A whole head (up to and including the empty line). `None` at EOF before
    /// any byte; an error at EOF inside a head.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut searched: usize = 0;
        loop {
            let avail = &self.buf[self.pos..];
            let from = searched.saturating_sub(3);
            if let Some(i) = avail[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = self.pos + from + i + 4;
                let head = self.buf[self.pos..end].to_vec();
                self.pos = end;
                return Ok(Some(head));
            }
            searched = avail.len();
            if searched > 1 << 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head > 1 MiB"));
            }
            if self.fill()? == 0 {
                return if self.buf.len() == self.pos {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "EOF inside a head: {:?}",
                            String::from_utf8_lossy(&self.buf[self.pos..])
                        ),
                    ))
                };
            }
        }
    }

    /// A CRLF-terminated line, without the CRLF.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > 64 * KIB {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line > 64 KiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Exactly `n` body bytes into `body`.
    pub fn read_exact_into(&mut self, n: u64, body: &mut Body) -> io::Result<()> {
        let mut left = n;
        let k = (self.buf.len() - self.pos).min(left as usize);
        if k > 0 {
            body.push(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            left -= k as u64;
        }
        while left > 0 {
            let got = self.read_direct(left.min(MAX_PIECE as u64) as usize)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {left} of {n} body bytes missing"),
                ));
            }
            let data = std::mem::take(&mut self.scratch);
            body.push(&data[..got]);
            self.scratch = data;
            left -= got as u64;
        }
        Ok(())
    }

    /// A chunked body (strictly framed) into `body`; returns the trailer fields.
    pub fn read_chunked_into(&mut self, body: &mut Body) -> io::Result<Vec<(String, String)>> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        loop {
            let line = self.read_line()?;
            let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "bad chunk size line {:?}",
                        String::from_utf8_lossy(&line)
                    ))
                })?;
            if size == 0 {
                break;
            }
            self.read_exact_into(size, body)?;
            if !self.read_line()?.is_empty() {
                return Err(bad("chunk data not followed by CRLF".into()));
            }
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                return Ok(trailers);
            }
            let l = String::from_utf8_lossy(&line);
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| bad(format!("bad trailer {l:?}")))?;
            trailers.push((n.to_string(), v.trim().to_string()));
        }
    }

    /// Everything until EOF into `body`.
    pub fn read_to_eof_into(&mut self, body: &mut Body) -> io::Result<()> {
        if self.pos < self.buf.len() {
            body.push(&self.buf[self.pos..]);
        }
        self.buf.clear();
        self.pos = 0;
        loop {
            let got = self.read_direct(MAX_PIECE)?;
            if got == 0 {
                return Ok(());
            }
            let data = std::mem::take(&mut self.scratch);
            body.push(&data[..got]);
            self.scratch = data;
        }
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.write_all(data)
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// How a response body was delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Read until the server closed.
    Close,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub head: Head,
    pub body: Body,
    pub framing: Framing,
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }
    pub fn text(&self) -> String {
        self.body.text()
    }
    /// The response says the connection stays open.
    pub fn keep_alive(&self) -> bool {
        !self.head.has_token("connection", "close") && self.framing != Framing::Close
    }
}

/// A raw HTTP/1.x client.
pub struct Client {
    pub wire: Wire,
}

impl Client {
    pub fn tcp(addr: impl ToSocketAddrs) -> Client {
        let addr: SocketAddr = addr.to_socket_addrs().unwrap().next().unwrap();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        Client {
            wire: Wire::new(Conn::Tcp(s)),
        }
    }

    pub fn unix(path: impl AsRef<Path>) -> Client {
        let p = path.as_ref();
        let s = UnixStream::connect(p).unwrap_or_else(|e| panic!("connect to {p:?}: {e}"));
        Client {
            wire: Wire::new(Conn::Unix(s)),
        }
    }

    pub fn set_timeout(&self, d: Duration) {
        self.wire.conn.set_read_timeout(d);
    }

    pub fn send(&mut self, data: &[u8]) {
        self.wire
            .write_all(data)
            .unwrap_or_else(|e| panic!("client write: {e}"));
    }

    pub fn try_send(&mut self, data: &[u8]) -> io::Result<()> {
        self.wire.write_all(data)
    }

    /// Send `len` bytes of the pattern.
    pub fn send_pattern(&mut self, len: u64) {
        write_pattern(&mut self.wire.conn, 0, len).unwrap_or_else(|e| panic!("client write: {e}"));
    }

    /// `GET path HTTP/1.1` with `Host: test` and the extra header lines given
    /// (each ending in CRLF), then its response.
    pub fn get_with(&mut self, path: &str, extra: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes());
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.get_with(path, "")
    }

    /// Send raw request bytes and read one response.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.read_response()
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// The response to a HEAD request (no body whatever the headers say).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    pub fn try_read_response(&mut self, to_head: bool) -> io::Result<Response> {
        let raw = self.wire.read_head()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let head = Head::parse(&raw);
        let status: u16 = head
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {:?}", head.line),
                )
            })?;
        let mut body = Body::default();
        let mut trailers = Vec::new();
        let framing = if to_head || status < 200 || status == 204 || status == 304 {
            Framing::None
        } else if head.chunked() {
            trailers = self.wire.read_chunked_into(&mut body)?;
            Framing::Chunked
        } else if let Some(n) = head.content_length() {
            self.wire.read_exact_into(n, &mut body)?;
            Framing::Length(n)
        } else {
            self.wire.read_to_eof_into(&mut body)?;
            Framing::Close
        };
        Ok(Response {
            status,
            head,
            body,
            framing,
            trailers,
        })
    }

    /// Read until the peer closes (EOF or reset) and return what came, or panic
    /// if it is still open after `within`.
    pub fn expect_closed(&mut self, within: Duration) -> Vec<u8> {
        match self.read_until_close(within) {
            Ok(v) => v,
            Err(v) => panic!(
                "connection still open after {within:?}; received {:?}",
                String::from_utf8_lossy(&v)
            ),
        }
    }

    /// `Ok(bytes)` when the peer closed within `within`, `Err(bytes)` if not.
    pub fn read_until_close(&mut self, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut out = self.wire.take_buffered();
        let mut b = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(out);
            }
            self.wire.conn.set_read_timeout(left);
            match self.wire.conn.read(&mut b) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(out),
                Err(_) => break, // reset: closed too
            }
        }
        self.wire.conn.set_read_timeout(IO_TIMEOUT);
        Ok(out)
    }

    /// Nothing arrives and the connection stays open for `d`.
    pub fn stays_quiet(&mut self, d: Duration) -> bool {
        if !self.wire.buffered().is_empty() {
            return false;
        }
        self.wire.conn.set_read_timeout(d);
        let mut b = [0u8; 1];
        let r = self.wire.conn.read(&mut b);
        self.wire.conn.set_read_timeout(IO_TIMEOUT);
        matches!(r, Err(e) if timed_out(&e))
    }
}

/// Status code of a raw response (first line) or 0.
pub fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// A request as a backend received it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Which accepted connection (0-based, in accept order) carried it.
    pub conn: usize,
    /// Its position on that connection (0-based).
    pub index: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    pub head: Head,
    pub body: Body,
    pub chunked: bool,
    pub trailers: Vec<(String, String)>,
    /// The whole body arrived, well framed.
    pub complete: bool,
}

impl Request {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }
}

/// What a backend answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A response with these headers and body. `Content-Length` is added unless
    /// given, or the status has no body (1xx, 204, 304). To a HEAD request the
    /// head alone is sent.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// These bytes, then the connection goes on.
    Raw(Vec<u8>),
    /// These bytes, then close.
    RawClose(Vec<u8>),
    /// 200 with `Content-Length: n` and n bytes of the pattern.
    Pattern(u64),
    /// 200 chunked: the pattern in chunks of these sizes, then a trailer.
    ChunkedPattern(Vec<usize>),
    /// 200 without length: n bytes of the pattern, then close.
    ClosePattern(u64),
    /// 200 with `Content-Length: n`, n/2 bytes of the pattern, then close.
    DieMidway(u64),
    /// 200 chunked, some chunks, then close without the last chunk.
    DieMidwayChunked,
    /// `101 Switching Protocols`, then echo every byte back until EOF.
    Upgrade,
    /// Never answer; hold the connection until the peer closes it.
    Silent,
    /// These bytes, then hold the connection like `Silent`.
    Stall(Vec<u8>),
    /// These pieces, with this pause before each but the first; then the
    /// connection goes on.
    Trickle(Vec<Vec<u8>>, Duration),
    /// Close without answering.
    Close,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }
    pub fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Full {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }
    /// 200 describing the received body in headers: `X-Body-Len`,
    /// `X-Body-Pattern` (yes/no), `X-Body-Sha256` when kept whole.
    pub fn summary(req: &Request) -> Reply {
        let mut headers = vec![
            ("X-Body-Len".to_string(), req.body.len.to_string()),
            (
                "X-Body-Pattern".to_string(),
                if req.body.pattern_ok { "yes" } else { "no" }.to_string(),
            ),
        ];
        if req.body.complete() {
            headers.push(("X-Body-Sha256".to_string(), req.body.sha256()));
        }
        Reply::Full {
            status: 200,
            headers,
            body: b"summary\n".to_vec(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct Inner {
    handler: Box<Handler>,
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: Mutex<Vec<Request>>,
    raw: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    stop: AtomicBool,
}

enum Where {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// An in-process HTTP/1.1 server that records what it receives.
pub struct Backend {
    at: Where,
    inner: Arc<Inner>,
}

impl Backend {
    /// A backend on 127.0.0.1 (free port).
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Backend {
        Self::start_on("127.0.0.1:0", handler)
    }

    /// A backend on this address (port 0 for a free one).
    pub fn start_on(
        addr: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        let inner = Self::inner(Box::new(handler));
        let i = inner.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    let _ = s.set_nodelay(true);
                    Self::spawn_conn(&i, Conn::Tcp(s));
                }
            }
        });
        Backend {
            at: Where::Tcp(addr),
            inner,
        }
    }

    /// A backend on a unix socket at `path`.
    pub fn start_unix(
        path: impl AsRef<Path>,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let path = path.as_ref().to_path_buf();
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let inner = Self::inner(Box::new(handler));
        let i = inner.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    Self::spawn_conn(&i, Conn::Unix(s));
                }
            }
        });
        Backend {
            at: Where::Unix(path),
            inner,
        }
    }

    /// Answers every request with 200 and this body.
    pub fn fixed(body: &'static str) -> Backend {
        Self::start(move |_| Reply::ok(body))
    }

    /// Answers with [`Reply::summary`].
    pub fn summary() -> Backend {
        Self::start(Reply::summary)
    }

    fn inner(handler: Box<Handler>) -> Arc<Inner> {
        Arc::new(Inner {
            handler,
            accepted: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn spawn_conn(inner: &Arc<Inner>, conn: Conn) {
        let id = inner.accepted.fetch_add(1, Ordering::SeqCst);
        let tap = Arc::new(Mutex::new(Vec::new()));
        inner.raw.lock().unwrap().push(tap.clone());
        let inner = inner.clone();
        thread::spawn(move || {
            let mut wire = Wire::new(conn);
            wire.tap = Some(tap);
            serve(&inner, &mut wire, id);
            wire.conn.shutdown(Shutdown::Both);
            inner.closed.fetch_add(1, Ordering::SeqCst);
        });
    }

    /// The address as `ServerList` takes it.
    pub fn addr(&self) -> String {
        match &self.at {
            Where::Tcp(a) => a.to_string(), // `[::1]:P` for IPv6
            Where::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Wait until the backend has closed `n` connections or `within` passed.
    pub fn wait_closed(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.inner.closed.load(Ordering::SeqCst) < n {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Requests received so far (complete or not), in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }

    pub fn targets(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.target).collect()
    }

    /// Raw bytes received, per connection (each capped at 2 MiB).
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.inner
            .raw
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.lock().unwrap().clone())
            .collect()
    }

    /// Every byte received on any connection contains `needle`.
    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        self.raw()
            .iter()
            .any(|r| r.windows(needle.len()).any(|w| w == needle))
    }

    /// Wait until at least `n` requests arrived or `within` passed; the count.
    pub fn wait_count(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let k = self.request_count();
            if k >= n || Instant::now() >= deadline {
                return k;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until at least `n` requests arrived (or panic after `within`).
    pub fn wait_requests(&self, n: usize, within: Duration) -> Vec<Request> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "backend got {} requests, expected {n}: {r:?}",
                r.len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        match &self.at {
            Where::Tcp(a) => {
                let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
            }
            Where::Unix(p) => {
                let _ = UnixStream::connect(p);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A 127.0.0.1 port that refuses connections for as long as this lives: a
/// socket bound to it that never listens, so no other test can take the port.
pub struct DeadPort {
    fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        use std::os::fd::FromRawFd;
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(raw, &sa as *const _ as *const libc::sockaddr, len);
            assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
            let mut got_len = len;
            let r = libc::getsockname(raw, &mut sa as *mut _ as *mut libc::sockaddr, &mut got_len);
            assert_eq!(r, 0, "getsockname: {}", io::Error::last_os_error());
            DeadPort {
                fd,
                port: u16::from_be(sa.sin_port),
            }
        }
    }

    /// `127.0.0.1:PORT`, as `ServerList` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// One backend connection: read requests, record them, answer.
fn serve(inner: &Inner, wire: &mut Wire, conn: usize) {
    let mut index = 0;
    loop {
        let raw = match wire.read_head() {
            Ok(Some(h)) => h,
            _ => return,
        };
        let head = Head::parse(&raw);
        let mut parts = head.line.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let chunked = head.chunked();
        let cl = head
            .get("content-length")
            .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
        let has_body = chunked || cl.is_some_and(|n| n > 0);
        if has_body && head.has_token("expect", "100-continue") {
            // A test asks for Early Hints before the 100 with this header.
            if head.has("x-test-early-hints") {
                let _ = wire.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
            }
            let _ = wire.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut body = Body::default();
        let mut trailers = Vec::new();
        let framed = if chunked {
            wire.read_chunked_into(&mut body).map(|t| trailers = t)
        } else if let Some(n) = cl {
            if n == u64::MAX {
                Err(io::Error::new(io::ErrorKind::InvalidData, "bad CL"))
            } else {
                wire.read_exact_into(n, &mut body)
            }
        } else {
            Ok(())
        };
        let req = Request {
            conn,
            index,
            method,
            target,
            version,
            head,
            body,
            chunked,
            trailers,
            complete: framed.is_ok(),
        };
        index += 1;
        inner.requests.lock().unwrap().push(req.clone());
        if framed.is_err() {
            return;
        }
        let close_after = req.head.has_token("connection", "close")
            || (req.version == "HTTP/1.0" && !req.head.has_token("connection", "keep-alive"));
        let reply = (inner.handler)(&req);
        match answer(wire, &req, reply) {
            Ok(true) if !close_after => {}
            _ => return,
        }
    }
}

/// Write a reply; `Ok(true)` when the connection may carry another request.
fn answer(wire: &mut Wire, req: &Request, reply: Reply) -> io::Result<bool> {
    let is_head = req.method == "HEAD";
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            let mut framed = false;
            for (n, v) in &headers {
                framed |= n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding");
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            let bodiless = status < 200 || status == 204 || status == 304;
            if !framed && !bodiless {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            out.push_str(&format!("X-Conn: {}\r\n\r\n", req.conn));
            let mut bytes = out.into_bytes();
            if !is_head && !bodiless {
                bytes.extend_from_slice(&body);
            }
            wire.write_all(&bytes)?;
            Ok(true)
        }
        Reply::Raw(b) => wire.write_all(&b).map(|_| true),
        Reply::RawClose(b) => wire.write_all(&b).map(|_| false),
        Reply::Pattern(n) => {
            wire.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nX-Conn: {}\r\n\r\n",
                    req.conn
                )
                .as_bytes(),
            )?;
            if !is_head {
                write_pattern(&mut wire.conn, 0, n)?;
            }
            Ok(true)
        }
        Reply::ChunkedPattern(sizes) => {
            wire.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trail\r\n\r\n",
            )?;
            let mut off = 0u64;
            for s in sizes {
                wire.write_all(format!("{s:x}\r\n").as_bytes())?;
                write_pattern(&mut wire.conn, off, s as u64)?;
                wire.write_all(b"\r\n")?;
                off += s as u64;
            }
            wire.write_all(b"0\r\nX-Trail: end\r\n\r\n")?;
            Ok(true)
        }
        Reply::ClosePattern(n) => {
            wire.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            write_pattern(&mut wire.conn, 0, n)?;
            Ok(false)
        }
        Reply::DieMidway(n) => {
            wire.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())?;
            write_pattern(&mut wire.conn, 0, n / 2)?;
            Ok(false)
        }
        Reply::DieMidwayChunked => {
            wire.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            for i in 0..4u64 {
                wire.write_all(b"1000\r\n")?;
                write_pattern(&mut wire.conn, i * 4096, 4096)?;
                wire.write_all(b"\r\n")?;
            }
            Ok(false)
        }
        Reply::Upgrade => {
            wire.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )?;
            let early = wire.take_buffered();
            wire.write_all(&early)?;
            let mut b = vec![0u8; 64 * KIB];
            loop {
                match wire.conn.read(&mut b) {
                    Ok(0) => break,
                    Ok(n) => {
                        wire.record(&b[..n]);
                        wire.write_all(&b[..n])?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        }
        Reply::Silent => {
            hold(wire);
            Ok(false)
        }
        Reply::Stall(b) => {
            wire.write_all(&b)?;
            hold(wire);
            Ok(false)
        }
        Reply::Trickle(pieces, gap) => {
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    thread::sleep(gap);
                }
                wire.write_all(piece)?;
            }
            Ok(true)
        }
        Reply::Close => Ok(false),
    }
}

/// Read and discard until the peer closes (at most 30 s).
fn hold(wire: &mut Wire) {
    wire.conn.set_read_timeout(Duration::from_secs(30));
    let mut b = [0u8; 4096];
    while matches!(wire.conn.read(&mut b), Ok(n) if n > 0) {}
}

// ---------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------

/// The monoio driver the proxy runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The default: io_uring when available.
    Uring,
    /// `MONOIO_FORCE_LEGACY_DRIVER=1`: epoll.
    Epoll,
}

pub const DRIVERS: [Driver; 2] = [Driver::Uring, Driver::Epoll];

#[derive(Clone, Debug)]
pub struct Options {
    pub driver: Driver,
    /// `--threads N`.
    pub threads: Option<u32>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            driver: Driver::Uring,
            threads: None,
            env: vec![],
            args: vec![],
        }
    }
}

impl Options {
    pub fn driver(d: Driver) -> Options {
        Options {
            driver: d,
            ..Options::default()
        }
    }
    pub fn threads(mut self, n: u32) -> Options {
        self.threads = Some(n);
        self
    }
}

/// A fresh temporary directory (removed by the owner).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let d = std::env::temp_dir().join(format!(
        "simian-{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct free ports: every probe socket stays bound until all are chosen
/// (`free_port` n times may get the same port twice, which the kernel is free to
/// hand out again once the probe is closed).
#[allow(dead_code)]
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

#[derive(Clone, Debug)]
enum ListenAt {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// The `simian` binary running one configuration; killed on drop.
pub struct Proxy {
    child: Child,
    /// The port substituted for `@PORT@`.
    pub port: u16,
    /// The temporary directory substituted for `@DIR@` (config, log, sockets).
    pub dir: PathBuf,
    pub config: String,
    stderr_path: PathBuf,
    listens: Vec<ListenAt>,
    /// Exited at start because its port was taken (no checks on drop).
    failed_start: bool,
    /// Stopped by `terminate` (exiting is no failure then).
    terminated: bool,
}

impl Proxy {
    /// Start with the default driver. In `config`, `@PORT@` becomes a free port
    /// and `@DIR@` a fresh temporary directory.
    pub fn start(config: &str) -> Proxy {
        Self::start_with(config, Options::default())
    }

    pub fn start_with(config: &str, opts: Options) -> Proxy {
        // The port was free when picked but another test may take it before
        // simian binds it: then try again with another.
        for _ in 0..4 {
            if let Some(p) = Self::try_start(config, &opts) {
                return p;
            }
        }
        panic!("simian could not bind a free port four times");
    }

    fn try_start(config: &str, opts: &Options) -> Option<Proxy> {
        let dir = temp_dir("proxy");
        let port = free_port();
        let config = config
            .replace("@PORT@", &port.to_string())
            .replace("@DIR@", &dir.display().to_string());
        let config_path = dir.join("simian.conf");
        std::fs::write(&config_path, &config).unwrap();
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_simian"));
        cmd.arg("-c").arg(&config_path);
        if let Some(n) = opts.threads {
            cmd.arg("--threads").arg(n.to_string());
        }
        cmd.args(&opts.args);
        cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
        if opts.driver == Driver::Epoll {
            cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().expect("spawn simian");
        let listens = listen_addrs(&config);
        let mut p = Proxy {
            child,
            port,
            dir,
            config,
            stderr_path,
            listens,
            failed_start: false,
            terminated: false,
        };
        if p.wait_ready(Duration::from_secs(10)) {
            Some(p)
        } else {
            p.failed_start = true;
            None
        }
    }

    /// True once every listener accepts; false if simian exited because an
    /// address was in use (panics on any other early exit).
    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        for l in self.listens.clone() {
            loop {
                if let Ok(Some(st)) = self.child.try_wait() {
                    let log = self.stderr();
                    if log.contains("in use") {
                        eprintln!("port taken, retrying: {log}");
                        return false;
                    }
                    panic!(
                        "simian exited ({st}) before listening on {l:?}\nconfig:\n{}\nstderr:\n{}",
                        self.config,
                        self.stderr()
                    );
                }
                let up = match &l {
                    ListenAt::Inet(a) => {
                        TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()
                    }
                    ListenAt::Unix(p) => UnixStream::connect(p).is_ok(),
                };
                if up {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "simian not listening on {l:?} after {within:?}\nstderr:\n{}",
                    self.stderr()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        true
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client connected to the first listener.
    pub fn client(&self) -> Client {
        match &self.listens[0] {
            ListenAt::Inet(a) => Client::tcp(a),
            ListenAt::Unix(p) => Client::unix(p),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status if it exits within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.terminated = true;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn listen_addrs(config: &str) -> Vec<ListenAt> {
    let mut out = Vec::new();
    for line in config.lines() {
        let mut words = line.split_whitespace();
        if !words
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("listen"))
        {
            continue;
        }
        for w in words {
            if w.starts_with('#') {
                break;
            }
            if let Some(p) = w.strip_prefix("unix:") {
                out.push(ListenAt::Unix(PathBuf::from(p)));
            } else if let Some(port) = w.strip_prefix("*:") {
                out.push(ListenAt::Inet(format!("127.0.0.1:{port}").parse().unwrap()));
            } else if let Ok(a) = w.parse::<SocketAddr>() {
                out.push(ListenAt::Inet(a));
            }
        }
    }
    assert!(!out.is_empty(), "no Listen in the config:\n{config}");
    out
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let exited_early = match self.child.try_wait() {
            Ok(Some(st)) => Some(st),
            _ => None,
        };
        if exited_early.is_none() {
            // SIGTERM (graceful), then SIGKILL if it takes too long.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = self.stderr();
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.failed_start {
            return;
        }
        if thread::panicking() {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- simian stderr (last lines) ----\n{}\n----",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            return;
        }
        if let Some(st) = exited_early.filter(|_| !self.terminated) {
            panic!("simian exited during the test ({st}); stderr:\n{log}");
        }
        // Panics the test injected itself (SIMIAN_FAULT) are expected.
        let lines: Vec<&str> = log.lines().collect();
        let real_panic = lines.iter().enumerate().any(|(i, l)| {
            l.contains("panicked at")
                && !lines
                    .get(i + 1)
                    .is_some_and(|m| m.starts_with("fault injected"))
        });
        if real_panic {
            panic!("simian panicked during the test; stderr:\n{log}");
        }
    }
}

// ---------------------------------------------------------------------------
// Tests generated per I/O driver (and per `Splice` mode)
// ---------------------------------------------------------------------------

/// Generates `mod NAME { fn uring(); fn epoll(); }` calling `NAME(driver)`.
#[allow(unused_macros)] // not every test binary uses it
macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Driver;
            #[test]
            fn uring() {
                super::$name(Driver::Uring)
            }
            #[test]
            fn epoll() {
                super::$name(Driver::Epoll)
            }
        }
    )*};
}

/// Generates the six driver x `Splice on|off|auto` tests calling `NAME(driver, mode)`.
#[allow(unused_macros)]
macro_rules! per_driver_and_splice {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Driver;
            #[test]
            fn uring_splice_on() {
                super::$name(Driver::Uring, "on")
            }
            #[test]
            fn uring_splice_off() {
                super::$name(Driver::Uring, "off")
            }
            #[test]
            fn epoll_splice_on() {
                super::$name(Driver::Epoll, "on")
            }
            #[test]
            fn epoll_splice_off() {
                super::$name(Driver::Epoll, "off")
            }
            #[test]
            fn uring_splice_auto() {
                super::$name(Driver::Uring, "auto")
            }
            #[test]
            fn epoll_splice_auto() {
                super::$name(Driver::Epoll, "auto")
            }
        }
    )*};
}

#[allow(unused_imports)]
pub(crate) use {per_driver, per_driver_and_splice};
