//! Per-worker pool of read buffers, so an idle keep-alive connection holds none
//! (SPEC section 7) and a busy one does not allocate per request.

use std::cell::{Cell, RefCell};

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
    /// The fewest buffers the pool held since the last `release_unused`: that
    /// many sat unused the whole time.
    low: Cell<usize>,
}

impl BufPool {
    pub fn take(&self) -> Vec<u8> {
        let mut free = self.free.borrow_mut();
        let b = free.pop();
        if free.len() < self.low.get() {
            self.low.set(free.len());
        }
        b.unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Free the buffers nobody took since the last call, but `reserve`; returns
    /// how many were freed. Called by the worker's sweeper, so a burst's buffers
    /// leave RSS once the burst is over.
    pub fn release_unused(&self, reserve: usize) -> usize {
        let mut free = self.free.borrow_mut();
        let drop = self.low.get().min(free.len()).saturating_sub(reserve);
        let keep = free.len() - drop;
        free.truncate(keep);
        if free.capacity() > 4 * free.len().max(16) {
            free.shrink_to_fit();
        }
        self.low.set(free.len());
        drop
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_buffers_are_released_used_ones_kept() {
        let p = BufPool::default();
        let bs: Vec<_> = (0..100).map(|_| p.take()).collect();
        for b in bs {
            p.give(b);
        }
        // All 100 came back after the low-water mark was set (0): none unused yet.
        assert_eq!(p.release_unused(8), 0);
        // Busy period: 10 taken and given back repeatedly; 90 never touched.
        for _ in 0..5 {
            let bs: Vec<_> = (0..10).map(|_| p.take()).collect();
            for b in bs {
                p.give(b);
            }
        }
        assert_eq!(p.release_unused(8), 82);
        assert_eq!(p.free.borrow().len(), 18);
        // Nothing taken since: all but the reserve go.
        assert_eq!(p.release_unused(8), 10);
        assert_eq!(p.release_unused(8), 0);
    }
}
