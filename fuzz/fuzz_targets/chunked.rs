//! `chunked`: the incremental chunked-body scanner (`simian::http::ChunkedScanner`),
//! driven the way `proxy::body::forward_chunked` drives it.
//!
//! Input: `data[0] % 8` split sizes follow in the next bytes, the rest is the body.
//! The body is scanned three ways: whole, arriving in the pieces the split sizes
//! give (repeated), and one byte at a time.
//!
//! Properties:
//! - the outcome (done at the same offset / the same error / still waiting) and, short
//!   of an error, the split of the bytes into framing and chunk data are the same
//!   whatever the pieces: framing can arrive one byte at a time, as promised;
//! - a step never reports more bytes than it was given, `Data(n)` agrees with
//!   `data_remaining`, and `is_done` agrees with `Done`;
//! - on a complete body, framing and data bytes put back together are exactly the
//!   input up to the end, and each data run is as long as the hex size on the line
//!   before it says (the scanner measured the chunks right).

#![no_main]

use libfuzzer_sys::fuzz_target;
use simian::http::{ChunkError, ChunkStep, ChunkedScanner};

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Body complete; bytes of the input it took.
    Done(usize),
    Error(ChunkError),
    /// The input ran out first.
    NeedMore,
}

/// Byte runs in input order: `(is_data, bytes)`, adjacent runs of a kind merged.
type Runs = Vec<(bool, Vec<u8>)>;

fn push(runs: &mut Runs, is_data: bool, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match runs.last_mut() {
        Some((d, v)) if *d == is_data => v.extend_from_slice(bytes),
        _ => runs.push((is_data, bytes.to_vec())),
    }
}

/// Scan `body` arriving in pieces of the given sizes (cycled; 0 means the rest).
fn scan(body: &[u8], sizes: &[usize]) -> (End, Runs) {
    let mut sc = ChunkedScanner::new();
    let mut runs = Runs::new();
    let mut arrived = 0; // bytes of `body` delivered so far
    let mut pos = 0; // bytes of `body` classified so far
    let mut piece = 0;
    loop {
        let buf = &body[pos..arrived];
        let step = match sc.step(buf) {
            Ok(s) => s,
            Err(e) => return (End::Error(e), runs),
        };
        let mut need_more = false;
        match step {
            ChunkStep::Framing(n) => {
                assert!(
                    n > 0 && n <= buf.len(),
                    "Framing({n}) of {} bytes",
                    buf.len()
                );
                assert!(!sc.is_done());
                push(&mut runs, false, &buf[..n]);
                pos += n;
            }
            ChunkStep::Data(n) => {
                assert!(n > 0 && n == sc.data_remaining());
                let k = (n as usize).min(buf.len());
                if k == 0 {
                    need_more = true;
                } else {
                    push(&mut runs, true, &buf[..k]);
                    pos += k;
                    sc.data_consumed(k as u64);
                    assert_eq!(sc.data_remaining(), n - k as u64);
                }
            }
            ChunkStep::Done(n) => {
                assert!(n <= buf.len() && sc.is_done());
                push(&mut runs, false, &buf[..n]);
                // Done is final.
                assert_eq!(sc.step(b"more"), Ok(ChunkStep::Done(0)));
                return (End::Done(pos + n), runs);
            }
            ChunkStep::NeedMore => {
                assert!(buf.is_empty());
                need_more = true;
            }
        }
        if need_more {
            if arrived == body.len() {
                return (End::NeedMore, runs);
            }
            let s = sizes[piece % sizes.len()];
            piece += 1;
            arrived = if s == 0 {
                body.len()
            } else {
                (arrived + s).min(body.len())
            };
        }
    }
}

/// The hex size at the start of the last line of a framing run.
fn last_size(framing: &[u8]) -> u64 {
    let line = framing
        .strip_suffix(b"\r\n")
        .expect("size line ends in CRLF");
    let line = &line[line.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..];
    let hex: Vec<u8> = line
        .iter()
        .copied()
        .take_while(u8::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (split, body) = rest.split_at(n);
    let sizes: Vec<usize> = split.iter().map(|&b| usize::from(b)).collect();

    let whole = scan(body, &[0]);
    let mut others = vec![("one byte at a time", scan(body, &[1]))];
    if !sizes.is_empty() {
        others.push(("split", scan(body, &sizes)));
    }
    for (how, other) in &others {
        assert_eq!(
            whole.0, other.0,
            "{how} ({sizes:?}) ends otherwise than whole"
        );
        // After an error, how much of the failing piece was classified first
        // depends on the piece: compare the runs only when there was none.
        if !matches!(whole.0, End::Error(_)) {
            assert_eq!(whole.1, other.1, "{how} ({sizes:?}) classifies otherwise");
        }
    }

    let (end, runs) = whole;
    let classified: usize = runs.iter().map(|(_, v)| v.len()).sum();
    let joined: Vec<u8> = runs.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    assert_eq!(joined, body[..classified]);
    if let End::Done(at) = end {
        assert_eq!(at, classified);
        // Each data run follows its size line and is exactly that long.
        for w in runs.windows(2) {
            if let [(false, framing), (true, chunk)] = w {
                assert_eq!(last_size(framing), chunk.len() as u64);
            }
        }
        assert!(body[..at].ends_with(b"\r\n"));
    }
});
