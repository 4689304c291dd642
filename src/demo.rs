//! `simian demo`: three tiny HTTP backends on loopback and the proxy in front of
//! them, so a newcomer sees round robin work with one command.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::Context;

use crate::config::Config;
use crate::runtime::{self, RunOptions};

/// The shipped demo configuration; `{listen}` and `{b1..b3}` are filled in.
const DEMO_CONF: &str = include_str!("../conf/demo.conf.in");

/// `tls`: also terminate TLS on this address, with a self-signed certificate for
/// `localhost` made at start (`simian demo --tls`).
pub fn run(listen: &str, tls: Option<&str>) -> anyhow::Result<()> {
    let mut ports = Vec::new();
    for n in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").context("cannot start a demo backend")?;
        ports.push(l.local_addr()?.port());
        std::thread::Builder::new()
            .name(format!("demo-backend-{n}"))
            .spawn(move || backend(l, n))?;
    }
    let mut text = DEMO_CONF.to_string();
    let cert_path = std::env::temp_dir().join(format!("simian-demo-{}.pem", std::process::id()));
    if let Some(tls) = tls {
        std::fs::write(&cert_path, self_signed()?).context("cannot write the demo certificate")?;
        text = text.replace(
            "    Listen         {listen}\n",
            &format!(
                "    Listen         {{listen}}\n    Listen         {tls} tls\n    TLSCertificate {}\n",
                cert_path.display()
            ),
        );
    }
    let text = text
        .replace("{listen}", listen)
        .replace("{b1}", &format!("127.0.0.1:{}", ports[0]))
        .replace("{b2}", &format!("127.0.0.1:{}", ports[1]))
        .replace("{b3}", &format!("127.0.0.1:{}", ports[2]));
    let config = Config::parse(text.as_bytes(), std::path::Path::new("conf/demo.conf.in"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = std::env::temp_dir().join(format!("simian-demo-{}.conf", std::process::id()));
    std::fs::write(&path, &text).context("cannot write the demo config")?;
    println!(
        "simian demo: proxy on http://{listen}/ in front of three backends on ports {ports:?}"
    );
    println!();
    println!("Try:");
    println!("  curl -i http://{listen}/            # the X-Backend header rotates: round robin");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{listen}/hello; done");
    println!(
        "  curl -s --data-binary @/etc/hostname http://{listen}/upload   # bodies are forwarded"
    );
    if let Some(tls) = tls {
        let port = tls.rsplit(':').next().unwrap_or("8443");
        println!(
            "  curl -i --cacert {} --resolve localhost:{port}:127.0.0.1 https://localhost:{port}/   # TLS, self-signed certificate",
            cert_path.display()
        );
        println!("  openssl s_client -connect {tls} -servername localhost </dev/null");
    }
    println!();
    println!("  http://{listen}/simian-status   # live statistics: open it in a browser (also ?format=json, Prometheus for curl)");
    println!(
        "  http://{listen}/healthz         # health endpoint: 200 while serving, 503 once stopping"
    );
    println!("  (config used: {}; Ctrl-C stops)", path.display());
    println!();
    let r = runtime::run(config, &path, &RunOptions::default());
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&cert_path);
    r
}

/// A self-signed ECDSA P-256 certificate for `localhost` and `127.0.0.1`, with its
/// key, as one PEM.
fn self_signed() -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate().context("cannot make a key")?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .context("certificate parameters")?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "simian demo");
    let cert = params.self_signed(&key).context("cannot sign")?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
}

/// A minimal keep-alive HTTP/1.1 backend: answers every request with its number.
fn backend(l: TcpListener, n: usize) {
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || serve(conn, n));
    }
}

fn serve(mut c: TcpStream, n: usize) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let body = format!("hello from backend {n}: you asked for {path}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {n}\r\n\r\n{body}",
            body.len()
        );
        if c.write_all(resp.as_bytes()).is_err() {
            return;
        }
        buf.drain(..end);
    }
}
