//! The access log: one NCSA combined line per request plus simian's fields
//! (SPEC section 5), written without ever blocking a worker on the disk.
//!
//! Each worker formats lines into its own buffer (no lock, no syscall per
//! request) and hands full buffers, or whatever it has every 500 ms, to the log
//! thread (`logsink`): a bounded queue, so a slow disk costs dropped lines
//! (counted), never a stalled worker.

use std::io::Write;
use std::path::Path;

use crate::logsink::{Sink, Target};

static SINK: crate::logsink::Global = std::sync::OnceLock::new();

/// Buffers bigger than this are handed over at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// Batches queued for the log thread at most (about 4 MiB of lines); beyond that
/// the disk is slower than the traffic and lines are dropped and counted.
const QUEUED_BATCHES: usize = 64;

/// Open the access log (nothing is written while `path` is None) and start its
/// thread, once per process.
pub fn start(path: Option<&Path>) -> std::io::Result<()> {
    let target = target(path)?;
    if let Some(s) = SINK.get() {
        s.reopen(target);
        return Ok(());
    }
    let sink = Sink::start(
        "simian-log",
        target,
        (QUEUED_BATCHES, QUEUED_BATCHES),
        |e| crate::error!("access log: {e}"),
    )?;
    let _ = SINK.set(sink);
    Ok(())
}

fn target(path: Option<&Path>) -> std::io::Result<Target> {
    match path {
        Some(p) => Target::open(p),
        None => Ok(Target::Discard),
    }
}

/// SIGHUP: reopen (logrotate moved the file), possibly at a new path.
pub fn reopen(path: Option<&Path>) {
    let Some(s) = SINK.get() else { return };
    match target(path) {
        Ok(t) => {
            if !s.reopen(t) {
                crate::error!("access log: the log thread is stuck; not reopened");
            }
        }
        Err(e) => crate::error!(
            "cannot reopen access log {}: {e}",
            path.map_or("-".into(), |p| p.display().to_string())
        ),
    }
}

/// Hand a worker's buffer to the log thread; dropped (and counted) when it is
/// behind.
pub fn submit(lines: Vec<u8>) {
    if let Some(s) = SINK.get() {
        s.submit(lines);
    }
}

/// A buffer for a worker's next lines: a returned one if any.
pub fn spare_buffer() -> Vec<u8> {
    match SINK.get() {
        Some(s) => s.spare_buffer(FLUSH_AT + 4096),
        None => Vec::with_capacity(FLUSH_AT + 4096),
    }
}

/// Exit: write what is queued, waiting at most `within`.
pub fn finish(within: std::time::Duration) {
    if let Some(s) = SINK.get() {
        s.finish(within);
    }
}

/// Lines dropped because the log was slower than the traffic.
pub fn dropped() -> u64 {
    SINK.get().map_or(0, Sink::dropped)
}

/// What one line says.
pub struct Entry<'a> {
    pub client: Option<std::net::IpAddr>,
    pub request_line: &'a [u8],
    pub status: u16,
    pub bytes_to_client: u64,
    pub referer: &'a [u8],
    pub user_agent: &'a [u8],
    pub bytes_from_client: u64,
    pub duration_ms: u64,
    pub server: &'a str,
    pub route: &'a str,
    /// `%{request_id}` of a rule that sent one: one more field after ROUTE.
    pub request_id: Option<u64>,
}

/// Append a quoted-safe copy: `"` `\` and non-printables as `\xHH` (nginx's rule),
/// so a hostile request line cannot forge fields or lines.
fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    let clean = |b: u8| b != b'"' && b != b'\\' && (0x20..0x7f).contains(&b);
    if s.iter().all(|&b| clean(b)) {
        out.extend_from_slice(s);
        return;
    }
    for &b in s {
        if clean(b) {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

fn num(out: &mut Vec<u8>, n: u64) {
    // itoa: the fmt machinery cost more than the rest of the line (perf).
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Format one line into `out`. `date` is the cached `[dd/Mon/yyyy:hh:mm:ss +0000]`.
pub fn format(out: &mut Vec<u8>, date: &[u8], e: &Entry) {
    match e.client {
        Some(ip) => crate::http::rewrite::push_ip(out, ip),
        None => out.extend_from_slice(b"unix"),
    }
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(date);
    out.extend_from_slice(b" \"");
    escaped(out, e.request_line);
    out.extend_from_slice(b"\" ");
    num(out, u64::from(e.status));
    out.push(b' ');
    num(out, e.bytes_to_client);
    out.extend_from_slice(b" \"");
    escaped(out, e.referer);
    out.extend_from_slice(b"\" \"");
    escaped(out, e.user_agent);
    out.extend_from_slice(b"\" ");
    num(out, e.bytes_from_client);
    out.push(b' ');
    num(out, e.duration_ms);
    out.push(b' ');
    out.extend_from_slice(e.server.as_bytes());
    out.push(b' ');
    out.extend_from_slice(e.route.as_bytes());
    if let Some(id) = e.request_id {
        let _ = write!(out, " {id:016x}");
    }
    out.push(b'\n');
}

/// `[22/Nov/2026:19:00:00 +0000]` for a Unix time, in UTC.
///
/// By hand because it is a dozen lines (Howard Hinnant's civil-from-days) and the
/// date crates that format it (chrono, time) are large for one format string.
pub fn ncsa_date(unix: u64) -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "[{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000]",
        MON[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(ncsa_date(0), "[01/Jan/1970:00:00:00 +0000]");
        // 2026-11-22T19:00:00Z
        assert_eq!(ncsa_date(1_795_374_000), "[22/Nov/2026:19:00:00 +0000]");
        assert_eq!(ncsa_date(951_782_400), "[29/Feb/2000:00:00:00 +0000]");
    }

    #[test]
    fn line() {
        let mut out = Vec::new();
        let e = Entry {
            client: Some("10.0.0.1".parse().unwrap()),
            request_line: b"GET /a\"b HTTP/1.1",
            status: 200,
            bytes_to_client: 1234,
            referer: b"",
            user_agent: b"curl/8",
            bytes_from_client: 77,
            duration_ms: 3,
            server: "127.0.0.1:8081",
            route: "static",
            request_id: None,
        };
        format(&mut out, b"[22/Nov/2026:19:00:00 +0000]", &e);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [22/Nov/2026:19:00:00 +0000] \"GET /a\\x22b HTTP/1.1\" 200 1234 \"-\" \"curl/8\" 77 3 127.0.0.1:8081 static\n"
        );
    }
}
