#[test]
fn speed() {
    use sha2::{Digest, Sha256};
    let v = vec![7u8; 64 << 20];
    let t = std::time::Instant::now();
    let mut h = Sha256::new();
    for c in v.chunks(65536) {
        h.update(c);
    }
    let d = h.finalize();
    eprintln!("sha {:?} {:x}", t.elapsed(), d[0]);
}
