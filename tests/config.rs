//! The configuration language (SPEC section 2, issue 2): what parses to what, every
//! broken file of `tests/config_corpus/` reported at its `file:line:col`, the shipped
//! configs, `--check` warnings, `explain`, the docs, and random input.
//!
//! CLI behaviour runs the real binary; parsing runs through the library.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use simian::config::key::Key;
use simian::config::{
    Address, Balancer, Config, ConfigErrors, HealthCheck, Mode, Severity, SpliceMode, StickyKind,
};

const BIN: &str = env!("CARGO_BIN_EXE_simian");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---- helpers -----------------------------------------------------------------------

fn simian(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the simian binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "simian-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_file(path: &Path) -> Output {
    simian(&["--check", "-c", path.to_str().expect("utf-8 path")])
}

/// `simian --check` on config text written to a temp file.
fn check_text(text: &str) -> (Output, String) {
    let dir = TempDir::new();
    let p = dir.write("test.conf", text);
    let out = check_file(&p);
    (out, p.display().to_string())
}

fn parse(text: &str) -> Config {
    match Config::from_text(text) {
        Ok(c) => c,
        Err(e) => panic!("config should be valid:\n{text}\n--- errors:\n{e}"),
    }
}

fn errors(text: &str) -> ConfigErrors {
    match Config::from_text(text) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(e) => e,
    }
}

/// An entry with `Match ^/` and one server, plus `extra` lines.
fn entry(extra: &str) -> String {
    format!("[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:8081\n{extra}\n")
}

fn inet(s: &str) -> Address {
    Address::Inet(s.parse().expect("socket address"))
}

// ---- the corpus of broken files ------------------------------------------------------

/// What a corpus file's leading comments promise: `# expect: LINE:COL: text` (one
/// per error the file must produce, no more) and `# help: text` (a substring of the
/// output, for "did you mean").
struct Expectation {
    errors: Vec<(usize, usize, String)>,
    help: Vec<String>,
}

fn expectation(path: &Path) -> Expectation {
    let text = std::fs::read_to_string(path).expect("read corpus file");
    let mut e = Expectation {
        errors: Vec::new(),
        help: Vec::new(),
    };
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("# expect: ") {
            let mut parts = rest.splitn(3, ':');
            let mut num = || {
                parts
                    .next()
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("{}: bad `# expect:` line", path.display()))
            };
            let (l, c) = (num(), num());
            let msg = parts.next().unwrap_or("").trim().to_string();
            e.errors.push((l, c, msg));
        } else if let Some(rest) = line.strip_prefix("# help: ") {
            e.help.push(rest.trim().to_string());
        }
    }
    assert!(
        !e.errors.is_empty(),
        "{}: the first line must be `# expect: LINE:COL: message`",
        path.display()
    );
    e
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("tests/config_corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/config_corpus")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
}

/// Exit 1, every expected `file:line:col: error: ...` on stderr, and no other error.
fn assert_check_fails(path: &Path, e: &Expectation) {
    let out = check_file(path);
    let err = stderr(&out);
    let name = path.display().to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: --check must exit 1\nstderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "{name}: panic\n{err}");
    for (line, col, msg) in &e.errors {
        let at = format!("{name}:{line}:{col}: error: ");
        let found = err
            .lines()
            .any(|l| l.starts_with(&at) && l.contains(msg.as_str()));
        assert!(
            found,
            "{name}: expected `{at}...{msg}...` on stderr, got:\n{err}"
        );
    }
    for h in &e.help {
        assert!(
            err.contains(h.as_str()),
            "{name}: expected help `{h}`:\n{err}"
        );
    }
    let reported = err.lines().filter(|l| l.contains(": error: ")).count();
    assert_eq!(
        reported,
        e.errors.len(),
        "{name}: expected exactly {} error(s), got:\n{err}",
        e.errors.len()
    );
    let n = e.errors.len();
    let summary = format!(
        "{n} error{} in configuration",
        if n == 1 { "" } else { "s" }
    );
    assert!(err.contains(&summary), "{name}: no `{summary}`:\n{err}");
    assert!(
        out.stdout.is_empty(),
        "{name}: no route table for a bad file"
    );
}

#[test]
fn corpus_each_broken_file_is_reported_at_its_line_and_column() {
    let files = corpus_files();
    assert!(files.len() >= 25, "the corpus went missing: {files:?}");
    for f in &files {
        assert_check_fails(f, &expectation(f));
    }
}

#[test]
fn corpus_covers_what_issue_2_lists() {
    // Each kind of breakage the issue names has a file whose expectation says it.
    let all: Vec<String> = corpus_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for needle in [
        "unknown key",
        "is not allowed in [PROXY_DEFAULTS]",
        "is not allowed in [PROXY_ENTRY]",
        "has no ServerList",
        "has no `Match`",
        "invalid regex",
        "not an IPv4 address",
        "out of range",
        "invalid duration",
        "duplicate Listen",
        "a `Mode tcp` entry has no `Match`",
        "unknown balancer",
        "did you mean `RoundRobin`",
        "did you mean `ServerList`",
        "did you mean `LoadBalancer`",
        "weight: `0`",
        "is set twice",
        "a second [PROXY_DEFAULTS]",
        "unknown section",
        "no [PROXY_ENTRY] section",
    ] {
        assert!(
            all.iter().any(|t| t
                .lines()
                .take_while(|l| l.starts_with('#'))
                .any(|l| l.contains(needle))),
            "no corpus file expects `{needle}`"
        );
    }
}

#[test]
fn three_errors_on_three_lines_are_all_reported() {
    let f = Path::new(ROOT).join("tests/config_corpus/three_errors.conf");
    let e = expectation(&f);
    assert_eq!(e.errors.len(), 3);
    let lines: Vec<usize> = e.errors.iter().map(|x| x.0).collect();
    assert_eq!(lines, [5, 6, 7]);
    assert_check_fails(&f, &e);
    // The library reports them too, in file order.
    let text = std::fs::read_to_string(&f).unwrap();
    let errs = Config::parse(text.as_bytes(), &f).unwrap_err();
    let got: Vec<(usize, usize)> = errs.0.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(got, [(5, 7), (6, 12), (7, 14)]);
    assert!(errs.0.iter().all(|d| d.severity == Severity::Error));
}

#[test]
fn errors_show_the_line_a_caret_and_help() {
    let f = Path::new(ROOT).join("tests/config_corpus/unknown_balancer.conf");
    let err = stderr(&check_file(&f));
    assert!(err.contains("5 | LoadBalancer RoundRobn"), "{err}");
    // The caret sits under column 14 of the shown line.
    let caret = err
        .lines()
        .find(|l| l.trim_end().ends_with('^'))
        .expect("a caret line");
    let bar = caret.find('|').unwrap();
    assert_eq!(caret.len() - 1 - (bar + 2), 13, "{err}");
    assert!(err.contains("= help: did you mean `RoundRobin`?"), "{err}");
}

#[test]
fn empty_file_is_an_error() {
    let (out, name) = check_text("");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{name}:1:1: error: no [PROXY_ENTRY] section")),
        "{err}"
    );
    let (out, _) = check_text("\n\n   \n");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn binary_garbage_is_one_clear_error() {
    let dir = TempDir::new();
    // Invalid UTF-8: reported once, at the first bad byte, not once per line.
    let mut bytes = b"[PROXY_ENTRY]\nMa\xff".to_vec();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80));
    bytes.extend(b"\n\x00\x01\n".repeat(100));
    let p = dir.write("garbage.conf", &bytes);
    let out = check_file(&p);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:2:3: error: the file is not UTF-8",
            p.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches(": error: ").count(), 1, "{err}");
    assert!(!err.contains("panicked"));

    // Valid UTF-8 with control characters: an error at the character.
    let p = dir.write(
        "nul.conf",
        b"[PROXY_ENTRY]\nMatch ^/\x00\nServerList 127.0.0.1:80\n",
    );
    let out = check_file(&p);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:2:9: error: control character", p.display())),
        "{err}"
    );
    // And the terminal does not get the raw control bytes back.
    assert!(!err.contains('\0'), "{err:?}");
}

#[test]
fn ten_megabyte_line_is_refused_quickly() {
    let dir = TempDir::new();
    let mut text = String::from("[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:8081\nName ");
    text.push_str(&"a".repeat(10 << 20));
    text.push('\n');
    let p = dir.write("long.conf", &text);
    let t = Instant::now();
    let out = check_file(&p);
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&format!(
            "{}:4:65537: error: line is longer than",
            p.display()
        )),
        "{}",
        &err[..err.len().min(2000)]
    );
    // The message shows a window of the line, not 10 MB of it.
    assert!(err.len() < 4096, "stderr is {} bytes", err.len());
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Through the library as well, with a long line of a known key.
    let text = format!("[PROXY_ENTRY]\nMatch ^/{}\n", "x".repeat(10 << 20));
    let t = Instant::now();
    let e = errors(&text);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!((e.0[0].line, e.0[0].col), (2, 65537));
}

// ---- shipped configs -------------------------------------------------------------------

#[test]
fn every_shipped_config_passes_check() {
    let mut files = Vec::new();
    for dir in ["conf", "conf/examples"] {
        for e in std::fs::read_dir(Path::new(ROOT).join(dir)).expect(dir) {
            let p = e.unwrap().path();
            // conf/demo.conf.in is a template (placeholders), not a config.
            if p.extension().is_some_and(|x| x == "conf") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 5,
        "expected conf/proxy.conf and 4 examples: {files:?}"
    );
    for f in files {
        let out = check_file(&f);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\nstdout:\n{}\nstderr:\n{}",
            f.display(),
            stdout(&out),
            stderr(&out)
        );
        let table = stdout(&out);
        assert!(table.contains("is valid"), "{table}");
        assert!(table.contains("entry 1 `"), "{table}");
        assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
    }
}

#[test]
fn check_prints_the_route_table() {
    let (out, _) = check_text(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:18080\n\
         [PROXY_ENTRY]\nName php\nMatch \\.php$ ^/cgi/\nServerList 127.0.0.1:9000 weight=3 127.0.0.1:9001\nLoadBalancer first-alive\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t = stdout(&out);
    for want in [
        "http listeners: 127.0.0.1:18080",
        "entry 1 `php` (http, line 3)",
        "\\.php$  |  ^/cgi/",
        "FirstAlive",
        "127.0.0.1:9000  weight=3",
        "127.0.0.1:9001  weight=1",
        "offline after 3 failed connects, for 30s",
    ] {
        assert!(t.contains(want), "missing `{want}` in:\n{t}");
    }
}

// ---- what parses to what ----------------------------------------------------------------

#[test]
fn balancer_spellings() {
    for b in [
        "First-Alive",
        "FirstAlive",
        "firstalive",
        "first_alive",
        "FIRST-ALIVE",
    ] {
        let c = parse(&entry(&format!("LoadBalancer {b}")));
        assert_eq!(c.entries[0].balancer, Balancer::FirstAlive, "{b}");
    }
    for (text, want) in [
        ("RoundRobin", Balancer::RoundRobin),
        ("round-robin", Balancer::RoundRobin),
        ("Weighted_Round_Robin", Balancer::WeightedRoundRobin),
        ("locking-round-robin", Balancer::LockingRoundRobin),
        ("LeastConnections", Balancer::LeastConnections),
        ("least_bytes", Balancer::LeastBytes),
        ("Least-Time", Balancer::LeastTime),
        ("sourcehash", Balancer::SourceHash),
        ("Random", Balancer::Random),
        ("naive", Balancer::Naive),
        ("WorkLoad", Balancer::Workload),
    ] {
        let c = parse(&entry(&format!("LoadBalancer {text}")));
        assert_eq!(c.entries[0].balancer, want, "{text}");
    }
    // Every canonical name parses to itself.
    for b in Balancer::ALL {
        let c = parse(&entry(&format!("LoadBalancer {}", b.name())));
        assert_eq!(c.entries[0].balancer, b);
    }
    // Unset: RoundRobin.
    assert_eq!(parse(&entry("")).entries[0].balancer, Balancer::RoundRobin);
    // Not a prefix match: `FirstAliveX` is unknown, never a silent fallback.
    let e = errors(&entry("LoadBalancer FirstAliveX"));
    assert!(e.0[0].message.contains("unknown balancer"), "{e}");
    let e = errors(&entry("LoadBalancer RoundRobn"));
    assert_eq!(e.0[0].help.as_deref(), Some("did you mean `RoundRobin`?"));
}

#[test]
fn load_balance_alias() {
    let c = parse(&entry("LoadBalance FirstAlive"));
    assert_eq!(c.entries[0].balancer, Balancer::FirstAlive);
    let c = parse(&format!(
        "[PROXY_DEFAULTS]\nloadbalance least-connections\n{}",
        entry("")
    ));
    assert_eq!(c.entries[0].balancer, Balancer::LeastConnections);
    // Both spellings in one section are the same key set twice.
    let e = errors(&entry("LoadBalancer RoundRobin\nLoadBalance FirstAlive"));
    assert!(e.0[0].message.contains("set twice"), "{e}");
}

#[test]
fn keys_and_sections_are_case_insensitive() {
    let c = parse(
        "[proxy_defaults]\nloadbalancer FirstAlive\nOFFLINETIMEOUT 7s\n\
         [Proxy_Entry]\nMATCH ^/a\nserverlist 127.0.0.1:8081\nname lower\nattemptscount 9\n",
    );
    let e = &c.entries[0];
    assert_eq!(e.name, "lower");
    assert_eq!(e.patterns, ["^/a"]);
    assert_eq!(e.servers[0].addr, inet("127.0.0.1:8081"));
    assert_eq!(e.balancer, Balancer::FirstAlive);
    assert_eq!(e.availability.attempts, 9);
    assert_eq!(e.availability.offline_timeout, Duration::from_secs(7));
}

#[test]
fn comments_blank_lines_and_indentation() {
    let c = parse(
        "# a comment\n\n   [PROXY_ENTRY]   # trailing comment\n\t Match  ^/a#b   ^/c # comment\r\n  ServerList 127.0.0.1:8081\t# x\n\n",
    );
    // `#` inside a value is part of it; after whitespace it starts a comment.
    assert_eq!(c.entries[0].patterns, ["^/a#b", "^/c"]);
    assert_eq!(c.entries[0].servers.len(), 1);
}

#[test]
fn durations() {
    for (text, want) in [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h30m", Duration::from_secs(5400)),
        ("60", Duration::from_secs(60)),
        ("0", Duration::ZERO),
    ] {
        let c = parse(&entry(&format!("OfflineTimeOut {text}")));
        assert_eq!(c.entries[0].availability.offline_timeout, want, "{text}");
    }
    let c = parse(&entry(
        "ConnectTimeout 250ms\nBackendTimeout 2m\nIdleTimeout 45\nHealthCheckInterval 1s",
    ));
    let e = &c.entries[0];
    assert_eq!(e.timeouts.connect, Duration::from_millis(250));
    assert_eq!(e.timeouts.backend, Duration::from_secs(120));
    assert_eq!(e.timeouts.idle, Duration::from_secs(45));
    assert_eq!(e.health.interval, Duration::from_secs(1));
    // Defaults when unset.
    let c = parse(&entry(""));
    let e = &c.entries[0];
    assert_eq!(e.availability.attempts, 3);
    assert_eq!(e.availability.offline_timeout, Duration::from_secs(30));
    assert_eq!(e.timeouts.connect, Duration::from_secs(3));
    assert_eq!(e.timeouts.backend, Duration::from_secs(30));
    assert_eq!(e.timeouts.idle, Duration::from_secs(60));
    assert_eq!(c.global.head_timeout, Duration::from_secs(10));
    assert_eq!(c.global.shutdown_timeout, Duration::from_secs(30));
    // A connect timeout of zero would fail every connect: refused.
    let e = errors(&entry("ConnectTimeout 0s"));
    assert!(e.0[0].message.contains("more than zero"), "{e}");
    let e = errors(&entry("OfflineTimeOut 5parsecs"));
    assert_eq!((e.0[0].line, e.0[0].col), (4, 16));
}

#[test]
fn addresses() {
    let c = parse(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:18080\nListen [::1]:18080\nListen unix:/tmp/simian-test.sock\n\
         [PROXY_ENTRY]\nMatch ^/\nServerList 10.1.2.3:80 [::1]:8080 unix:/tmp/x.sock localhost:80\n",
    );
    let listen: Vec<&Address> = c.global.listen.iter().map(|l| &l.addr).collect();
    assert_eq!(
        listen,
        [
            &inet("127.0.0.1:18080"),
            &inet("[::1]:18080"),
            &Address::Unix("/tmp/simian-test.sock".into())
        ]
    );
    let s = &c.entries[0].servers;
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].addr, inet("10.1.2.3:80"));
    assert_eq!(s[1].addr, inet("[::1]:8080"));
    assert_eq!(s[2].addr, Address::Unix("/tmp/x.sock".into()));
    // A host name is resolved at load; the text is kept for labels.
    assert_eq!(s[3].text, "localhost:80");
    match &s[3].addr {
        Address::Inet(a) => {
            assert!(a.ip().is_loopback(), "{a}");
            assert_eq!(a.port(), 80);
        }
        other => panic!("localhost resolved to {other:?}"),
    }
    // `*:port` listens on every IPv4 address.
    let c = parse(&format!("[PROXY_DEFAULTS]\nListen *:18081\n{}", entry("")));
    assert_eq!(c.global.listen[0].addr, inet("0.0.0.0:18081"));
    // No Listen at all: 0.0.0.0:8080.
    assert_eq!(
        parse(&entry("")).global.listen[0].addr,
        inet("0.0.0.0:8080")
    );
    // Bad ones.
    for (bad, msg) in [
        ("ServerList 127.0.0.1:0", "port 0"),
        ("ServerList 127.0.0.1:65536", "out of range"),
        ("ServerList 1.2.3:80", "not an IPv4 address"),
        ("ServerList [fe80::1%eth0]:80", "scoped IPv6"),
        ("ServerList unix:", "a socket path"),
        ("ServerList 127.0.0.1", "expected an address"),
    ] {
        let text = format!("[PROXY_ENTRY]\nMatch ^/\n{bad}\n");
        let e = errors(&text);
        assert!(
            e.0.iter().any(|d| d.message.contains(msg) && d.line == 3),
            "{bad}: {e}"
        );
    }
}

#[test]
fn weights() {
    let c = parse(
        "[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:1 weight=3 127.0.0.1:2 127.0.0.1:3 127.0.0.1:2\n",
    );
    let w: Vec<(String, u32)> = c.entries[0]
        .servers
        .iter()
        .map(|s| (s.text.clone(), s.weight))
        .collect();
    // weight=N applies to the address before it; a server listed twice weighs 2.
    assert_eq!(
        w,
        [
            ("127.0.0.1:1".to_string(), 3),
            ("127.0.0.1:2".to_string(), 2),
            ("127.0.0.1:3".to_string(), 1)
        ]
    );
    // Repeated over several ServerList lines too.
    let c = parse(
        "[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:1\nServerList 127.0.0.1:1 127.0.0.1:9\n",
    );
    assert_eq!(c.entries[0].servers[0].weight, 2);
    assert_eq!(c.entries[0].servers.len(), 2);
    for bad in ["weight=0", "weight=1001", "weight=99999999999999999999999"] {
        let e = errors(&format!(
            "[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:1 {bad}\n"
        ));
        assert_eq!((e.0[0].line, e.0[0].col), (3, 24), "{bad}: {e}");
    }
    let e = errors("[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:1 weight=2 weight=3\n");
    assert!(e.0[0].message.contains("second `weight=`"), "{e}");
}

#[test]
fn defaults_are_copied_into_entries_and_entries_override_them() {
    let c = parse(
        "[PROXY_DEFAULTS]\nServerList 127.0.0.1:7001 127.0.0.1:7002\nLoadBalancer FirstAlive\n\
         AttemptsCount 5\nOfflineTimeOut 10s\nConnectTimeout 1s\nMaxConnections 100\nHealthCheck /healthz\nSplice off\n\
         [PROXY_ENTRY]\nName inherits\nMatch ^/a\n\
         [PROXY_ENTRY]\nName overrides\nMatch ^/b\nServerList 127.0.0.1:7003\nLoadBalancer Random\n\
         AttemptsCount 0\nMaxConnections 7\nHealthCheck tcp\nSplice on\n",
    );
    let a = &c.entries[0];
    assert_eq!(a.name, "inherits");
    let servers: Vec<&Address> = a.servers.iter().map(|s| &s.addr).collect();
    assert_eq!(servers, [&inet("127.0.0.1:7001"), &inet("127.0.0.1:7002")]);
    assert_eq!(a.balancer, Balancer::FirstAlive);
    assert_eq!(a.availability.attempts, 5);
    assert_eq!(a.availability.offline_timeout, Duration::from_secs(10));
    assert_eq!(a.timeouts.connect, Duration::from_secs(1));
    assert_eq!(a.max_connections, Some(100));
    assert_eq!(a.health.check, HealthCheck::Http("/healthz".into()));
    assert_eq!(a.splice, SpliceMode::Off);

    let b = &c.entries[1];
    assert_eq!(b.servers.len(), 1);
    assert_eq!(b.servers[0].addr, inet("127.0.0.1:7003"));
    assert_eq!(b.balancer, Balancer::Random);
    assert_eq!(b.availability.attempts, 0);
    // Not overridden: still the defaults'.
    assert_eq!(b.availability.offline_timeout, Duration::from_secs(10));
    assert_eq!(b.timeouts.connect, Duration::from_secs(1));
    assert_eq!(b.max_connections, Some(7));
    assert_eq!(b.health.check, HealthCheck::Tcp);
    assert_eq!(b.splice, SpliceMode::On);
}

#[test]
fn entry_names_default_to_their_position() {
    let c = parse(&format!(
        "{}[PROXY_ENTRY]\nName api\nMatch ^/api\nServerList 127.0.0.1:1\n{}",
        entry(""),
        entry("")
    ));
    let names: Vec<&str> = c.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["entry1", "api", "entry3"]);
}

#[test]
fn tcp_entries_have_their_own_listeners() {
    // Only tcp entries: the defaults' Listen is not opened.
    let c = parse(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:18080\nAttemptsCount 4\n\
         [PROXY_ENTRY]\nName ssh\nMode tcp\nListen 127.0.0.1:2222\nWaitBytes 1\nServerList 127.0.0.1:22\n",
    );
    assert!(c.global.listen.is_empty(), "{:?}", c.global.listen);
    let e = &c.entries[0];
    assert_eq!(e.mode, Mode::Tcp);
    assert_eq!(e.wait_bytes, 1);
    assert!(e.patterns.is_empty());
    let l: Vec<&Address> = e.listen.iter().map(|l| &l.addr).collect();
    assert_eq!(l, [&inet("127.0.0.1:2222")]);
    // Other defaults are inherited.
    assert_eq!(e.availability.attempts, 4);
    assert!(c.router.is_empty());

    // With an http entry as well: the defaults' Listen is opened, and the tcp entry
    // still only has its own.
    let c = parse(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:18080\n\
         [PROXY_ENTRY]\nMode tcp\nListen 127.0.0.1:2222\nServerList 127.0.0.1:22\n\
         [PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:8081\n",
    );
    let g: Vec<&Address> = c.global.listen.iter().map(|l| &l.addr).collect();
    assert_eq!(g, [&inet("127.0.0.1:18080")]);
    assert_eq!(c.entries[0].listen.len(), 1);
    assert!(c.entries[1].listen.is_empty());

    // A StatisticsURL needs the http listeners even with tcp entries only.
    let c = parse(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:18080\nStatisticsURL /stats\n\
         [PROXY_ENTRY]\nMode tcp\nListen 127.0.0.1:2222\nServerList 127.0.0.1:22\n",
    );
    assert_eq!(c.global.listen.len(), 1);

    // http-only keys in a tcp entry.
    let e = errors(
        "[PROXY_ENTRY]\nMode tcp\nListen 127.0.0.1:2222\nServerList 127.0.0.1:22\nStickyCookie SID\n",
    );
    assert_eq!(e.0[0].line, 5, "{e}");
    let e = errors(&entry("WaitBytes 10"));
    assert!(e.0[0].message.contains("WaitBytes"), "{e}");
    // A tcp entry may terminate TLS too (SPEC section 8), with a certificate.
    let e = errors("[PROXY_ENTRY]\nMode tcp\nListen 127.0.0.1:2222 tls\nServerList 127.0.0.1:22\n");
    assert!(
        e.0.iter().any(|d| d.message.contains("TLSCertificate")),
        "{e}"
    );
}

#[test]
fn tls_listener_needs_a_readable_certificate() {
    let e = errors(&format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:8443 tls\n{}",
        entry("")
    ));
    assert_eq!((e.0[0].line, e.0[0].col), (2, 8));
    assert!(e.0[0].message.contains("TLSCertificate"), "{e}");
    // The key is read from the certificate file itself when no KEY is given:
    // a missing file is an error at the value that names it.
    let e = errors(&format!(
        "[PROXY_DEFAULTS]\nListen 127.0.0.1:8443 tls\nTLSCertificate /nonexistent/cert.pem\n{}",
        entry("")
    ));
    assert_eq!((e.0[0].line, e.0[0].col), (3, 16), "{e}");
    assert!(e.0[0].message.contains("/nonexistent/cert.pem"), "{e}");
    // TLSKey beside several certificates is ambiguous.
    let e = errors(&format!(
        "[PROXY_DEFAULTS]\nTLSCertificate /a.pem\nTLSCertificate /b.pem\nTLSKey /k.pem\n{}",
        entry("")
    ));
    assert!(
        e.0.iter()
            .any(|d| d.line == 4 && d.message.contains("several")),
        "{e}"
    );
}

#[test]
fn global_settings() {
    let c = parse(&format!(
        "[PROXY_DEFAULTS]\nHeadTimeout 3s\nGlobalMaxConnections 1000\nThreads 3\nShutdownTimeout 1m\n\
         StatisticsURL /simian-status\nStatisticsAllow 10.0.0.0/8 ::1\nAccessLog off\nErrorLog /tmp/e.log\n{}",
        entry("")
    ));
    let g = &c.global;
    assert_eq!(g.head_timeout, Duration::from_secs(3));
    assert_eq!(g.global_max_connections, Some(1000));
    assert_eq!(g.threads, Some(3));
    assert_eq!(c.threads(), 3);
    assert_eq!(g.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(g.statistics_url.as_deref(), Some("/simian-status"));
    let allow: Vec<String> = g.statistics_allow.iter().map(|c| c.to_string()).collect();
    assert_eq!(allow, ["10.0.0.0/8", "::1/128"]);
    assert_eq!(g.access_log, None);
    assert_eq!(g.error_log.as_deref(), Some(Path::new("/tmp/e.log")));
    let c = parse(&format!("[PROXY_DEFAULTS]\nThreads auto\n{}", entry("")));
    assert_eq!(c.global.threads, None);
    // Statistics default to localhost only.
    let allow: Vec<String> = parse(&entry(""))
        .global
        .statistics_allow
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(allow, ["127.0.0.0/8", "::1/128"]);
}

#[test]
fn sticky_and_health_settings() {
    let c = parse(&entry(
        "StickyCookie SESSIONID hash\nStickyTimeout 10m\nHealthCheck /up\nHealthyThreshold 4\nUnhealthyThreshold 5",
    ));
    let e = &c.entries[0];
    let s = e.sticky.as_ref().expect("sticky");
    assert_eq!(s.cookie, "SESSIONID");
    assert_eq!(s.kind, StickyKind::Hash);
    assert_eq!(s.timeout, Duration::from_secs(600));
    assert_eq!(e.health.healthy_threshold, 4);
    assert_eq!(e.health.unhealthy_threshold, 5);
    let e = errors(&format!(
        "[PROXY_DEFAULTS]\nStickyCookie SID\n{}",
        entry("")
    ));
    assert!(
        e.0[0].message.contains("not allowed in [PROXY_DEFAULTS]"),
        "{e}"
    );
}

#[test]
fn every_key_is_rejected_in_the_wrong_section() {
    use simian::config::key::Place;
    for k in Key::ALL {
        let value = sample_value(k);
        let (text, line) = match k.place() {
            Place::Defaults => (format!("{}{} {value}\n", entry(""), k.name()), 5),
            Place::Entry => (
                format!("[PROXY_DEFAULTS]\n{} {value}\n{}", k.name(), entry("")),
                2,
            ),
            Place::Both => continue,
        };
        let e = errors(&text);
        assert!(
            e.0.iter()
                .any(|d| d.line == line && d.col == 1 && d.message.contains("is not allowed in")),
            "{}: {e}",
            k.name()
        );
    }
}

/// A self-signed certificate with its key in one PEM file, made once per run: the
/// TLS keys' files are read and checked when a file is loaded.
fn sample_pem() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["sample.test".into()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let path = std::env::temp_dir().join(format!("simian-sample-{}.pem", std::process::id()));
        std::fs::write(&path, format!("{}{}", c.pem(), k.serialize_pem())).unwrap();
        path.display().to_string()
    })
}

/// A valid value for each key, to build lines in tests.
fn sample_value(k: Key) -> &'static str {
    match k {
        Key::Listen => "127.0.0.1:18099",
        Key::TlsCertificate | Key::TlsKey | Key::TlsClientCa | Key::BackendCa => sample_pem(),
        Key::TlsProtocols => "1.3",
        Key::TlsClientAuth => "off",
        Key::BackendTlsVerify => "off",
        Key::AccessLog | Key::ErrorLog => "/tmp/x",
        Key::Match => "^/x",
        Key::Name => "n",
        Key::ServerList => "127.0.0.1:1",
        Key::LoadBalancer => "RoundRobin",
        Key::HealthCheck => "tcp",
        Key::StickyCookie => "SID",
        Key::Mode => "http",
        Key::Splice => "auto",
        Key::StatisticsUrl => "/s",
        Key::HealthUrl => "/healthz",
        Key::AdminSocket => "/tmp/simian-sample.sock",
        Key::StatisticsAllow => "127.0.0.1",
        Key::Threads => "2",
        Key::Host => "example.com",
        Key::Allow | Key::Deny | Key::TrustedProxies => "10.0.0.0/8",
        Key::RateLimit => "10/s burst 5",
        Key::Redirect => "https",
        Key::MaxBodySize => "10MB",
        Key::StripPrefix => "/api",
        Key::RequestHeader => "set X-Real-IP %{client}",
        Key::ResponseHeader => "set Strict-Transport-Security max-age=63072000; includeSubDomains",
        Key::SendProxy => "v2",
        Key::AttemptsCount
        | Key::HealthyThreshold
        | Key::UnhealthyThreshold
        | Key::MaxConnections
        | Key::GlobalMaxConnections
        | Key::StickyTableSize
        | Key::WaitBytes => "3",
        _ => "5s",
    }
}

#[test]
fn sticky_table_size_is_bounded_and_inherited() {
    let c = Config::from_text(&format!(
        "[PROXY_DEFAULTS]\nStickyTableSize 5000\n{}",
        entry("StickyCookie SID")
    ))
    .unwrap();
    assert_eq!(c.entries[0].sticky.as_ref().unwrap().table_size, 5000);
    let c = Config::from_text(&entry("StickyCookie SID")).unwrap();
    assert_eq!(c.entries[0].sticky.as_ref().unwrap().table_size, 1_000_000);
    let e = errors(&entry("StickyCookie SID\nStickyTableSize 0")).to_string();
    assert!(e.contains("<text>:5:17"), "{e}");
    let e = errors(&entry("StickyCookie SID\nStickyTableSize 99999999999")).to_string();
    assert!(e.contains("<text>:5:17"), "{e}");
}

#[test]
fn every_key_parses_with_a_sample_value() {
    // Catches a key the grammar knows but resolve forgets (or the reverse).
    use simian::config::key::Place;
    for k in Key::ALL {
        let line = format!("{} {}", k.name(), sample_value(k));
        let text = match (k, k.place()) {
            // TLSKey is the key of the one TLSCertificate.
            (Key::TlsKey, _) => format!(
                "[PROXY_DEFAULTS]\nTLSCertificate {}\n{line}\n{}",
                sample_pem(),
                entry("")
            ),
            (Key::Listen, _) | (_, Place::Defaults) => {
                format!("[PROXY_DEFAULTS]\n{line}\n{}", entry(""))
            }
            (Key::Match | Key::ServerList, _) => {
                format!("[PROXY_ENTRY]\nMatch ^/a\nServerList 127.0.0.1:1\n{line}\n")
            }
            (Key::WaitBytes, _) => format!(
                "[PROXY_ENTRY]\nMode tcp\nListen 127.0.0.1:18098\nServerList 127.0.0.1:1\n{line}\n"
            ),
            _ => entry(&line),
        };
        if let Err(e) = Config::from_text(&text) {
            panic!("{}:\n{text}\n{e}", k.name());
        }
    }
}

// ---- routing -------------------------------------------------------------------------

#[test]
fn routing_follows_file_order_case_and_normalisation() {
    let c = parse(
        "[PROXY_ENTRY]\nName php\nMatch \\.php$\nServerList 127.0.0.1:1\n\
         [PROXY_ENTRY]\nName api\nMatch ^/api/ (?-i)^/Docs\nServerList 127.0.0.1:2\n\
         [PROXY_ENTRY]\nName rest\nMatch ^/\nServerList 127.0.0.1:3\n",
    );
    let route = |p: &str| {
        let mut norm = Vec::new();
        simian::http::normalize_path(p.as_bytes(), &mut norm);
        c.router.route(&norm).map(|m| {
            (
                c.entries[m.entry].name.clone(),
                c.router.pattern(m.pattern).to_string(),
            )
        })
    };
    assert_eq!(route("/api/x.php").unwrap().0, "php"); // first entry wins
    assert_eq!(
        route("/API/users").unwrap(),
        ("api".into(), "^/api/".into())
    );
    assert_eq!(
        route("/Docs/a").unwrap(),
        ("api".into(), "(?-i)^/Docs".into())
    );
    assert_eq!(route("/docs/a").unwrap().0, "rest"); // (?-i): case matters
    assert_eq!(route("/static/../api/v1").unwrap().0, "api");
    assert_eq!(route("/%61pi/v1").unwrap().0, "api");
    assert_eq!(route("/a/./b/../x.PHP").unwrap().0, "php");
    assert_eq!(route("/").unwrap().0, "rest");
    let c = parse("[PROXY_ENTRY]\nMatch ^/only$\nServerList 127.0.0.1:1\n");
    assert_eq!(c.router.route(b"/only/not"), None);
}

// ---- warnings ------------------------------------------------------------------------

fn assert_warns(text: &str, line: usize, col: usize, msg: &str) {
    let (out, name) = check_text(text);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let at = format!("{name}:{line}:{col}: warning: ");
    assert!(
        err.lines().any(|l| l.starts_with(&at) && l.contains(msg)),
        "expected `{at}...{msg}` in:\n{err}"
    );
    assert!(stdout(&out).contains("is valid"));
}

#[test]
fn warning_glob_looking_match() {
    assert_warns(
        "[PROXY_ENTRY]\nMatch /*.php\nServerList 127.0.0.1:1\n",
        2,
        7,
        "looks like a glob",
    );
    let (out, _) = check_text("[PROXY_ENTRY]\nMatch *.php\nServerList 127.0.0.1:1\n");
    // `*.php` is not even a regex: an error, with the glob hint as help.
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a glob"), "{}", stderr(&out));
}

#[test]
fn warning_entry_shadowed_by_an_earlier_catch_all() {
    assert_warns(
        "[PROXY_ENTRY]\nName all\nMatch /\nServerList 127.0.0.1:1\n\n\
         [PROXY_ENTRY]\nName api\nMatch ^/api/\nServerList 127.0.0.1:2\n",
        6,
        1,
        "entry `api` is never used: entry `all` matches every path",
    );
    // Same pattern twice.
    assert_warns(
        "[PROXY_ENTRY]\nMatch ^/a\nServerList 127.0.0.1:1\n\
         [PROXY_ENTRY]\nMatch ^/A\nServerList 127.0.0.1:2\n",
        4,
        1,
        "never used",
    );
    // The catch-all last is fine.
    let (out, _) = check_text(
        "[PROXY_ENTRY]\nMatch ^/api/\nServerList 127.0.0.1:2\n[PROXY_ENTRY]\nMatch /\nServerList 127.0.0.1:1\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn warning_same_server_with_different_settings() {
    assert_warns(
        "[PROXY_ENTRY]\nMatch ^/a\nServerList 127.0.0.1:9000\nAttemptsCount 3\n\
         [PROXY_ENTRY]\nMatch ^/b\nServerList 127.0.0.1:9001 127.0.0.1:9000\nAttemptsCount 5\n",
        7,
        27,
        "server `127.0.0.1:9000` is also in entry `entry1`",
    );
    // Same settings: no warning.
    let (out, _) = check_text(
        "[PROXY_ENTRY]\nMatch ^/a\nServerList 127.0.0.1:9000\n[PROXY_ENTRY]\nMatch ^/b\nServerList 127.0.0.1:9000\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

// ---- CLI: missing files, explain ---------------------------------------------------------

#[test]
fn check_on_a_missing_file_is_one_line() {
    let dir = TempDir::new();
    let missing = dir.0.join("no-such.conf");
    let out = check_file(&missing);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("No such file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The cause once, not twice.
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // A directory instead of a file: also one line.
    let out = check_file(&dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn explain_names_the_entry_and_pattern() {
    let dir = TempDir::new();
    let p = dir.write(
        "explain.conf",
        "[PROXY_ENTRY]\nName static\nMatch ^/static/\nServerList 127.0.0.1:1\n\n\
         [PROXY_ENTRY]\nName php\nMatch ^/cgi/ \\.php$\nServerList 127.0.0.1:2 weight=2\n",
    );
    let conf = p.to_str().unwrap();
    let out = simian(&["explain", "-c", conf, "/a/./b/../x.php?q=1"]);
    let o = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{}", stderr(&out));
    assert!(o.contains("normalised:   /a/x.php"), "{o}");
    assert!(o.contains("entry `php` (line 6), pattern `\\.php$`"), "{o}");
    assert!(o.contains("127.0.0.1:2 (weight 2)"), "{o}");

    let out = simian(&["explain", "-c", conf, "http://example.com/STATIC/x.php"]);
    let o = stdout(&out);
    assert!(o.contains("entry `static`"), "{o}");
    assert!(o.contains("also matched by entry `php`"), "{o}");

    let out = simian(&["explain", "-c", conf, "/nothing/here?x=.php"]);
    let o = stdout(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(o.contains("404"), "{o}");
    assert!(!o.contains("-> entry"), "{o}");

    // explain on a broken file: the errors, exit 1.
    let bad = dir.write("bad.conf", "[PROXY_ENTRY]\nMatch ^/(\n");
    let out = simian(&["explain", "-c", bad.to_str().unwrap(), "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid regex"), "{}", stderr(&out));
}

// ---- docs ----------------------------------------------------------------------------

#[test]
fn every_key_is_documented() {
    let docs = std::fs::read_to_string(Path::new(ROOT).join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let headings: Vec<&str> = docs.lines().filter(|l| l.starts_with("### `")).collect();
    for k in Key::ALL {
        let h = format!("### `{}`", k.name());
        assert!(
            headings.iter().any(|l| l.trim_end() == h),
            "docs/configuration.md has no heading {h}"
        );
    }
    // And no heading for a key that does not exist.
    for h in headings {
        let name = h
            .trim_start_matches("### `")
            .trim_end()
            .trim_end_matches('`');
        assert!(
            Key::ALL.iter().any(|k| k.name() == name),
            "docs/configuration.md documents unknown key `{name}`"
        );
    }
}

// ---- random input ----------------------------------------------------------------------

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};

    fn cfg(cases: u32) -> PtConfig {
        PtConfig {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
            ..PtConfig::default()
        }
    }

    /// Would this text make the parser resolve a host name? Resolution time is the
    /// resolver's, not the parser's, so such inputs are not held to the time limit.
    fn may_resolve(text: &[u8]) -> bool {
        String::from_utf8_lossy(text).split_whitespace().any(|t| {
            t.rsplit_once(':').is_some_and(|(host, port)| {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && host.bytes().any(|b| b.is_ascii_alphabetic())
                    && !host.starts_with('[')
                    && !host.to_ascii_lowercase().starts_with("unix")
            })
        })
    }

    /// CPU time of the calling thread: unlike wall time it does not grow when a
    /// loaded machine (parallel builds on 2 cores) leaves the thread waiting.
    fn thread_cpu_time() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid pointer given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Parse must return (never panic) and be quick: under 1 s of CPU (a hang or
    /// a blow-up shows there), and under 30 s of wall time whatever the load.
    fn parse_quickly(bytes: &[u8]) {
        let (t, cpu) = (Instant::now(), thread_cpu_time());
        let r = Config::parse(bytes, Path::new("fuzz.conf"));
        let (took, cpu) = (t.elapsed(), thread_cpu_time() - cpu);
        if !may_resolve(bytes) {
            assert!(cpu < Duration::from_secs(1), "parse took {cpu:?} of CPU");
            assert!(took < Duration::from_secs(30), "parse took {took:?}");
        }
        match r {
            Ok(c) => {
                // A valid config routes any path without panicking.
                let _ = c.router.route(b"/x/y.php");
                let _ = c.router.all_matches(b"/");
            }
            Err(e) => {
                assert!(!e.0.is_empty());
                for d in &e.0 {
                    assert!(d.line >= 1 && d.col >= 1, "{d:?}");
                    // Rendering the message must not panic either (caret maths).
                    let _ = d.to_string();
                }
            }
        }
    }

    fn proxy_conf() -> Vec<u8> {
        std::fs::read(Path::new(ROOT).join("conf/proxy.conf")).expect("conf/proxy.conf")
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Flip(usize, u8),
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        // Inserted bytes: raw bytes, or pieces of config syntax, which get further.
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..8),
            proptest::sample::select(vec![
                "[",
                "]",
                "#",
                " ",
                "\t",
                "\n",
                "\r\n",
                ":",
                "weight=",
                "unix:",
                "[::1]:",
                "(",
                ")",
                "*",
                "\\",
                "{99999}",
                "Match ",
                "ServerList ",
                "[PROXY_ENTRY]\n",
                "[PROXY_DEFAULTS]\n",
                "Mode tcp\n",
                "Listen ",
                "µ",
                "é",
                "\u{212A}",
                "0",
                "99999999999999999999",
                "tls",
                "LoadBalancer ",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        ];
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<usize>(), piece).prop_map(|(i, v)| Edit::Insert(i, v)),
            (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        ]
    }

    fn apply(mut text: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            let len = text.len().max(1);
            match e {
                Edit::Flip(i, b) => {
                    if !text.is_empty() {
                        let i = i % len;
                        text[i] = *b;
                    }
                }
                Edit::Insert(i, v) => {
                    let i = i % (text.len() + 1);
                    text.splice(i..i, v.iter().copied());
                }
                Edit::Delete(i, n) => {
                    if !text.is_empty() {
                        let i = i % len;
                        let end = (i + n).min(text.len());
                        text.drain(i..end);
                    }
                }
            }
        }
        text
    }

    proptest! {
        #![proptest_config(cfg(512))]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            parse_quickly(&bytes);
        }

        #[test]
        fn arbitrary_text(text in "(?s).{0,2000}") {
            parse_quickly(text.as_bytes());
        }

        #[test]
        fn config_like_token_soup(tokens in proptest::collection::vec(
            proptest::sample::select(vec![
                "[PROXY_ENTRY]", "[PROXY_DEFAULTS]", "[", "]", "\n", "\n", " ", " ", "\t",
                "#", "Match", "ServerList", "LoadBalancer", "Listen", "Mode", "tcp", "http",
                "Name", "AttemptsCount", "OfflineTimeOut", "weight=2", "weight=0",
                "127.0.0.1:80", "[::1]:80", "unix:/tmp/s", "^/", "/", ".*", "(", "a{2,}",
                "FirstAlive", "5s", "60", "0", "tls", "StatisticsURL", "/stats",
                "StickyCookie", "x", "HealthCheck", "\\",
            ]),
            0..200,
        )) {
            parse_quickly(tokens.concat().as_bytes());
        }
    }

    proptest! {
        // A debug-build parse of proxy.conf is ~10 ms (pest unoptimised): keep the
        // whole file under a few seconds on a small machine.
        #![proptest_config(cfg(256))]

        #[test]
        fn mutated_proxy_conf(edits in proptest::collection::vec(edit(), 1..8)) {
            let text = apply(proxy_conf(), &edits);
            parse_quickly(&text);
        }
    }

    /// A hand loop next to proptest: a seeded PRNG, single-byte edits (random or
    /// syntax bytes) at random places of proxy.conf, reproducible run to run.
    #[test]
    fn seeded_single_byte_mutations() {
        let base = proxy_conf();
        let mut x: u64 = 0x5EED_0F51_31A4;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let r = next();
            let i = (r as usize) % base.len();
            let mut t = base.clone();
            match r >> 62 {
                0 => t[i] = (r >> 16) as u8,
                1 => t.insert(i, (r >> 24) as u8),
                2 => {
                    t.remove(i);
                }
                _ => {
                    let special = b"[]#: \n\\(*{^$=";
                    t[i] = special[(r >> 32) as usize % special.len()];
                }
            }
            parse_quickly(&t);
        }
    }

    #[test]
    fn the_unmutated_base_is_valid() {
        // Otherwise the mutation tests would only ever see broken files.
        Config::parse(&proxy_conf(), Path::new("conf/proxy.conf")).unwrap();
    }
}
