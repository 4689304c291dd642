//! Request head parsing with the strict RFC 9112 framing rules of SPEC §4:
//! whatever two HTTP implementations could frame differently is refused, so
//! that simian and the backend can never disagree on where a request ends.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::fields::{
    add_content_length, diagnose_header_name, is_tchar, is_token, line_ends_ok, list_items, offset,
    ConnectionOptions, Headers, Omit, TransferCodings,
};
use super::{MAX_HEAD, MAX_HEADERS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Connect,
    Trace,
    /// Any other token; read it with [`RequestHead::method_bytes`].
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
    fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            b"TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }
}

impl Method {
    /// RFC 9110 9.2.2: safe to send again if the first attempt got no answer.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Options
                | Method::Trace
                | Method::Put
                | Method::Delete
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
}

/// A parsed request head. Ranges index into the buffer given to
/// [`parse_request`]; the head owns nothing so parsing allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head including leading empty lines and the final CRLF.
    pub head_len: usize,
    /// Start of the request line (after any leading empty lines).
    pub start: usize,
    /// Start of the first header line (end of the request line's CRLF).
    pub headers_start: usize,
    pub method: Method,
    /// Request-target as sent.
    pub target: Range<usize>,
    /// Target without query and fragment. Origin-form: the path; absolute-
    /// form: its path part, empty when it has none (means `/`); asterisk-
    /// form: `*`; authority-form (CONNECT): empty.
    pub path: Range<usize>,
    pub version_minor: u8,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored on 1.0 as
    /// RFC 9110 §10.1.1 requires).
    pub expect_continue: bool,
    /// HTTP/1.1, `Connection: upgrade` and an `Upgrade` header not offering
    /// `h2c` (see `write_request_head`).
    pub upgrade: bool,
    /// Value of the single `Host` header, if any.
    pub host: Option<Range<usize>>,
    /// `Connection` names header fields that must be stripped on forwarding.
    pub connection_options: bool,
    /// The lines forwarding leaves out (hop-by-hop, `X-Forwarded-*`).
    pub omit: Omit,
    /// The framing field was written irregularly (`Content-Length: 5, 5`, twice,
    /// `Transfer-Encoding: ,chunked`): it is forwarded as one canonical line, so
    /// the backend cannot frame the body another way than simian did.
    pub reframe: bool,
}

impl RequestHead {
    pub fn method_bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start..self.target.start.saturating_sub(1))
            .unwrap_or(&[])
    }

    /// The request line without CRLF, e.g. for the access log.
    pub fn request_line(&self) -> Range<usize> {
        self.start..self.headers_start.saturating_sub(2)
    }

    pub fn headers<'a>(&self, buf: &'a [u8]) -> Headers<'a> {
        Headers::new(buf, self.headers_start, self.head_len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Head not complete yet: read more.
    #[error("incomplete request head")]
    Incomplete,
    /// Head larger than `MAX_HEAD` or with more than `MAX_HEADERS` lines.
    #[error("request head too large")]
    TooLarge,
    #[error("bad request: {0}")]
    Bad(&'static str),
    /// A transfer coding simian does not know.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// Syntactically `HTTP/x...` but not 1.0 or 1.1.
    #[error("HTTP version not supported")]
    VersionNotSupported,
}

impl RequestError {
    /// Status code of the response simian sends for this error. For
    /// `Incomplete` (a head cut short by EOF or timeout) that is 400.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Incomplete | RequestError::Bad(_) => 400,
            RequestError::TooLarge => 431,
            RequestError::NotImplemented(_) => 501,
            RequestError::VersionNotSupported => 505,
        }
    }
}

use RequestError::{Bad, Incomplete, NotImplemented, TooLarge};

/// Parses the request head at the start of `buf`. Bytes after `head_len`
/// (body, pipelined requests) are not looked at.
pub fn parse_request(buf: &[u8]) -> Result<RequestHead, RequestError> {
    // Never look past MAX_HEAD: bounds the work per call whatever the
    // caller's buffer size.
    let window = buf.get(..MAX_HEAD).unwrap_or(buf);
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, &mut slots) {
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
    let (Some(method), Some(target), Some(version_minor)) = (req.method, req.path, req.version)
    else {
        return Err(Bad("incomplete request line"));
    };
    let start = offset(buf, method.as_bytes());
    let method = Method::from_bytes(method.as_bytes());
    let target_start = offset(buf, target.as_bytes());
    let path = path_in_target(target.as_bytes(), method)?;
    let target = target_start..target_start + target.len();
    let path = target_start + path.start..target_start + path.end;

    let mut content_length = None;
    let mut cl_irregular = false;
    let mut codings = TransferCodings::default();
    let mut conn = ConnectionOptions::default();
    let mut host = None;
    let mut expect_continue = false;
    let mut upgrade_header = false;
    let mut h2c = false;
    let mut headers_start = head_len;
    let mut omit = Omit::default();
    for (i, h) in req.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        let name_at = offset(buf, name);
        if i == 0 {
            // The request line ends right before the first header name.
            headers_start = name_at;
        }
        let value = h.value;
        omit.note_hop_by_hop(buf, name, name_at);
        match name.len() {
            // Merged into simian's own line: only a scan collects every value.
            15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => omit.scan = true,
            17 if name.eq_ignore_ascii_case(b"x-forwarded-proto") => omit.line(buf, name_at),
            // Only simian says which client certificate verified (SPEC section 8).
            21 if name.eq_ignore_ascii_case(b"x-client-cert-subject") => omit.line(buf, name_at),
            _ => {}
        }
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host.is_some() {
                    return Err(Bad("more than one Host header"));
                }
                if !value.iter().all(|&b| is_host_char(b)) {
                    return Err(Bad("invalid Host header"));
                }
                let s = offset(buf, value);
                host = Some(s..s + value.len());
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                for proto in list_items(value) {
                    upgrade_header = true;
                    let name = proto.split(|&b| b == b'/').next().unwrap_or(proto);
                    h2c |= name.eq_ignore_ascii_case(b"h2c");
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => conn.add(value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                cl_irregular |= content_length.is_some() || value.contains(&b',');
                add_content_length(&mut content_length, value).map_err(Bad)?;
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                codings.add(value).map_err(Bad)?
            }
            _ => {}
        }
    }
    if req.headers.is_empty() {
        // No header: the head is the request line and one CRLF.
        headers_start = head_len.saturating_sub(2);
    }

    let framing = if codings.seen {
        if version_minor == 0 {
            return Err(Bad("Transfer-Encoding in HTTP/1.0 request"));
        }
        if content_length.is_some() {
            return Err(Bad("both Content-Length and Transfer-Encoding"));
        }
        if !codings.any {
            return Err(Bad("empty Transfer-Encoding"));
        }
        if !codings.chunked_last {
            return Err(Bad("Transfer-Encoding does not end with chunked"));
        }
        if codings.unknown {
            return Err(NotImplemented("unknown transfer coding"));
        }
        if codings.irregular && codings.other {
            // Only `chunked` alone is rewritten; a list of codings written
            // irregularly is refused rather than forwarded as received.
            return Err(Bad("irregular Transfer-Encoding list"));
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(n) => BodyFraming::ContentLength(n),
            None => BodyFraming::None,
        }
    };
    if version_minor == 1 && host.is_none() {
        return Err(Bad("missing Host header"));
    }
    let keep_alive = if version_minor == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };
    // A field named in `Connection` is dropped too: only a scan finds it.
    omit.scan |= conn.other;
    let reframe = match framing {
        BodyFraming::Chunked => codings.irregular,
        BodyFraming::ContentLength(_) => cl_irregular,
        BodyFraming::None => false,
    };
    // The framing lines are left out by the line-by-line copy.
    omit.scan |= reframe;
    Ok(RequestHead {
        head_len,
        start,
        headers_start,
        method,
        target,
        path,
        version_minor,
        framing,
        keep_alive,
        expect_continue: expect_continue && version_minor == 1,
        // RFC 9110 §7.8: Upgrade is ignored in HTTP/1.0.
        upgrade: conn.upgrade && upgrade_header && !h2c && version_minor == 1,
        host,
        connection_options: conn.other,
        omit,
        reframe,
    })
}

/// uri-host [ ":" port ] characters (RFC 3986 reg-name, IP-literal, IPv4).
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b)
}

/// Where the path is inside the target (RFC 9112 §3.2 forms).
fn path_in_target(t: &[u8], method: Method) -> Result<Range<usize>, RequestError> {
    let path_end = |from: usize| {
        t.iter()
            .skip(from)
            .position(|&b| b == b'?' || b == b'#')
            .map_or(t.len(), |i| from + i)
    };
    if method == Method::Connect {
        return match t.first() {
            Some(b'/') => Err(Bad("CONNECT needs an authority-form target")),
            _ => Ok(t.len()..t.len()),
        };
    }
    match t {
        [b'/', ..] => Ok(0..path_end(0)),
        b"*" if method == Method::Options => Ok(0..1),
        b"*" => Err(Bad("asterisk-form target without OPTIONS")),
        _ => {
            let sep = t
                .windows(3)
                .position(|w| w == b"://")
                .ok_or(Bad("invalid request target"))?;
            let scheme = t.get(..sep).unwrap_or(&[]);
            let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            if !scheme_ok {
                return Err(Bad("invalid request target"));
            }
            let auth = sep + 3;
            let rest = t.get(auth..).unwrap_or(&[]);
            match rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')) {
                Some(i) if rest.get(i) == Some(&b'/') => Ok(auth + i..path_end(auth + i)),
                Some(i) => Ok(auth + i..auth + i),
                None => Ok(t.len()..t.len()),
            }
        }
    }
}

/// Turns an httparse error into the response class and a loggable cause.
fn map_error(buf: &[u8], e: httparse::Error) -> RequestError {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => TooLarge,
        E::HeaderName => Bad(diagnose_header_name(buf)),
        E::HeaderValue => Bad("control character or bare CR in header value"),
        E::NewLine => Bad("invalid line end"),
        E::Status => Bad("invalid request line"),
        E::Token | E::Version => {
            let line = buf
                .split(|&b| b == b'\n')
                .find(|l| !l.is_empty() && *l != b"\r");
            let mut parts = line.unwrap_or(&[]).split(|&b| b == b' ');
            let method = parts.next().unwrap_or(&[]);
            if !is_token(method) {
                return Bad("invalid method");
            }
            if e == E::Token {
                return Bad("invalid request target");
            }
            let version = parts.nth(1).unwrap_or(&[]);
            let version = version.strip_suffix(b"\r").unwrap_or(version);
            match version {
                [b'H', b'T', b'T', b'P', b'/', d, ..] if d.is_ascii_digit() => {
                    RequestError::VersionNotSupported
                }
                _ if version.iter().all(|&b| is_tchar(b) || b == b'/') => {
                    Bad("invalid HTTP version")
                }
                _ => Bad("invalid request line"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
