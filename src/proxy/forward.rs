//! The request's way to a backend: pick a server of the entry (sticky cookie first,
//! then the balancer), connect with availability and failover, run the exchange,
//! and answer 502/503/504 when no server could take it.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use super::http::{send_error, show, Served};
use crate::balance::{PickContext, Tried};
use crate::config::{Balancer, Entry, StickyKind};
use crate::context::live::{EntryRuntime, Live};
use crate::context::Worker;
use crate::http::{Method, RequestHead};
use crate::net::connect::{connect_server, local_failure};
use crate::net::listen::Peer;
use crate::net::Stream;
use crate::proxy::exchange::{exchange, Done, Fail, Request};
use crate::upstream::clock::now_ms;
use crate::upstream::server::{ActiveSlot, ProbeGuard};
use crate::upstream::ServerState;

/// Who sent a request: the client (after PROXY protocol and `TrustedProxies`),
/// the hop it came through (appended to `X-Forwarded-For`), and the request id.
#[derive(Clone, Copy)]
pub struct Who {
    pub client: Peer,
    pub hop: Option<std::net::IpAddr>,
    /// `%{request_id}` (0 when no rule sends one).
    pub request_id: u64,
}

/// One request on its way to a backend: what every attempt, on every server, reads.
struct Forward<'a> {
    w: &'a Worker,
    client: &'a Stream,
    peer: Peer,
    head: &'a RequestHead,
    entry: &'a Entry,
    rt: &'a EntryRuntime,
    /// Client-side stall limit (`IdleTimeout`).
    idle: Duration,
    sticky_key: Option<(StickyKind, u64)>,
    /// The balancer weighs servers by bytes moved or time busy.
    tracks_load: bool,
    /// `%{request_id}` (0 when no rule sends one).
    request_id: u64,
    hop: Option<std::net::IpAddr>,
    /// The request's `Host`, for `ResponseHeader` rules on 502/503/504 that use
    /// `%{host}` (empty when none does).
    host: Vec<u8>,
}

/// Pick a server of the entry, connect (with availability and failover), run the
/// exchange; answer 502/503/504 when that is all that is left to do.
pub(super) async fn proxy(
    w: &Worker,
    live: &Arc<Live>,
    entry_index: usize,
    client: &Stream,
    who: Who,
    buf: &mut Vec<u8>,
    head: &RequestHead,
) -> Served {
    let peer = who.client;
    let config = &live.config;
    let entry = &config.entries[entry_index];
    let f = Forward {
        w,
        client,
        peer,
        head,
        entry,
        rt: &live.entries[entry_index],
        request_id: who.request_id,
        hop: who.hop,
        host: if !entry.rules.response_headers.uses_host {
            Vec::new()
        } else {
            head.host.clone().map_or(Vec::new(), |r| buf[r].to_vec())
        },
        idle: config.global.idle_timeout,
        sticky_key: entry.sticky.as_ref().and_then(|st| {
            crate::upstream::sticky::cookie_value(head.headers(buf), st.cookie.as_bytes())
                .map(|v| (st.kind, crate::balance::stable_hash(v)))
        }),
        tracks_load: matches!(
            entry.balancer,
            Balancer::LeastBytes | Balancer::LeastTime | Balancer::Workload
        ),
    };
    let mut tried = Tried::new(f.rt.servers.len());
    // Every connect that failed failed for a reason of this host (no fds...).
    let mut all_local = true;
    // Why the last attempt failed; None while no server could be tried. A String
    // only once an attempt failed: a placeholder here would be a heap allocation
    // per request (the only one on the keep-alive path, measured with a uprobe
    // on malloc).
    let mut last_error: Option<String> = None;
    let mut first_pick = true;
    loop {
        let now = now_ms();
        let Some(i) = f.pick(&tried, now, first_pick) else {
            break;
        };
        first_pick = false;
        tried.insert(i);
        let server = &f.rt.servers[i];
        let Some(probe) = server.acquire(now) else {
            continue; // another request is probing it
        };
        // A probe that ends without a verdict gives its slot back.
        let _probe_guard = ProbeGuard(server, probe);
        let Some(_slot) = ActiveSlot::acquire(server, entry.max_connections) else {
            continue;
        };
        match f.attempt(i, probe, buf).await {
            Ok(served) => return served,
            Err(u) => {
                last_error = Some(u.why);
                all_local &= u.local;
            }
        }
    }
    f.unavailable(last_error, all_local).await
}

/// When a local connect failure was last logged (unix seconds).
static LOCAL_FAILURE_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Why a server could not be reached.
struct Unreached {
    why: String,
    /// This host's fault (out of fds, ports, memory), not the server's.
    local: bool,
}

impl Forward<'_> {
    /// What `%{...}` stands for in simian's own answers to this request.
    fn vars(&self) -> crate::proxy::rules::Vars<'_> {
        crate::proxy::rules::Vars {
            client: self.peer.ip(),
            host: &self.host,
            tls: self.client.is_tls(),
            route: &self.entry.name,
            request_id: self.request_id,
        }
    }

    /// The next server to try, among those not tried yet.
    fn pick(&self, tried: &Tried, now: u64, first_pick: bool) -> Option<usize> {
        let rt = self.rt;
        let cx = PickContext {
            servers: &rt.servers,
            client_ip: self.peer.ip(),
            client_port: self.peer.port(),
            now_ms: now,
            tried,
            max_connections: self.entry.max_connections,
            // Hash mode: the cookie decides; a drained server keeps its clients.
            sticky: matches!(self.sticky_key, Some((StickyKind::Hash, _))),
        };
        // Hash mode stays on the cookie's rendezvous order through failover (the
        // next server by hash is where the cookie lands for good once its server
        // is offline); table mode looks the cookie up once, then the balancer.
        match self.sticky_key {
            Some((StickyKind::Hash, key)) => crate::balance::rendezvous_with(key, &rt.salts, &cx),
            Some((StickyKind::Table, key)) if first_pick => {
                sticky_table_pick(rt, key, &cx, self.entry, self.peer)
            }
            _ => rt.balancer.pick(&cx),
        }
    }

    /// Run the request on server `i`, whose slot the caller holds. `Err` when the
    /// server could not be reached (why, for the 502 if no other server can): the
    /// caller tries the next one. Any other failure is answered here.
    async fn attempt(&self, i: usize, probe: bool, buf: &mut Vec<u8>) -> Result<Served, Unreached> {
        let server = &self.rt.servers[i];
        let started_ms = if self.tracks_load { now_ms() } else { 0 };
        let mut fresh_retry = false;
        loop {
            let (backend, reused) = self.connect_or_reuse(server, fresh_retry).await?;
            let req = Request {
                head: self.head,
                peer: self.peer,
                entry: self.entry,
                reused,
                idle: self.idle,
                request_id: self.request_id,
                hop: self.hop,
            };
            match exchange(self.w, self.client, &backend, buf, &req).await {
                Ok(done) => return Ok(self.finish(i, probe, started_ms, done, backend)),
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
                        self.entry.name,
                        show(self.peer),
                        server.spec.text
                    );
                    let head_only = self.head.method == Method::Head;
                    let vars = self.vars();
                    let rules = (&self.entry.rules.response_headers, &vars);
                    send_error(self.client, status, "", head_only, self.w, rules).await;
                    return Ok(Served {
                        server: Some(i),
                        ..Served::simian(status, None)
                    });
                }
                Err(Fail::Abort(why)) => {
                    backend.set_linger_zero();
                    crate::info!(
                        "entry {}: connection with client {} aborted: {why}",
                        self.entry.name,
                        show(self.peer)
                    );
                    // 499 in the log, as nginx does for a client that went away.
                    return Ok(Served {
                        server: Some(i),
                        ..Served::simian(499, None)
                    });
                }
            }
        }
    }

    /// A pooled connection to `server` (`true` with it), unless `fresh` (the pooled
    /// one just failed), else a new one. A failed connect counts against the
    /// server's availability.
    async fn connect_or_reuse(
        &self,
        server: &ServerState,
        fresh: bool,
    ) -> Result<(Stream, bool), Unreached> {
        let addr = &server.spec.addr;
        // With SendProxy a backend connection carries one client's header: it is
        // reused for that client connection only, never from the shared pool.
        if self.entry.rules.send_proxy.is_some() {
            let mine = (!fresh)
                .then(|| {
                    self.w
                        .private_backends
                        .borrow_mut()
                        .remove(&self.client.fd())
                })
                .flatten();
            if let Some((a, b)) = mine {
                if a == *addr && !b.is_stale() {
                    return Ok((b, true));
                }
            }
        }
        let fresh = fresh || self.entry.rules.send_proxy.is_some();
        if let Some(b) = (!fresh)
            .then(|| {
                let tls = server.spec.tls.as_ref();
                self.w.backends.take(addr, tls)
            })
            .flatten()
        {
            return Ok((b, true));
        }
        // Boxed, as the bodies in `exchange`: rare next to pooled reuse.
        let tls = self.entry.backend_tls.as_ref();
        match Box::pin(connect_server(
            &server.spec,
            tls,
            self.entry.timeouts.connect,
        ))
        .await
        {
            Ok(b) => {
                server.connect_succeeded();
                if let Some(v) = self.entry.rules.send_proxy {
                    let mut h = Vec::new();
                    let c = self.client;
                    crate::proxy::client_address::send_proxy_header(v, self.peer, c, &mut h);
                    let t = self.entry.timeouts.connect;
                    if let Err(e) = crate::net::io::write_all(&b, &h, t).await {
                        return Err(Unreached {
                            why: format!("sending the PROXY header to {}: {e}", server.spec.text),
                            local: false,
                        });
                    }
                }
                Ok((b, false))
            }
            Err(e) => {
                let local = local_failure(&e);
                if local {
                    crate::stats::counters::PROCESS.local_error(e.raw_os_error());
                    // Logged at most once a second: under fd exhaustion every
                    // request would log it.
                    if crate::log::once_a_second(&LOCAL_FAILURE_LOGGED) {
                        crate::warn!(
                            "entry {}: connect to {} failed on this host: {e} (not counted against the server)",
                            self.entry.name,
                            server.spec.text
                        );
                    }
                } else {
                    server.connect_failed(&self.entry.availability, now_ms());
                    crate::warn!(
                        "entry {}: connect to {} failed: {e}",
                        self.entry.name,
                        server.spec.text
                    );
                }
                Err(Unreached {
                    why: format!("connect to {}: {e}", server.spec.text),
                    local,
                })
            }
        }
    }

    /// The client has its response from server `i`: settle what the server's state,
    /// the pool and the sticky table learn from it.
    fn finish(
        &self,
        i: usize,
        probe: bool,
        started_ms: u64,
        done: Done,
        backend: Stream,
    ) -> Served {
        let server = &self.rt.servers[i];
        if probe {
            // The probe succeeded, maybe over a pooled connection.
            server.connect_succeeded();
        }
        if self.tracks_load {
            // fproxy's LeastBytes / LeastTime / Workload inputs.
            let bytes = self.head.head_len as u64 + done.body_from_client + done.bytes_to_client;
            server.bytes.fetch_add(bytes, Relaxed);
            server
                .busy_ms
                .fetch_add(now_ms().saturating_sub(started_ms), Relaxed);
        }
        if done.backend_reusable && self.entry.rules.send_proxy.is_some() {
            let key = self.client.fd();
            let kept = (server.spec.addr.clone(), backend);
            self.w.private_backends.borrow_mut().insert(key, kept);
        } else if done.backend_reusable {
            self.w.backends.put(&server.spec.addr, backend);
        }
        if let (Some((StickyKind::Table, key)), Some(table)) = (self.sticky_key, &self.rt.sticky) {
            // Remember (or move, after a failover) the cookie's server.
            table.assign(key, server, now_ms());
        }
        Served {
            status: done.status,
            server: Some(i),
            bytes_to_client: done.bytes_to_client,
            body_from_client: done.body_from_client,
            keep: done.client_keep_alive.then_some(done.consumed),
        }
    }

    /// No server took the request: 503 when none could be tried (offline or at
    /// MaxConnections), 502 with the last connect error when some were.
    /// `all_local`: every attempt failed for a reason of this host (out of fds,
    /// ports, memory): 503, the servers are not at fault.
    async fn unavailable(&self, last_error: Option<String>, all_local: bool) -> Served {
        const RETRY: &str = "Retry-After: 1\r\n";
        let (status, extra, why) = match last_error {
            Some(why) if !all_local => (502, "", why),
            Some(why) => (503, RETRY, why),
            None => (
                503,
                RETRY,
                "no server available (offline or at MaxConnections)".into(),
            ),
        };
        crate::warn!(
            "entry {}: {status} for client {}: {why}",
            self.entry.name,
            show(self.peer)
        );
        let head_only = self.head.method == Method::Head;
        let vars = self.vars();
        let rules = (&self.entry.rules.response_headers, &vars);
        send_error(self.client, status, extra, head_only, self.w, rules).await;
        Served::simian(status, None)
    }
}

/// `StickyCookie NAME table`: the cookie's server while it is usable; else a new
/// one from the entry's balancer (recorded once the request succeeds).
fn sticky_table_pick(
    rt: &EntryRuntime,
    key: u64,
    cx: &PickContext,
    entry: &Entry,
    peer: Peer,
) -> Option<usize> {
    let table = rt.sticky.as_ref()?;
    if let Some(s) = table.get(key, cx.now_ms) {
        match rt.servers.iter().position(|x| Arc::ptr_eq(x, &s)) {
            // A drained server keeps the clients its cookie names.
            Some(i) if usable_for_sticky(cx, i) => return Some(i),
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

/// [`PickContext::usable`] for the server a `table` cookie names.
fn usable_for_sticky(cx: &PickContext, i: usize) -> bool {
    PickContext {
        sticky: true,
        ..*cx
    }
    .usable(i)
}
