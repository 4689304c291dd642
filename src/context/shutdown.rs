//! Graceful shutdown shared by the signal thread and the workers.
//!
//! Workers poll a flag on their own timer rather than being woken across threads:
//! a 10 ms check (a few timers per worker, not per connection) costs nothing and
//! needs no cross-thread waker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    started: AtomicBool,
    /// Milliseconds (crate clock) after which in-flight work is abandoned.
    deadline_ms: AtomicU64,
}

impl Shutdown {
    pub fn start(&self, drain: Duration) {
        let now = crate::upstream::clock::now_ms();
        self.inner
            .deadline_ms
            .store(now + drain.as_millis() as u64, Relaxed);
        self.inner.started.store(true, Release);
    }

    pub fn started(&self) -> bool {
        self.inner.started.load(Acquire)
    }

    pub fn deadline_passed(&self) -> bool {
        self.started() && crate::upstream::clock::now_ms() >= self.inner.deadline_ms.load(Relaxed)
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        while !self.started() {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
