//! `request_head`: `simian::http::parse_request` on arbitrary bytes.
//!
//! Properties (beyond "no panic"), for every head the parser accepts:
//! - every range it returns lies inside the head and in order (request line, target,
//!   path inside target, Host inside the header block), and the head ends with CRLFCRLF;
//! - parsing the head alone gives the same result (bytes after it are never looked at),
//!   and any cut of the head inside the request is `Incomplete`, never refused: a head
//!   arriving in pieces must not be answered differently from a whole one;
//! - the I/O loop's pre-checks agree: `head_may_be_complete` says yes once the end is
//!   in, `cannot_start_a_request` says no;
//! - framing follows SPEC section 4 (chunked only on HTTP/1.1, Host required on 1.1);
//! - the head simian forwards (`write_request_head`) parses again with the same
//!   method, target, version, Host, framing and upgrade: the backend frames the
//!   request exactly as simian did (no request smuggling through the rewrite).

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use simian::http::{
    cannot_start_a_request, head_may_be_complete, parse_request, write_request_head, BodyFraming,
    ForwardInfo, RequestError, MAX_HEAD,
};

/// By design (docs/decisions.md, fuzz/RESULTS.md finding 2): a head within simian's
/// limits (100 header lines, 64 KiB) may exceed them once forwarded, by the fields
/// simian adds (`X-Forwarded-*` to requests, `Connection` to responses); such a
/// forwarded head is not re-parsed. fuzz/regressions/ has inputs.
const FORWARDED_MAY_EXCEED_LIMITS: bool = true;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_request(data) else { return };
    let head = &data[..h.head_len];

    // Ranges in bounds and in order.
    assert!(h.head_len <= data.len() && h.head_len <= MAX_HEAD);
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "head does not end with CRLFCRLF"
    );
    assert!(head[..h.start].iter().all(|&b| b == b'\r' || b == b'\n'));
    assert!(h.start < h.target.start && h.target.start < h.target.end);
    assert!(h.target.end < h.headers_start && h.headers_start <= h.head_len - 2);
    assert!(h.path.start >= h.target.start && h.path.end <= h.target.end);
    assert!(h.path.start <= h.path.end);
    assert_eq!(data[h.target.start - 1], b' ');
    let tail: &[u8] = if h.version_minor == 1 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    };
    assert_eq!(&data[h.target.end..h.headers_start], tail);
    assert_eq!(h.request_line(), h.start..h.headers_start - 2);
    if let Some(host) = &h.host {
        assert!(host.start >= h.headers_start && host.end <= h.head_len);
    }
    assert!(!h.method_bytes(data).is_empty());
    assert!(h.version_minor <= 1);

    // Header lines: each a `name: value` line ending in CRLF, names are tokens.
    let mut lines = 0;
    for l in h.headers(data) {
        lines += 1;
        assert!(l.line.ends_with(b"\r\n"));
        assert!(!l.name.is_empty() && l.name.iter().all(|&b| b > b' ' && b != b':'));
    }
    let block = &data[h.headers_start..h.head_len - 2];
    assert_eq!(lines, block.iter().filter(|&&b| b == b'\n').count());

    // Framing rules.
    match h.framing {
        BodyFraming::Chunked => assert_eq!(h.version_minor, 1),
        BodyFraming::ContentLength(_) | BodyFraming::None => {}
    }
    if h.version_minor == 1 {
        assert!(h.host.is_some(), "HTTP/1.1 request accepted without Host");
    }
    assert!(!(h.upgrade && h.version_minor == 0));

    // The head alone parses the same; a cut inside it is only ever incomplete.
    assert_eq!(parse_request(head).as_ref(), Ok(&h));
    let cuts = [h.head_len - 1, (h.start + h.head_len) / 2, h.target.end];
    for cut in cuts.into_iter().filter(|&c| c > h.start && c < h.head_len) {
        assert_eq!(
            parse_request(&data[..cut]),
            Err(RequestError::Incomplete),
            "a prefix of an accepted head ({cut} of {} bytes) was refused",
            h.head_len
        );
    }

    // The I/O loop's pre-checks never hold back a complete head.
    assert!(!cannot_start_a_request(data));
    let prev = usize::from(data[0]) % h.head_len;
    assert!(head_may_be_complete(head, h.head_len - 1));
    assert!(head_may_be_complete(head, prev));

    // Forwarded head: parses again, frames the same.
    let info = ForwardInfo {
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        proto: "http",
        keep_backend_alive: data.len().is_multiple_of(2),
        client_cert_subject: None,
    };
    let mut out = Vec::new();
    write_request_head(data, &h, &info, &mut out);
    if FORWARDED_MAY_EXCEED_LIMITS && parse_request(&out) == Err(RequestError::TooLarge) {
        return;
    }
    let again = parse_request(&out).unwrap_or_else(|e| {
        panic!(
            "{:?} rewritten to unparsable {:?}: {e}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.method_bytes(&out), h.method_bytes(data));
    assert_eq!(&out[again.target.clone()], &data[h.target.clone()]);
    assert_eq!(&out[again.path.clone()], &data[h.path.clone()]);
    assert_eq!(
        (
            again.method,
            again.version_minor,
            again.framing,
            again.upgrade
        ),
        (h.method, h.version_minor, h.framing, h.upgrade)
    );
    assert_eq!(
        again.host.map(|r| &out[r]),
        h.host.clone().map(|r| &data[r])
    );
    // simian's own `Connection` decides persistence towards the backend.
    assert_eq!(again.keep_alive, info.keep_backend_alive || h.upgrade);
    // What simian wrote is already canonical: nothing left to reframe.
    assert!(!again.reframe, "the rewritten head still needs reframing");
});
