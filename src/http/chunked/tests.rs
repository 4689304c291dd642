use super::*;

/// Runs `input` through the scanner as a forwarding loop would, feeding at
/// most `read` new bytes per step. Returns the body length on success.
fn scan(input: &[u8], read: usize) -> Result<Option<usize>, ChunkError> {
    let mut s = ChunkedScanner::new();
    let mut pos = 0;
    let mut avail = 0;
    loop {
        let buf = &input[pos..avail];
        match s.step(buf)? {
            ChunkStep::NeedMore => {
                if avail == input.len() {
                    return Ok(None);
                }
                avail = (avail + read).min(input.len());
            }
            ChunkStep::Framing(n) => pos += n,
            ChunkStep::Data(n) => {
                if pos == avail {
                    if avail == input.len() {
                        return Ok(None);
                    }
                    avail = (avail + read).min(input.len());
                    continue;
                }
                let k = (n as usize).min(avail - pos);
                pos += k;
                s.data_consumed(k as u64);
            }
            ChunkStep::Done(n) => return Ok(Some(pos + n)),
        }
    }
}

fn scan_all_ways(input: &[u8]) -> Result<Option<usize>, ChunkError> {
    let whole = scan(input, input.len().max(1));
    for read in [1, 2, 3, 7] {
        assert_eq!(scan(input, read), whole, "read size {read}");
    }
    whole
}

#[test]
fn simple_bodies() {
    let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
    assert_eq!(scan_all_ways(body), Ok(Some(body.len() - 4)));
    assert_eq!(scan_all_ways(b"0\r\n\r\n"), Ok(Some(5)));
    let upper = b"A\r\n0123456789\r\n0000\r\n\r\n";
    assert_eq!(scan_all_ways(upper), Ok(Some(upper.len())));
}

#[test]
fn extensions_and_trailers() {
    let body =
        b"3;name=value;q=\"a b\"\r\nabc\r\n3 ; x\r\ndef\r\n0;last\r\nX-Sum: 12\r\nY:\r\n\r\n";
    assert_eq!(scan_all_ways(body), Ok(Some(body.len())));
}

#[test]
fn incomplete() {
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    for cut in 0..body.len() {
        assert_eq!(scan(&body[..cut], 3), Ok(None), "cut {cut}");
    }
}

#[test]
fn bad_sizes() {
    let bad: [&[u8]; 12] = [
        b"zz\r\n",
        b"-1\r\n",
        b"0x10\r\n",
        b"1 0\r\nx\r\n",
        b"1 \r\nx\r\n",
        b"\r\n",
        b" 1\r\nx\r\n",
        b"+1\r\nx\r\n",
        b"10000000000000000\r\n",
        b"8000000000000000\r\n",
        b"1\nx\r\n",
        b"1\rx\r\n",
    ];
    for b in bad {
        assert!(
            scan_all_ways(b).is_err(),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    assert!(scan_all_ways(b"7fffffffffffffff\r\n").unwrap().is_none());
}

#[test]
fn missing_crlf_after_data() {
    assert!(scan_all_ways(b"3\r\nabcd\r\n0\r\n\r\n").is_err());
    assert!(scan_all_ways(b"3\r\nabc\n0\r\n\r\n").is_err());
    assert!(scan_all_ways(b"3\r\nabc0\r\n\r\n").is_err());
}

#[test]
fn bad_extensions_and_trailers() {
    let bad: [&[u8]; 8] = [
        b"1;a\nx\r\n0\r\n\r\n",
        b"1;a\0b\r\nx\r\n0\r\n\r\n",
        b"0\r\nX: a\n\r\n",
        b"0\r\nX: a\r\n folded\r\n\r\n",
        b"0\r\nX : a\r\n\r\n",
        b"0\r\n: a\r\n\r\n",
        b"0\r\nX: a\0\r\n\r\n",
        b"0\r\n\n",
    ];
    for b in bad {
        assert!(
            scan_all_ways(b).is_err(),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
}

#[test]
fn limits() {
    let mut line = b"1;".to_vec();
    line.resize(MAX_CHUNK_LINE, b'a');
    line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert!(scan(&line, 4096).unwrap().is_some());
    let mut long = b"1;".to_vec();
    long.resize(MAX_CHUNK_LINE + 1, b'a');
    long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert_eq!(
        scan(&long, 4096),
        Err(ChunkError("chunk size line too long"))
    );
    let mut zeros = vec![b'0'; MAX_CHUNK_LINE + 1];
    zeros.extend_from_slice(b"1\r\n");
    assert!(scan(&zeros, 4096).is_err());
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < MAX_TRAILERS + 10 {
        trailers.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    trailers.extend_from_slice(b"\r\n");
    assert_eq!(
        scan(&trailers, 4096),
        Err(ChunkError("trailer section too large"))
    );
}

#[test]
fn data_spliced_outside_buffer() {
    // The caller never shows the data to the scanner: framing only.
    let mut s = ChunkedScanner::new();
    assert_eq!(s.step(b"1000\r\n"), Ok(ChunkStep::Framing(6)));
    assert_eq!(s.step(b""), Ok(ChunkStep::Data(0x1000)));
    s.data_consumed(0x800);
    assert_eq!(s.data_remaining(), 0x800);
    assert_eq!(s.step(b"ignored"), Ok(ChunkStep::Data(0x800)));
    s.data_consumed(0x800);
    assert_eq!(s.step(b""), Ok(ChunkStep::NeedMore));
    assert_eq!(s.step(b"\r\n0\r\n\r\nGET"), Ok(ChunkStep::Done(7)));
    assert!(s.is_done());
    assert_eq!(s.step(b"GET"), Ok(ChunkStep::Done(0)));
}

#[test]
fn random_input_never_panics() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b"0123456789abcdefABCDEF;= \t\r\n:xX-\0\x7f\x80";
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let _ = scan(&input, 1 + (next() % 5) as usize);
    }
}
