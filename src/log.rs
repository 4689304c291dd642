//! The error log: leveled lines to stderr (or `ErrorLog`).
//!
//! Written by hand because it is a level check on an atomic and a preformatted
//! line (so lines from several workers never interleave). Once the server runs,
//! lines go through a bounded queue to a log thread (`logsink`): a worker that
//! logs never waits on the file, and when the file is slower than the errors,
//! lines are dropped and counted. Before that (`--check`, start-up) and after the
//! log thread finished, they are written directly.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use crate::logsink::{Sink, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static SINK: crate::logsink::Global = std::sync::OnceLock::new();
/// Error lines queued at most; beyond that they are dropped and counted.
const QUEUED_LINES: usize = 10_000;
static FINISHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_level(name: &str) -> Result<(), String> {
    let l = match name.to_ascii_lowercase().as_str() {
        "error" => Level::Error,
        "warn" | "warning" => Level::Warn,
        "info" => Level::Info,
        "debug" => Level::Debug,
        _ => {
            return Err(format!(
                "unknown log level `{name}` (error, warn, info, debug)"
            ))
        }
    };
    LEVEL.store(l as u8, Relaxed);
    Ok(())
}

/// Start the log thread writing to `path` (stderr when None), or switch an
/// already started one to it (SIGHUP: logrotate moved the file).
pub fn set_file(path: Option<&std::path::Path>) -> std::io::Result<()> {
    let target = match path {
        Some(p) => Target::open(p)?,
        None => Target::Stderr,
    };
    if let Some(s) = SINK.get() {
        if !s.reopen(target) {
            crate::error!("error log: the log thread is stuck; not reopened");
        }
        return Ok(());
    }
    // A failed write to the error log has nowhere better to be reported.
    let _ = SINK.set(Sink::start(
        "simian-errlog",
        target,
        (QUEUED_LINES, 0),
        |_| {},
    )?);
    Ok(())
}

/// Exit: write what is queued, waiting at most `within`; later lines go
/// directly to stderr.
pub fn finish(within: std::time::Duration) {
    if let Some(s) = SINK.get() {
        s.finish(within);
        FINISHED.store(true, Relaxed);
    }
}

/// Lines dropped because the error log was slower than the errors.
pub fn dropped() -> u64 {
    SINK.get().map_or(0, Sink::dropped)
}

pub fn enabled(l: Level) -> bool {
    l as u8 <= LEVEL.load(Relaxed)
}

pub fn write(l: Level, args: std::fmt::Arguments) {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let tag = match l {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    let line = format!("{now} simian[{}] {tag}: {args}\n", std::process::id());
    match SINK.get().filter(|_| !FINISHED.load(Relaxed)) {
        Some(s) => {
            s.submit(line.into_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

#[macro_export]
macro_rules! log_at {
    ($l:expr, $($a:tt)*) => {
        if $crate::log::enabled($l) { $crate::log::write($l, format_args!($($a)*)) }
    };
}
#[macro_export]
macro_rules! error { ($($a:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($a)*) }; }
#[macro_export]
macro_rules! warn { ($($a:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($a)*) }; }
#[macro_export]
macro_rules! info { ($($a:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($a)*) }; }
#[macro_export]
macro_rules! debug { ($($a:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($a)*) }; }

/// True at most once per wall-clock second for `last` (a caller's own static):
/// for messages that a failing resource would repeat for every request.
pub fn once_a_second(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::stats::counters::unix_now();
    let prev = last.load(Relaxed);
    prev != now && last.compare_exchange(prev, now, Relaxed, Relaxed).is_ok()
}
