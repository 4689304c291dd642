//! Property-style tests across the codec: no input makes it panic, and
//! whatever it accepts it re-emits as something it accepts again.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: [&[u8]; 6] = [
    b"GET /a/../b?x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"POST / HTTP/1.0\r\nContent-Length: 5, 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nhello",
    b"GET ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
];

/// Bytes that matter to the parsers, so mutations hit interesting paths.
const ALPHABET: &[u8] = b"\r\n \t:;,/?.%0123456789aAfFxX\0\x7f\x80-";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        let b = ALPHABET[rng.below(ALPHABET.len())];
        match rng.below(4) {
            0 => v.insert(at, b),
            1 if at < v.len() => {
                v.remove(at);
            }
            2 if at < v.len() => v[at] = b,
            _ => v.truncate(at),
        }
    }
    v
}

fn check_request(buf: &[u8], scratch: &mut Vec<u8>) {
    let Ok(h) = parse_request(buf) else { return };
    assert!(h.head_len <= buf.len() && h.head_len <= MAX_HEAD);
    assert!(
        h.start <= h.target.start
            && h.target.end <= h.headers_start
            && h.headers_start <= h.head_len
    );
    assert!(h.path.start >= h.target.start && h.path.end <= h.target.end);
    let mut norm = Vec::new();
    normalize_path(&buf[h.path.clone()], &mut norm);
    let info = ForwardInfo {
        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        proto: "http",
        client_cert_subject: None,
        keep_backend_alive: true,
    };
    write_request_head(buf, &h, &info, scratch);
    let again = parse_request(scratch).unwrap_or_else(|e| {
        panic!(
            "{:?} rewritten to unparsable {:?}: {e}",
            String::from_utf8_lossy(buf),
            String::from_utf8_lossy(scratch)
        )
    });
    assert_eq!(
        (again.framing, again.method, again.upgrade),
        (h.framing, h.method, h.upgrade)
    );
    assert_eq!(again.head_len, scratch.len());
    if h.framing == BodyFraming::Chunked {
        let mut s = ChunkedScanner::new();
        let mut rest = &buf[h.head_len..];
        loop {
            match s.step(rest) {
                Ok(ChunkStep::Framing(n)) => rest = &rest[n..],
                Ok(ChunkStep::Data(n)) if !rest.is_empty() => {
                    let k = rest.len().min(n as usize);
                    rest = &rest[k..];
                    s.data_consumed(k as u64);
                }
                _ => break,
            }
        }
    }
}

fn check_response(buf: &[u8], scratch: &mut Vec<u8>) {
    for head_req in [false, true] {
        let Ok(h) = parse_response(buf, head_req) else {
            return;
        };
        assert!(
            h.head_len <= buf.len() && h.start <= h.headers_start && h.headers_start <= h.head_len
        );
        write_response_head(buf, &h, true, true, scratch);
        let again = parse_response(scratch, head_req).unwrap_or_else(|e| {
            panic!(
                "{:?} rewritten to unparsable {:?}: {e}",
                String::from_utf8_lossy(buf),
                String::from_utf8_lossy(scratch)
            )
        });
        assert_eq!(
            (again.status, again.framing, again.upgrade),
            (h.status, h.framing, h.upgrade)
        );
    }
}

#[test]
fn mutated_messages_never_panic() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut scratch = Vec::new();
    for _ in 0..40_000 {
        let seed = SEEDS[rng.below(SEEDS.len())];
        let buf = mutate(&mut rng, seed);
        check_request(&buf, &mut scratch);
        check_response(&buf, &mut scratch);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let mut scratch = Vec::new();
    for _ in 0..20_000 {
        let len = rng.below(64);
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check_request(&buf, &mut scratch);
        check_response(&buf, &mut scratch);
        let _ = ChunkedScanner::new().step(&buf);
        normalize_path(&buf, &mut scratch);
        let _ = head_may_be_complete(&buf, rng.below(len + 2));
    }
}

#[test]
fn every_truncation_of_valid_messages() {
    let mut scratch = Vec::new();
    for seed in SEEDS {
        for cut in 0..=seed.len() {
            check_request(&seed[..cut], &mut scratch);
            check_response(&seed[..cut], &mut scratch);
        }
    }
}
