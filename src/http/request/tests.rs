use super::*;

fn parse(s: &str) -> Result<RequestHead, RequestError> {
    parse_request(s.as_bytes())
}

fn bad(s: &str) -> &'static str {
    match parse(s) {
        Err(Bad(reason)) => reason,
        other => panic!("{s:?} should be Bad, got {other:?}"),
    }
}

#[test]
fn simple_get() {
    let s = "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
    let h = parse(s).unwrap();
    assert_eq!(h.head_len, s.len());
    assert_eq!(h.method, Method::Get);
    assert_eq!(&s[h.target.clone()], "/a/b?x=1");
    assert_eq!(&s[h.path.clone()], "/a/b");
    assert_eq!(&s[h.host.clone().unwrap()], "example.com");
    assert_eq!(&s[h.request_line()], "GET /a/b?x=1 HTTP/1.1");
    assert_eq!(
        (h.version_minor, h.framing, h.keep_alive),
        (1, BodyFraming::None, true)
    );
    assert!(!h.expect_continue && !h.upgrade && !h.connection_options);
    assert_eq!(h.method_bytes(s.as_bytes()), b"GET");
    let names: Vec<_> = h.headers(s.as_bytes()).map(|h| h.name).collect();
    assert_eq!(names, [&b"Host"[..], b"User-Agent"]);
}

#[test]
fn methods() {
    for (m, want) in [
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("PATCH", Method::Patch),
        ("TRACE", Method::Trace),
        ("PURGE", Method::Other),
        ("get", Method::Other),
    ] {
        let s = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
        let h = parse(&s).unwrap();
        assert_eq!(h.method, want);
        assert_eq!(h.method_bytes(s.as_bytes()), m.as_bytes());
    }
}

#[test]
fn target_forms() {
    let s = "GET http://example.com:8080/p/q?r#f HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let h = parse(s).unwrap();
    assert_eq!(&s[h.path.clone()], "/p/q");
    let s = "GET http://example.com?x HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert!(parse(s).unwrap().path.is_empty());
    let s = "GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert!(parse(s).unwrap().path.is_empty());
    let s = "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(&s[parse(s).unwrap().path], "*");
    let h = parse("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").unwrap();
    assert_eq!(h.method, Method::Connect);
    assert!(h.path.is_empty());
    let s = "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(&s[parse(s).unwrap().path], "/a");
    bad("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET foo HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn body_framing() {
    let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    assert_eq!(h.framing, BodyFraming::ContentLength(5));
    let h =
        parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
    assert_eq!(h.framing, BodyFraming::ContentLength(5));
    let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert_eq!(h.framing, BodyFraming::Chunked);
    let h =
        parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n").unwrap();
    assert_eq!(h.framing, BodyFraming::Chunked);
    let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(h.unwrap().framing, BodyFraming::Chunked);
}

#[test]
fn framing_rejections() {
    let cases = [
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "Content-Length: 5\r\nContent-Length: 6",
            "differing Content-Length values",
        ),
        ("Content-Length: 5, 6", "differing Content-Length values"),
        ("Content-Length: 5a", "invalid Content-Length"),
        ("Content-Length: -1", "invalid Content-Length"),
        ("Content-Length: ", "invalid Content-Length"),
        (
            "Content-Length: 99999999999999999999",
            "Content-Length overflow",
        ),
        (
            "Transfer-Encoding: chunked, identity",
            "Transfer-Encoding does not end with chunked",
        ),
        (
            "Transfer-Encoding: gzip",
            "Transfer-Encoding does not end with chunked",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
            "Transfer-Encoding does not end with chunked",
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            "chunked applied twice",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "chunked applied twice",
        ),
        ("Transfer-Encoding: chunked;q=1", "parameters on chunked"),
        ("Transfer-Encoding: ,", "empty Transfer-Encoding"),
        ("Transfer-Encoding: \"chunked\"", "invalid transfer coding"),
    ];
    for (header, reason) in cases {
        assert_eq!(
            bad(&format!("POST / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n")),
            reason,
            "{header}"
        );
    }
    let te10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(bad(te10), "Transfer-Encoding in HTTP/1.0 request");
}

#[test]
fn unknown_coding_is_501() {
    for te in ["foo, chunked", "identity, chunked", "gzip, br, chunked"] {
        let s = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
        let e = parse(&s).unwrap_err();
        assert!(matches!(e, NotImplemented(_)), "{te}: {e:?}");
        assert_eq!(e.status(), 501);
    }
}

#[test]
fn header_syntax_rejections() {
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n continued\r\n\r\n",
            "obs-fold",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tcontinued\r\n\r\n",
            "obs-fold",
        ),
        ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", "obs-fold"),
        (
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "whitespace between header name and colon",
        ),
        (
            "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
            "whitespace between header name and colon",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n",
            "header name is not a token",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX y: 1\r\n\r\n",
            "header name is not a token",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX\0: 1\r\n\r\n",
            "header name is not a token",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n",
            "header name is not a token",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            "control character",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            "control character",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            "control character",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            "control character",
        ),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: a\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: a\r\n\n", "bare LF"),
        ("GET / HTTP/1.1\nHost: a\n\n", "bare LF"),
        ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\nHost: a", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: y\n", "bare LF"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host header",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host header"),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "invalid Host header"),
        ("GET / HTTP/1.1\r\nX: a\r\n\r\n", "missing Host header"),
    ];
    for (s, reason) in cases {
        let got = bad(s);
        assert!(got.contains(reason), "{s:?}: got {got:?}, want {reason:?}");
    }
}

#[test]
fn request_line_rejections() {
    let cases = [
        ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", "invalid method"),
        (" GET / HTTP/1.1\r\nHost: a\r\n\r\n", "invalid method"),
        ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "invalid"),
        (
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target",
        ),
        (
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target",
        ),
        (
            "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target",
        ),
        ("GET /\r\n\r\n", "invalid request target"),
        ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "invalid line end"),
        ("GET / HTTP/1.1\rHost: a\r\n\r\n", "invalid line end"),
        ("GET / HTTX/1.1\r\nHost: a\r\n\r\n", "invalid HTTP version"),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", "invalid HTTP version"),
    ];
    for (s, reason) in cases {
        let got = bad(s);
        assert!(got.contains(reason), "{s:?}: got {got:?}, want {reason:?}");
    }
    for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3"] {
        let s = format!("GET / {v}\r\nHost: a\r\n\r\n");
        assert_eq!(parse(&s), Err(RequestError::VersionNotSupported), "{v}");
    }
}

#[test]
fn connection_semantics() {
    let ka = |s: &str| parse(s).unwrap().keep_alive;
    assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    ));
    assert!(!ka(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n"
    ));
    assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
    assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
    ));
    let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n").unwrap();
    assert!(h.connection_options && h.keep_alive);
}

#[test]
fn expect_and_upgrade() {
    let h = parse("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    assert!(h.expect_continue);
    assert!(
        !parse("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .expect_continue
    );
    let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(parse(ws).unwrap().upgrade);
    assert!(
        !parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .upgrade
    );
    assert!(
        !parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n")
            .unwrap()
            .upgrade
    );
    assert!(
        !parse("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .upgrade
    );
    let h2c = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: x\r\n\r\n";
    assert!(!parse(h2c).unwrap().upgrade);
}

#[test]
fn incomplete_and_too_large() {
    let full = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n";
    for cut in 0..full.len() {
        assert_eq!(parse(&full[..cut]), Err(Incomplete), "cut {cut}");
    }
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    big.resize(MAX_HEAD - 1, b'a');
    assert_eq!(parse_request(&big), Err(Incomplete));
    big.push(b'a');
    assert_eq!(parse_request(&big), Err(TooLarge));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_request(&big), Err(TooLarge));
    let mut fits = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    fits.resize(MAX_HEAD - 4, b'a');
    fits.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_request(&fits).unwrap().head_len, MAX_HEAD);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..MAX_HEADERS {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(parse(&many), Err(TooLarge));
    assert_eq!(TooLarge.status(), 431);
}

#[test]
fn pipelined_and_leading_crlf() {
    let s = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = parse(s).unwrap();
    assert_eq!(h.head_len, s.len() / 2);
    let h2 = parse(&s[h.head_len..]).unwrap();
    assert_eq!(&s[h.head_len..][h2.path], "/2");
    let s = "POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET /2 HTTP/1.1\r\n";
    assert_eq!(parse(s).unwrap().head_len, s.find("body").unwrap());
    let s = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = parse(s).unwrap();
    assert_eq!((h.head_len, h.start, h.headers_start), (s.len(), 4, 20));
    assert_eq!(&s[h.request_line()], "GET / HTTP/1.1");
    let s = "GET / HTTP/1.0\r\n\r\n";
    let h = parse(s).unwrap();
    assert_eq!((h.headers_start, h.head_len), (16, 18));
    assert_eq!(h.headers(s.as_bytes()).count(), 0);
    assert_eq!(parse("\r\n\r\n"), Err(Incomplete));
}

#[test]
fn buffer_larger_than_max_head() {
    let mut buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n".to_vec();
    let head_len = buf.len();
    buf.resize(head_len + 100_000, b'x');
    assert_eq!(parse_request(&buf).unwrap().head_len, head_len);
}
