//! The error log: leveled lines to stderr (or `ErrorLog`), off the hot path except
//! for errors, which are rare by definition.
//!
//! Written by hand because it is twenty lines: a level check on an atomic and one
//! `write` of a preformatted line (so lines from several workers never interleave).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

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

/// Send the log to a file instead of stderr (reopened on SIGHUP).
pub fn set_file(path: Option<&std::path::Path>) -> std::io::Result<()> {
    let f = match path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => None,
    };
    *FILE.lock() = f;
    Ok(())
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
    match FILE.lock().as_mut() {
        Some(f) => {
            let _ = f.write_all(line.as_bytes());
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
