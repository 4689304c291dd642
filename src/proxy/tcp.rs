//! A `Mode tcp` connection (the eproxy/fproxy use case): optionally wait for
//! `WaitBytes` from the client, pick a server once (every balancer and the
//! availability rules apply, with failover on connect errors), then tunnel.

use std::rc::Rc;

use crate::balance::{PickContext, Tried};
use crate::config::Address;
use crate::context::Worker;
use crate::net::connect::connect_server;
use crate::net::listen::Peer;
use crate::net::{io as nio, Stream};
use crate::proxy::tunnel;
use crate::upstream::clock::now_ms;
use crate::upstream::server::{ActiveSlot, ProbeGuard};

pub async fn serve(w: &Rc<Worker>, client: Stream, peer: Peer, listen: &Address) {
    let live = w.live.load_full();
    // The entry that owns this listener in the configuration current now (a
    // reload may have reordered or renamed entries).
    let Some(entry_index) = live
        .config
        .entries
        .iter()
        .position(|e| e.listen.iter().any(|l| l.addr == *listen))
    else {
        return;
    };
    let entry = &live.config.entries[entry_index];
    if !entry.rules.admits(peer.ip()) {
        // A tcp client refused by Allow/Deny is closed without a word.
        crate::info!(
            "entry {}: connection from {:?} refused by Allow/Deny",
            entry.name,
            peer.addr
        );
        return;
    }
    let rt = &live.entries[entry_index];
    let Some(client) = super::tls::terminate(&live, client, peer, listen).await else {
        return;
    };
    let idle = entry.timeouts.idle;

    // fproxy -y: no backend connection until the client has said enough.
    let mut first = Vec::new();
    if entry.wait_bytes > 0 {
        while (first.len() as u64) < entry.wait_bytes {
            let want = entry.wait_bytes as usize - first.len();
            match nio::read(&client, &mut first, want, idle).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    let mut tried = Tried::new(rt.servers.len());
    loop {
        let now = now_ms();
        let cx = PickContext {
            servers: &rt.servers,
            client_ip: peer.ip(),
            client_port: peer.port(),
            now_ms: now,
            tried: &tried,
            max_connections: entry.max_connections,
            sticky: false,
        };
        let Some(i) = rt.balancer.pick(&cx) else {
            break;
        };
        tried.insert(i);
        let server = &rt.servers[i];
        let Some(probe) = server.acquire(now) else {
            continue;
        };
        let _probe_guard = ProbeGuard(server, probe);
        // The same exact MaxConnections as http entries (a tunnel is a request).
        let Some(_slot) = ActiveSlot::acquire(server, entry.max_connections) else {
            continue;
        };
        let tls = entry.backend_tls.as_ref();
        let backend = match connect_server(&server.spec, tls, entry.timeouts.connect).await {
            Ok(b) => {
                server.connect_succeeded();
                b
            }
            Err(e) => {
                if crate::net::connect::local_failure(&e) {
                    crate::stats::counters::PROCESS.local_error(e.raw_os_error());
                } else {
                    server.connect_failed(&entry.availability, now_ms());
                }
                crate::warn!(
                    "entry {}: connect to {} failed: {e}",
                    entry.name,
                    server.spec.text
                );
                continue;
            }
        };
        if let Some(v) = entry.rules.send_proxy {
            let mut h = Vec::new();
            crate::proxy::client_address::send_proxy_header(v, peer, &client, &mut h);
            if nio::write_all(&backend, &h, idle).await.is_err() {
                return;
            }
        }
        if !first.is_empty() && nio::write_all(&backend, &first, idle).await.is_err() {
            return;
        }
        let start = now_ms();
        let moved = tunnel::run_with(w, &client, &backend, idle, entry.splice).await;
        server.bytes.fetch_add(
            moved.a_to_b + moved.b_to_a + first.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        rt.stats
            .add_bytes(w.id, moved.a_to_b + first.len() as u64, moved.b_to_a);
        server
            .busy_ms
            .fetch_add(now_ms() - start, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    crate::warn!(
        "entry {}: no server could take a tcp connection from {:?}",
        entry.name,
        peer.addr
    );
}
