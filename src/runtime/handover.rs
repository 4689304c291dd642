//! The new process's side of a binary upgrade (SPEC section 11): the listening
//! sockets it inherits from the old process, and the one-shot report it sends
//! back (ready, or why it could not start).
//!
//! The old process starts the new one with the listening descriptors open (not
//! close-on-exec) and names them in `SIMIAN_LISTEN_FDS`; the write end of a
//! pipe is named in `SIMIAN_UPGRADE_FD`. Inherited descriptors rather than
//! SCM_RIGHTS: the new process is our child, so exec already carries them, and
//! nothing can go wrong between "sent" and "received".

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use parking_lot::Mutex;

use crate::net::listen::Listener;

pub const LISTEN_FDS: &str = "SIMIAN_LISTEN_FDS";
pub const REPORT_FD: &str = "SIMIAN_UPGRADE_FD";
/// The old process's admin states, as `simian ctl` commands.
pub const ADMIN_STATE: &str = "SIMIAN_ADMIN_STATE";

/// Sockets taken over from the old process, until `start` uses them.
static SOCKETS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());
/// The pipe to the old process, until the report is sent.
static REPORT: Mutex<Option<File>> = Mutex::new(None);
static ADMIN: Mutex<String> = Mutex::new(String::new());

/// Take over what the old process handed down, if this process is the new one
/// of an upgrade. Call first thing in `main`, before any thread starts: it
/// removes the variables from the environment (a later upgrade sets its own).
pub fn adopt_from_env() {
    let fds = std::env::var(LISTEN_FDS).ok();
    let report = std::env::var(REPORT_FD).ok();
    *ADMIN.lock() = std::env::var(ADMIN_STATE).unwrap_or_default();
    std::env::remove_var(LISTEN_FDS);
    std::env::remove_var(REPORT_FD);
    std::env::remove_var(ADMIN_STATE);
    if let Some(fd) = report.as_deref().and_then(parse_fd) {
        // SAFETY: the old process opened this descriptor for us and nothing
        // else in this process knows it; close-on-exec from now on.
        let f = unsafe { File::from_raw_fd(fd) };
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        *REPORT.lock() = Some(f);
    }
    let Some(list) = fds else { return };
    let mut sockets = SOCKETS.lock();
    for fd in list.split(',').filter_map(parse_fd) {
        // SAFETY: as above: a descriptor the old process left open for us.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match Listener::adopt(owned) {
            Ok(l) => sockets.push(l),
            Err(e) => crate::error!("upgrade: inherited descriptor {fd}: {e}; ignored"),
        }
    }
}

fn parse_fd(s: &str) -> Option<RawFd> {
    s.trim().parse().ok().filter(|&fd| fd > 2)
}

/// Whether this process was started by an upgrade (and has not reported yet).
pub fn is_upgrade() -> bool {
    REPORT.lock().is_some()
}

/// The inherited sockets (once; empty when this process was not started by an
/// upgrade).
pub fn take_sockets() -> Vec<Listener> {
    std::mem::take(&mut *SOCKETS.lock())
}

/// The old process's admin states (once; empty if none).
pub fn take_admin_state() -> String {
    std::mem::take(&mut *ADMIN.lock())
}

/// Tell the old process that this one serves: it stops accepting and drains.
pub fn report_ready() {
    report("ready\n");
}

/// Tell the old process why this one cannot start: it keeps serving and logs it.
pub fn report_failure(why: &str) {
    report(&format!("error\n{why}"));
}

fn report(msg: &str) {
    if let Some(mut f) = REPORT.lock().take() {
        if let Err(e) = f.write_all(msg.as_bytes()) {
            crate::error!("upgrade: cannot report to the old process: {e}");
        }
    }
}
