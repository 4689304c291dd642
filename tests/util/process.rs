//! What the tests read from, and change on, a running process: its resident
//! memory (`/proc/PID/status`) and its file descriptor limit (prlimit(2)).
//!
//! Not declared in `util/mod.rs` (the fault tests include it with `#[path]`);
//! `tests/http.rs` has its own `FdLimit` built on prlimit(1), which could move here.

#![allow(dead_code)]

/// The resident set size of `pid` in bytes (`VmRSS`), or `None` when it has exited.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    // "VmRSS:	   12345 kB"
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft and hard `RLIMIT_NOFILE` of `pid`.
pub fn nofile(pid: u32) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading the limit of our own child into a local.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut lim,
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    (lim.rlim_cur, lim.rlim_max)
}

/// Set the soft `RLIMIT_NOFILE` of `pid` (the hard one is kept: lowering it
/// could not be undone). The limit bounds fd *numbers*: with `soft` at 3 no new
/// fd can be opened at all, whatever is open already.
pub fn set_soft_nofile(pid: u32, soft: u64) {
    let (_, hard) = nofile(pid);
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: prlimit(2) setting the limit of our own child from a local.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The number of fds `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
