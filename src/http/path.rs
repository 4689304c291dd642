//! Path normalisation for routing only: the request target is always
//! forwarded as received. Matching on a normalised path keeps `/a/../admin`
//! or `/%61dmin` from slipping past a `Match ^/admin` rule while the backend,
//! which normalises too, serves `/admin`.

/// RFC 3986 `unreserved`: decoding these never changes a URI's meaning
/// (§6.2.2.2), unlike `%2F` or `%3F` which must stay encoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `seg` with unreserved percent-encodings decoded and the hex
/// digits of the others uppercased (§6.2.2.1), so equal paths compare equal.
fn decode_into(seg: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(&b) = seg.get(i) {
        let escape = match (b, seg.get(i + 1), seg.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex_val(h).zip(hex_val(l)).map(|(h, l)| (h << 4) | l),
            _ => None,
        };
        match escape {
            Some(v) if is_unreserved(v) => {
                out.push(v);
                i += 3;
            }
            Some(_) => {
                out.push(b'%');
                out.extend(
                    seg.get(i + 1..i + 3)
                        .unwrap_or(&[])
                        .iter()
                        .map(u8::to_ascii_uppercase),
                );
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// Writes the normalised form of `path` (no query) into `out`, replacing
/// its contents: unreserved characters decoded, dot-segments removed as in
/// RFC 3986 §5.2.4. An empty path becomes `/`; a path not starting with `/`
/// (asterisk-form `*`) is only decoded. Empty segments (`//`) are kept.
pub fn normalize_path(path: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match path.first() {
        None => {
            out.push(b'/');
            return;
        }
        Some(b'/') => {}
        Some(_) => {
            decode_into(path, out);
            return;
        }
    }
    // Segment by segment: decode into `out`, then drop it again if it
    // turned out to be a dot-segment; `..` also drops the previous one.
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let mark = out.len();
        out.push(b'/');
        decode_into(seg, out);
        let dots = match out.get(mark + 1..) {
            Some(b".") => 1,
            Some(b"..") => 2,
            _ => 0,
        };
        if dots > 0 {
            out.truncate(mark);
            if dots == 2 {
                let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(parent);
            }
            // `/a/..` is the directory `/`, not the file `/a`.
            if segments.peek().is_none() {
                out.push(b'/');
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        let mut out = Vec::new();
        normalize_path(p.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dot_segments() {
        let cases = [
            ("/a/./b/../c", "/a/c"),
            ("/%2e%2e/x", "/x"),
            ("/%2E%2e/x", "/x"),
            ("/a/.%2E/b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/../../b/", "/b/"),
            ("/.", "/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a//b", "/a//b"),
            ("/a//../b", "/a/b"),
            ("/", "/"),
            ("", "/"),
            ("*", "*"),
            ("/mid/content=5/../6", "/mid/6"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(norm("/%61dmin"), "/admin");
        assert_eq!(norm("/%7e%2D%5f%2E%30"), "/~-_.0");
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(norm("/%3f%20"), "/%3F%20");
        assert_eq!(norm("/%zz/%2/%"), "/%zz/%2/%");
        assert_eq!(norm("/%%41"), "/%A");
        assert_eq!(norm("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn reuses_buffer() {
        let mut out = b"garbage".to_vec();
        normalize_path(b"/x", &mut out);
        assert_eq!(out, b"/x");
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 42;
        let alphabet = b"/.%2eEaF0?";
        let mut out = Vec::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let input: Vec<u8> = (0..(x % 24) as usize)
                .map(|i| alphabet[((x >> ((i * 3) % 60)) % alphabet.len() as u64) as usize])
                .collect();
            normalize_path(&input, &mut out);
            assert!(!out.is_empty());
            if input.first() == Some(&b'/') {
                assert!(out.starts_with(b"/"));
                let s = out.split(|&b| b == b'/');
                assert!(
                    s.clone().all(|seg| seg != b"." && seg != b".."),
                    "{input:?} -> {out:?}"
                );
            }
        }
    }
}
