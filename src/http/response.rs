//! Response head parsing and body framing per RFC 9112 §6.3. The backend is
//! held to the same syntax rules as clients: a response simian cannot frame
//! without doubt becomes a 502 instead of a desynchronised connection.

use std::mem::MaybeUninit;

use super::fields::{
    add_content_length, diagnose_header_name, line_ends_ok, offset, ConnectionOptions, Headers,
    Omit, TransferCodings,
};
use super::{MAX_HEAD, MAX_HEADERS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: 1xx, 204, 304, a response to HEAD, and 101 (after which the
    /// connection is a tunnel).
    None,
    ContentLength(u64),
    Chunked,
    /// The body ends when the backend closes.
    CloseDelimited,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head including leading empty lines and the final CRLF.
    pub head_len: usize,
    /// Start of the status line (after any leading empty lines).
    pub start: usize,
    /// Start of the first header line.
    pub headers_start: usize,
    pub status: u16,
    pub version_minor: u8,
    pub framing: ResponseFraming,
    /// The backend connection can carry another request after this
    /// response. Always false for close-delimited bodies and for 101.
    pub keep_alive: bool,
    /// A 101 Switching Protocols: from now on the connection is a tunnel.
    pub upgrade: bool,
    /// `Connection` names header fields that must be stripped on forwarding.
    pub connection_options: bool,
    /// The hop-by-hop lines forwarding leaves out.
    pub omit: Omit,
    /// `Content-Length` came as a list or twice (equal values): forwarded as
    /// one canonical line, never as received (SPEC section 12).
    pub reframe: bool,
    /// The `Content-Length` value, for that canonical line (also on responses
    /// without a body: a HEAD answer or a 304 says what the body would be).
    pub declared_length: Option<u64>,
}

impl ResponseHead {
    /// 1xx other than 101: forward it, then read the final response.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    pub fn headers<'a>(&self, buf: &'a [u8]) -> Headers<'a> {
        Headers::new(buf, self.headers_start, self.head_len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("incomplete response head")]
    Incomplete,
    #[error("response head too large")]
    TooLarge,
    #[error("bad response: {0}")]
    Bad(&'static str),
}

use ResponseError::{Bad, Incomplete, TooLarge};

/// Parses the response head at the start of `buf`. `request_method_is_head`
/// matters because a response to HEAD carries the headers of a body it does
/// not have.
pub fn parse_response(
    buf: &[u8],
    request_method_is_head: bool,
) -> Result<ResponseHead, ResponseError> {
    let window = buf.get(..MAX_HEAD).unwrap_or(buf);
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, window, &mut slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(TooLarge),
        // Refuse bare LF now rather than wait for a head that will be refused.
        Ok(httparse::Status::Partial) if !line_ends_ok(window) => {
            return Err(Bad("bare LF line end"))
        }
        Ok(httparse::Status::Partial) => return Err(Incomplete),
        Err(e) => return Err(map_error(window, e)),
    };
    let head = window.get(..head_len).ok_or(Bad("head length"))?;
    if !line_ends_ok(head) {
        return Err(Bad("bare LF line end"));
    }
    let (Some(version_minor), Some(status)) = (res.version, res.code) else {
        return Err(Bad("incomplete status line"));
    };
    if !(100..=599).contains(&status) {
        return Err(Bad("status code out of range"));
    }
    // The status line starts with "HTTP/" right after any empty lines.
    let start = head.iter().position(|&b| b == b'H').unwrap_or(0);

    let mut content_length = None;
    let mut cl_irregular = false;
    let mut codings = TransferCodings::default();
    let mut conn = ConnectionOptions::default();
    let mut headers_start = head_len.saturating_sub(2);
    let mut omit = Omit::default();
    for (i, h) in res.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        let name_at = offset(buf, name);
        if i == 0 {
            headers_start = name_at;
        }
        omit.note_hop_by_hop(buf, name, name_at);
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => conn.add(h.value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                cl_irregular |= content_length.is_some() || h.value.contains(&b',');
                add_content_length(&mut content_length, h.value).map_err(Bad)?;
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                codings.add(h.value).map_err(Bad)?
            }
            _ => {}
        }
    }
    // Refused even where the status means no body: a backend sending
    // these is broken, and the connection's next response cannot be trusted.
    if codings.seen && content_length.is_some() {
        return Err(Bad("both Content-Length and Transfer-Encoding"));
    }
    if codings.seen && version_minor == 0 {
        // RFC 9112 §6.1: framing of such a message is faulty.
        return Err(Bad("Transfer-Encoding in HTTP/1.0 response"));
    }
    if codings.seen && !codings.any {
        return Err(Bad("empty Transfer-Encoding"));
    }

    let persistent = if version_minor == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };
    let (framing, keep_alive, upgrade) = match status {
        101 => (ResponseFraming::None, false, true),
        100..=199 | 204 | 304 => (ResponseFraming::None, persistent, false),
        _ if request_method_is_head => (ResponseFraming::None, persistent, false),
        // RFC 9112 §6.3 rule 4: not ending with chunked means close-delimited.
        _ if codings.seen && codings.chunked_last => (ResponseFraming::Chunked, persistent, false),
        _ if codings.seen => (ResponseFraming::CloseDelimited, false, false),
        _ => match content_length {
            Some(n) => (ResponseFraming::ContentLength(n), persistent, false),
            None => (ResponseFraming::CloseDelimited, false, false),
        },
    };
    // A field named in `Connection` is dropped too: only a scan finds it.
    omit.scan |= conn.other;
    let reframe = cl_irregular;
    omit.scan |= reframe;
    Ok(ResponseHead {
        reframe,
        declared_length: content_length,
        head_len,
        start,
        headers_start,
        status,
        version_minor,
        framing,
        keep_alive,
        upgrade,
        connection_options: conn.other,
        omit,
    })
}

fn map_error(buf: &[u8], e: httparse::Error) -> ResponseError {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => TooLarge,
        E::HeaderName => Bad(diagnose_header_name(buf)),
        E::HeaderValue => Bad("control character or bare CR in header value"),
        E::NewLine => Bad("invalid line end"),
        E::Status => Bad("invalid status line"),
        E::Token => Bad("invalid token"),
        E::Version => Bad("unsupported HTTP version"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ResponseHead, ResponseError> {
        parse_response(s.as_bytes(), false)
    }

    #[test]
    fn content_length_and_chunked() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (200, ResponseFraming::ContentLength(5), true)
        );
        assert_eq!(r.head_len, 38);
        let r = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(r.framing, ResponseFraming::Chunked);
        assert!(r.keep_alive);
    }

    #[test]
    fn close_delimited() {
        let r = parse("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n").unwrap();
        assert_eq!(
            (r.framing, r.keep_alive),
            (ResponseFraming::CloseDelimited, false)
        );
        let r = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap();
        assert_eq!(
            (r.framing, r.keep_alive),
            (ResponseFraming::CloseDelimited, false)
        );
    }

    #[test]
    fn no_body_statuses() {
        for s in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ] {
            let r = parse(s).unwrap();
            assert_eq!(
                (r.framing, r.keep_alive),
                (ResponseFraming::None, true),
                "{s}"
            );
        }
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
        assert_eq!((r.framing, r.keep_alive), (ResponseFraming::None, true));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
        )
        .unwrap();
        assert_eq!(r.framing, ResponseFraming::None);
    }

    #[test]
    fn interim_and_upgrade() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let r = parse_response(buf, false).unwrap();
        assert!(r.is_interim());
        assert_eq!(
            (r.status, r.framing, r.head_len),
            (100, ResponseFraming::None, 25)
        );
        let next = parse_response(&buf[r.head_len..], false).unwrap();
        assert_eq!(next.framing, ResponseFraming::ContentLength(0));
        assert!(parse("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            .unwrap()
            .is_interim());
        let r = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        assert!(r.upgrade && !r.keep_alive && !r.is_interim());
        assert_eq!(r.framing, ResponseFraming::None);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        let r = parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(r.keep_alive && r.version_minor == 0);
        assert!(
            parse("HTTP/1.1 200 OK\r\nConnection: x-foo\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .connection_options
        );
    }

    #[test]
    fn strict_rejections() {
        let bad = [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
            "HTTP/1.1 200 OK\nA: b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: b\0\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 600 High\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
        ];
        for s in bad {
            assert!(matches!(parse(s), Err(Bad(_))), "{s:?}: {:?}", parse(s));
        }
    }

    #[test]
    fn incomplete_and_too_large() {
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Le"), Err(Incomplete));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_response(&big, false), Err(TooLarge));
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("Set-Cookie: c{i}=1\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(&many), Err(TooLarge));
    }

    #[test]
    fn offsets() {
        let r = parse("\r\nHTTP/1.1 404 Not Found\r\nA: 1\r\n\r\n").unwrap();
        assert_eq!((r.start, r.headers_start, r.status), (2, 26, 404));
        let buf = b"HTTP/1.1 404 Not Found\r\nA: 1\r\nB: 2\r\n\r\n";
        let r = parse_response(buf, false).unwrap();
        let names: Vec<_> = r.headers(buf).map(|h| h.name).collect();
        assert_eq!(names, [&b"A"[..], b"B"]);
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.headers_start, r.head_len - 2);
    }
}
