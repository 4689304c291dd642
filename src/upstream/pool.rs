//! Per-worker pool of idle keep-alive backend connections, reused across client
//! connections. Per worker, so it needs no lock: a connection lives and dies on
//! the thread whose driver it is registered with.

use std::cell::RefCell;

use rustc_hash::FxHashMap;

use crate::config::Address;
use crate::net::Stream;
use crate::upstream::clock::now_ms;
use rustls::pki_types::ServerName;

/// Idle connections kept per server per worker; beyond it the oldest are closed.
const MAX_IDLE_PER_SERVER: usize = 256;
/// An idle backend connection older than this is closed rather than reused: most
/// servers time idle keep-alive out around 5-75 s (nginx 75 s, Apache 5 s), and a
/// request sent just as the server closes is the classic keep-alive race.
const MAX_IDLE_MS: u64 = 4_000;

#[derive(Default)]
pub struct BackendPool {
    idle: RefCell<FxHashMap<Address, Vec<(Stream, u64)>>>,
}

impl BackendPool {
    /// A pooled connection to `addr` that still looks alive, newest first, spoken
    /// in plain (`tls` None) or over TLS to that name (one address may serve
    /// several names).
    ///
    /// Every connection is looked at (one MSG_PEEK) before it is handed out,
    /// however recently it was used: bytes a backend sent after its response (a
    /// body after a HEAD, a second response) would otherwise be read as the next
    /// request's answer, which may be another client's. Such a connection, or one
    /// the backend closed, is dropped.
    pub fn take(&self, addr: &Address, tls: Option<&ServerName<'static>>) -> Option<Stream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        let now = now_ms();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].0.backend_name() != tls {
                continue;
            }
            let (s, since) = list.remove(i);
            let age = now.saturating_sub(since);
            if age >= MAX_IDLE_MS {
                continue;
            }
            if !s.is_stale() {
                return Some(s);
            }
        }
        None
    }

    pub fn put(&self, addr: &Address, s: Stream) {
        let mut idle = self.idle.borrow_mut();
        // The key is cloned only the first time: `entry` would clone it on every
        // put, an allocation per request for a unix-socket backend.
        let list = match idle.get_mut(addr) {
            Some(list) => list,
            None => idle.entry(addr.clone()).or_default(),
        };
        if list.len() >= MAX_IDLE_PER_SERVER {
            list.remove(0);
        }
        list.push((s, now_ms()));
    }

    /// Close the connections idle longer than a pooled connection may be
    /// reused (the worker's sweeper): otherwise they would stay open, half
    /// closed once the backend gives up on them, until the next request for
    /// that server.
    pub fn expire(&self) {
        let now = now_ms();
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|(_, since)| now.saturating_sub(*since) < MAX_IDLE_MS);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Close every idle connection (graceful shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}
