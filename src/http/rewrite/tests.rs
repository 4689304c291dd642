use super::*;
use crate::http::{parse_request, parse_response, BodyFraming, ResponseFraming};
use std::net::{Ipv4Addr, Ipv6Addr};

fn info(keep: bool) -> ForwardInfo<'static> {
    ForwardInfo {
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        proto: "http",
        client_cert_subject: None,
        keep_backend_alive: keep,
    }
}

fn forward(req: &str, info: &ForwardInfo<'_>) -> String {
    let head = parse_request(req.as_bytes()).unwrap();
    let mut out = b"stale".to_vec();
    write_request_head(req.as_bytes(), &head, info, &mut out);
    String::from_utf8(out).unwrap()
}

fn back(res: &str, head_req: bool, keep: bool) -> String {
    let head = parse_response(res.as_bytes(), head_req).unwrap();
    let mut out = Vec::new();
    write_response_head(res.as_bytes(), &head, keep, true, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn request_basic() {
    let req = "\r\nGET /a?b HTTP/1.1\r\nHost: Example.com\r\nAccept: */*\r\n\r\nBODY";
    assert_eq!(
        forward(req, &info(true)),
        "GET /a?b HTTP/1.1\r\nHost: Example.com\r\nAccept: */*\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[test]
fn request_hop_by_hop() {
    let req = "POST /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, Content-Length, Host, \
               Transfer-Encoding\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
               X-Secret: 1\r\nx-secret: 2\r\nUpgrade: websocket\r\nTrailer: X-Sum\r\n\
               Transfer-Encoding: chunked\r\nX-Other: 3\r\n\r\n";
    assert_eq!(
        forward(req, &info(true)),
        "POST /x HTTP/1.1\r\nHost: a\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\nX-Other: 3\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    let req =
        "POST /x HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 0\r\n\r\n";
    assert!(forward(req, &info(true)).contains("\r\nContent-Length: 0\r\n"));
}

#[test]
fn request_forwarded_headers() {
    let req = "GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nHost: a\r\n\
               X-Forwarded-Proto: https\r\nX-Forwarded-For: 10.0.0.3\r\nx-forwarded-for:\r\n\r\n";
    let v6 = ForwardInfo {
        client_ip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        proto: "https",
        client_cert_subject: None,
        keep_backend_alive: true,
    };
    assert_eq!(
        forward(req, &v6),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, ::1\r\n\
         X-Forwarded-Proto: https\r\n\r\n"
    );
    let unix = ForwardInfo {
        client_ip: None,
        proto: "http",
        client_cert_subject: None,
        keep_backend_alive: true,
    };
    assert!(forward("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &unix)
        .contains("X-Forwarded-For: unknown\r\n"));
}

#[test]
fn request_connection_header() {
    let r = forward("GET / HTTP/1.0\r\n\r\n", &info(true));
    assert_eq!(r, "GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n");
    assert!(forward("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &info(false))
        .contains("\r\nConnection: close\r\n"));
    assert!(forward("GET / HTTP/1.0\r\n\r\n", &info(false)).contains("\r\nConnection: close\r\n"));
    assert!(!forward(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        &info(true)
    )
    .contains("Connection"));
    let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: k\r\n\r\n";
    assert_eq!(
        forward(ws, &info(true)),
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nConnection: upgrade\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    let h2c =
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAA\r\n\r\n";
    assert_eq!(
        forward(h2c, &info(true)),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[test]
fn forwarded_request_reparses_identically() {
    let req = "POST /p HTTP/1.1\r\nHost: h\r\nConnection: close, x\r\nx: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let out = forward(req, &info(true));
    let again = parse_request(out.as_bytes()).unwrap();
    assert_eq!(again.framing, BodyFraming::Chunked);
    assert_eq!(again.head_len, out.len());
}

#[test]
fn response_basic() {
    let res =
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
               Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\r\nok";
    assert_eq!(
        back(res, false, true),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\r\n"
    );
    assert_eq!(
        back(res, false, false),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nConnection: close\r\n\r\n"
    );
    let chunked =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\r\n";
    let out = back(chunked, false, true);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(
        parse_response(out.as_bytes(), false).unwrap().framing,
        ResponseFraming::Chunked
    );
}

#[test]
fn response_interim_and_upgrade() {
    assert_eq!(
        back("HTTP/1.1 100 Continue\r\n\r\n", false, true),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    assert_eq!(
        back(
            "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
            false,
            false
        ),
        "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
    );
    let ws = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: x\r\n\r\n";
    assert_eq!(
        back(ws, false, true),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\nConnection: upgrade\r\n\r\n"
    );
}

#[test]
fn error_responses() {
    let mut out = Vec::new();
    let head_len = error_response(502, true, false, &mut out);
    let s = std::str::from_utf8(&out).unwrap();
    assert_eq!(
        s,
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\
         Connection: close\r\n\r\n502 Bad Gateway\n"
    );
    assert_eq!(&s[head_len..], "502 Bad Gateway\n");
    // To a HEAD: the same head (Content-Length of the body it would have), no body.
    let full = out.clone();
    let head_len = error_response(502, true, true, &mut out);
    assert_eq!((out.len(), &out[..]), (head_len, &full[..head_len]));
    let head_len = error_response_with(503, false, "Retry-After: 5\r\n", false, &mut out);
    let r = parse_response(&out, false).unwrap();
    assert_eq!((r.status, r.head_len, r.keep_alive), (503, head_len, true));
    assert!(std::str::from_utf8(&out)
        .unwrap()
        .contains("\r\nRetry-After: 5\r\n\r\n"));
    for status in [
        400, 403, 404, 408, 413, 431, 500, 501, 502, 503, 504, 505, 599, 7, 65535,
    ] {
        let head_len = error_response(status, true, false, &mut out);
        let body = &out[head_len..];
        let cl = format!("Content-Length: {}\r\n", body.len());
        assert!(std::str::from_utf8(&out).unwrap().contains(&cl), "{status}");
        if (100..=599).contains(&status) {
            assert_eq!(
                parse_response(&out, false).unwrap().framing,
                ResponseFraming::ContentLength(body.len() as u64)
            );
        }
    }
    assert_eq!(status_text(431), "Request Header Fields Too Large");
    assert_eq!(status_text(505), "HTTP Version Not Supported");
}

/// The copy that leaves out the lines the parser noted writes exactly what the
/// line-by-line scan writes, for any mix of kept and dropped fields, and no
/// hop-by-hop field gets through either way.
mod omit_matches_scan {
    use super::*;
    use proptest::prelude::*;

    const LINES: &[&str] = &[
        "Host: a",
        "Accept: */*",
        "X-Other: 3",
        "Connection: keep-alive",
        "connection: close",
        "Connection: X-Secret",
        "Connection: upgrade",
        "X-Secret: 1",
        "Keep-Alive: 300",
        "TE: trailers",
        "Proxy-Connection: keep-alive",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-Proto: https",
        "Upgrade: websocket",
        "Trailer: X-Sum",
        "Content-Length: 0",
        "Date: Mon, 23 Nov 2026 01:00:00 GMT",
        "Empty:",
        "Spaced:\t v \t",
    ];
    const HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-secret",
    ];

    /// Whether `hop` must be left out: X-Secret only when `Connection` names it.
    fn hop_by_hop(hop: &str, lines: &[String]) -> bool {
        hop != "x-secret"
            || lines
                .iter()
                .any(|l| l.eq_ignore_ascii_case("connection: x-secret"))
    }

    /// A header line from LINES with its name's letters in random case.
    fn line() -> impl Strategy<Value = String> {
        (0..LINES.len(), any::<u32>()).prop_map(|(i, case)| {
            let l = LINES[i];
            let colon = l.find(':').unwrap_or(0);
            l.char_indices()
                .map(|(j, c)| {
                    if j < colon && case >> (j % 32) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase().min(c)
                    }
                })
                .collect()
        })
    }

    fn head(first: &str, lines: &[String], lead: usize) -> String {
        let mut h = "\r\n".repeat(lead) + first;
        for l in lines {
            h.push_str(l);
            h.push_str("\r\n");
        }
        h + "\r\n"
    }

    /// Names of the header lines of a written head, lowercased.
    fn names(out: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(out);
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
            .collect()
    }

    proptest! {
        #[test]
        fn request(
            lines in proptest::collection::vec(line(), 0..8),
            lead in 0usize..3,
            http10: bool,
            host_first: bool,
        ) {
            let version = if http10 { "1.0" } else { "1.1" };
            let mut first = format!("GET / HTTP/{version}\r\n");
            if host_first {
                first.push_str("Host: h\r\n");
            }
            let req = head(&first, &lines, lead);
            // Heads the parser refuses (two Host lines, none on 1.1) are not forwarded.
            let Ok(head) = parse_request(req.as_bytes()) else { return Ok(()) };
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            write_request_head(req.as_bytes(), &head, &info(true), &mut fast);
            let mut h = head.clone();
            h.omit.scan = true;
            write_request_head(req.as_bytes(), &h, &info(true), &mut slow);
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&slow));
            let names = names(&fast);
            for hop in HOP {
                // simian writes its own Connection for an upgrade or an HTTP/1.0 hop.
                let own = *hop == "connection" && (head.upgrade || http10);
                let leaked = hop_by_hop(hop, &lines) && names.iter().any(|n| n == hop);
                prop_assert!(own || !leaked, "{} in {:?}", hop, names);
            }
            prop_assert_eq!(names.iter().filter(|n| *n == "x-forwarded-for").count(), 1);
            prop_assert_eq!(names.iter().filter(|n| *n == "x-forwarded-proto").count(), 1);
            prop_assert_eq!(names.iter().any(|n| n == "upgrade"), head.upgrade);
        }

        #[test]
        fn response(
            lines in proptest::collection::vec(line(), 0..8),
            lead in 0usize..3,
            status in prop::sample::select(vec![100u16, 101, 103, 200, 204, 304, 404]),
            keep: bool,
        ) {
            let res = head(&format!("HTTP/1.1 {status} X\r\n"), &lines, lead);
            let Ok(head) = parse_response(res.as_bytes(), false) else { return Ok(()) };
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            write_response_head(res.as_bytes(), &head, keep, true, &mut fast);
            let mut h = head.clone();
            h.omit.scan = true;
            write_response_head(res.as_bytes(), &h, keep, true, &mut slow);
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&slow));
            let names = names(&fast);
            for hop in HOP {
                let own = *hop == "connection" && !head.is_interim();
                let leaked = hop_by_hop(hop, &lines) && names.iter().any(|n| n == hop);
                prop_assert!(own || !leaked, "{} in {:?}", hop, names);
            }
            prop_assert!(names.iter().filter(|n| *n == "connection").count() <= 1);
        }
    }
}

#[test]
fn irregular_framing_is_forwarded_as_one_canonical_line() {
    let count = |s: &str, name: &str| {
        s.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(name))
            .count()
    };
    for req in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nX-A: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n",
    ] {
        let out = forward(req, &info(true));
        assert_eq!(count(&out, "content-length:"), 1, "{out}");
        assert!(out.contains("\r\nContent-Length: 5\r\n"), "{out}");
        assert!(out.contains("\r\nX-A: 1\r\n"), "{out}");
    }
    for req in [
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let out = forward(req, &info(true));
        assert_eq!(count(&out, "transfer-encoding:"), 1, "{out}");
        assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
    }
    // A regular line is copied as it came (no rewrite, no scan).
    let req = "POST / HTTP/1.1\r\nHost: a\r\ncontent-length:5\r\n\r\n";
    let head = parse_request(req.as_bytes()).unwrap();
    assert!(!head.reframe);
    assert!(forward(req, &info(true)).contains("\r\ncontent-length:5\r\n"));
    // Other codings written irregularly are refused, not guessed.
    assert!(parse_request(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, ,chunked\r\n\r\n"
    )
    .is_err());
}
