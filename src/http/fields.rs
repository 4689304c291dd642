//! Field-level rules shared by the request and response parsers: header
//! iteration over an already validated head, list parsing, and the framing
//! headers (`Content-Length`, `Transfer-Encoding`, `Connection`).
//!
//! Everything here works on heads that httparse accepted and whose line ends
//! were checked, so the iterator can be a plain line splitter; it still uses
//! checked slicing because a caller might hand it any bytes.

/// `tchar` from RFC 9110 §5.6.2.
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Field-value octets (RFC 9110 §5.5): VCHAR, SP, HTAB and obs-text.
pub(crate) fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Offset of `sub` inside `buf`; `sub` always comes from httparse slicing
/// `buf`, wrapping arithmetic only keeps this panic-free if it ever did not.
pub(crate) fn offset(buf: &[u8], sub: &[u8]) -> usize {
    (sub.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize)
}

/// httparse accepts a bare LF as a line end; RFC 9112 §2.2 lets a recipient
/// do so, but a proxy that does while the backend does not (or the reverse)
/// is a request smuggling vector, so simian refuses them.
pub(crate) fn line_ends_ok(head: &[u8]) -> bool {
    // memchr finds the few dozen LFs of a head without a look at every byte (a
    // byte loop was ~150 ns per response head in perf).
    memchr::memchr_iter(b'\n', head).all(|i| head.get(i.wrapping_sub(1)) == Some(&b'\r'))
}

/// The header lines a forwarded head leaves out, noted by the parser as it goes
/// over the fields anyway, so that writing the head copies the header block in
/// at most three pieces instead of splitting it into lines again (perf: that
/// second pass was ~3% of a small GET's CPU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Omit {
    /// Start and end (past the LF) of up to two lines, in head order.
    lines: [(u32, u32); 2],
    len: u8,
    /// The writer must go line by line: more lines than noted, or lines whose
    /// fate depends on other fields (`Connection` options, `Upgrade`, a merged
    /// `X-Forwarded-For`).
    pub scan: bool,
}

impl Omit {
    /// Leave out the line whose name starts at `name_at`.
    pub fn line(&mut self, buf: &[u8], name_at: usize) {
        let Some(slot) = self.lines.get_mut(self.len as usize) else {
            self.scan = true;
            return;
        };
        // Names and values hold no LF (bare LFs and obs-fold are refused), so the
        // line ends at the first LF after the name.
        let rest = buf.get(name_at..).unwrap_or(&[]);
        let end = memchr::memchr(b'\n', rest).map_or(buf.len(), |i| name_at + i + 1);
        *slot = (name_at as u32, end as u32);
        self.len += 1;
    }

    /// Note the field named `name` (at `name_at`) if forwarding leaves it out in
    /// either direction: the hop-by-hop fields of RFC 9110 §7.6.1. `Upgrade` is
    /// kept for an upgrade, which only the whole head decides, so it asks for a scan.
    pub fn note_hop_by_hop(&mut self, buf: &[u8], name: &[u8], name_at: usize) {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is(b"te") => self.line(buf, name_at),
            7 if is(b"upgrade") => self.scan = true,
            10 if is(b"connection") || is(b"keep-alive") => self.line(buf, name_at),
            16 if is(b"proxy-connection") => self.line(buf, name_at),
            _ => {}
        }
    }

    /// Append `buf[start..end]` without the noted lines.
    pub fn copy(&self, buf: &[u8], start: usize, end: usize, out: &mut Vec<u8>) {
        let mut at = start;
        for &(s, e) in &self.lines[..self.len as usize] {
            out.extend_from_slice(buf.get(at..s as usize).unwrap_or(&[]));
            at = e as usize;
        }
        out.extend_from_slice(buf.get(at..end).unwrap_or(&[]));
    }
}

/// Cheap pre-check for the I/O loop: whether the bytes added since
/// `prev_len` could have completed a head. Re-running the full parser after
/// every small read of a slow client is quadratic in the head size; scanning
/// only the new bytes (plus the 3 before them) is not.
pub fn head_may_be_complete(buf: &[u8], prev_len: usize) -> bool {
    let from = prev_len.saturating_sub(3);
    let tail = buf.get(from..).unwrap_or(&[]);
    memchr::memchr_iter(b'\n', tail)
        .any(|i| matches!(tail.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..])))
}

/// True when `buf` cannot be the start of an HTTP/1 request: its first byte
/// after the empty lines RFC 9112 2.2 lets a client send is not a method's token
/// character (a TLS ClientHello starts with 0x16). Such bytes are refused at once
/// instead of waiting for a head end that will never come.
pub fn cannot_start_a_request(buf: &[u8]) -> bool {
    buf.iter()
        .find(|&&b| b != b'\r' && b != b'\n')
        .is_some_and(|&b| !is_tchar(b))
}

/// One header line of a validated head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLine<'a> {
    pub name: &'a [u8],
    /// Value without surrounding whitespace.
    pub value: &'a [u8],
    /// The whole line as received, CRLF included, for verbatim forwarding.
    pub line: &'a [u8],
}

/// Iterator over the header lines of a head that `parse_request` or
/// `parse_response` accepted (obtain it from their `headers` methods).
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Headers<'a> {
    /// `start..end` is the header block, `end` being the head length.
    pub fn new(buf: &'a [u8], start: usize, end: usize) -> Self {
        Headers {
            buf,
            pos: start,
            end,
        }
    }
}

impl<'a> Iterator for Headers<'a> {
    type Item = HeaderLine<'a>;

    fn next(&mut self) -> Option<HeaderLine<'a>> {
        let rest = self.buf.get(self.pos..self.end)?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line = rest.get(..=nl)?;
        let content = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))?;
        if content.is_empty() {
            self.pos = self.end;
            return None;
        }
        self.pos += nl + 1;
        let colon = content.iter().position(|&b| b == b':')?;
        Some(HeaderLine {
            name: content.get(..colon)?,
            value: trim_ows(content.get(colon + 1..)?),
            line,
        })
    }
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty
/// elements skipped as the RFC requires of recipients.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Folds one `Content-Length` line into `current`. Identical repeats (also
/// within one comma list, RFC 9110 §8.6) collapse; anything else is refused.
pub(crate) fn add_content_length(
    current: &mut Option<u64>,
    value: &[u8],
) -> Result<(), &'static str> {
    for item in value.split(|&b| b == b',').map(trim_ows) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err("invalid Content-Length");
        }
        let mut n: u64 = 0;
        for &d in item {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or("Content-Length overflow")?;
        }
        match *current {
            Some(prev) if prev != n => return Err("differing Content-Length values"),
            _ => *current = Some(n),
        }
    }
    Ok(())
}

/// Transfer codings seen so far, across every `Transfer-Encoding` line in
/// order (several lines form one list).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TransferCodings {
    pub seen: bool,
    pub any: bool,
    pub chunked_last: bool,
    pub chunked: bool,
    pub unknown: bool,
    /// A coding other than chunked was listed.
    pub other: bool,
    /// Written with empty list elements (`,chunked`, an empty line), which a
    /// backend may read its own way.
    pub irregular: bool,
}

impl TransferCodings {
    pub fn add(&mut self, value: &[u8]) -> Result<(), &'static str> {
        self.irregular |= value
            .split(|&b| b == b',')
            .any(|item| trim_ows(item).is_empty());
        self.seen = true;
        for item in list_items(value) {
            self.any = true;
            let (name, params) = match item.iter().position(|&b| b == b';') {
                Some(i) => (trim_ows(item.get(..i).unwrap_or(&[])), true),
                None => (item, false),
            };
            if name.eq_ignore_ascii_case(b"chunked") {
                if self.chunked {
                    return Err("chunked applied twice");
                }
                if params {
                    return Err("parameters on chunked");
                }
                self.chunked = true;
                self.chunked_last = true;
            } else {
                if !is_token(name) {
                    return Err("invalid transfer coding");
                }
                self.other = true;
                self.chunked_last = false;
                // identity was dropped by RFC 7230 and is only "reserved" in
                // the IANA registry, so it counts as unknown like any other.
                const KNOWN: [&[u8]; 5] =
                    [b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"];
                if !KNOWN.iter().any(|k| name.eq_ignore_ascii_case(k)) {
                    self.unknown = true;
                }
            }
        }
        Ok(())
    }
}

/// Options of every `Connection` line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Options naming other header fields, which a proxy must strip.
    pub other: bool,
}

impl ConnectionOptions {
    pub fn add(&mut self, value: &[u8]) {
        for item in list_items(value) {
            if item.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if item.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if item.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.other = true;
            }
        }
    }
}

/// Whether some `Connection` line of the head lists `name`.
pub(crate) fn named_in_connection(headers: Headers<'_>, name: &[u8]) -> bool {
    headers
        .filter(|h| h.name.eq_ignore_ascii_case(b"connection"))
        .any(|h| list_items(h.value).any(|o| o.eq_ignore_ascii_case(name)))
}

/// Names the precise cause of an httparse `HeaderName` error, for the log.
/// Cold path: only runs on a request that is refused anyway.
pub(crate) fn diagnose_header_name(head: &[u8]) -> &'static str {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // Skip leading empty lines and the start line.
    let _ = lines.by_ref().find(|l| !l.is_empty());
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return "obs-fold (header line starting with whitespace)";
        }
        let name = match line.iter().position(|&b| b == b':') {
            Some(i) => line.get(..i).unwrap_or(&[]),
            None => line,
        };
        if name.ends_with(b" ") || name.ends_with(b"\t") {
            if is_token(trim_ows(name)) {
                return "whitespace between header name and colon";
            }
            return "header name is not a token";
        }
        if !is_token(name) {
            return "header name is not a token";
        }
    }
    "invalid header name"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The memchr scans agree with plain byte-by-byte loops over heads made
        /// of the bytes that matter (CR, LF) and filler.
        #[test]
        fn line_scans_match_byte_loops(
            head in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a')], 0..40),
            prev in 0usize..44,
        ) {
            let mut last = 0u8;
            let mut bare_lf = false;
            for &b in &head {
                bare_lf |= b == b'\n' && last != b'\r';
                last = b;
            }
            prop_assert_eq!(line_ends_ok(&head), !bare_lf);
            let from = prev.saturating_sub(3).min(head.len());
            let tail = &head[from..];
            let end = (0..tail.len()).any(|i| {
                matches!(tail.get(i..), Some([b'\n', b'\n', ..] | [b'\n', b'\r', b'\n', ..]))
            });
            prop_assert_eq!(head_may_be_complete(&head, prev), end);
        }
    }

    #[test]
    fn content_length_rules() {
        let mut cl = None;
        assert_eq!(add_content_length(&mut cl, b"5, 5"), Ok(()));
        assert_eq!(add_content_length(&mut cl, b"5"), Ok(()));
        assert_eq!(cl, Some(5));
        assert!(add_content_length(&mut cl, b"6").is_err());
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5,",
            b"0x5",
            b"5 5",
            b"18446744073709551616",
        ] {
            assert!(add_content_length(&mut None, bad).is_err(), "{bad:?}");
        }
        let mut cl = None;
        assert_eq!(add_content_length(&mut cl, b"18446744073709551615"), Ok(()));
        assert_eq!(cl, Some(u64::MAX));
    }

    #[test]
    fn may_be_complete() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(head_may_be_complete(req, 0));
        assert!(head_may_be_complete(req, req.len() - 1));
        assert!(!head_may_be_complete(&req[..req.len() - 1], 0));
        // Conservative: the 3 bytes before `prev_len` are looked at again.
        assert!(head_may_be_complete(req, req.len()));
        assert!(!head_may_be_complete(req, req.len() + 3));
        assert!(head_may_be_complete(b"a\n\n", 2));
    }

    #[test]
    fn header_iter() {
        let h = b"X\r\nA: 1 \r\nB:\t2\r\nC:\r\n\r\nbody: x\r\n";
        let v: Vec<_> = Headers::new(h, 3, h.len())
            .map(|h| (h.name, h.value))
            .collect();
        assert_eq!(v, [(&b"A"[..], &b"1"[..]), (b"B", b"2"), (b"C", b"")]);
    }
}
