//! `rewrite`: the heads simian forwards, `write_request_head` (to the backend) and
//! `write_response_head` (to the client), on heads the parser accepted.
//!
//! Input: `data[0]` picks request or response and the forwarding options (keep-alive,
//! client address, scheme, client certificate, HEAD); the rest is the received head.
//!
//! Properties of what simian sends:
//! - it parses again, is exactly one head, starts with the received start line and
//!   frames the body as the received head did;
//! - exactly one framing: never both `Content-Length` and `Transfer-Encoding`, never
//!   two `Content-Length` lines or a `Content-Length` list (RFC 9112 6.3, 11.2:
//!   the next hop must not be able to frame the message another way);
//! - hop-by-hop fields are gone (RFC 9110 7.6.1): `Connection`, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Upgrade` unless upgrading, and every field named in
//!   `Connection` (but `Host` and the framing fields, which simian keeps on purpose);
//!   the only `Connection` line is simian's own;
//! - every other received line is forwarded unchanged and in order;
//! - requests: exactly one `X-Forwarded-For` (the received list plus the client),
//!   one `X-Forwarded-Proto`, and `X-Client-Cert-Subject` only as simian sets it.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use simian::http::{
    parse_request, parse_response, write_request_head, write_response_head, BodyFraming,
    ForwardInfo, RequestError, ResponseError, ResponseFraming,
};

/// A head's header lines as `(lowercase name, trimmed value, whole line)`, split here
/// independently of simian's own iterator.
fn lines(head: &[u8], from: usize) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let block = &head[from..head.len() - 2];
    let mut out = Vec::new();
    let mut rest = block;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..i + 2];
        rest = &rest[i + 2..];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .expect("header line without colon");
        let name = line[..colon].to_ascii_lowercase();
        let value = trim(&line[colon + 1..i]).to_vec();
        out.push((name, value, line.to_vec()));
    }
    assert!(rest.is_empty(), "header block does not end with CRLF");
    out
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', r @ ..] = s {
        s = r;
    }
    while let [r @ .., b' ' | b'\t'] = s {
        s = r;
    }
    s
}

fn items(v: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    v.split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_ascii_lowercase)
}

type Lines = Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>;

/// Names the forwarded head must not carry (lowercase), from the received lines.
fn hop_by_hop(received: &Lines, keep_upgrade: bool) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"te",
    ]
    .map(<[u8]>::to_vec)
    .into();
    if !keep_upgrade {
        names.push(b"upgrade".to_vec());
    }
    for (n, v, _) in received {
        if n == b"connection" {
            names.extend(items(v));
        }
    }
    // Kept whatever `Connection` says, or the next hop could frame the body apart.
    let protected: [&[u8]; 3] = [b"host", b"content-length", b"transfer-encoding"];
    names.retain(|n| !protected.contains(&n.as_slice()) && !(keep_upgrade && n == b"upgrade"));
    names
}

/// KNOWN ISSUE (fuzz/RESULTS.md, finding 1b): a `Content-Length` list (or two equal
/// lines) on a response without a body (HEAD, 204, 304, 1xx) still reaches the client
/// as received; with a body it is one canonical line since finding 1 was fixed.
/// Tolerated for bodiless responses only; set to false once src/ fixes it
/// (fuzz/regressions/rewrite/response_cl_list_no_body_*).
const KNOWN_BODILESS_RESPONSE_CL_LIST: bool = false;

/// By design (docs/decisions.md, fuzz/RESULTS.md finding 2): a head within simian's
/// limits may exceed them once forwarded, by the fields simian adds.
const FORWARDED_MAY_EXCEED_LIMITS: bool = true;

/// One framing, written once (`cl_list_ok`: see `KNOWN_BODILESS_RESPONSE_CL_LIST`).
fn check_framing(sent: &Lines, cl_list_ok: bool) {
    let cl: Vec<_> = sent
        .iter()
        .filter(|(n, _, _)| n == b"content-length")
        .collect();
    let te = sent.iter().any(|(n, _, _)| n == b"transfer-encoding");
    assert!(
        !(te && !cl.is_empty()),
        "both Content-Length and Transfer-Encoding forwarded"
    );
    if cl_list_ok {
        return;
    }
    assert!(cl.len() <= 1, "{} Content-Length lines forwarded", cl.len());
    if let Some((_, v, _)) = cl.first() {
        assert!(
            !v.contains(&b','),
            "Content-Length list forwarded: {:?}",
            String::from_utf8_lossy(v)
        );
    }
}

/// Received lines minus `dropped` equal the sent lines minus `added`, in order.
fn check_kept(received: &Lines, sent: &Lines, dropped: &[Vec<u8>], added: &[Vec<u8>]) {
    let keep = |l: &Lines, skip: &[Vec<u8>]| -> Vec<Vec<u8>> {
        l.iter()
            .filter(|(n, _, _)| !skip.contains(n))
            .map(|(_, _, line)| line.clone())
            .collect()
    };
    let (want, got) = (keep(received, dropped), keep(sent, added));
    assert_eq!(
        want.iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>(),
        got.iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>(),
        "end-to-end lines not forwarded unchanged"
    );
}

fn names(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|n| n.to_vec()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        request(flags, buf);
    } else {
        response(flags, buf);
    }
});

fn request(flags: u8, buf: &[u8]) {
    let Ok(h) = parse_request(buf) else { return };
    let client_ip = match (flags >> 2) & 3 {
        0 => Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        1 => Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))),
        _ => None,
    };
    let info = ForwardInfo {
        client_ip,
        proto: if flags & 16 != 0 { "https" } else { "http" },
        keep_backend_alive: flags & 2 != 0,
        client_cert_subject: (flags & 32 != 0).then_some("CN=fuzz,O=simian"),
    };
    let mut out = Vec::new();
    write_request_head(buf, &h, &info, &mut out);
    if FORWARDED_MAY_EXCEED_LIMITS && parse_request(&out) == Err(RequestError::TooLarge) {
        return;
    }
    let again = parse_request(&out).unwrap_or_else(|e| panic!("forwarded head refused: {e}"));
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.framing, h.framing);
    assert_eq!(&out[..again.headers_start], &buf[h.start..h.headers_start]);

    let received = lines(&buf[..h.head_len], h.headers_start);
    let sent = lines(&out, again.headers_start);
    check_framing(&sent, false);

    // simian's own fields are written for the next hop whatever `Connection` said.
    let own = names(&[
        b"connection",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-client-cert-subject",
    ]);
    let hop = hop_by_hop(&received, h.upgrade);
    for (n, _, _) in &sent {
        assert!(
            own.contains(n) || !hop.contains(n),
            "hop-by-hop {:?} forwarded",
            String::from_utf8_lossy(n)
        );
    }
    let conn: Vec<_> = sent.iter().filter(|(n, _, _)| n == b"connection").collect();
    let want_conn: Option<&[u8]> = if h.upgrade {
        Some(b"upgrade")
    } else if !info.keep_backend_alive {
        Some(b"close")
    } else if h.version_minor == 0 {
        Some(b"keep-alive")
    } else {
        None
    };
    assert_eq!(
        conn.iter()
            .map(|(_, v, _)| v.as_slice())
            .collect::<Vec<_>>(),
        Vec::from_iter(want_conn)
    );

    // simian's own fields.
    let one = |name: &[u8]| -> Vec<Vec<u8>> {
        sent.iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.clone())
            .collect()
    };
    let mut xff: Vec<u8> = Vec::new();
    for (n, v, _) in &received {
        if n == b"x-forwarded-for" {
            for item in v.split(|&b| b == b',').map(trim).filter(|s| !s.is_empty()) {
                xff.extend_from_slice(item);
                xff.extend_from_slice(b", ");
            }
        }
    }
    xff.extend_from_slice(
        client_ip
            .map_or("unknown".to_string(), |ip| ip.to_string())
            .as_bytes(),
    );
    assert_eq!(one(b"x-forwarded-for"), [xff]);
    assert_eq!(one(b"x-forwarded-proto"), [info.proto.as_bytes().to_vec()]);
    let subject: Vec<Vec<u8>> = info
        .client_cert_subject
        .map(|s| s.as_bytes().to_vec())
        .into_iter()
        .collect();
    assert_eq!(one(b"x-client-cert-subject"), subject);

    let mut ours = own;
    if h.reframe {
        ours.extend(names(&[b"content-length", b"transfer-encoding"]));
        let want: &[u8] = match h.framing {
            BodyFraming::ContentLength(_) => b"content-length",
            BodyFraming::Chunked => b"transfer-encoding",
            BodyFraming::None => unreachable!("reframe without a body"),
        };
        assert_eq!(sent.iter().filter(|(n, _, _)| n == want).count(), 1);
    }
    let mut dropped = hop.clone();
    dropped.extend(ours.iter().cloned());
    check_kept(&received, &sent, &dropped, &ours);
}

fn response(flags: u8, buf: &[u8]) {
    let is_head = flags & 64 != 0;
    let Ok(r) = parse_response(buf, is_head) else {
        return;
    };
    let client_keep = r.keep_alive && flags & 2 != 0;
    let mut out = Vec::new();
    write_response_head(buf, &r, client_keep, true, &mut out);
    if FORWARDED_MAY_EXCEED_LIMITS && parse_response(&out, is_head) == Err(ResponseError::TooLarge)
    {
        return;
    }
    let again =
        parse_response(&out, is_head).unwrap_or_else(|e| panic!("forwarded head refused: {e}"));
    assert_eq!(again.head_len, out.len());
    assert_eq!(
        (again.status, again.framing, again.upgrade),
        (r.status, r.framing, r.upgrade)
    );
    assert_eq!(&out[..again.headers_start], &buf[r.start..r.headers_start]);

    let received = lines(&buf[..r.head_len], r.headers_start);
    let sent = lines(&out, again.headers_start);
    check_framing(
        &sent,
        KNOWN_BODILESS_RESPONSE_CL_LIST && r.framing == ResponseFraming::None,
    );

    let hop = hop_by_hop(&received, r.upgrade);
    for (n, _, _) in &sent {
        assert!(
            n == b"connection" || !hop.contains(n),
            "hop-by-hop {:?} forwarded",
            String::from_utf8_lossy(n)
        );
    }
    let conn: Vec<&[u8]> = sent
        .iter()
        .filter(|(n, _, _)| n == b"connection")
        .map(|(_, v, _)| v.as_slice())
        .collect();
    let want_conn: Option<&[u8]> = if r.upgrade {
        Some(b"upgrade")
    } else if r.is_interim() {
        None
    } else if client_keep {
        Some(b"keep-alive")
    } else {
        Some(b"close")
    };
    assert_eq!(conn, Vec::from_iter(want_conn));
    // A Content-Length list or repetition is rewritten to one canonical line.
    let mut ours = names(&[b"connection"]);
    if r.reframe {
        ours.push(b"content-length".to_vec());
        // Also without a body (HEAD answer, 304): the declared length.
        let Some(n) = r.declared_length else {
            panic!("reframe without a length");
        };
        let cl: Vec<_> = sent.iter().filter(|(n, _, _)| n == b"content-length").collect();
        assert_eq!(cl.len(), 1);
        assert_eq!(cl[0].1, n.to_string().as_bytes());
    }
    let mut dropped = hop.clone();
    dropped.extend(ours.iter().cloned());
    check_kept(&received, &sent, &dropped, &ours);
}
