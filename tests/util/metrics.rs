//! Prometheus text exposition read back by the tests (the statistics URL).

/// A sample: its name, its labels (sorted) and its value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// One sample line: name, labels (sorted), value.
pub fn parse_sample(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let end = line.find(['{', ' '])?;
    let name = line[..end].to_string();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            let mut chars = rest[eq + 1..].strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let close = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            rest = &rest[eq + 1..][1 + close + 1..];
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    labels.sort();
    Some((name, labels, value))
}

/// The value of the sample `name` with exactly these labels.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    text.lines()
        .filter_map(parse_sample)
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
}

/// Every sample of `name`: its labels and value.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, v)| (l, v))
        .collect()
}

/// simian renders its statistics page at most once per 250 ms per worker (SPEC
/// section 12), so a read sooner than that after the previous one may get that
/// one's page. Tests that look for a change wait out the rest of the window
/// since they last read `key` (a proxy's statistics address).
pub fn after_cache_window(key: &str) {
    let wait = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let map = last.get_or_insert_with(HashMap::new);
        let now = Instant::now();
        let at = map.get(key).map_or(now, |t| (*t + WINDOW).max(now));
        map.insert(key.to_string(), at);
        at - now
    };
    std::thread::sleep(wait);
}

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
static LAST: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
const WINDOW: Duration = Duration::from_millis(260);

fn after_cache_window_from(key: &str, at: Instant) {
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    last.get_or_insert_with(HashMap::new)
        .insert(key.to_string(), at);
}

/// Another process (e.g. `simian explain`) read the statistics page of `key`
/// just now: the next [`after_cache_window`] waits the window from now.
#[allow(dead_code)]
pub fn read_elsewhere(key: &str) {
    after_cache_window_from(key, std::time::Instant::now());
}
