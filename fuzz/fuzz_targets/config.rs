//! `config`: the configuration pipeline (pest grammar, resolve, lint) on arbitrary
//! input: `Config::parse` on the raw bytes, and `Config::from_text` when they are
//! UTF-8. A config file is written by an operator, not an attacker, but `--check`
//! and SIGHUP reloads run it inside the live process: a panic there is an outage.
//!
//! Properties:
//! - never panics, and every outcome renders: errors and warnings through `Display`
//!   (the caret line cuts long lines by characters), `--check`'s route table, and
//!   `explain` on an accepted file;
//! - a refusal has at least one diagnostic, all of severity error, at a 1-based
//!   line/column inside the file, naming the file given; warnings are warnings;
//! - deterministic: the same bytes give the same diagnostics twice (no hash-order
//!   dependent messages), and `from_text` agrees with `parse` on UTF-8 input
//!   (checked on the inputs whose length is a multiple of 4, for speed).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use simian::config::{Config, ConfigErrors, Diagnostic, Severity};

const FILE: &str = "fuzz.conf";

/// Diagnostics of one parse, rendered: what an operator would see.
fn outcome(r: &Result<Config, ConfigErrors>) -> Result<Vec<String>, Vec<String>> {
    match r {
        Ok(c) => Ok(c.warnings.iter().map(Diagnostic::short).collect()),
        Err(e) => Err(e.0.iter().map(Diagnostic::short).collect()),
    }
}

fn check_diagnostic(d: &Diagnostic, severity: Severity, lines: usize) {
    assert_eq!(d.severity, severity);
    assert!(
        d.line >= 1 && d.line <= lines + 1,
        "line {} of {lines}",
        d.line
    );
    assert!(d.col >= 1);
    assert!(d.file == FILE || d.file == "<text>");
    let shown = d.to_string();
    assert!(shown.contains(&d.message));
}

fuzz_target!(|data: &[u8]| {
    let r = Config::parse(data, Path::new(FILE));
    let lines = data.split(|&b| b == b'\n').count();
    match &r {
        Ok(c) => {
            for w in &c.warnings {
                check_diagnostic(w, Severity::Warning, lines);
            }
            let _ = simian::cli::check::route_table(c);
            let _ = simian::cli::explain::explain(c, "http://a.example/x/y?q=1", None, None);
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "refused without a diagnostic");
            for d in &e.0 {
                check_diagnostic(d, Severity::Error, lines);
            }
            let shown = e.to_string();
            assert!(shown.ends_with("in configuration"));
        }
    }
    // Deterministic. Checked on a quarter of the inputs: a parse is most of an
    // execution's time, and these checks need two more.
    if !data.len().is_multiple_of(4) {
        return;
    }
    let again = Config::parse(data, Path::new(FILE));
    assert_eq!(
        outcome(&r),
        outcome(&again),
        "two parses of the same bytes differ"
    );
    if let Ok(text) = std::str::from_utf8(data) {
        let t = Config::from_text(text);
        let strip = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.replacen("<text>", FILE, 1))
                .collect()
        };
        let (a, b) = (outcome(&r), outcome(&t));
        assert_eq!(a.is_ok(), b.is_ok(), "from_text and parse disagree");
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) | (Err(a), Err(b)) => (a, b),
            _ => unreachable!(),
        };
        assert_eq!(a, strip(b));
    }
});
