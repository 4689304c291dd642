//! The counters themselves.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the request duration histogram.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One worker's counters for one route. Aligned so two workers never share a line.
#[repr(align(128))]
pub struct RouteCounters {
    /// [server index (last = no server)][status class 1xx..5xx]
    pub requests: Box<[[AtomicU64; 5]]>,
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    pub buckets: [AtomicU64; BUCKETS.len() + 1],
    pub duration_sum_us: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Requests routed by each of the entry's patterns.
    pub matches: Box<[AtomicU64]>,
}

/// Add to a counter only one worker thread writes: a plain load and store instead
/// of a locked read-modify-write (the six `lock xadd` of a request were ~40 ns).
/// Readers on other threads still see whole values, at most a moment old.
#[inline]
fn bump(c: &AtomicU64, v: u64) {
    c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
}

/// A route's counters, one slot per worker; only that worker's thread writes it.
pub struct RouteStats {
    pub workers: Box<[RouteCounters]>,
}

impl RouteStats {
    pub fn new(workers: usize, servers: usize, patterns: usize) -> RouteStats {
        let one = || RouteCounters {
            requests: (0..=servers).map(|_| Default::default()).collect(),
            buckets: Default::default(),
            duration_sum_us: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            matches: (0..patterns).map(|_| AtomicU64::new(0)).collect(),
        };
        RouteStats {
            workers: (0..workers.max(1)).map(|_| one()).collect(),
        }
    }

    /// Count one finished request on worker `w`. `server` is None when simian
    /// answered itself (502/503, 400 after routing...).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        w: usize,
        server: Option<usize>,
        pattern: usize,
        status: u16,
        micros: u64,
        received: u64,
        sent: u64,
    ) {
        let Some(c) = self.workers.get(w) else { return };
        let row = server
            .unwrap_or(c.requests.len() - 1)
            .min(c.requests.len() - 1);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        bump(&c.requests[row][class], 1);
        let secs = micros as f64 / 1e6;
        let b = BUCKETS
            .iter()
            .position(|&ub| secs <= ub)
            .unwrap_or(BUCKETS.len());
        bump(&c.buckets[b], 1);
        bump(&c.duration_sum_us, micros);
        bump(&c.received, received);
        bump(&c.sent, sent);
        if let Some(m) = c.matches.get(pattern) {
            bump(m, 1);
        }
    }

    /// Bytes of a tcp tunnel: counted per route like request bodies, but a tunnel
    /// is not a request.
    pub fn add_bytes(&self, w: usize, received: u64, sent: u64) {
        if let Some(c) = self.workers.get(w) {
            bump(&c.received, received);
            bump(&c.sent, sent);
        }
    }

    pub fn sum<F: Fn(&RouteCounters) -> u64>(&self, f: F) -> u64 {
        self.workers.iter().map(f).sum()
    }
}

/// TLS handshakes of one listener, by result (`simian_tls_handshakes_total`).
/// Shared by the workers: a handshake costs far more than a contended add.
#[derive(Default)]
pub struct Handshakes {
    pub success: AtomicU64,
    pub resumed: AtomicU64,
    pub failure: AtomicU64,
}

/// Process-wide numbers that are not per request.
pub struct ProcessStats {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unix time of the last successful (re)load.
    pub last_reload_ok: AtomicU64,
    pub client_connections: AtomicU64,
    /// Of those, the idle ones parked (see `context::park`).
    pub parked_connections: AtomicU64,
    /// Backend connects that failed for a reason of this host, by cause
    /// (`simian_local_errors_total`): out of fds (EMFILE, ENFILE), out of local
    /// ports (EADDRNOTAVAIL), out of memory or buffers (ENOMEM, ENOBUFS).
    pub local_errors: [AtomicU64; 3],
}

/// Labels of `ProcessStats::local_errors`, in order.
pub const LOCAL_ERROR_CAUSES: [&str; 3] = ["fds", "ports", "memory"];

impl ProcessStats {
    /// Count a local failure by its errno.
    pub fn local_error(&self, errno: Option<i32>) {
        let i = match errno {
            Some(libc::EMFILE | libc::ENFILE) => 0,
            Some(libc::EADDRNOTAVAIL) => 1,
            _ => 2,
        };
        self.local_errors[i].fetch_add(1, Relaxed);
    }
}

/// The one process's numbers.
pub static PROCESS: ProcessStats = ProcessStats {
    reloads_ok: AtomicU64::new(0),
    reloads_failed: AtomicU64::new(0),
    last_reload_ok: AtomicU64::new(0),
    client_connections: AtomicU64::new(0),
    parked_connections: AtomicU64::new(0),
    local_errors: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
};

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
