//! The request's way to a backend: pick a server of the entry (sticky cookie first,
//! then the balancer), connect with availability and failover, run the exchange,
//! and answer 502/503/504 when no server could take it.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use super::http::{send_error, show, Served};
use crate::balance::{PickContext, Tried};
use crate::config::{Balancer, StickyKind};
use crate::context::live::Live;
use crate::context::Worker;
use crate::http::{BodyFraming, RequestHead};
use crate::net::connect::connect;
use crate::net::listen::Peer;
use crate::net::Stream;
use crate::proxy::exchange::{exchange, Fail, Request};
use crate::upstream::clock::now_ms;
use crate::upstream::server::{ActiveSlot, ProbeGuard};

/// Pick a server of the entry, connect (with availability and failover), run the
/// exchange; answer 502/503/504 when that is all that is left to do.
pub(super) async fn proxy(
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
                // Boxed, as the bodies in `exchange`: rare next to pooled reuse.
                None => match Box::pin(connect(addr, entry.timeouts.connect)).await {
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
    rt: &crate::context::live::EntryRuntime,
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
