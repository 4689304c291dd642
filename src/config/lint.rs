//! `--check` warnings: valid configurations that are probably not what was meant.

use std::collections::HashMap;

use super::diagnostic::{Diagnostic, Severity};
use super::model::{Config, Mode, Span};
use super::raw::RawFile;

/// Help for a pattern that reads like a shell glob (`/*.php`, `*.jpg`).
pub fn glob_help(pattern: &str) -> Option<String> {
    let globby = pattern.starts_with('*') || pattern.contains("/*") || pattern.contains("*.");
    if !globby {
        return None;
    }
    let ext = pattern
        .rsplit("*.")
        .next()
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()));
    let suggestion = match ext {
        Some(ext) => format!("to match paths ending in .{ext} write `\\.{ext}$`"),
        None => "anchor with `^` and `$` and escape dots as `\\.`".to_string(),
    };
    Some(format!(
        "`Match` takes a regular expression, not a glob: `/*` means \"any number of slashes\" and `.` any character; {suggestion}"
    ))
}

/// Paths that any "match everything" pattern accepts; a pattern matching all of them
/// is treated as a catch-all when looking for shadowed entries. Routing sees
/// normalised paths, which always start with `/`, so `Match /` is a catch-all.
const PROBES: [&[u8]; 5] = [
    b"/",
    b"/index.html",
    b"/a/b/c.php",
    b"/static/x.jpg",
    b"/Z9",
];

pub fn warnings(
    raw: &RawFile,
    config: &Config,
    patterns: &[(usize, String, Span)],
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let warn = |span: Span, msg: String, help: Option<String>| {
        raw.diag(Severity::Warning, span, msg, help)
    };

    for (_, p, span) in patterns {
        if let Some(help) = glob_help(p) {
            out.push(warn(
                *span,
                format!("`Match {p}` looks like a glob"),
                Some(help),
            ));
        }
    }

    // Shadowed entries: every pattern of the entry is either written identically in
    // an earlier entry, or an earlier entry has a catch-all pattern. (Deciding regex
    // inclusion in general is expensive; these two cases are the real-world mistakes.)
    // The first pattern (in file order) that matches every probe is the catch-all:
    // asked of the compiled router, not by compiling each pattern again (57 µs each).
    let mut hits = vec![0usize; patterns.len()];
    for probe in PROBES {
        for m in config.router.all_matches(probe) {
            hits[m.pattern] += 1;
        }
    }
    let first_catch_all = hits.iter().position(|&n| n == PROBES.len());
    // Patterns by entry, in one pass (a filter per entry is quadratic).
    let mut by_entry: Vec<Vec<&(usize, String, Span)>> = vec![Vec::new(); config.entries.len()];
    for p in patterns {
        by_entry[p.0].push(p);
    }
    let mut catch_all: Option<(usize, &str)> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, entry) in config.entries.iter().enumerate() {
        // Entries with `Host` take a part of the hosts only: they neither shadow
        // nor are shadowed in a way this check can tell.
        if entry.mode != Mode::Http || !entry.hosts.is_empty() {
            continue;
        }
        let mine = &by_entry[i];
        if let Some((by, pat)) = catch_all {
            let by_name = &config.entries[by].name;
            out.push(warn(
                entry.span,
                format!("entry `{}` is never used: entry `{by_name}` matches every path with `{pat}` before it", entry.name),
                Some("move the catch-all entry to the end of the file".into()),
            ));
        } else if !mine.is_empty() && mine.iter().all(|p| seen.contains_key(&p.1.to_lowercase())) {
            let by = seen[&mine[0].1.to_lowercase()];
            out.push(warn(
                entry.span,
                format!(
                    "entry `{}` is never used: its patterns are all in entry `{}` before it",
                    entry.name, config.entries[by].name
                ),
                None,
            ));
        }
        for (_, p, _) in mine {
            seen.entry(p.to_lowercase()).or_insert(i);
        }
        if catch_all.is_none() {
            if let Some(k) = first_catch_all.filter(|&k| patterns[k].0 == i) {
                catch_all = Some((i, patterns[k].1.as_str()));
            }
        }
    }

    // The same server in two entries with different settings: each entry tracks it
    // on its own, which surprises people who expect one view of the server.
    let mut by_addr: HashMap<&super::model::Address, usize> = HashMap::new();
    for (i, entry) in config.entries.iter().enumerate() {
        for s in &entry.servers {
            match by_addr.get(&s.addr) {
                None => {
                    by_addr.insert(&s.addr, i);
                }
                Some(&j) => {
                    let other = &config.entries[j];
                    let same = other.availability == entry.availability
                        && other.max_connections == entry.max_connections
                        && other.health == entry.health;
                    if !same {
                        out.push(warn(
                            s.span,
                            format!(
                                "server `{}` is also in entry `{}` with different availability, health-check or MaxConnections settings",
                                s.text, other.name
                            ),
                            Some("each entry tracks its servers separately; make the settings agree or this will be confusing".into()),
                        ));
                    }
                }
            }
        }
    }
    out
}
