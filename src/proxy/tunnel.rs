//! A two-way byte tunnel between two sockets: WebSocket after `101`, and every
//! `Mode tcp` connection. Each direction splices through its own pooled pipe;
//! half-close is passed on (EOF one way becomes shutdown(SHUT_WR) on the other), and
//! the tunnel closes after `idle` without a byte in either direction.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use crate::config::SpliceMode;
use crate::context::Worker;
use crate::net::{io as nio, splice, Stream};
use crate::upstream::clock::now_ms;

/// Bytes moved each way, for logs and statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

pub async fn run(w: &Worker, a: &Stream, b: &Stream, idle: Duration) -> Moved {
    run_with(w, a, b, idle, SpliceMode::On).await
}

pub async fn run_with(
    w: &Worker,
    a: &Stream,
    b: &Stream,
    idle: Duration,
    mode: SpliceMode,
) -> Moved {
    let last = Cell::new(now_ms());
    let (ab, ba) = monoio::join!(
        one_way(w, a, b, idle, &last, mode),
        one_way(w, b, a, idle, &last, mode)
    );
    Moved {
        a_to_b: ab,
        b_to_a: ba,
    }
}

/// Forward `from` → `to` until EOF, error, or the whole tunnel is idle.
async fn one_way(
    w: &Worker,
    from: &Stream,
    to: &Stream,
    idle: Duration,
    last: &Cell<u64>,
    mode: SpliceMode,
) -> u64 {
    let mut moved = 0u64;
    let r: io::Result<()> = async {
        let use_pipe = mode != SpliceMode::Off && from.can_splice() && to.can_splice();
        loop {
            // Wait for bytes, holding no pipe and no buffer: an idle tunnel costs
            // its two sockets only. A quiet direction is fine while the other moves.
            match monoio::time::timeout(idle, from.readable()).await {
                Ok(r) => r?,
                Err(_) => {
                    if now_ms().saturating_sub(last.get()) >= idle.as_millis() as u64 {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle"));
                    }
                    continue;
                }
            }
            // Move everything available now, then give the pipe or buffer back.
            let mut n = 0u64;
            // No pipe (EMFILE, ENFILE): this burst is copied instead.
            let mut pipe = use_pipe.then(|| w.pipes.take().ok()).flatten();
            let copied = pipe.is_none();
            let mut buf = if copied { w.bufs.take() } else { Vec::new() };
            let burst: io::Result<bool> = async {
                loop {
                    let step = match pipe.as_mut() {
                        Some(p) => splice::forward_available(from, to, p, idle).await,
                        None => {
                            buf.clear();
                            match nio::try_read(from, &mut buf, 64 * 1024) {
                                Ok(k) => nio::write_all(to, &buf, idle).await.map(|_| k as u64),
                                Err(e) => Err(e),
                            }
                        }
                    };
                    match step {
                        Ok(0) => return Ok(true), // EOF
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
            }
            .await;
            if let Some(p) = pipe {
                w.pipes.give(p); // kept only if empty
            }
            if copied {
                w.bufs.give(buf);
            }
            let eof = burst?;
            if n > 0 {
                moved += n;
                last.set(now_ms());
            }
            if eof {
                return Ok(());
            }
        }
    }
    .await;
    match r {
        // Half-close: the other side still gets to answer.
        Ok(()) => to.shutdown_write(),
        Err(_) => {
            // Wake the other direction too: nothing more will flow.
            // SAFETY: plain syscalls on fds we own.
            unsafe {
                libc::shutdown(from.fd(), libc::SHUT_RDWR);
                libc::shutdown(to.fd(), libc::SHUT_RDWR);
            }
        }
    }
    moved
}
