//! The first step on a `tls` listener: terminate TLS (SPEC section 8), within
//! `HeadTimeout` from accept, counted per listener. What follows reads and writes
//! the session like any socket.

use std::sync::atomic::Ordering::Relaxed;

use crate::config::Address;
use crate::context::live::Live;
use crate::net::listen::Peer;
use crate::net::{tls, Stream};

/// The stream to serve: `sock` itself when `listen` does not terminate TLS (any
/// more: a reload may have changed it), the TLS session once its handshake is
/// done, `None` when the handshake failed (the connection is then closed).
/// `live`: the configuration the connection was accepted under.
pub async fn terminate(live: &Live, sock: Stream, peer: Peer, listen: &Address) -> Option<Stream> {
    let (Some(l), Some(term)) = (live.tls_listener(listen), &live.config.global.tls) else {
        return Some(sock);
    };
    let limit = live.config.global.head_timeout;
    // Boxed: the handshake's state (the ClientHello reader, rustls' handshake
    // machine) is 2 KB that would otherwise stay in the connection's future, that
    // is in every idle TLS connection, long after the handshake.
    match Box::pin(tls::accept(sock, term, l.http, limit)).await {
        Ok((s, kind)) => {
            match kind {
                tls::Handshake::Full => l.handshakes.success.fetch_add(1, Relaxed),
                tls::Handshake::Resumed => l.handshakes.resumed.fetch_add(1, Relaxed),
            };
            Some(s)
        }
        Err(e) => {
            l.handshakes.failure.fetch_add(1, Relaxed);
            crate::info!(
                "client {}: TLS handshake on {} failed: {e}",
                super::http::show(peer),
                l.text
            );
            None
        }
    }
}
