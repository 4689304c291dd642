//! An HTTP/1.x client connection, top to bottom: wait for a request (holding no
//! buffer while idle), read and check its head, route it, pick a server, connect
//! (with availability and failover), run the exchange, repeat while keep-alive.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::{PickContext, Tried};
use crate::config::{Balancer, StickyKind};
use crate::http::{self, BodyFraming, RequestError, RequestHead};
use crate::net::connect::connect;
use crate::net::listen::Peer;
use crate::net::{io as nio, Stream};
use crate::proxy::exchange::{exchange, Fail, Request};
use crate::runtime::live::Live;
use crate::runtime::worker::Worker;
use crate::upstream::clock::now_ms;
use crate::upstream::ServerState;

/// Serve one client connection until it closes.
///
/// This future is what an idle keep-alive connection costs, so it holds only the
/// idle wait; everything a request needs (head reading, routing, the exchange,
/// bodies) lives in one boxed future per request.
pub async fn serve(w: &Rc<Worker>, client: Stream, peer: Peer) {
    // Bytes of the next request already read (pipelining), if any. HTTP
    // listeners defer accept until the first bytes are in, so a new connection
    // is read at once, without a readiness round trip; one that still has
    // nothing (the defer period ran out) waits like an idle one.
    let mut carry: Option<Vec<u8>> = None;
    if client.is_tcp() {
        let mut b = w.bufs.take();
        match nio::try_read(&client, &mut b, http::MAX_HEAD) {
            Ok(n) if n > 0 => carry = Some(b),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => w.bufs.give(b),
            _ => {
                w.bufs.give(b);
                return;
            }
        }
    }
    loop {
        let buf = match carry.take() {
            Some(b) if !b.is_empty() => b,
            other => {
                if let Some(b) = other {
                    w.bufs.give(b);
                }
                let idle = w.live.load().config.global.idle_timeout;
                if w.shutdown.started() || !wait_request(w, &client, idle).await {
                    return;
                }
                w.bufs.take()
            }
        };
        match Box::pin(request(w, &client, peer, buf)).await {
            Some(rest) => carry = Some(rest),
            None => return,
        }
    }
}

/// One request: read and check its head, route and proxy it. The buffer comes
/// back (holding any pipelined bytes) when the connection stays open.
async fn request(w: &Rc<Worker>, client: &Stream, peer: Peer, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    // Loaded once a request is here, not before the idle wait: a keep-alive
    // connection that sat through a reload serves its next request with the new
    // configuration.
    let live = w.live.load_full();
    let g = &live.config.global;
    let head = match read_head(client, &mut buf, g.head_timeout).await {
        Ok(h) => h,
        Err(HeadError::Closed) => {
            w.bufs.give(buf);
            return None;
        }
        Err(HeadError::Reject(status, why)) => {
            crate::info!("client {}: {status}: {why}", show(peer));
            send_error(client, status, "", w).await;
            w.bufs.give(buf);
            return None;
        }
    };
    match handle(w, &live, client, peer, &mut buf, &head).await {
        Some(consumed) => {
            buf.drain(..consumed.min(buf.len()));
            Some(buf)
        }
        None => {
            w.bufs.give(buf);
            None
        }
    }
}

fn show(peer: Peer) -> String {
    peer.addr.map_or("unix".to_string(), |a| a.to_string())
}

/// Wait, holding no buffer, until the client sends the first byte of a request.
/// False when it closed, timed out, or shutdown asked idle connections to go.
///
/// No timer per connection (a monoio `Sleep` is 640 bytes, more than the rest of
/// an idle connection): the deadline goes into the worker's idle map, and the
/// worker's sweeper shuts the socket down when it passes, which wakes this wait.
async fn wait_request(w: &Worker, client: &Stream, idle: Duration) -> bool {
    let deadline = now_ms() + idle.as_millis() as u64;
    w.idle.borrow_mut().insert(client.fd(), deadline);
    let r = client.readable().await;
    let swept = w.idle.borrow_mut().remove(&client.fd()).is_none();
    r.is_ok() && !swept && !w.shutdown.started()
}

enum HeadError {
    /// Closed (or timed out) before a byte of a request: nothing to answer.
    Closed,
    Reject(u16, &'static str),
}

/// Read until a whole head is in `buf`; the head must arrive within `limit` of its
/// first byte, however slowly it trickles (Slowloris).
async fn read_head(
    client: &Stream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<RequestHead, HeadError> {
    let deadline = Instant::now() + limit;
    // Parsing is skipped until the head may be complete: re-parsing after every
    // small read would make a trickling client cost quadratic work.
    let mut before = 0;
    loop {
        if !buf.is_empty()
            && (buf.len() > http::MAX_HEAD || http::head_may_be_complete(buf, before))
        {
            match http::parse_request(buf) {
                Ok(h) => return Ok(h),
                Err(RequestError::Incomplete) => {}
                Err(e) => {
                    let why = match e {
                        RequestError::Bad(w) | RequestError::NotImplemented(w) => w,
                        RequestError::TooLarge => "request head too large",
                        RequestError::VersionNotSupported => "HTTP version not supported",
                        RequestError::Incomplete => "incomplete head",
                    };
                    return Err(HeadError::Reject(e.status(), why));
                }
            }
        }
        before = buf.len();
        let left = deadline.saturating_duration_since(Instant::now());
        match nio::read(
            client,
            buf,
            http::MAX_HEAD + 1 - buf.len().min(http::MAX_HEAD),
            left,
        )
        .await
        {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Reject(
                    400,
                    "connection closed in the middle of the head",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !buf.is_empty() => {
                return Err(HeadError::Reject(
                    408,
                    "request head not received in time (HeadTimeout)",
                ))
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

async fn send_error(client: &Stream, status: u16, extra_headers: &str, w: &Worker) {
    let mut out = w.bufs.take();
    http::error_response_with(status, true, extra_headers, &mut out);
    let _ = nio::write_all(client, &out, Duration::from_secs(5)).await;
    w.bufs.give(out);
}

/// What happened to one request, for the statistics and the access log.
struct Served {
    status: u16,
    server: Option<usize>,
    bytes_to_client: u64,
    body_from_client: u64,
    /// `Some(consumed)` to keep the client connection open.
    keep: Option<usize>,
}

impl Served {
    fn simian(status: u16, keep: Option<usize>) -> Served {
        Served {
            status,
            server: None,
            bytes_to_client: 0,
            body_from_client: 0,
            keep,
        }
    }
}

/// Route and proxy one request, then count and log it. `Some(consumed)` to keep
/// the connection open.
async fn handle(
    w: &Worker,
    live: &Arc<Live>,
    client: &Stream,
    peer: Peer,
    buf: &mut Vec<u8>,
    head: &RequestHead,
) -> Option<usize> {
    let t0 = Instant::now();
    let config = &live.config;
    if let Some(url) = &config.global.statistics_url {
        if &buf[head.path.clone()] == url.as_bytes() {
            return crate::proxy::statistics::serve(w, live, client, peer, buf, head).await;
        }
    }
    let route = {
        let mut norm = w.path_scratch.borrow_mut();
        http::normalize_path(&buf[head.path.clone()], &mut norm);
        config.router.route(&norm)
    };
    // The log needs the request line and two headers; the exchange may reuse `buf`
    // (chunked bodies), so copy them first, and only when there is a log.
    let mut log_fields = config
        .global
        .access_log
        .is_some()
        .then(|| LogFields::capture(w, buf, head));
    let (served, route_index) = match route {
        None => {
            crate::debug!("client {}: 404: no entry matches", show(peer));
            let close = !head.keep_alive || head.framing != BodyFraming::None;
            let mut out = w.bufs.take();
            http::error_response(404, close, &mut out);
            let ok = nio::write_all(client, &out, config.global.idle_timeout)
                .await
                .is_ok();
            let mut s = Served::simian(404, (ok && !close).then_some(head.head_len));
            s.bytes_to_client = out.len() as u64;
            w.bufs.give(out);
            (s, None)
        }
        Some(route) => (
            proxy(w, live, route.entry, client, peer, buf, head).await,
            Some(route),
        ),
    };
    let micros = t0.elapsed().as_micros() as u64;
    let received = head.head_len as u64 + served.body_from_client;
    if let Some(r) = route_index {
        live.entries[r.entry].stats.record(
            w.id,
            served.server,
            r.pattern - config.router.first_pattern_of(r.entry),
            served.status,
            micros,
            received,
            served.bytes_to_client,
        );
    }
    if let Some(f) = log_fields.take() {
        let (route_name, server) = match route_index {
            Some(r) => {
                let rt = &live.entries[r.entry];
                let server = served
                    .server
                    .and_then(|i| rt.servers.get(i))
                    .map_or("-", |s| s.spec.text.as_str());
                (config.entries[r.entry].name.as_str(), server)
            }
            None => ("-", "-"),
        };
        f.write(
            w,
            peer,
            &served,
            received,
            micros / 1000,
            server,
            route_name,
        );
    }
    served.keep
}

/// The request fields the access log needs, copied out of the request buffer.
struct LogFields {
    buf: Vec<u8>,
    line: usize,
    referer: usize,
}

impl LogFields {
    fn capture(w: &Worker, buf: &[u8], head: &RequestHead) -> LogFields {
        let mut b = w.bufs.take();
        b.extend_from_slice(&buf[head.request_line()]);
        let line = b.len();
        let mut ua: &[u8] = b"";
        let mut referer: &[u8] = b"";
        for h in head.headers(buf) {
            if h.name.eq_ignore_ascii_case(b"referer") {
                referer = h.value;
            } else if h.name.eq_ignore_ascii_case(b"user-agent") {
                ua = h.value;
            }
        }
        b.extend_from_slice(referer);
        let referer = b.len();
        b.extend_from_slice(ua);
        LogFields {
            buf: b,
            line,
            referer,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        self,
        w: &Worker,
        peer: Peer,
        s: &Served,
        received: u64,
        ms: u64,
        server: &str,
        route: &str,
    ) {
        let e = crate::accesslog::Entry {
            client: peer.ip(),
            request_line: &self.buf[..self.line],
            status: s.status,
            bytes_to_client: s.bytes_to_client,
            referer: &self.buf[self.line..self.referer],
            user_agent: &self.buf[self.referer..],
            bytes_from_client: received,
            duration_ms: ms,
            server,
            route,
        };
        w.log_line(&e);
        w.bufs.give(self.buf);
    }
}

/// Pick a server of the entry, connect (with availability and failover), run the
/// exchange; answer 502/503/504 when that is all that is left to do.
async fn proxy(
    w: &Worker,
    live: &Arc<Live>,
    entry_index: usize,
    client: &Stream,
    peer: Peer,
    buf: &mut Vec<u8>,
    head: &RequestHead,
) -> Served {
    let config = &live.config;
    let entry = &config.entries[entry_index];
    let rt = &live.entries[entry_index];
    let idle = config.global.idle_timeout;

    // Could this request be sent again if a pooled connection turns out dead?
    let replayable =
        head.framing == BodyFraming::None && !head.expect_continue && head.method.is_idempotent();
    let sticky_key = entry.sticky.as_ref().and_then(|st| {
        crate::upstream::sticky::cookie_value(head.headers(buf), st.cookie.as_bytes())
            .map(|v| (st.kind, crate::balance::stable_hash(v)))
    });
    let mut tried = Tried::new(rt.servers.len());
    let mut any_available = false;
    let mut last_error = String::from("no server available");
    let mut first_pick = true;
    let rt_tracks_load = matches!(
        entry.balancer,
        Balancer::LeastBytes | Balancer::LeastTime | Balancer::Workload
    );
    loop {
        let now = now_ms();
        let cx = PickContext {
            servers: &rt.servers,
            client_ip: peer.ip(),
            client_port: peer.port(),
            now_ms: now,
            tried: &tried,
            max_connections: entry.max_connections,
        };
        // Hash mode stays on the cookie's rendezvous order through failover (the
        // next server by hash is where the cookie lands for good once its server
        // is offline); table mode looks the cookie up once, then the balancer.
        let pick = match sticky_key {
            Some((StickyKind::Hash, key)) => crate::balance::rendezvous_with(key, &rt.salts, &cx),
            Some((StickyKind::Table, key)) if first_pick => {
                sticky_table_pick(rt, key, &cx, entry, peer)
            }
            _ => rt.balancer.pick(&cx),
        };
        first_pick = false;
        let Some(i) = pick else { break };
        tried.insert(i);
        let server = &rt.servers[i];
        let Some(probe) = server.acquire(now) else {
            continue; // another request is probing it
        };
        // A probe that ends without a verdict gives its slot back.
        let _probe_guard = ProbeGuard(server, probe);
        let Some(_slot) = ActiveSlot::acquire(server, entry.max_connections) else {
            continue;
        };
        let started_ms = if rt_tracks_load { now_ms() } else { 0 };
        any_available = true;
        let addr = &server.spec.addr;
        let mut fresh_retry = false;
        loop {
            let (backend, reused) = match (!fresh_retry)
                .then(|| w.backends.take(addr, replayable))
                .flatten()
            {
                Some(b) => (b, true),
                None => match connect(addr, entry.timeouts.connect).await {
                    Ok(b) => {
                        server.connect_succeeded();
                        (b, false)
                    }
                    Err(e) => {
                        server.connect_failed(&entry.availability, now_ms());
                        crate::warn!(
                            "entry {}: connect to {} failed: {e}",
                            entry.name,
                            server.spec.text
                        );
                        last_error = format!("connect to {}: {e}", server.spec.text);
                        break;
                    }
                },
            };
            let req = Request {
                head,
                peer,
                entry,
                reused,
                idle,
            };
            match exchange(w, client, &backend, buf, &req).await {
                Ok(done) => {
                    if probe {
                        // The probe succeeded, maybe over a pooled connection.
                        server.connect_succeeded();
                    }
                    if rt_tracks_load {
                        // fproxy's LeastBytes / LeastTime / Workload inputs.
                        let bytes =
                            head.head_len as u64 + done.body_from_client + done.bytes_to_client;
                        server.bytes.fetch_add(bytes, Relaxed);
                        server
                            .busy_ms
                            .fetch_add(now_ms().saturating_sub(started_ms), Relaxed);
                    }
                    let served = Served {
                        status: done.status,
                        server: Some(i),
                        bytes_to_client: done.bytes_to_client,
                        body_from_client: done.body_from_client,
                        keep: done.client_keep_alive.then_some(done.consumed),
                    };
                    if done.backend_reusable {
                        w.backends.put(addr, backend);
                    }
                    if let (Some((StickyKind::Table, key)), Some(table)) = (sticky_key, &rt.sticky)
                    {
                        // Remember (or move, after a failover) the cookie's server.
                        table.assign(key, server, now_ms());
                    }
                    return served;
                }
                Err(Fail::Replayable(e)) => {
                    crate::debug!(
                        "pooled connection to {} failed ({e}); retrying on a fresh one",
                        server.spec.text
                    );
                    fresh_retry = true;
                }
                Err(Fail::Status(status, why)) => {
                    backend.set_linger_zero();
                    crate::warn!(
                        "entry {}: {status} for client {}: {why} (server {})",
                        entry.name,
                        show(peer),
                        server.spec.text
                    );
                    send_error(client, status, "", w).await;
                    return Served {
                        server: Some(i),
                        ..Served::simian(status, None)
                    };
                }
                Err(Fail::Abort(why)) => {
                    backend.set_linger_zero();
                    crate::info!(
                        "entry {}: connection with client {} aborted: {why}",
                        entry.name,
                        show(peer)
                    );
                    // 499 in the log, as nginx does for a client that went away.
                    return Served {
                        server: Some(i),
                        ..Served::simian(499, None)
                    };
                }
            }
        }
    }
    let (status, extra) = if any_available {
        (502, "")
    } else {
        (503, "Retry-After: 1\r\n")
    };
    let why = if any_available {
        last_error
    } else {
        "no server available (offline or at MaxConnections)".into()
    };
    crate::warn!(
        "entry {}: {status} for client {}: {why}",
        entry.name,
        show(peer)
    );
    send_error(client, status, extra, w).await;
    Served::simian(status, None)
}

/// `StickyCookie NAME table`: the cookie's server while it is usable; else a new
/// one from the entry's balancer (recorded once the request succeeds).
fn sticky_table_pick(
    rt: &crate::runtime::live::EntryRuntime,
    key: u64,
    cx: &PickContext,
    entry: &crate::config::Entry,
    peer: Peer,
) -> Option<usize> {
    let table = rt.sticky.as_ref()?;
    if let Some(s) = table.get(key, cx.now_ms) {
        match rt.servers.iter().position(|x| Arc::ptr_eq(x, &s)) {
            Some(i) if cx.usable(i) => return Some(i),
            Some(_) => crate::info!(
                "entry {}: sticky server {} unavailable for client {}: reassigning its cookie",
                entry.name,
                s.spec.text,
                show(peer)
            ),
            None => {}
        }
    }
    rt.balancer.pick(cx)
}

/// Releases an unused probe slot when the attempt ends (a successful or failed
/// connect has already settled it: then this is a no-op).
struct ProbeGuard<'a>(&'a ServerState, bool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.release_probe();
        }
    }
}

/// One request in flight on a server: counts in `active` and keeps MaxConnections
/// exact under concurrency (check and increment are one atomic step).
struct ActiveSlot<'a>(&'a ServerState);

impl<'a> ActiveSlot<'a> {
    fn acquire(s: &'a ServerState, max: Option<u32>) -> Option<ActiveSlot<'a>> {
        match max {
            None => {
                s.active.fetch_add(1, Relaxed);
            }
            Some(m) => {
                s.active
                    .fetch_update(AcqRel, Relaxed, |a| (a < m).then_some(a + 1))
                    .ok()?;
            }
        }
        Some(ActiveSlot(s))
    }
}

impl Drop for ActiveSlot<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
