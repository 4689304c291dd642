//! Moving bodies: exact-length bodies by splice or copy, chunked bodies through
//! the scanner (framing checked, bytes unchanged).

use std::io;
use std::time::Duration;

use crate::config::SpliceMode;
use crate::context::Worker;
use crate::http::{ChunkStep, ChunkedScanner};
use crate::net::{io as nio, splice, Stream};

/// Under `Splice auto`, bodies smaller than this are copied: for a few KiB the two
/// splice calls through a pipe cost more than a read and a write.
const SPLICE_MIN: u64 = 64 * 1024;

fn use_splice(mode: SpliceMode, n: u64, from: &Stream, to: &Stream) -> bool {
    if !from.can_splice() || !to.can_splice() {
        return false;
    }
    match mode {
        SpliceMode::On => true,
        SpliceMode::Off => false,
        SpliceMode::Auto => n >= SPLICE_MIN,
    }
}

/// Forward exactly `n` bytes from socket to socket.
pub async fn forward_len(
    w: &Worker,
    from: &Stream,
    to: &Stream,
    n: u64,
    mode: SpliceMode,
    t: Duration,
) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    // No pipe (EMFILE, ENFILE): copied instead, the body is not cut for it.
    let pipe = use_splice(mode, n, from, to)
        .then(|| w.pipes.take().ok())
        .flatten();
    if let Some(mut pipe) = pipe {
        let r = splice::forward(from, to, &mut pipe, Some(n), t).await;
        w.pipes.give(pipe);
        r.map(|_| ())
    } else {
        let mut b = w.bufs.take();
        let r = nio::copy_exact(from, to, n, &mut b, t).await;
        w.bufs.give(b);
        r.map(|_| ())
    }
}

/// Forward until `from` closes (close-delimited response bodies).
pub async fn forward_to_eof(
    w: &Worker,
    from: &Stream,
    to: &Stream,
    mode: SpliceMode,
    t: Duration,
) -> io::Result<u64> {
    let spliced = mode != SpliceMode::Off && from.can_splice() && to.can_splice();
    // No pipe (EMFILE, ENFILE): copied instead, the body is not cut for it.
    if let Some(mut pipe) = spliced.then(|| w.pipes.take().ok()).flatten() {
        let r = splice::forward(from, to, &mut pipe, None, t).await;
        w.pipes.give(pipe);
        r
    } else {
        let mut b = w.bufs.take();
        let r = nio::copy_to_eof(from, to, &mut b, t).await;
        w.bufs.give(b);
        r
    }
}

/// Forward a chunked body whose first bytes are `buf[pos..]`, reading the rest from
/// `from`. Returns the offset in `buf` just past the body, and the body's size on
/// the wire; `buf` may have been compacted on the way (bytes before the returned
/// offset are gone or forwarded), and bytes after it belong to the next message.
#[allow(clippy::too_many_arguments)] // the two sockets, the buffer and its position, and three limits
pub async fn forward_chunked(
    w: &Worker,
    from: &Stream,
    to: &Stream,
    buf: &mut Vec<u8>,
    mut pos: usize,
    mode: SpliceMode,
    t: Duration,
    limit: u64,
) -> io::Result<(usize, u64)> {
    let bad = |e: crate::http::ChunkError| io::Error::new(io::ErrorKind::InvalidData, e.0);
    let mut sc = ChunkedScanner::new();
    // Data bytes announced so far, against `limit` (`MaxBodySize`; 0: none);
    // each chunk counted once, at its first `Data` step.
    let mut announced = 0u64;
    let mut counted = false;
    // Bytes of `buf` before `sent` are already written to `to`.
    let mut sent = pos;
    let mut total = 0u64;
    loop {
        let mut need_more = false;
        match sc.step(&buf[pos..]).map_err(bad)? {
            ChunkStep::Framing(n) => {
                pos += n;
                counted = false;
            }
            ChunkStep::Data(n) if limit > 0 && !counted => {
                counted = true;
                announced = announced.saturating_add(n);
                if announced > limit {
                    // Refused when the chunk is announced, before its bytes go.
                    return Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "chunked body larger than MaxBodySize",
                    ));
                }
                // Go round again: the next step is this same Data.
            }
            ChunkStep::Data(n) => {
                let k = n.min((buf.len() - pos) as u64);
                if k > 0 {
                    pos += k as usize;
                    sc.data_consumed(k);
                } else if use_splice(mode, n, from, to) {
                    // A large chunk with nothing buffered: splice it socket to socket.
                    nio::write_all(to, &buf[sent..pos], t).await?;
                    total += (pos - sent) as u64 + n;
                    buf.clear();
                    pos = 0;
                    sent = 0;
                    forward_len(w, from, to, n, mode, t).await?;
                    sc.data_consumed(n);
                } else {
                    need_more = true;
                }
            }
            ChunkStep::Done(n) => {
                pos += n;
                nio::write_all(to, &buf[sent..pos], t).await?;
                return Ok((pos, total + (pos - sent) as u64));
            }
            ChunkStep::NeedMore => need_more = true,
        }
        if need_more {
            nio::write_all(to, &buf[sent..pos], t).await?;
            total += (pos - sent) as u64;
            buf.drain(..pos);
            pos = 0;
            sent = 0;
            if nio::read(from, buf, 64 * 1024, t).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed mid-body",
                ));
            }
        }
    }
}
