//! Per-worker pool of read buffers, so an idle keep-alive connection holds none
//! (SPEC section 7) and a busy one does not allocate per request.

use std::cell::RefCell;

/// Initial capacity of a pooled buffer: a typical head fits, and a 16 KiB read
/// keeps syscalls few for copied bodies.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers that grew past this (a huge head, a copy-path body) are not kept.
const KEEP_MAX: usize = 128 * 1024;
/// A request in flight uses up to four (request, response, head out, log fields);
/// 256 covers 64 busy connections per worker without malloc. Beyond it buffers are
/// freed, so a burst of thousands of connections does not stay in RSS afterwards.
const POOL_MAX: usize = 256;

#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    pub fn give(&self, mut b: Vec<u8>) {
        if b.capacity() > KEEP_MAX {
            return;
        }
        b.clear();
        let mut free = self.free.borrow_mut();
        if free.len() < POOL_MAX {
            free.push(b);
        }
    }
}
