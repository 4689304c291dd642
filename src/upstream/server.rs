//! Live state of one server of one entry, shared by every worker: atomics only, so
//! the hot path takes no lock (SPEC section 7).
//!
//! Availability (SPEC section 3, Monkey's semantics made safer): consecutive failed
//! connects count; `AttemptsCount` of them take the server offline for
//! `OfflineTimeOut`, during which it is skipped without a connect attempt; after that
//! exactly one request probes it; a success resets everything. Time is an argument
//! (`now_ms`), so the rules are tested without sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

use crate::config::{Availability, Server};

#[derive(Debug)]
pub struct ServerState {
    pub spec: Server,
    /// Requests in flight to this server (LeastConnections, MaxConnections, stats).
    pub active: AtomicU32,
    /// Consecutive failed connects.
    pub failures: AtomicU32,
    /// While `now < offline_until` the server is skipped; 0 = online.
    pub offline_until: AtomicU64,
    /// Set by the one request allowed to probe a server whose window expired.
    pub probing: AtomicBool,
    /// Taken down by active health checks (independent of passive failures).
    pub health_down: AtomicBool,
    /// Times the server went offline (statistics).
    pub offline_transitions: AtomicU64,
    /// Failed connects in total (statistics).
    pub connect_failures: AtomicU64,
    /// Active health check results (statistics).
    pub health_ok: AtomicU64,
    pub health_failed: AtomicU64,
    /// fproxy's LeastBytes / LeastTime inputs.
    pub bytes: AtomicU64,
    pub busy_ms: AtomicU64,
    /// Set by `simian ctl` (an [`AdminState`] as u8): kept across reloads.
    pub admin: AtomicU8,
    /// `simian ctl weight`: the weight in force, 0 = as configured.
    pub weight_override: AtomicU32,
}

/// What the operator said of a server (`simian ctl`, SPEC section 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Ready = 0,
    /// No new requests but those a sticky cookie leads to; in-flight ones finish.
    Drain = 1,
    /// No requests at all.
    Maint = 2,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

impl ServerState {
    pub fn new(spec: Server) -> ServerState {
        ServerState {
            spec,
            active: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            offline_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            health_down: AtomicBool::new(false),
            offline_transitions: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            health_ok: AtomicU64::new(0),
            health_failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            busy_ms: AtomicU64::new(0),
            admin: AtomicU8::new(AdminState::Ready as u8),
            weight_override: AtomicU32::new(0),
        }
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }

    pub fn set_admin_state(&self, a: AdminState) {
        self.admin.store(a as u8, Relaxed);
    }

    /// The weight balancers use: `simian ctl weight`'s, else the configured one.
    pub fn weight(&self) -> u32 {
        match self.weight_override.load(Relaxed) {
            0 => self.spec.weight,
            w => w,
        }
    }

    /// Take over what the operator set on `old` (the same server across a reload
    /// that had to build a new state for it).
    pub fn inherit_admin(&self, old: &ServerState) {
        self.admin.store(old.admin.load(Relaxed), Relaxed);
        self.weight_override
            .store(old.weight_override.load(Relaxed), Relaxed);
    }

    /// Is it worth trying this server now? Cheap, no side effect: balancers call it
    /// while scanning. The probe slot is claimed by [`ServerState::acquire`].
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_available_to(now_ms, false)
    }

    /// [`ServerState::is_available`] for a request a sticky cookie leads here
    /// (`sticky`): a drained server still takes those.
    #[inline]
    pub fn is_available_to(&self, now_ms: u64, sticky: bool) -> bool {
        let admin = self.admin.load(Relaxed);
        if admin != AdminState::Ready as u8 && (admin == AdminState::Maint as u8 || !sticky) {
            return false;
        }
        self.is_healthy(now_ms)
    }

    /// Neither taken down by health checks nor offline after failed connects,
    /// whatever the operator said.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        if self.health_down.load(Relaxed) {
            return false;
        }
        let until = self.offline_until.load(Relaxed);
        until == 0 || (now_ms >= until && !self.probing.load(Relaxed))
    }

    /// Claim the server for an attempt: `None` to skip it, `Some(true)` when this
    /// caller is the probe of a server whose offline window has expired (only one
    /// caller, process-wide, wins it). A probe must end with `connect_succeeded`,
    /// `connect_failed` or `release_probe` (see [`ProbeGuard`]), whatever connection
    /// it used.
    pub fn acquire(&self, now_ms: u64) -> Option<bool> {
        if self.health_down.load(Relaxed) || self.admin.load(Relaxed) == AdminState::Maint as u8 {
            return None;
        }
        let until = self.offline_until.load(Acquire);
        if until == 0 {
            return Some(false);
        }
        (now_ms >= until
            && self
                .probing
                .compare_exchange(false, true, AcqRel, Relaxed)
                .is_ok())
        .then_some(true)
    }

    /// Give back a probe slot won by [`ServerState::acquire`] but not used
    /// (the server turned out to be at its MaxConnections).
    pub fn release_probe(&self) {
        if self.probing.load(Relaxed) {
            self.probing.store(false, Release);
        }
    }

    pub fn connect_succeeded(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.offline_until.load(Relaxed) != 0 && self.offline_until.swap(0, AcqRel) != 0 {
            self.probing.store(false, Release);
            crate::info!("server {}: connect succeeded: back online", self.spec.text);
        }
    }

    pub fn connect_failed(&self, a: &Availability, now_ms: u64) {
        self.connect_failures.fetch_add(1, Relaxed);
        let n = self.failures.fetch_add(1, AcqRel) + 1;
        if a.attempts > 0 && n >= a.attempts {
            let was_online = self.offline_until.load(Relaxed) == 0;
            self.offline_until
                .store(now_ms + a.offline_timeout.as_millis() as u64, Release);
            self.probing.store(false, Release);
            if was_online {
                self.offline_transitions.fetch_add(1, Relaxed);
                crate::warn!(
                    "server {}: {n} failed connects in a row: offline for {}",
                    self.spec.text,
                    humantime::format_duration(a.offline_timeout)
                );
            }
        }
    }

    /// Down by health checks or failed connects (what the statistics call down;
    /// the operator's state is shown apart).
    pub fn is_offline(&self, now_ms: u64) -> bool {
        !self.is_healthy(now_ms)
    }
}

/// Releases an unused probe slot when the attempt ends (a successful or failed
/// connect has already settled it: then this is a no-op).
pub struct ProbeGuard<'a>(pub &'a ServerState, pub bool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.release_probe();
        }
    }
}

/// One request in flight on a server: counts in `active` and keeps MaxConnections
/// exact under concurrency (check and increment are one atomic step).
pub struct ActiveSlot<'a>(&'a ServerState);

impl<'a> ActiveSlot<'a> {
    pub fn acquire(s: &'a ServerState, max: Option<u32>) -> Option<ActiveSlot<'a>> {
        match max {
            None => {
                s.active.fetch_add(1, Relaxed);
            }
            Some(m) => {
                s.active
                    .fetch_update(AcqRel, Relaxed, |a| (a < m).then_some(a + 1))
                    .ok()?;
            }
        }
        Some(ActiveSlot(s))
    }
}

impl Drop for ActiveSlot<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Address, Span};
    use std::time::Duration;

    fn server() -> ServerState {
        ServerState::new(Server {
            text: "127.0.0.1:1".into(),
            addr: Address::Inet("127.0.0.1:1".parse().unwrap()),
            weight: 1,
            tls: None,
            span: Span::default(),
        })
    }

    #[test]
    fn offline_after_attempts_then_one_probe() {
        let a = Availability {
            attempts: 2,
            offline_timeout: Duration::from_secs(2),
        };
        let s = server();
        s.connect_failed(&a, 1000);
        assert!(s.is_available(1000));
        s.connect_failed(&a, 1001);
        assert!(!s.is_available(1002));
        assert!(s.acquire(2999).is_none());
        // Window over: exactly one probe.
        assert!(s.is_available(3001));
        assert_eq!(s.acquire(3001), Some(true));
        assert!(s.acquire(3001).is_none());
        assert!(!s.is_available(3001));
        // The probe fails: offline again for the whole window.
        s.connect_failed(&a, 3002);
        assert!(!s.is_available(5000));
        assert_eq!(s.acquire(5002), Some(true));
        s.connect_succeeded();
        assert!(s.is_available(5003));
        assert_eq!(s.failures.load(Relaxed), 0);
        assert_eq!(s.offline_transitions.load(Relaxed), 1);
    }

    #[test]
    fn attempts_zero_never_offline() {
        let a = Availability {
            attempts: 0,
            offline_timeout: Duration::from_secs(2),
        };
        let s = server();
        for t in 0..10 {
            s.connect_failed(&a, t);
        }
        assert!(s.is_available(10));
    }
}
