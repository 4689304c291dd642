//! The PROXY protocol, v1 (text) and v2 (binary): the header a balancer in front
//! writes first on a connection to say whose connection it relays (`Listen ... proxy`),
//! and the one simian writes first on a backend connection (`SendProxy`). SPEC section
//! 10; the protocol is HAProxy's `doc/proxy-protocol.txt`.
//!
//! Written by hand, not with the `ppp` crate (2.3.0 was checked): `ppp` calls some
//! strict prefixes of a valid v1 header invalid (`PROXY TCP4 1.2.3.4 5.6.7.8 1 `, the
//! last port still to come, is `InvalidDestinationPort`), so a header that TCP splits
//! there would be refused; it calls a v1 line with a broken address incomplete until
//! every field is there; it takes v2 headers of up to 64 KiB; and it brings a second
//! `thiserror` (1.x). The codec is a few hundred lines with no allocation on parse.
//!
//! What [`parse`] accepts and refuses:
//! - v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`, single spaces, at most 107 bytes
//!   with the CRLF. IPv4 addresses are four decimal numbers 0-255 without leading
//!   zeros; IPv6 addresses are what `std` parses (hex groups, one `::`, a dotted IPv4
//!   tail); `TCP4` needs IPv4 and `TCP6` IPv6 addresses; ports are 0-65535 without
//!   leading zeros. `PROXY UNKNOWN` is followed by CRLF or by a space and anything up
//!   to the CRLF, which is ignored: no addresses. A lone CR or LF is refused.
//! - v2: the 12-byte signature, version 2, command `LOCAL` or `PROXY`, address family
//!   `AF_UNSPEC`, `AF_INET`, `AF_INET6` or `AF_UNIX` and protocol `UNSPEC`, `STREAM` or
//!   `DGRAM` (any other value of either is refused, as the spec says, whatever the
//!   command), then the address block and TLVs, 16 + length bytes in all, at most
//!   [`MAX_LEN`]. `LOCAL` (the health checks of the balancer in front) gives no
//!   addresses whatever the block holds. `PROXY` needs a block long enough for its
//!   family (12, 36 or 216 bytes) and gives addresses for TCP over IPv4 or IPv6
//!   only; for `AF_UNSPEC`, `AF_UNIX` and `DGRAM` it gives none, so the peer address
//!   is kept (the spec's "fall back to UNSPEC" for combinations a receiver does not
//!   support; HAProxy does the same). TLVs are skipped, not checked (CRC32C included).
//!
//! [`Parse::Incomplete`] means the bytes so far are the start of a header that may
//! still turn out valid; an [`Invalid`] is final (no more bytes can make it valid), so
//! a caller can refuse as soon as it sees one. The v1 prefix check is exact for
//! everything but an unfinished IPv6 address, whose check is close (it never refuses a
//! real prefix, and may wait for the rest of a few strings that cannot become one; the
//! 107-byte limit and `HeadTimeout` bound that wait).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What a complete header says. `source`/`dest` are None for v1 `UNKNOWN` and v2
/// `LOCAL` (the balancer's own health checks: keep the peer address), and for v2
/// headers of a family or protocol other than TCP over IPv4/IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header's length in bytes: what follows it is the client's data.
    pub len: usize,
    pub source: Option<SocketAddr>,
    pub dest: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// A valid start of a header: read more (up to [`MAX_LEN`], within `HeadTimeout`).
    Incomplete,
    Done(Header),
}

/// Why the bytes are no PROXY protocol header, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Invalid {}

/// The largest header accepted: 4 KiB. A v2 header is 16 bytes, at most 216 of
/// addresses (AF_UNIX) and the TLVs the balancer adds (HAProxy's SSL, ALPN, authority
/// and unique id, a cloud balancer's endpoint id: some hundreds of bytes at most); a v1
/// header is at most [`V1_MAX_LEN`]. A v2 header announcing more is refused as soon
/// as its length field arrives.
pub const MAX_LEN: usize = 4096;

/// The longest v1 header, CRLF included (the spec's worst case, `PROXY UNKNOWN` with
/// two full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// The v2 signature, the first 12 bytes of every v2 header.
const SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// Parse the header at the start of `buf`: `Incomplete` while `buf` is a valid start
/// of one, `Done` with its length and addresses once it is whole, `Invalid` as soon as
/// no more bytes can make it valid (see the module documentation for the rules).
pub fn parse(buf: &[u8]) -> Result<Parse, Invalid> {
    match buf.first() {
        None => Ok(Parse::Incomplete),
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Err(Invalid("no PROXY protocol header")),
    }
}

// ---------------------------------------------------------------------------
// v1
// ---------------------------------------------------------------------------

type Addrs = (Option<SocketAddr>, Option<SocketAddr>);

fn parse_v1(buf: &[u8]) -> Result<Parse, Invalid> {
    // The CR of a header of at most 107 bytes is at index 105 at the latest.
    let window = &buf[..buf.len().min(V1_MAX_LEN - 1)];
    match memchr::memchr2(b'\r', b'\n', window) {
        Some(i) => {
            if window.get(i) == Some(&b'\n') {
                return Err(Invalid("PROXY v1: LF without CR"));
            }
            let line = &buf[..i];
            match buf.get(i + 1) {
                None => {
                    // The line is all there; only its LF is missing.
                    v1_line(line, true)?;
                    Ok(Parse::Incomplete)
                }
                Some(b'\n') => {
                    let (source, dest) = v1_line(line, true)?;
                    Ok(Parse::Done(Header {
                        len: i + 2,
                        source,
                        dest,
                    }))
                }
                Some(_) => Err(Invalid("PROXY v1: CR without LF")),
            }
        }
        None if buf.len() >= V1_MAX_LEN - 1 => Err(Invalid("PROXY v1: no CRLF within 107 bytes")),
        None => {
            v1_line(buf, false)?;
            Ok(Parse::Incomplete)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Check a v1 line without its CRLF. With `complete` it must be a whole header and its
/// addresses are returned; without, it must be the start of one whose last field may
/// be unfinished (and `(None, None)` is returned).
fn v1_line(line: &[u8], complete: bool) -> Result<Addrs, Invalid> {
    let mut fields = line.split(|&b| b == b' ').peekable();
    let mut family = Family::V4;
    let mut ips: [Option<IpAddr>; 2] = [None, None];
    let mut ports: [u16; 2] = [0, 0];
    let mut n = 0;
    while let Some(f) = fields.next() {
        // The last field of an incomplete line may still grow.
        let partial = !complete && fields.peek().is_none();
        match n {
            0 => {
                let ok = if partial {
                    b"PROXY".starts_with(f)
                } else {
                    f == b"PROXY"
                };
                if !ok {
                    return Err(Invalid("PROXY v1: does not start with \"PROXY \""));
                }
            }
            1 => {
                if partial {
                    if !(b"TCP4".starts_with(f)
                        || b"TCP6".starts_with(f)
                        || b"UNKNOWN".starts_with(f))
                    {
                        return Err(Invalid("PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN"));
                    }
                } else {
                    family = match f {
                        b"TCP4" => Family::V4,
                        b"TCP6" => Family::V6,
                        // Whatever follows up to the CRLF is ignored.
                        b"UNKNOWN" => return Ok((None, None)),
                        _ => {
                            return Err(Invalid("PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN"))
                        }
                    };
                }
            }
            2 | 3 => {
                if partial {
                    let ok = match family {
                        Family::V4 => ipv4_prefix_ok(f),
                        Family::V6 => ipv6_prefix_ok(f),
                    };
                    if !ok {
                        return Err(Invalid("PROXY v1: bad address"));
                    }
                } else {
                    let ip = match family {
                        Family::V4 => parse_ipv4(f).map(IpAddr::V4),
                        Family::V6 => parse_ipv6(f).map(IpAddr::V6),
                    };
                    ips[n - 2] = Some(ip.ok_or(Invalid("PROXY v1: bad address"))?);
                }
            }
            4 | 5 => {
                if partial {
                    if !port_prefix_ok(f) {
                        return Err(Invalid("PROXY v1: bad port"));
                    }
                } else {
                    ports[n - 4] = parse_port(f).ok_or(Invalid("PROXY v1: bad port"))?;
                }
            }
            _ => return Err(Invalid("PROXY v1: too many fields")),
        }
        n += 1;
    }
    if !complete {
        return Ok((None, None));
    }
    match (n, ips) {
        (6, [Some(s), Some(d)]) => Ok((
            Some(SocketAddr::new(s, ports[0])),
            Some(SocketAddr::new(d, ports[1])),
        )),
        _ => Err(Invalid("PROXY v1: missing fields")),
    }
}

/// A decimal number of at most `max_digits` digits and at most `max`, without leading
/// zeros ("0" itself is fine).
fn decimal(f: &[u8], max_digits: usize, max: u32) -> Option<u32> {
    if f.is_empty() || f.len() > max_digits || !f.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if f.len() > 1 && f[0] == b'0' {
        return None;
    }
    let v = f.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
    (v <= max).then_some(v)
}

/// The start of such a number (empty included).
fn decimal_prefix_ok(f: &[u8], max_digits: usize, max: u32) -> bool {
    f.is_empty() || decimal(f, max_digits, max).is_some()
}

fn parse_port(f: &[u8]) -> Option<u16> {
    decimal(f, 5, 65535).and_then(|v| u16::try_from(v).ok())
}

fn port_prefix_ok(f: &[u8]) -> bool {
    decimal_prefix_ok(f, 5, 65535)
}

/// Four decimal numbers 0-255 without leading zeros, separated by single dots.
fn parse_ipv4(f: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in f.split(|&b| b == b'.') {
        let slot = octets.get_mut(n)?;
        *slot = u8::try_from(decimal(part, 3, 255)?).ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

fn ipv4_prefix_ok(f: &[u8]) -> bool {
    let mut parts = f.split(|&b| b == b'.').peekable();
    let mut n = 0;
    while let Some(part) = parts.next() {
        n += 1;
        let ok = if parts.peek().is_none() {
            decimal_prefix_ok(part, 3, 255)
        } else {
            decimal(part, 3, 255).is_some()
        };
        if !ok || n > 4 {
            return false;
        }
    }
    true
}

/// What `std` parses, within the prefix rules below (so that every start of an
/// accepted address is a valid prefix).
fn parse_ipv6(f: &[u8]) -> Option<Ipv6Addr> {
    if !ipv6_prefix_ok(f) {
        return None;
    }
    std::str::from_utf8(f).ok()?.parse().ok()
}

/// Whether `f` may be the start of an IPv6 address: close, not exact (see the module
/// documentation). The longest textual form is 45 bytes (six groups and an IPv4 tail).
/// Every rule only gets harder to meet as `f` grows, so a refusal is final.
fn ipv6_prefix_ok(f: &[u8]) -> bool {
    if f.len() > 45
        || !f
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return false;
    }
    if f.windows(3).any(|w| w == b":::") || f.windows(2).filter(|w| w == b"::").count() > 1 {
        return false;
    }
    // A leading colon is the start of "::".
    if f.first() == Some(&b':') && f.get(1).is_some_and(|&b| b != b':') {
        return false;
    }
    // An IPv4 tail (after the last colon, no dot before it) stands for two groups.
    let (groups, mut non_empty) = match f.iter().position(|&b| b == b'.') {
        Some(_) => {
            let Some(last_colon) = f.iter().rposition(|&b| b == b':') else {
                return false;
            };
            let (head, tail) = f.split_at(last_colon + 1);
            if head.contains(&b'.') || !ipv4_prefix_ok(tail) {
                return false;
            }
            (head, 2)
        }
        None => (f, 0),
    };
    for g in groups.split(|&b| b == b':') {
        if g.len() > 4 {
            return false;
        }
        non_empty += usize::from(!g.is_empty());
    }
    non_empty <= 8
}

// ---------------------------------------------------------------------------
// v2
// ---------------------------------------------------------------------------

fn parse_v2(buf: &[u8]) -> Result<Parse, Invalid> {
    let n = buf.len().min(SIG.len());
    if buf[..n] != SIG[..n] {
        return Err(Invalid("PROXY v2: bad signature"));
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parse::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(Invalid("PROXY v2: version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Invalid("PROXY v2: command is neither LOCAL nor PROXY")),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parse::Incomplete);
    };
    // Bytes of addresses the family needs.
    let need = match fam >> 4 {
        0 => 0,   // AF_UNSPEC
        1 => 12,  // AF_INET: two addresses of 4 bytes, two ports
        2 => 36,  // AF_INET6: 16-byte addresses
        3 => 216, // AF_UNIX: two paths of 108 bytes
        _ => return Err(Invalid("PROXY v2: unknown address family")),
    };
    if fam & 0x0f > 2 {
        return Err(Invalid("PROXY v2: unknown transport protocol"));
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parse::Incomplete);
    };
    let block = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_FIXED + block;
    if len > MAX_LEN {
        return Err(Invalid("PROXY v2: header longer than the limit"));
    }
    if !local && block < need {
        return Err(Invalid("PROXY v2: address block too short for its family"));
    }
    let Some(addrs) = buf.get(V2_FIXED..len) else {
        return Ok(Parse::Incomplete);
    };
    let (source, dest) = if local {
        (None, None)
    } else {
        v2_addrs(fam, addrs)
    };
    Ok(Parse::Done(Header { len, source, dest }))
}

/// The addresses of a v2 `PROXY` block (long enough for its family): TCP over IPv4
/// or IPv6 only.
fn v2_addrs(fam: u8, a: &[u8]) -> Addrs {
    let port = |i: usize| match (a.get(i), a.get(i + 1)) {
        (Some(&h), Some(&l)) => u16::from_be_bytes([h, l]),
        _ => 0,
    };
    match fam {
        0x11 => {
            let (Some(s), Some(d)) = (a.get(0..4), a.get(4..8)) else {
                return (None, None);
            };
            let (Ok(s), Ok(d)) = (<[u8; 4]>::try_from(s), <[u8; 4]>::try_from(d)) else {
                return (None, None);
            };
            (
                Some(SocketAddr::new(IpAddr::from(s), port(8))),
                Some(SocketAddr::new(IpAddr::from(d), port(10))),
            )
        }
        0x21 => {
            let (Some(s), Some(d)) = (a.get(0..16), a.get(16..32)) else {
                return (None, None);
            };
            let (Ok(s), Ok(d)) = (<[u8; 16]>::try_from(s), <[u8; 16]>::try_from(d)) else {
                return (None, None);
            };
            (
                Some(SocketAddr::new(IpAddr::from(s), port(32))),
                Some(SocketAddr::new(IpAddr::from(d), port(34))),
            )
        }
        _ => (None, None),
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Both addresses in one family. IPv4-mapped IPv6 addresses (a dual-stack listener's
/// IPv4 clients) count as IPv4; when one address is IPv4 and the other IPv6, the IPv4
/// one is written IPv4-mapped (`::ffff:a.b.c.d`), as HAProxy does.
fn one_family(source: SocketAddr, dest: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let (s, d) = (canon(source), canon(dest));
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (v6(s), v6(d))
    }
}

/// Append a v1 header for a TCP connection from `source` to `dest`: `TCP4`, or `TCP6`
/// when either is IPv6 (see [`one_family`] for mixed families). Never `UNKNOWN`.
pub fn encode_v1(source: SocketAddr, dest: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    let (s, d) = one_family(source, dest);
    let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "PROXY {proto} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    );
}

/// A v1 header naming no addresses (a client without one, a health check).
pub const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

/// A v2 `LOCAL` header: the connection is the sender's own (a health check, a
/// client without an address); signature, version 2 / LOCAL, AF_UNSPEC, length 0.
pub const V2_LOCAL: [u8; 16] = {
    let mut h = [0u8; 16];
    let mut i = 0;
    while i < SIG.len() {
        h[i] = SIG[i];
        i += 1;
    }
    h[12] = 0x20;
    h
};

/// Append a v2 header for a TCP connection from `source` to `dest`: the `PROXY`
/// command, `STREAM` over `AF_INET` or `AF_INET6` (mixed families as in
/// [`encode_v1`]), no TLVs; 28 or 52 bytes.
pub fn encode_v2(source: SocketAddr, dest: SocketAddr, out: &mut Vec<u8>) {
    let (s, d) = one_family(source, dest);
    out.extend_from_slice(&SIG);
    out.push(0x21); // version 2, PROXY
    match (s.ip(), d.ip()) {
        (IpAddr::V4(si), IpAddr::V4(di)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&si.octets());
            out.extend_from_slice(&di.octets());
        }
        (si, di) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(si).octets());
            out.extend_from_slice(&v6(di).octets());
        }
    }
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_and_unknown_headers_parse_without_addresses() {
        for h in [&super::V2_LOCAL[..], super::V1_UNKNOWN] {
            match super::parse(h) {
                Ok(super::Parse::Done(d)) => assert_eq!((d.len, d.source), (h.len(), None)),
                other => panic!("{other:?}"),
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(buf: &[u8]) -> Header {
        match parse(buf) {
            Ok(Parse::Done(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn incomplete(buf: &[u8]) {
        assert_eq!(
            parse(buf),
            Ok(Parse::Incomplete),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }

    fn invalid(buf: &[u8]) {
        assert!(
            parse(buf).is_err(),
            "{:?}: {:?}",
            String::from_utf8_lossy(buf),
            parse(buf)
        );
    }

    /// A v2 header: version/command byte, family/protocol byte, block.
    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut v = SIG.to_vec();
        v.push(ver_cmd);
        v.push(fam);
        v.extend_from_slice(&(block.len() as u16).to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    // --- v1: the spec's examples and forms ---

    #[test]
    fn v1_spec_example_before_a_request() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
        assert_eq!(
            done(&buf),
            Header {
                len: line.len(),
                source: Some(sa("192.168.0.1:56324")),
                dest: Some(sa("192.168.0.11:443")),
            }
        );
    }

    #[test]
    fn v1_longest_forms() {
        let v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(v4.len(), 56);
        let h = done(v4);
        assert_eq!(h.len, 56);
        assert_eq!(h.source, Some(sa("255.255.255.255:65535")));

        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let v6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(v6.len(), 104);
        let h = done(v6.as_bytes());
        assert_eq!(h.len, 104);
        assert_eq!(h.dest, Some(SocketAddr::new(full.parse().unwrap(), 65535)));

        // The worst case is exactly 107 bytes, and accepted.
        let worst = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(worst.len(), 107);
        let h = done(worst.as_bytes());
        assert_eq!((h.len, h.source, h.dest), (107, None, None));
    }

    #[test]
    fn v1_unknown_keeps_the_peer() {
        assert_eq!(
            done(b"PROXY UNKNOWN\r\nGET /"),
            Header {
                len: 15,
                source: None,
                dest: None
            }
        );
        // Whatever follows UNKNOWN up to the CRLF is ignored, even if malformed.
        let h = done(b"PROXY UNKNOWN whatever 999.1.1.1 x\r\n");
        assert_eq!((h.source, h.dest), (None, None));
    }

    #[test]
    fn v1_ipv6_and_zero_port() {
        let h = done(b"PROXY TCP6 2001:db8::7 ::1 0 80\r\n");
        assert_eq!(h.source, Some(sa("[2001:db8::7]:0")));
        assert_eq!(h.dest, Some(sa("[::1]:80")));
        let h = done(b"PROXY TCP6 ::ffff:192.0.2.1 2001:DB8::1 1 2\r\n");
        assert_eq!(h.source, Some(sa("[::ffff:192.0.2.1]:1")));
        let h = done(b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n");
        assert_eq!(h.source, Some(sa("0.0.0.0:0")));
    }

    #[test]
    fn v1_incomplete() {
        for s in [
            "P",
            "PROXY",
            "PROXY ",
            "PROXY T",
            "PROXY TCP4",
            "PROXY TCP4 ",
            "PROXY TCP4 1",
            "PROXY TCP4 1.",
            "PROXY TCP4 1.2.3.4",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1",
            // What ppp gets wrong: the last port is still to come.
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 ",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
            "PROXY TCP6 ",
            "PROXY TCP6 :",
            "PROXY TCP6 ::ffff:1.2.",
            "PROXY TCP6 2001:db8::7 ::1 65535 6553",
            "PROXY U",
            "PROXY UNKNOWN",
            "PROXY UNKNOWN ",
            "PROXY UNKNOWN anything at all",
            "PROXY UNKNOWN\r",
        ] {
            incomplete(s.as_bytes());
        }
        incomplete(b"");
    }

    #[test]
    fn v1_invalid() {
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(92));
        assert_eq!(long.len(), 108);
        for s in [
            // Not a header at all.
            "GET / HTTP/1.1\r\n\r\n",
            "G",
            "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXX",
            "PROXYTCP4",
            "PROXY\r\n",
            // Protocol.
            "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UDP4",
            "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UNKNOWNX\r\n",
            // Spaces: exactly one.
            "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            // Fields missing or extra.
            "PROXY TCP4\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            // IPv4: four numbers 0-255, no leading zeros.
            "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
            "PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n",
            // Families must match the protocol.
            "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            "PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
            "PROXY TCP6 ::1%eth0 ::1 1 2\r\n",
            "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
            // Ports: 0-65535, no leading zeros, digits only.
            "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2x\r\n",
            // Line ends: CRLF only.
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            "PROXY UNKNOWN\n",
            // Bytes that are not ASCII.
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\u{e9}\r\n",
            // Too long: 108 bytes, or no CRLF in the first 107.
            &long,
        ] {
            invalid(s.as_bytes());
        }
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n");
        invalid(format!("PROXY UNKNOWN {}", "x".repeat(200)).as_bytes());
        // 106 bytes without a CR: the CRLF cannot end within 107.
        invalid(format!("PROXY UNKNOWN {}", "x".repeat(92)).as_bytes());
        incomplete(format!("PROXY UNKNOWN {}", "x".repeat(91)).as_bytes());
    }

    /// Refused as soon as the bad field is there, not only at the CRLF.
    #[test]
    fn v1_invalid_early() {
        for s in [
            "PROXY TCP4 999",
            "PROXY TCP4 01",
            "PROXY TCP4 1.2.3.4.",
            "PROXY TCP4 1.2.3.4 5.6.7.8 70000",
            "PROXY TCP4 1.2.3.4 5.6.7.8 0",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 02",
            "PROXY TCP4 ::",
            "PROXY TCP6 1.",
            "PROXY TCP6 :1",
            "PROXY TCP6 12345",
            "PROXY TCP6 1:::",
            "PROXY TCP6 1::2::",
            "PROXY TCP6 1.2.3.4:",
            "PROXY TCP6 g",
            "PROXY TCP6 1:2:3:4:5:6:7:8:9",
            "PROXY TCP6 1:2:3:4:5:6:7:8:9.",
            "PROXY TCP6 1:2:3:4:5:6:7:1.",
            "PROXY TCP6 ::ffff:01.",
        ] {
            // "... 0" can still become "0 " (port 0): that one is a prefix.
            if s.ends_with(" 0") {
                incomplete(s.as_bytes());
                invalid(format!("{s}1").as_bytes());
            } else {
                invalid(s.as_bytes());
            }
        }
    }

    // --- v2 ---

    #[test]
    fn v2_tcp4_spec_layout() {
        let block = [127, 0, 0, 1, 127, 0, 0, 2, 0, 80, 1, 187];
        let mut buf = v2(0x21, 0x11, &block);
        assert_eq!(buf.len(), 28);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            done(&buf),
            Header {
                len: 28,
                source: Some(sa("127.0.0.1:80")),
                dest: Some(sa("127.0.0.2:443")),
            }
        );
    }

    #[test]
    fn v2_tcp6_with_tlvs() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0x15, 0xb3, 0, 80]);
        // PP2_TYPE_AUTHORITY "example.com", PP2_TYPE_NOOP of 3 bytes.
        block.extend_from_slice(&[0x02, 0, 11]);
        block.extend_from_slice(b"example.com");
        block.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]);
        let buf = v2(0x21, 0x21, &block);
        assert_eq!(
            done(&buf),
            Header {
                len: 16 + 36 + 14 + 6,
                source: Some(sa("[2001:db8::7]:5555")),
                dest: Some(sa("[::1]:80")),
            }
        );
    }

    #[test]
    fn v2_local_keeps_the_peer() {
        // The usual health check: LOCAL, AF_UNSPEC, no block.
        assert_eq!(
            done(&v2(0x20, 0x00, &[])),
            Header {
                len: 16,
                source: None,
                dest: None
            }
        );
        // LOCAL with an address block (and any length): skipped, addresses ignored.
        let h = done(&v2(0x20, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]));
        assert_eq!((h.len, h.source, h.dest), (28, None, None));
        let h = done(&v2(0x20, 0x21, &[0; 5]));
        assert_eq!((h.len, h.source, h.dest), (21, None, None));
    }

    #[test]
    fn v2_families_without_addresses() {
        // PROXY over AF_UNSPEC, AF_UNIX, and UDP: accepted, the peer address kept.
        for (fam, block) in [
            (0x00, vec![]),
            (0x00, vec![9; 7]),
            (0x31, vec![0; 216]),
            (0x32, vec![0; 216]),
            (0x12, vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
            (0x22, vec![0; 36]),
            (0x10, vec![0; 12]),
        ] {
            let h = done(&v2(0x21, fam, &block));
            assert_eq!(
                (h.len, h.source, h.dest),
                (16 + block.len(), None, None),
                "fam {fam:#x}"
            );
        }
    }

    #[test]
    fn v2_invalid() {
        let block4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        // Every signature byte matters.
        for i in 0..12 {
            let mut b = v2(0x21, 0x11, &block4);
            b[i] ^= 0x40;
            invalid(&b);
            invalid(&b[..=i]);
        }
        // Version other than 2 (the signature is followed by version 1 or 3).
        for vc in [0x11, 0x01, 0x31, 0xf1] {
            invalid(&v2(vc, 0x11, &block4));
            invalid(&v2(vc, 0x11, &block4)[..13]);
        }
        // Commands other than LOCAL and PROXY.
        for vc in [0x22, 0x2f] {
            invalid(&v2(vc, 0x11, &block4));
        }
        // Unknown families and protocols, whatever the command.
        for fam in [0x41, 0x51, 0xf1, 0x13, 0x1f, 0x03] {
            invalid(&v2(0x21, fam, &[0; 216]));
            invalid(&v2(0x20, fam, &[0; 216]));
            invalid(&v2(0x21, fam, &[0; 216])[..14]);
        }
        // A block too short for its family.
        invalid(&v2(0x21, 0x11, &block4[..11]));
        invalid(&v2(0x21, 0x11, &[]));
        invalid(&v2(0x21, 0x21, &[0; 35]));
        invalid(&v2(0x21, 0x31, &[0; 215]));
        // ...refused once the length is known, before the block arrives.
        invalid(&v2(0x21, 0x21, &[0; 35])[..16]);
        // Over MAX_LEN, refused from the length field alone.
        let mut big = v2(0x21, 0x11, &[]);
        big[14..16].copy_from_slice(&((MAX_LEN - 15) as u16).to_be_bytes());
        invalid(&big);
        invalid(&v2(0x21, 0x11, &vec![0; MAX_LEN - 15]));
        invalid(&v2(0x21, 0x11, &vec![0; 65535]));
        // The largest accepted.
        let h = done(&v2(0x21, 0x11, &vec![0; MAX_LEN - 16]));
        assert_eq!(h.len, MAX_LEN);
    }

    #[test]
    fn v2_incomplete() {
        let full = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for n in 0..full.len() {
            incomplete(&full[..n]);
        }
        // TLVs still to come.
        let full = v2(0x21, 0x11, &[0; 300]);
        incomplete(&full[..28]);
        incomplete(&full[..full.len() - 1]);
        assert_eq!(done(&full).len, full.len());
    }

    // --- encoding ---

    #[test]
    fn encodes_the_spec_forms() {
        let mut out = Vec::new();
        encode_v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");

        out.clear();
        encode_v1(sa("[2001:db8::7]:5555"), sa("[::1]:80"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::7 ::1 5555 80\r\n");

        // Mixed families: the IPv4 one mapped; a mapped pair written as IPv4.
        out.clear();
        encode_v1(sa("192.0.2.1:1"), sa("[::1]:2"), &mut out);
        assert_eq!(out, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n");
        out.clear();
        encode_v1(sa("[::ffff:192.0.2.1]:1"), sa("10.0.0.1:2"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\n");

        out.clear();
        encode_v2(sa("127.0.0.1:80"), sa("127.0.0.2:443"), &mut out);
        assert_eq!(
            out,
            v2(0x21, 0x11, &[127, 0, 0, 1, 127, 0, 0, 2, 0, 80, 1, 187])
        );
        out.clear();
        encode_v2(sa("[::1]:1"), sa("192.0.2.1:2"), &mut out);
        assert_eq!(out.len(), 52);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0, 36]);
        let h = done(&out);
        assert_eq!(h.dest, Some(sa("[::ffff:192.0.2.1]:2")));
    }

    #[test]
    fn invalid_has_a_reason() {
        let e = parse(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert_eq!(e.to_string(), "no PROXY protocol header");
    }

    // --- properties ---

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            // IPv4-mapped IPv6, and the small and zero-run forms of IPv6.
            any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
            (any::<u16>(), any::<u16>())
                .prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(a, 0, 0, 0, 0, 0, 0, b))),
            (0usize..8, any::<u16>()).prop_map(|(i, v)| {
                let mut g = [0u16; 8];
                g[i] = v;
                IpAddr::V6(Ipv6Addr::from(g))
            }),
        ]
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        (arb_ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    /// What a parsed header gives back for `(source, dest)`: the same addresses, up
    /// to IPv4-mapped IPv6 (see `one_family`).
    fn expected(source: SocketAddr, dest: SocketAddr) -> (SocketAddr, SocketAddr) {
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (s, d) = (canon(source), canon(dest));
        if s.is_ipv4() == d.is_ipv4() {
            return (s, d);
        }
        let map = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        (map(s), map(d))
    }

    fn roundtrip(
        enc: fn(SocketAddr, SocketAddr, &mut Vec<u8>),
        s: SocketAddr,
        d: SocketAddr,
        tail: &[u8],
    ) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        enc(s, d, &mut out);
        prop_assert!(out.len() <= MAX_LEN && out.len() <= V1_MAX_LEN.max(52));
        let (es, ed) = expected(s, d);
        let want = Header {
            len: out.len(),
            source: Some(es),
            dest: Some(ed),
        };
        prop_assert_eq!(parse(&out), Ok(Parse::Done(want)));
        // Whatever follows (the client's data) does not change it.
        let mut more = out.clone();
        more.extend_from_slice(tail);
        prop_assert_eq!(parse(&more), Ok(Parse::Done(want)));
        // Every strict prefix is incomplete.
        for n in 0..out.len() {
            prop_assert_eq!(parse(&out[..n]), Ok(Parse::Incomplete), "prefix {}", n);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn v1_roundtrip(s in arb_addr(), d in arb_addr(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            roundtrip(encode_v1, s, d, &tail)?;
        }

        #[test]
        fn v2_roundtrip(s in arb_addr(), d in arb_addr(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            roundtrip(encode_v2, s, d, &tail)?;
        }

        /// Arbitrary bytes never panic, and whatever parses is consistent: a header no
        /// longer than the input, which parses alone to the same result.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_consistent(&bytes)?;
        }

        /// The same, starting like a header so that the parsers go deeper.
        #[test]
        fn arbitrary_after_a_start(
            start in prop_oneof![
                Just(&b"PROXY "[..]), Just(&b"PROXY TCP4 "[..]), Just(&b"PROXY TCP6 "[..]),
                Just(&b"PROXY TCP4 1.2.3.4 "[..]), Just(&b"PROXY TCP6 ::1 ::1 "[..]),
                Just(&b"PROXY UNKNOWN"[..]), Just(&SIG[..]), Just(&b"\r\n\r\n\0\r\nQUIT\n\x21"[..]),
                Just(&b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00"[..]),
            ],
            rest in proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    proptest::sample::select(b"0123456789abcdef.: \r\nTCP".to_vec()),
                ],
                0..120,
            ),
        ) {
            let mut buf = start.to_vec();
            buf.extend_from_slice(&rest);
            check_consistent(&buf)?;
        }

        /// A valid header cut anywhere and followed by anything: Invalid is final (no
        /// more bytes make it valid), Incomplete only for prefixes of something.
        #[test]
        fn invalid_is_final(
            s in arb_addr(), d in arb_addr(), v1 in any::<bool>(), cut in 0usize..110,
            junk in proptest::collection::vec(any::<u8>(), 1..16),
            more in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut buf = Vec::new();
            if v1 { encode_v1(s, d, &mut buf) } else { encode_v2(s, d, &mut buf) }
            buf.truncate(cut.min(buf.len()));
            buf.extend_from_slice(&junk);
            if parse(&buf).is_err() {
                buf.extend_from_slice(&more);
                prop_assert!(parse(&buf).is_err());
            }
        }
    }

    fn check_consistent(buf: &[u8]) -> Result<(), TestCaseError> {
        match parse(buf) {
            Ok(Parse::Done(h)) => {
                prop_assert!(h.len <= buf.len() && h.len <= MAX_LEN);
                prop_assert_eq!(parse(&buf[..h.len]), Ok(Parse::Done(h)));
                for n in 0..h.len {
                    prop_assert_eq!(parse(&buf[..n]), Ok(Parse::Incomplete));
                }
            }
            Ok(Parse::Incomplete) => {
                prop_assert!(buf.len() < MAX_LEN);
                for n in 0..buf.len() {
                    prop_assert_eq!(parse(&buf[..n]), Ok(Parse::Incomplete));
                }
            }
            Err(_) => {}
        }
        Ok(())
    }
}
