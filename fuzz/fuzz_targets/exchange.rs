//! `exchange`: the whole proxy, in process, between a real client socket and a
//! scripted backend. simian starts once per fuzz process (1 worker thread) with one
//! entry in front of a backend thread on 127.0.0.1; each input says what the client
//! sends and what the backend answers, and how both are cut into pieces.
//!
//! Input: 3 header bytes, then sections separated by four NUL bytes:
//! - `data[0]` flags: 1 the backend half-closes after each script; 2 the client
//!   half-closes after sending; 4 the backend sends junk after each script (bytes past
//!   the response, which must never reach the next request's client); 8 the second
//!   client part goes on a new connection instead of the first one;
//! - `data[1]` / `data[2]`: piece size of the client's / the backend's writes (0: all
//!   at once), with a short pause between pieces;
//! - sections: client part 1, backend script 1, backend script 2, client part 2.
//!   The backend plays the next script each time a request arrives (script 1, 2, 1...).
//!   `<<............>>` in a script is replaced by a marker unique to that play.
//!
//! Properties:
//! - no bytes to the wrong client: a client never receives a marker of a play that had
//!   finished before it sent its request (a previous input's backend, or within this
//!   input a backend answer meant for the first client), unless the input itself
//!   contains those bytes. This is what a pooled backend connection with leftover
//!   bytes, or a reused buffer, would break;
//! - what simian sends a client is a well-formed sequence of responses (heads parse,
//!   chunked bodies scan), nothing follows a response that closes the connection, and
//!   there is at most one final response per request (plus one refusal of bytes that
//!   are not a request);
//! - the process stays up and serving: any panic aborts the fuzzer (libFuzzer's panic
//!   hook runs before simian's per-connection catch_unwind), and after every input
//!   simian must still answer a request of its own within 2 s.

#![no_main]

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use simian::http::{
    parse_request, parse_response, BodyFraming, ChunkStep, ChunkedScanner, Method, ResponseError,
    ResponseFraming,
};

const SEP: &[u8] = b"\0\0\0\0";
/// Replaced in backend scripts by `<<%012x>>`, the play's sequence number.
const TOKEN: &[u8] = b"<<............>>";
/// Pause between two pieces of a write, so that they arrive as separate reads.
const PIECE_PAUSE: Duration = Duration::from_micros(300);
/// A client stops reading after this long without a byte (simian answers on
/// loopback in well under a millisecond; this is what an input that leaves a
/// response hanging costs)...
const QUIET: Duration = Duration::from_millis(25);
/// ...or this long after it started reading.
const CAP: Duration = Duration::from_millis(300);
/// Most pieces one write is cut into (larger pieces past it).
const MAX_PIECES: usize = 16;

const F_BACKEND_CLOSES: u8 = 1;
const F_CLIENT_HALF_CLOSES: u8 = 2;
const F_JUNK: u8 = 4;
const F_SECOND_CONNECTION: u8 = 8;

// ---------------------------------------------------------------------------
// The scripted backend
// ---------------------------------------------------------------------------

struct Play {
    seq: u64,
    done: bool,
}

/// What the backend does during the current input.
#[derive(Default)]
struct Script {
    /// Bumped at the start and end of every input: a backend connection of another
    /// generation stops playing.
    gen: u64,
    scripts: Vec<Vec<u8>>,
    piece: usize,
    close_after: bool,
    junk: bool,
    /// Plays of this input, in order.
    plays: Vec<Play>,
    /// Sequence number of the next play, never reset.
    next_seq: u64,
    /// Accepted connections of this input, shut down when it ends.
    conns: Vec<TcpStream>,
}

struct Harness {
    proxy: SocketAddr,
    script: Arc<Mutex<Script>>,
}

fn lock(m: &Mutex<Script>) -> MutexGuard<'_, Script> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn marker(seq: u64) -> Vec<u8> {
    format!("<<{seq:012x}>>").into_bytes()
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn write_pieces(s: &mut TcpStream, bytes: &[u8], piece: usize, go_on: impl Fn() -> bool) {
    let size = if piece == 0 {
        bytes.len().max(1)
    } else {
        piece.max(bytes.len().div_ceil(MAX_PIECES))
    };
    for (i, p) in bytes.chunks(size).enumerate() {
        if i > 0 {
            thread::sleep(PIECE_PAUSE);
        }
        if !go_on() || s.write_all(p).is_err() {
            return;
        }
    }
}

/// One backend connection: play a script for every request that arrives (a read
/// holding `HTTP/1.` counts as one request per occurrence, the first read as at least
/// one), until the input ends.
fn serve_backend(mut s: TcpStream, gen: u64, script: Arc<Mutex<Script>>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = [0u8; 8192];
    let mut pending = Vec::new();
    let mut played = false;
    let mut write_closed = false;
    loop {
        if lock(&script).gen != gen {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        let mut requests = count(&pending, b"HTTP/1.");
        if !played && !pending.is_empty() {
            requests = requests.max(1);
        }
        if requests == 0 || write_closed {
            if pending.len() > 1 << 16 {
                pending.clear();
            }
            continue;
        }
        pending.clear();
        played = true;
        for _ in 0..requests {
            let (bytes, seq, piece, close_after) = {
                let mut sc = lock(&script);
                if sc.gen != gen || sc.scripts.is_empty() {
                    return;
                }
                let seq = sc.next_seq;
                sc.next_seq += 1;
                let k = sc.plays.len() % sc.scripts.len();
                sc.plays.push(Play { seq, done: false });
                let mut bytes = sc.scripts[k].clone();
                let m = marker(seq);
                let mut at = 0;
                while let Some(i) = bytes[at..].windows(TOKEN.len()).position(|w| w == TOKEN) {
                    bytes[at + i..at + i + TOKEN.len()].copy_from_slice(&m);
                    at += i + TOKEN.len();
                }
                if sc.junk {
                    bytes.extend_from_slice(b"JUNK");
                    bytes.extend_from_slice(&m);
                    bytes.extend_from_slice(b"\r\n");
                }
                (bytes, seq, sc.piece, sc.close_after)
            };
            write_pieces(&mut s, &bytes, piece, || lock(&script).gen == gen);
            let mut sc = lock(&script);
            if sc.gen != gen {
                return;
            }
            if let Some(p) = sc.plays.iter_mut().find(|p| p.seq == seq) {
                p.done = true;
            }
            drop(sc);
            if close_after {
                let _ = s.shutdown(Shutdown::Write);
                write_closed = true;
                break;
            }
        }
    }
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let backend = TcpListener::bind("127.0.0.1:0").expect("backend listener");
        let backend_addr = backend.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let sc = script.clone();
        thread::spawn(move || {
            for s in backend.incoming() {
                let Ok(s) = s else { continue };
                let _ = s.set_nodelay(true);
                let gen = {
                    let mut g = lock(&sc);
                    if let Ok(c) = s.try_clone() {
                        g.conns.push(c);
                    }
                    g.gen
                };
                let sc = sc.clone();
                thread::spawn(move || serve_backend(s, gen, sc));
            }
        });
        simian::log::set_level("error").unwrap();
        simian::log::set_file(Some(std::path::Path::new("/dev/null"))).unwrap();
        // A free port for simian: picked, released, then bound by simian (retried if
        // someone took it in between).
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let text = format!(
                "[PROXY_DEFAULTS]\nListen 127.0.0.1:{port}\nThreads 1\nHeadTimeout 1s\n\
                 IdleTimeout 2s\nShutdownTimeout 1s\nStatisticsURL /simian-status\n\
                 AttemptsCount 0\nConnectTimeout 1s\nBackendTimeout 1s\n\n\
                 [PROXY_ENTRY]\nName fuzz\nMatch ^/\nServerList {backend_addr}\n"
            );
            let config = simian::config::Config::from_text(&text).expect("harness config");
            let opts = simian::runtime::RunOptions {
                threads: Some(1),
                ..Default::default()
            };
            if let Ok(running) = simian::runtime::start(config, &opts) {
                // Runs for the life of the fuzz process; held by a static so that
                // LeakSanitizer sees it reachable.
                static RUNNING: AtomicPtr<simian::runtime::Running> =
                    AtomicPtr::new(std::ptr::null_mut());
                RUNNING.store(Box::into_raw(Box::new(running)), Ordering::SeqCst);
                return Harness {
                    proxy: SocketAddr::from(([127, 0, 0, 1], port)),
                    script,
                };
            }
        }
        panic!("simian did not start");
    })
}

// ---------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------

/// The requests in `bytes` as simian's parser sees them, in order: whether each is a
/// HEAD; and whether bytes that are not a request are left over.
fn requests(bytes: &[u8]) -> (Vec<bool>, bool) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(h) = parse_request(rest) else {
            return (out, true);
        };
        out.push(h.method == Method::Head);
        rest = &rest[h.head_len..];
        match h.framing {
            BodyFraming::None => {}
            BodyFraming::ContentLength(n) => {
                rest = &rest[rest.len().min(n.try_into().unwrap_or(usize::MAX))..];
            }
            BodyFraming::Chunked => match chunked_end(rest) {
                Ok(Some(end)) => rest = &rest[end..],
                _ => return (out, false),
            },
        }
    }
    (out, false)
}

/// Where a chunked body starting at `b[0]` ends: `Ok(None)` if not in `b` yet.
fn chunked_end(b: &[u8]) -> Result<Option<usize>, String> {
    let mut sc = ChunkedScanner::new();
    let mut pos = 0;
    loop {
        match sc.step(&b[pos..]).map_err(|e| e.to_string())? {
            ChunkStep::Framing(n) => pos += n,
            ChunkStep::Data(n) => {
                let k = (n as usize).min(b.len() - pos);
                if k == 0 {
                    return Ok(None);
                }
                pos += k;
                sc.data_consumed(k as u64);
            }
            ChunkStep::Done(n) => return Ok(Some(pos + n)),
            ChunkStep::NeedMore => return Ok(None),
        }
    }
}

/// What a client received, read as responses.
#[derive(Debug, Default)]
struct Received {
    finals: usize,
    /// Ends exactly at the end of a response (nothing cut, no body to EOF).
    complete: bool,
}

/// Reads `got` as the responses to `reqs` (HEAD or not), panicking on anything
/// simian must never send.
fn responses(got: &[u8], reqs: &[bool]) -> Received {
    let mut r = Received::default();
    let mut pos = 0;
    let mut closed = false;
    loop {
        if pos == got.len() {
            r.complete = true;
            return r;
        }
        assert!(
            !closed,
            "bytes after a response that closes the connection: {:?}",
            String::from_utf8_lossy(&got[pos..])
        );
        let is_head = reqs.get(r.finals).copied().unwrap_or(false);
        let h = match parse_response(&got[pos..], is_head) {
            Ok(h) => h,
            Err(ResponseError::Incomplete) => return r,
            Err(e) => panic!(
                "simian sent a malformed response head ({e}): {:?}",
                String::from_utf8_lossy(&got[pos..])
            ),
        };
        pos += h.head_len;
        if h.is_interim() {
            continue;
        }
        r.finals += 1;
        if h.upgrade {
            return r; // a tunnel from here on
        }
        match h.framing {
            ResponseFraming::None => {}
            ResponseFraming::ContentLength(n) => {
                let left = (got.len() - pos) as u64;
                if left < n {
                    return r;
                }
                pos += n as usize;
            }
            ResponseFraming::Chunked => match chunked_end(&got[pos..]) {
                Ok(Some(end)) => pos += end,
                Ok(None) => return r,
                Err(e) => panic!("simian forwarded a malformed chunked body: {e}"),
            },
            ResponseFraming::CloseDelimited => return r,
        }
        closed = !h.keep_alive;
    }
}

/// Markers of old plays found in `got` that the input does not itself contain.
fn stray_markers(got: &[u8], input: &[u8], old: &dyn Fn(u64) -> bool) -> Vec<u64> {
    let mut found = Vec::new();
    for (i, w) in got.windows(16).enumerate() {
        if !(w.starts_with(b"<<") && w.ends_with(b">>")) {
            continue;
        }
        let Ok(hex) = std::str::from_utf8(&w[2..14]) else {
            continue;
        };
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            continue;
        }
        let seq = u64::from_str_radix(hex, 16).unwrap();
        if old(seq) && !contains(input, &got[i..i + 16]) {
            found.push(seq);
        }
    }
    found
}

/// Read until `enough` says so, EOF, `QUIET` without a byte, or `CAP`.
fn read_some(s: &mut TcpStream, got: &mut Vec<u8>, enough: &dyn Fn(&[u8]) -> bool) {
    let start = Instant::now();
    let mut buf = [0u8; 16384];
    while !enough(got) {
        let left = CAP.saturating_sub(start.elapsed());
        if left.is_zero() {
            return;
        }
        let _ = s.set_read_timeout(Some(left.min(QUIET)));
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn connect(h: &Harness) -> TcpStream {
    let s = TcpStream::connect(h.proxy).expect("connect to simian");
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(CAP));
    s
}

/// Send `bytes` in pieces, then read the answers to `reqs` (all of `sent_before`
/// plus `bytes` on this connection). Returns where this phase's bytes start in `got`.
fn phase(
    s: &mut TcpStream,
    got: &mut Vec<u8>,
    bytes: &[u8],
    piece: usize,
    half_close: bool,
    reqs: &[bool],
) -> usize {
    let from = got.len();
    write_pieces(s, bytes, piece, || true);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let n = reqs.len();
    read_some(s, got, &|g| {
        let r = responses(g, reqs);
        n > 0 && r.finals >= n && r.complete
    });
    from
}

fn check(got: &[u8], reqs: &[bool], tail: bool, input: &[u8], old: &dyn Fn(u64) -> bool) {
    let stray = stray_markers(got, input, old);
    assert!(
        stray.is_empty(),
        "a client received bytes of earlier backend answers {stray:?}: {:?}",
        String::from_utf8_lossy(got)
    );
    let r = responses(got, reqs);
    // Bytes that are not a request get at most one refusal.
    let most = reqs.len() + usize::from(tail);
    assert!(
        r.finals <= most.max(1),
        "{} final responses to {} requests: {:?}",
        r.finals,
        reqs.len(),
        String::from_utf8_lossy(got)
    );
}

/// simian still answers: a request it serves itself (no entry matches `*`).
fn probe(h: &Harness) {
    let start = Instant::now();
    let mut s = TcpStream::connect(h.proxy).expect("simian stopped accepting");
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .expect("probe write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 404 "),
        "simian stopped answering (after {:?}): {:?}",
        start.elapsed(),
        String::from_utf8_lossy(&got)
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (flags, client_piece, backend_piece) = (data[0], data[1] as usize, data[2] as usize);
    let mut sections = Vec::new();
    let mut rest = &data[3..];
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        sections.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    sections.push(rest);
    let part = |i: usize| sections.get(i).copied().unwrap_or(&[]);
    let (client1, client2) = (part(0), part(3));
    let scripts: Vec<Vec<u8>> = [part(1), part(2)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if client1.is_empty() {
        return;
    }

    let h = harness();
    let first_seq = {
        let mut sc = lock(&h.script);
        sc.gen += 1;
        sc.scripts = scripts;
        sc.piece = backend_piece;
        sc.close_after = flags & F_BACKEND_CLOSES != 0;
        sc.junk = flags & F_JUNK != 0;
        sc.plays.clear();
        sc.next_seq
    };
    let before_input = move |seq: u64| seq < first_seq;

    // Client part 1.
    let half_close = flags & F_CLIENT_HALF_CLOSES != 0;
    let (reqs1, tail1) = requests(client1);
    let mut c = connect(h);
    let mut got = Vec::new();
    phase(&mut c, &mut got, client1, client_piece, half_close, &reqs1);
    check(&got, &reqs1, tail1, data, &before_input);

    // Client part 2, once every backend answer so far is written: from now on those
    // answers are old, and the second request must not get any of their bytes.
    if !client2.is_empty() && !half_close {
        let deadline = Instant::now() + Duration::from_millis(100);
        while lock(&h.script).plays.iter().any(|p| !p.done) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let finished: HashSet<u64> = lock(&h.script)
            .plays
            .iter()
            .filter(|p| p.done)
            .map(|p| p.seq)
            .collect();
        let old = move |seq: u64| seq < first_seq || finished.contains(&seq);
        if flags & F_SECOND_CONNECTION != 0 {
            drop(c);
            let (reqs2, tail2) = requests(client2);
            let mut c2 = connect(h);
            let mut got2 = Vec::new();
            phase(&mut c2, &mut got2, client2, client_piece, false, &reqs2);
            check(&got2, &reqs2, tail2, data, &old);
        } else {
            // Same connection: only once the first part was wholly answered are the
            // next bytes meant for the second request alone.
            let r1 = responses(&got, &reqs1);
            let settled = r1.complete && r1.finals == reqs1.len() && !tail1 && !reqs1.is_empty();
            let both = [client1, client2].concat();
            let (reqs, tail) = requests(&both);
            let from = phase(&mut c, &mut got, client2, client_piece, false, &reqs);
            check(&got, &reqs, tail, data, &before_input);
            if settled {
                let stray = stray_markers(&got[from..], data, &old);
                assert!(
                    stray.is_empty(),
                    "second request got earlier answers {stray:?}"
                );
            }
        }
    }

    // End of input: its backend connections go (simian sees them closed).
    {
        let mut sc = lock(&h.script);
        sc.gen += 1;
        for s in sc.conns.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    probe(h);
});
