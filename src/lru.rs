//! Bounded tables that clients fill (the sticky table, the rate-limit buckets):
//! when one is full, its least recently used eighth is forgotten at once, so the
//! linear pass that finds them is paid once per eighth of the table rather than
//! once per new key.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Forget the least recently used eighth (at least one) of `map`, whose bound is
/// `cap`; `used` is a value's last use. Ties at the cut may take a few more.
pub fn forget_least_recent<K: Eq + Hash, V, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    cap: usize,
    used: impl Fn(&V) -> u64,
) {
    let mut times: Vec<u64> = map.values().map(&used).collect();
    if times.is_empty() {
        return;
    }
    let n = (cap / 8).max(1).min(times.len());
    let (_, &mut cut, _) = times.select_nth_unstable(n - 1);
    map.retain(|_, v| used(v) > cut);
}

#[cfg(test)]
mod tests {
    #[test]
    fn forgets_the_oldest_eighth() {
        let mut m: std::collections::HashMap<u32, u64> =
            (0..80).map(|k| (k, u64::from(k))).collect();
        super::forget_least_recent(&mut m, 80, |&t| t);
        assert_eq!(m.len(), 70);
        assert!((0..10).all(|k| !m.contains_key(&k)));
    }
}
