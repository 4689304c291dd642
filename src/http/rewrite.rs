//! Building the heads simian sends: the request to the backend, the
//! response to the client, and simian's own error responses. Each writes
//! into a reused `Vec` (cleared first) and allocates nothing else.
//!
//! Hop-by-hop handling (RFC 9110 §7.6.1): `Connection`, `Keep-Alive`,
//! `Proxy-Connection`, `TE` and every field named by `Connection` are
//! dropped and simian writes its own `Connection`. Two hop-by-hop fields are
//! deliberately kept: `Transfer-Encoding`, because bodies are forwarded
//! unchanged, chunked framing included; and `Upgrade` for an upgrade
//! (request with `upgrade` set, or a 101). `Trailer` is kept too since the
//! trailers it announces are forwarded.

use std::io::Write;
use std::net::IpAddr;

use super::fields::{list_items, named_in_connection, Headers, Omit};
use super::request::{BodyFraming, RequestHead};
use super::response::ResponseHead;

/// Append an IP address as text: IPv4 without the `fmt` machinery, which costs
/// more per request than the rest of the header rewrite (perf).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(b.format(o).as_bytes());
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

pub struct ForwardInfo<'a> {
    /// Client address for `X-Forwarded-For`; `None` (a unix socket client)
    /// is written as `unknown`, the RFC 7239 spelling for it.
    pub client_ip: Option<IpAddr>,
    /// Value of `X-Forwarded-Proto`, e.g. `"http"`.
    pub proto: &'a str,
    /// simian wants to reuse the backend connection after this request.
    pub keep_backend_alive: bool,
    /// The subject of the client's verified TLS certificate, sent as
    /// `X-Client-Cert-Subject` (a client's own such field never passes).
    pub client_cert_subject: Option<&'a str>,
}

/// What to do with one received header line.
enum Fate {
    Keep,
    Drop,
    /// Drop only if a `Connection` option names it (cold: checked only when
    /// the head has such options).
    DropIfNamed,
}

fn fate(name: &[u8], keep_upgrade: bool) -> Fate {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => Fate::Drop,
        7 if is(b"upgrade") => {
            if keep_upgrade {
                Fate::Keep
            } else {
                Fate::Drop
            }
        }
        10 if is(b"connection") || is(b"keep-alive") => Fate::Drop,
        16 if is(b"proxy-connection") => Fate::Drop,
        // Framing and Host must survive whatever `Connection` says, or a
        // client could make simian and the backend frame the body apart.
        4 if is(b"host") => Fate::Keep,
        14 if is(b"content-length") => Fate::Keep,
        17 if is(b"transfer-encoding") => Fate::Keep,
        _ => Fate::DropIfNamed,
    }
}

/// Append the header lines of `buf[block]` (from the first header line to the
/// head's end) that go to the next hop: the block minus the lines the parser
/// noted, or, when it could not tell (`omit.scan`), a line-by-line scan.
fn copy_headers(
    buf: &[u8],
    block: std::ops::Range<usize>,
    omit: &Omit,
    options: bool,
    keep_upgrade: bool,
    skip: &[&[u8]],
    out: &mut Vec<u8>,
) {
    if !omit.scan {
        // The block ends with the empty line that ends the head.
        omit.copy(buf, block.start, block.end.saturating_sub(2), out);
        return;
    }
    let headers = Headers::new(buf, block.start, block.end);
    for h in headers.clone() {
        if skip.iter().any(|s| h.name.eq_ignore_ascii_case(s)) {
            continue;
        }
        let keep = match fate(h.name, keep_upgrade) {
            Fate::Keep => true,
            Fate::Drop => false,
            Fate::DropIfNamed => !options || !named_in_connection(headers.clone(), h.name),
        };
        if keep {
            out.extend_from_slice(h.line);
        }
    }
}

/// Writes the head to send to the backend. Request line and `Host` are
/// copied as received; `X-Forwarded-For` gets the client appended (several
/// received lines are merged into one); `X-Forwarded-Proto` is replaced.
/// `Connection` is `upgrade` for an upgrade, `keep-alive` for a reused
/// HTTP/1.0 exchange, `close` when simian will not reuse the connection,
/// and absent otherwise (HTTP/1.1 default).
pub fn write_request_head(
    buf: &[u8],
    head: &RequestHead,
    info: &ForwardInfo<'_>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(buf.get(head.start..head.headers_start).unwrap_or(&[]));
    const SKIP: &[&[u8]] = &[
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-client-cert-subject",
    ];
    const SKIP_FRAMING: &[&[u8]] = &[
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-client-cert-subject",
        b"content-length",
        b"transfer-encoding",
    ];
    copy_headers(
        buf,
        head.headers_start..head.head_len,
        &head.omit,
        head.connection_options,
        head.upgrade,
        if head.reframe { SKIP_FRAMING } else { SKIP },
        out,
    );
    if head.reframe {
        match head.framing {
            BodyFraming::ContentLength(n) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            BodyFraming::None => {}
        }
    }
    if head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !info.keep_backend_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if head.version_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    // Without `scan` the head has no X-Forwarded-For line to merge.
    if head.omit.scan {
        let received = head.headers(buf);
        for h in received.filter(|h| h.name.eq_ignore_ascii_case(b"x-forwarded-for")) {
            for item in list_items(h.value) {
                out.extend_from_slice(item);
                out.extend_from_slice(b", ");
            }
        }
    }
    match info.client_ip {
        Some(ip) => push_ip(out, ip),
        None => out.extend_from_slice(b"unknown"),
    }
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(info.proto.as_bytes());
    if let Some(subject) = info.client_cert_subject {
        out.extend_from_slice(b"\r\nX-Client-Cert-Subject: ");
        out.extend_from_slice(subject.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes the head to send to the client: status line and end-to-end
/// headers as received, then `Connection: upgrade` for a 101, nothing for
/// other 1xx, else `close`, or `keep-alive` for an HTTP/1.0 client (`client_http10`)
/// per `client_keep_alive`. An HTTP/1.1 connection persists by default (RFC 9112
/// section 9.3): saying so costs every client's parser a header (measured: +26% of
/// wrk's instructions per response), and HAProxy does not say it either.
/// A close-delimited response requires `client_keep_alive == false`.
pub fn write_response_head(
    buf: &[u8],
    head: &ResponseHead,
    client_keep_alive: bool,
    client_http10: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(buf.get(head.start..head.headers_start).unwrap_or(&[]));
    copy_headers(
        buf,
        head.headers_start..head.head_len,
        &head.omit,
        head.connection_options,
        head.upgrade,
        if head.reframe {
            &[b"content-length"]
        } else {
            &[]
        },
        out,
    );
    if let (true, Some(n)) = (head.reframe, head.declared_length) {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if head.is_interim() {
        // An interim response says nothing about the connection.
    } else if client_keep_alive {
        if client_http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    } else {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reason phrase for the statuses simian sends or commonly forwards.
pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

/// A complete simian-generated response with a one-line text body (the
/// cause goes to the log, not to the client). `head_only`: the answer to a
/// HEAD request, the head alone (RFC 9110 9.3.2: on a kept connection a body
/// would be read as the start of the next response). Returns the head length.
pub fn error_response(status: u16, close: bool, head_only: bool, out: &mut Vec<u8>) -> usize {
    error_response_with(status, close, "", head_only, out)
}

/// Like [`error_response`] with `extra_headers`, complete lines each ending
/// in CRLF (e.g. `"Retry-After: 5\r\n"`), inserted before the blank line.
pub fn error_response_with(
    status: u16,
    close: bool,
    extra_headers: &str,
    head_only: bool,
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    let text = status_text(status);
    // Body is "NNN Text\n"; status is any u16, count its digits.
    let digits = status.checked_ilog10().unwrap_or(0) as usize + 1;
    let body_len = digits + 1 + text.len() + 1;
    let connection = if close { "close" } else { "keep-alive" };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n\
         Connection: {connection}\r\n{extra_headers}\r\n"
    );
    let head_len = out.len();
    if !head_only {
        let _ = writeln!(out, "{status} {text}");
    }
    head_len
}

#[cfg(test)]
mod tests;
