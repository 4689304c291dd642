//! A cheap monotonic clock in milliseconds, so per-server timestamps fit in atomics.
//!
//! It reads `CLOCK_MONOTONIC_COARSE`: the kernel's last tick, read from the vDSO
//! without touching the TSC. Its resolution is one tick (1-4 ms), plenty for what it
//! serves (offline and idle deadlines, pool ages, LeastTime's busy milliseconds,
//! where a sub-tick request counts one tick with the right probability), and it
//! costs a few nanoseconds where the precise clock cost ~50 on this VM; the request
//! path reads it several times per request. Latency is measured with `Instant`.

use std::sync::OnceLock;

static START: OnceLock<u64> = OnceLock::new();

fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC_COARSE exists on Linux
    // since 2.6.32 and cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Milliseconds since the process started (monotonic); never 0 after startup work.
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(coarse_ms);
    coarse_ms().saturating_sub(start) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_in_milliseconds() {
        let a = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = now_ms();
        assert!(a >= 1);
        assert!((40..200).contains(&(b - a)), "{a} -> {b}");
    }
}
