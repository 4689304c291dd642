//! Lingering close (SPEC section 12, nginx's `lingering_close`): when simian
//! answers an error and closes while the client may still be sending (a body
//! nobody read, the rest of an oversized head, pipelined requests), closing at
//! once would make the kernel answer those bytes with a reset, and a reset can
//! destroy the error response before the client reads it. So the write side is
//! shut first (the client sees the end of the response) and what still comes is
//! read and thrown away, for at most [`LINGER_TIME`] or [`LINGER_BYTES`].

use std::time::{Duration, Instant};

use super::io as nio;
use super::Stream;

pub const LINGER_TIME: Duration = Duration::from_secs(2);
pub const LINGER_BYTES: usize = 1 << 20;

/// Shut the write side of `client` and discard what it still sends. `scratch`
/// is a reused buffer. TLS connections are left alone: their close_notify must
/// go out before the write side is shut, and it is sent when they are dropped.
pub async fn discard_rest(client: &Stream, scratch: &mut Vec<u8>) {
    if client.is_tls() {
        return;
    }
    // SAFETY: plain syscall on a socket the caller owns and keeps open.
    if unsafe { libc::shutdown(client.fd(), libc::SHUT_WR) } != 0 {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    while left > 0 {
        let t = deadline.saturating_duration_since(Instant::now());
        if t.is_zero() {
            return;
        }
        scratch.clear();
        match nio::read(client, scratch, left.min(scratch.capacity().max(4096)), t).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}
