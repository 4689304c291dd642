//! The `StatisticsURL`, served by simian itself on every http listener: Prometheus
//! text by default, `?format=json`, or HTML for a browser (`Accept: text/html`).
//! Only clients in `StatisticsAllow` get it; others get 403.

use std::sync::Arc;

use crate::context::live::Live;
use crate::context::Worker;
use crate::http::{self, RequestHead};
use crate::net::listen::Peer;
use crate::net::{io as nio, Stream};
use crate::stats::cache::Format;

pub async fn serve(
    w: &Worker,
    live: &Arc<Live>,
    client: &Stream,
    peer: Peer,
    buf: &[u8],
    head: &RequestHead,
) -> Option<usize> {
    let g = &live.config.global;
    // Unix-socket clients are local by construction.
    let allowed = peer
        .ip()
        .is_none_or(|ip| g.statistics_allow.iter().any(|c| c.contains(ip)));
    let t = g.idle_timeout;
    let mut out = w.bufs.take();
    let keep = head.keep_alive && head.framing == http::BodyFraming::None;
    if !allowed {
        http::error_response(403, !keep, head.method == http::Method::Head, &mut out);
    } else {
        let target = &buf[head.target.clone()];
        let query = target
            .iter()
            .position(|&b| b == b'?')
            .map_or(&b""[..], |i| &target[i + 1..]);
        let wants_json = query.split(|&b| b == b'&').any(|kv| kv == b"format=json");
        let wants_html = !wants_json
            && head.headers(buf).any(|h| {
                h.name.eq_ignore_ascii_case(b"accept")
                    && h.value
                        .windows(9)
                        .any(|x| x.eq_ignore_ascii_case(b"text/html"))
            });
        let (format, ctype) = if wants_json {
            (Format::Json, "application/json")
        } else if wants_html {
            (Format::Html, "text/html; charset=utf-8")
        } else {
            (
                Format::Prometheus,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        };
        let body = w.stats_pages.get(live, format);
        use std::io::Write;
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: {}\r\n\r\n",
            body.len(),
            if keep { "keep-alive" } else { "close" }
        );
        if head.method != http::Method::Head {
            out.extend_from_slice(&body);
        }
    }
    let ok = nio::write_all(client, &out, t).await.is_ok();
    w.bufs.give(out);
    (ok && keep).then_some(head.head_len)
}
