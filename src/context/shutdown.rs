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
    /// SIGTERM arrived: the `HealthURL` answers 503 from now on, through any
    /// `ShutdownDelay`, while the drain has not started yet.
    stopping: AtomicBool,
    started: AtomicBool,
    /// The drain of a binary upgrade: the listening sockets live on in the new
    /// process, so this one closes its descriptors but must not shut them down.
    handover: AtomicBool,
    /// Milliseconds (crate clock) after which in-flight work is abandoned.
    deadline_ms: AtomicU64,
}

impl Shutdown {
    /// Stop accepting and drain (SIGTERM, after any `ShutdownDelay`).
    pub fn start(&self, drain: Duration) {
        self.inner.stopping.store(true, Release);
        self.begin(drain);
    }

    /// Stop accepting and drain, leaving the listening sockets to the process
    /// that took them over (SIGUSR2).
    pub fn start_handover(&self, drain: Duration) {
        self.inner.handover.store(true, Release);
        self.begin(drain);
    }

    fn begin(&self, drain: Duration) {
        let now = crate::upstream::clock::now_ms();
        self.inner
            .deadline_ms
            .store(now + drain.as_millis() as u64, Relaxed);
        self.inner.started.store(true, Release);
    }

    /// SIGTERM arrived: say so on the `HealthURL`, keep serving.
    pub fn announce_stop(&self) {
        self.inner.stopping.store(true, Release);
    }

    /// Whether the `HealthURL` must answer 503.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Acquire)
    }

    pub fn started(&self) -> bool {
        self.inner.started.load(Acquire)
    }

    pub fn handing_over(&self) -> bool {
        self.inner.handover.load(Acquire)
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

/// During a drain, how long a keep-alive connection between requests still
/// has to send its next one: a client that had just read a response and is
/// writing its next request must not see the connection shut under it (that
/// request would be lost; wrk counts it as an error). Its answer carries
/// `Connection: close`.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);
