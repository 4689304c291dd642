//! `simian demo`: three tiny HTTP backends on loopback and the proxy in front of
//! them, so a newcomer sees round robin work with one command.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::Context;

use crate::config::Config;
use crate::runtime::{self, RunOptions};

/// The shipped demo configuration; `{listen}` and `{b1..b3}` are filled in.
const DEMO_CONF: &str = include_str!("../conf/demo.conf.in");

pub fn run(listen: &str) -> anyhow::Result<()> {
    let mut ports = Vec::new();
    for n in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").context("cannot start a demo backend")?;
        ports.push(l.local_addr()?.port());
        std::thread::Builder::new()
            .name(format!("demo-backend-{n}"))
            .spawn(move || backend(l, n))?;
    }
    let text = DEMO_CONF
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
    println!("  (config used: {}; Ctrl-C stops)", path.display());
    println!();
    let r = runtime::run(config, &path, &RunOptions::default());
    let _ = std::fs::remove_file(&path);
    r
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
