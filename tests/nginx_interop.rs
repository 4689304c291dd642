//! Interoperability: curl in front of simian, a real nginx behind it.
//!
//! Skipped (with a message) when `nginx` or `curl` is not installed; CI installs
//! both.

mod util;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use util::nginx::Nginx;
use util::*;

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg(if program == "nginx" {
            "-v"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// nginx as a backend: `/` answers a fixed text, `/big.bin` a static file, and
/// the access log records what simian sent (forwarded headers, and which request
/// of its connection each one was).
fn start_nginx(dir: &Path) -> Nginx {
    let d = dir.display();
    Nginx::start(
        dir,
        "$request|$http_x_forwarded_for|$http_x_forwarded_proto|$connection_requests",
        |port| {
            format!(
                "default_type application/octet-stream;\n\
                 keepalive_timeout 60s;\n\
                 keepalive_requests 1000;\n\
                 server {{\n\
                   listen 127.0.0.1:{port};\n\
                   location = /big.bin {{ root {d}; }}\n\
                   location / {{ return 200 \"nginx ok\\n\"; }}\n\
                 }}"
            )
        },
    )
}

/// Run curl with `args`; its stdout (the `-w` output). Fails the test on a
/// non-zero exit.
fn curl(args: &[&str]) -> String {
    let mut child = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "curl {args:?} failed ({st}): {err}");
    out
}

fn file_sha256(p: &Path) -> String {
    sha256_hex(&std::fs::read(p).unwrap())
}

#[test]
fn curl_simian_nginx() {
    if !installed("nginx") || !installed("curl") {
        eprintln!("skipped: nginx not installed");
        return;
    }
    let dir = temp_dir("nginx");
    let big = pattern_vec(16 * MIB);
    let big_sha = sha256_hex(&big);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    drop(big);
    let nginx = start_nginx(&dir);

    for driver in DRIVERS {
        let p = Proxy::start_with(
            &format!(
                "[PROXY_DEFAULTS]\nListen 127.0.0.1:@PORT@\n\n\
                 [PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:{}\n",
                nginx.port
            ),
            Options::driver(driver).threads(1),
        );
        let base = format!("http://{}", p.addr());
        let out = |name: &str| dir.join(format!("{name}-{driver:?}"));
        let path = |name: &str| out(name).display().to_string();

        // A small response.
        let code = curl(&[
            "-o",
            &path("small"),
            "-w",
            "%{http_code}",
            &format!("{base}/"),
        ]);
        assert_eq!(code, "200");
        assert_eq!(std::fs::read_to_string(out("small")).unwrap(), "nginx ok\n");

        // 16 MiB static file, byte for byte.
        let code = curl(&[
            "-o",
            &path("big"),
            "-w",
            "%{http_code} %{size_download}",
            &format!("{base}/big.bin"),
        ]);
        assert_eq!(code, format!("200 {}", 16 * MIB));
        assert_eq!(file_sha256(&out("big")), big_sha, "16 MiB file altered");

        // HTTP/1.0.
        let code = curl(&[
            "--http1.0",
            "-o",
            &path("old"),
            "-w",
            "%{http_code}",
            &format!("{base}/old"),
        ]);
        assert_eq!(code, "200");
        assert_eq!(std::fs::read_to_string(out("old")).unwrap(), "nginx ok\n");

        // Two URLs in one curl: the second rides the first one's connection.
        let code = curl(&[
            "-o",
            &path("ka1"),
            "-o",
            &path("ka2"),
            "-w",
            "%{http_code} %{num_connects}\\n",
            &format!("{base}/ka1"),
            &format!("{base}/big.bin"),
        ]);
        assert_eq!(code, "200 1\n200 0\n", "client keep-alive not kept");
        assert_eq!(std::fs::read_to_string(out("ka1")).unwrap(), "nginx ok\n");
        assert_eq!(file_sha256(&out("ka2")), big_sha);
        drop(p);
    }

    // What nginx saw: the forwarded headers, and simian's pooled connection
    // carrying several requests.
    let log = nginx.access();
    assert_eq!(log.len(), 10, "{log:?}");
    for l in &log {
        assert_eq!(l.len(), 4, "{l:?}");
        assert_eq!(l[1], "127.0.0.1", "X-Forwarded-For in {l:?}");
        assert_eq!(l[2], "http", "X-Forwarded-Proto in {l:?}");
    }
    assert!(log.iter().any(|l| l[0] == "GET /old HTTP/1.0"), "{log:?}");
    assert!(
        log.iter().any(|l| l[3] != "1"),
        "simian never reused a connection to nginx: {log:?}"
    );
    drop(nginx);
    let _ = std::fs::remove_dir_all(dir);
}
