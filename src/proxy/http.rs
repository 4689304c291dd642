//! An HTTP/1.x client connection, top to bottom: wait for a request (holding no
//! buffer while idle), read and check its head, route it, hand it to
//! [`super::forward`] (pick a server, connect with availability and failover, run
//! the exchange), count and log it, repeat while keep-alive.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::context::live::Live;
use crate::context::park::PARK_AFTER;
use crate::context::{Idle, Worker};
use crate::http::{self, BodyFraming, RequestError, RequestHead};
use crate::net::listen::Peer;
use crate::net::{io as nio, Stream};
use crate::proxy::forward;
use crate::upstream::clock::now_ms;

/// Serve one client connection until it closes.
///
/// The request's state (head reading, routing, the exchange) is inline: boxing it
/// per request cost a 3 KB allocation each time (0.35 µs of user time per small
/// GET, measured A/B), and a connection idle for long gives up this whole future
/// when it parks, so its size no longer decides what an idle connection costs.
/// Bodies, tunnels and slow writes stay boxed in `exchange`: most requests have none.
///
/// `fresh`: a new connection, which must send its first request within
/// `HeadTimeout` (as nginx's `client_header_timeout`), not `IdleTimeout`: a
/// connection that sends nothing would hold a `GlobalMaxConnections` slot that long.
/// A parked connection coming back has served requests already.
pub async fn serve(w: &Rc<Worker>, mut client: Stream, peer: Peer, fresh: bool) {
    let _private = crate::context::PrivateBackends(w, client.fd());
    // Bytes of the next request already read (pipelining), if any. HTTP
    // listeners defer accept until the first bytes are in, so a new connection
    // is read at once, without a readiness round trip; one that still has
    // nothing (the defer period ran out) waits like an idle one.
    let mut carry: Option<Vec<u8>> = None;
    let mut may_park = true;
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
    let mut served_one = !fresh;
    loop {
        let buf = match carry.take() {
            Some(b) if !b.is_empty() => b,
            other => {
                if let Some(b) = other {
                    w.bufs.give(b);
                }
                let idle = {
                    let g = &w.live.load().config.global;
                    if served_one {
                        g.idle_timeout
                    } else {
                        g.idle_timeout.min(g.head_timeout)
                    }
                };
                let idle = if w.shutdown.started() {
                    idle.min(crate::context::shutdown::DRAIN_IDLE_GRACE)
                } else {
                    idle
                };
                match wait_request(w, &client, idle, may_park).await {
                    Wait::Request => {}
                    Wait::Close => return,
                    Wait::Park { deadline } => match w.park(client, peer, deadline) {
                        Ok(()) => return,
                        // Could not park (fd or epoll limits): wait in the task.
                        Err(c) => {
                            client = c;
                            may_park = false;
                            continue;
                        }
                    },
                }
                w.bufs.take()
            }
        };
        match request(w, &client, peer, buf).await {
            Some(rest) => {
                carry = Some(rest);
                served_one = true;
            }
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
            let g = &live.config.global;
            let vars = crate::proxy::rules::Vars {
                client: peer.ip(),
                host: b"",
                tls: client.is_tls(),
                route: "-",
                request_id: 0,
            };
            let rules = (&g.response_headers, &vars);
            Box::pin(send_error(client, status, "", false, w, rules)).await;
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

pub(super) fn show(peer: Peer) -> String {
    peer.addr.map_or("unix".to_string(), |a| a.to_string())
}

/// How an idle wait ended.
enum Wait {
    /// The first bytes of a request (or EOF) are readable.
    Request,
    /// Closed, timed out, or shutdown asked idle connections to go.
    Close,
    /// Idle long enough: the sweeper asked it to give up its task.
    Park { deadline: u64 },
}

/// Wait, holding no buffer, until the client sends the first byte of a request.
///
/// No timer per connection (a monoio `Sleep` is 640 bytes, more than the rest of
/// an idle connection): the deadline goes into the worker's idle map, and the
/// worker's sweeper shuts the socket down when it passes, which wakes this wait;
/// past [`PARK_AFTER`] the sweeper asks the connection to park instead.
async fn wait_request(w: &Worker, client: &Stream, idle: Duration, may_park: bool) -> Wait {
    let fd = client.fd();
    let now = now_ms();
    let deadline = now + idle.as_millis() as u64;
    // Entered into the idle map at the first Pending, waker included: one map
    // operation there, one to leave, per request.
    let mut entry = Some(Idle {
        deadline,
        park_at: if may_park {
            now + PARK_AFTER.as_millis() as u64
        } else {
            u64::MAX
        },
        park: false,
        waker: None,
    });
    // Readiness first: when both are ready, the request wins. Dropping the
    // readiness wait (to park) loses nothing, it reads no data.
    let mut readable = std::pin::pin!(client.readable());
    let r = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = readable.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        let mut map = w.idle.borrow_mut();
        if let Some(mut e) = entry.take() {
            e.waker = Some(cx.waker().clone());
            map.insert(fd, e);
            return Poll::Pending;
        }
        match map.get_mut(&fd) {
            Some(e) if e.park => Poll::Ready(None),
            Some(e) => {
                if !e.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
                    e.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            // Swept: the shutdown(2) that follows wakes the readiness wait.
            None => Poll::Pending,
        }
    })
    .await;
    // Never entered (readable at once): nothing to remove, nobody swept it.
    let swept = entry.is_none() && w.idle.borrow_mut().remove(&fd).is_none();
    match r {
        _ if swept => Wait::Close,
        // Also while draining: the request was on its way (see DRAIN_IDLE_GRACE).
        Some(Ok(())) => Wait::Request,
        Some(Err(_)) => Wait::Close,
        None if w.shutdown.started() => Wait::Close,
        None => Wait::Park { deadline },
    }
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
    // Set at the first read that has to wait: most heads are in at once, and the
    // precise clock is not free.
    let mut deadline: Option<Instant> = None;
    // Parsing is skipped until the head may be complete: re-parsing after every
    // small read would make a trickling client cost quadratic work.
    let mut before = 0;
    loop {
        if !buf.is_empty()
            && (buf.len() > http::MAX_HEAD
                || http::head_may_be_complete(buf, before)
                // A TLS ClientHello (or other non-HTTP bytes) on a plain listener:
                // refused at its first bytes, not at HeadTimeout.
                || (before == 0 && http::cannot_start_a_request(buf)))
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
        let max = http::MAX_HEAD + 1 - buf.len().min(http::MAX_HEAD);
        let r = match nio::try_read(client, buf, max) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + limit);
                let left = d.saturating_duration_since(Instant::now());
                nio::read(client, buf, max, left).await
            }
            r => r,
        };
        match r {
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

/// An error page, then the connection closes, lingering while the client may
/// still send (`net::linger`). `head_only`: the request was a HEAD, whose answer
/// has no body (RFC 9110 9.3.2).
pub(super) async fn send_error(
    client: &Stream,
    status: u16,
    extra_headers: &str,
    head_only: bool,
    w: &Worker,
    rules: (
        &crate::config::rules::HeaderRules,
        &crate::proxy::rules::Vars<'_>,
    ),
) {
    let mut out = w.bufs.take();
    let head_len = http::error_response_with(status, true, extra_headers, head_only, &mut out);
    crate::proxy::rules::edit_answer(&mut out, head_len, rules.0, rules.1);
    if nio::write_all(client, &out, Duration::from_secs(5))
        .await
        .is_ok()
    {
        crate::net::linger::discard_rest(client, &mut out).await;
    }
    w.bufs.give(out);
}

/// What happened to one request, for the statistics and the access log.
pub(super) struct Served {
    pub(super) status: u16,
    pub(super) server: Option<usize>,
    pub(super) bytes_to_client: u64,
    pub(super) body_from_client: u64,
    /// `Some(consumed)` to keep the client connection open.
    pub(super) keep: Option<usize>,
}

impl Served {
    pub(super) fn simian(status: u16, keep: Option<usize>) -> Served {
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
    // `peer` is the connection's (after any PROXY header); with TrustedProxies
    // the client may be further back, named by X-Forwarded-For.
    let hop = peer;
    let peer = if config.global.trusted_proxies.is_empty() {
        peer
    } else {
        let ip = crate::proxy::client_address::trusted_client(
            &config.global.trusted_proxies,
            peer.ip(),
            buf,
            head,
        );
        Peer {
            addr: ip.map(|ip| std::net::SocketAddr::new(ip, peer.port())),
            dest: peer.dest,
        }
    };
    if let Some(url) = &config.global.health_url {
        if &buf[head.path.clone()] == url.as_bytes() {
            return Box::pin(crate::proxy::health::serve(w, live, client, head)).await;
        }
    }
    if let Some(url) = &config.global.statistics_url {
        if &buf[head.path.clone()] == url.as_bytes() {
            return Box::pin(crate::proxy::statistics::serve(
                w, live, client, peer, buf, head,
            ))
            .await;
        }
    }
    let route = {
        let mut norm = w.path_scratch.borrow_mut();
        http::normalize_path(&buf[head.path.clone()], &mut norm);
        match &config.hosts {
            None => config.router.route(&norm),
            Some(_) => {
                let mut scratch = [0u8; 256];
                let field = head.host.clone().map(|r| &buf[r]);
                let host = crate::route::hosts::request_host(
                    &buf[head.target.clone()],
                    field,
                    &mut scratch,
                );
                config.route(host, &norm)
            }
        }
    };
    // The log needs the request line and two headers; the exchange may reuse `buf`
    // (chunked bodies), so copy them first, and only when there is a log.
    let mut log_fields = config
        .global
        .access_log
        .is_some()
        .then(|| LogFields::capture(w, buf, head));
    let mut request_id = None;
    let (served, route_index) = match route {
        None => {
            crate::debug!("client {}: 404: no entry matches", show(peer));
            (not_found(w, (client, peer), buf, head, config).await, None)
        }
        Some(route) => {
            // The rules decide without waiting; only their answers (rare) run
            // in futures of their own, so a request that passes costs no
            // allocation and its future no extra size.
            let decision = if config.entries[route.entry].rules.is_empty() {
                Decision::Forward(route, None)
            } else {
                decide(live, route, client.is_tls(), peer, buf, head)
            };
            match decision {
                Decision::Forward(route, id) => {
                    request_id = id;
                    let who = forward::Who {
                        client: peer,
                        hop: hop.ip(),
                        request_id: id.unwrap_or(0),
                    };
                    (
                        forward::proxy(w, live, route.entry, client, who, buf, head).await,
                        Some(route),
                    )
                }
                Decision::Answer(route, id, a) => {
                    request_id = id;
                    let entry = &config.entries[route.entry];
                    let who = (client, peer, id.unwrap_or(0));
                    (
                        Box::pin(answer(w, who, buf, head, entry, a)).await,
                        Some(route),
                    )
                }
                Decision::NotFound => (
                    Box::pin(not_found(w, (client, peer), buf, head, config)).await,
                    None,
                ),
            }
        }
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
            request_id,
        );
    }
    served.keep
}

/// What the rules of an entry make of a request (SPEC section 9).
enum Decision {
    /// To the entry's servers, with the request id a rule sends.
    Forward(crate::route::RouteMatch, Option<u64>),
    /// simian answers (403, 429, redirect, 413).
    Answer(
        crate::route::RouteMatch,
        Option<u64>,
        crate::proxy::rules::Answer,
    ),
    /// Over TLS, past `Redirect https` entries, no entry is left.
    NotFound,
}

/// Apply an entry's rules: a TLS request passes `Redirect https` entries by;
/// then Allow/Deny, RateLimit, Redirect and MaxBodySize, in that order.
fn decide(
    live: &Live,
    mut route: crate::route::RouteMatch,
    tls: bool,
    peer: Peer,
    buf: &[u8],
    head: &RequestHead,
) -> Decision {
    let config = &live.config;
    if tls {
        while crate::proxy::rules::passes_over_tls(&config.entries[route.entry]) {
            match next_route(config, buf, head, route.entry) {
                Some(r) => route = r,
                None => return Decision::NotFound,
            }
        }
    }
    let entry = &config.entries[route.entry];
    let request_id = entry.rules.uses_request_id().then(next_request_id);
    let vars = crate::proxy::rules::Vars {
        client: peer.ip(),
        host: head.host.clone().map_or(&b""[..], |r| &buf[r]),
        tls,
        route: &entry.name,
        request_id: request_id.unwrap_or(0),
    };
    let rate = live.entries[route.entry].rate.as_deref();
    match crate::proxy::rules::check(entry, rate, buf, head, &vars, now_ms()) {
        Some(a) => {
            crate::info!(
                "entry {}: {} for client {}: {}",
                entry.name,
                a.status,
                show(peer),
                a.why
            );
            Decision::Answer(route, request_id, a)
        }
        None => Decision::Forward(route, request_id),
    }
}

/// The next entry after `after` that takes this request (host and path).
fn next_route(
    config: &crate::config::Config,
    buf: &[u8],
    head: &RequestHead,
    after: usize,
) -> Option<crate::route::RouteMatch> {
    let mut norm = Vec::new();
    http::normalize_path(&buf[head.path.clone()], &mut norm);
    let mut scratch = [0u8; 256];
    let field = head.host.clone().map(|r| &buf[r]);
    let host = crate::route::hosts::request_host(&buf[head.target.clone()], field, &mut scratch);
    config
        .router
        .all_matches(&norm)
        .into_iter()
        .filter(|m| m.entry > after)
        .find(|m| config.entries[m.entry].takes_host(host))
}

/// A unique id per request in this process (`%{request_id}`): the start time in
/// the high bits, so ids do not repeat across restarts either.
fn next_request_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if NEXT.load(Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() << 32);
        let _ = NEXT.compare_exchange(0, seed, Relaxed, Relaxed);
    }
    NEXT.fetch_add(1, Relaxed)
}

/// 404: no entry takes the request.
async fn not_found(
    w: &Worker,
    (client, peer): (&Stream, Peer),
    buf: &[u8],
    head: &RequestHead,
    config: &crate::config::Config,
) -> Served {
    let close = !head.keep_alive || head.framing != BodyFraming::None;
    let mut out = w.bufs.take();
    let head_len = http::error_response(404, close, head.method == http::Method::Head, &mut out);
    if !config.global.response_headers.is_empty() {
        let vars = crate::proxy::rules::Vars {
            client: peer.ip(),
            host: head.host.clone().map_or(&b""[..], |r| &buf[r]),
            tls: client.is_tls(),
            route: "-",
            request_id: 0,
        };
        let rules = &config.global.response_headers;
        crate::proxy::rules::edit_answer(&mut out, head_len, rules, &vars);
    }
    let ok = nio::write_all(client, &out, config.global.idle_timeout)
        .await
        .is_ok();
    let mut s = Served::simian(404, (ok && !close).then_some(head.head_len));
    s.bytes_to_client = out.len() as u64;
    w.bufs.give(out);
    s
}

/// simian's own answer for a rule, with the entry's `ResponseHeader` rules. The
/// connection stays open when no request body is pending.
async fn answer(
    w: &Worker,
    (client, peer, request_id): (&Stream, Peer, u64),
    buf: &[u8],
    head: &RequestHead,
    entry: &crate::config::Entry,
    a: crate::proxy::rules::Answer,
) -> Served {
    let vars = &crate::proxy::rules::Vars {
        client: peer.ip(),
        host: head.host.clone().map_or(&b""[..], |r| &buf[r]),
        tls: client.is_tls(),
        route: &entry.name,
        request_id,
    };
    let close = !head.keep_alive || head.framing != BodyFraming::None;
    let head_only = head.method == http::Method::Head;
    let mut out = w.bufs.take();
    let head_len = http::error_response_with(a.status, close, &a.headers, head_only, &mut out);
    crate::proxy::rules::edit_answer(&mut out, head_len, &entry.rules.response_headers, vars);
    let ok = nio::write_all(client, &out, entry.timeouts.idle)
        .await
        .is_ok();
    if ok && close {
        crate::net::linger::discard_rest(client, &mut out).await;
    }
    let mut s = Served::simian(a.status, (ok && !close).then_some(head.head_len));
    s.bytes_to_client = out.len() as u64;
    w.bufs.give(out);
    s
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
        request_id: Option<u64>,
    ) {
        let e = crate::accesslog::Entry {
            request_id,
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
