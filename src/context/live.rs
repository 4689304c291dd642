//! The configuration as the workers see it: the validated [`Config`] plus the live
//! state built from it (per-server atomics, balancers). One `ArcSwap` holds it; a
//! reload builds a new one off the hot path and swaps it in.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::balance::{self, Balance};
use crate::config::Config;
use crate::stats::RouteStats;
use crate::upstream::sticky::StickyTable;
use crate::upstream::ServerState;

pub struct EntryRuntime {
    pub servers: Vec<Arc<ServerState>>,
    pub balancer: Box<dyn Balance>,
    /// Per-worker request counters of this route.
    pub stats: Arc<RouteStats>,
    /// `StickyCookie NAME table`: cookie hash → server.
    pub sticky: Option<Arc<StickyTable>>,
    /// Per server: rendezvous salt (hash of the address as written).
    pub salts: Vec<u64>,
    /// `RateLimit`: the buckets of this entry's clients.
    pub rate: Option<Arc<crate::context::rate_limit::RateTable>>,
}

/// A `tls` listener as the handshake sees it.
pub struct TlsListener {
    pub addr: crate::config::Address,
    /// The `Listen` address as written: the statistics label.
    pub text: String,
    /// An http listener (ALPN `http/1.1`), not a tcp entry's.
    pub http: bool,
    /// Kept across reloads for a listener written the same way.
    pub handshakes: Arc<crate::stats::counters::Handshakes>,
}

pub struct Live {
    pub config: Arc<Config>,
    /// Every `tls` listener; the handshake looks its listener up here.
    pub tls: Vec<TlsListener>,
    /// Same order as `config.entries`.
    pub entries: Vec<EntryRuntime>,
    /// Worker threads the counters are sized for.
    pub workers: usize,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_listeners: Vec<crate::config::Address>,
}

impl Live {
    /// Build the live state; servers that remain from `previous` (same entry name,
    /// same address) keep their state: offline marks, counters, connections. A
    /// route whose servers and patterns are unchanged keeps its request counters.
    pub fn build(config: Config, previous: Option<&Live>, workers: usize) -> Live {
        // Old entries by name: a reload of 10,000 entries must not compare every
        // name with every other.
        let old_index: std::collections::HashMap<&str, usize> = previous
            .map(|p| {
                p.config
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.name.as_str(), i))
                    .collect()
            })
            .unwrap_or_default();
        let entries = config
            .entries
            .iter()
            .map(|e| {
                let old_i = old_index.get(e.name.as_str()).copied();
                let old = previous.zip(old_i).map(|(p, i)| &p.entries[i]);
                let servers = e
                    .servers
                    .iter()
                    .map(|s| {
                        old.and_then(|o| {
                            o.servers
                                .iter()
                                .find(|x| x.spec.addr == s.addr && x.spec.weight == s.weight)
                        })
                        .cloned()
                        .unwrap_or_else(|| {
                            let st = ServerState::new(s.clone());
                            // A new weight in the file: a new state, but what the
                            // operator said of the server stands.
                            if let Some(o) =
                                old.and_then(|o| o.servers.iter().find(|x| x.spec.addr == s.addr))
                            {
                                st.inherit_admin(o);
                            }
                            Arc::new(st)
                        })
                    })
                    .collect::<Vec<Arc<ServerState>>>();
                let same_shape = previous.zip(old_i).is_some_and(|(p, i)| {
                    let oe = &p.config.entries[i];
                    oe.patterns == e.patterns && oe.servers == e.servers
                });
                let stats = match old {
                    Some(o) if same_shape && o.stats.workers.len() == workers.max(1) => {
                        o.stats.clone()
                    }
                    _ => Arc::new(RouteStats::new(workers, e.servers.len(), e.patterns.len())),
                };
                let sticky = match &e.sticky {
                    Some(st) if st.kind == crate::config::StickyKind::Table => {
                        let size = st.table_size;
                        Some(match old.and_then(|o| o.sticky.clone()) {
                            // Kept across the reload, with the reloaded timeout;
                            // a new size starts a new table.
                            Some(t) if t.capacity() == size.max(1) as usize => {
                                t.set_timeout(st.timeout);
                                t
                            }
                            _ => Arc::new(StickyTable::new(st.timeout, size)),
                        })
                    }
                    _ => None,
                };
                let rate = e
                    .rules
                    .rate_limit
                    .map(|_| old.and_then(|o| o.rate.clone()).unwrap_or_default());
                let balancer = balance::build(e.balancer, &e.servers);
                if e.balancer != crate::config::Balancer::WeightedRoundRobin {
                    // Weights set by `simian ctl` mean nothing to other balancers.
                    servers
                        .iter()
                        .for_each(|s| s.weight_override.store(0, Relaxed));
                } else if servers.iter().any(|s| s.weight_override.load(Relaxed) != 0) {
                    let weights: Vec<u32> = servers.iter().map(|s| s.weight()).collect();
                    balancer.set_weights(&weights);
                }
                EntryRuntime {
                    rate,
                    servers,
                    balancer,
                    stats,
                    sticky,
                    salts: balance::salts(&e.servers),
                }
            })
            .collect();
        let tls = tls_listeners(&config, previous);
        let proxy_listeners = config
            .global
            .listen
            .iter()
            .chain(config.entries.iter().flat_map(|e| e.listen.iter()))
            .filter(|l| l.proxy)
            .map(|l| l.addr.clone())
            .collect();
        Live {
            config: Arc::new(config),
            tls,
            entries,
            workers,
            proxy_listeners,
        }
    }
}

fn tls_listeners(config: &Config, previous: Option<&Live>) -> Vec<TlsListener> {
    let http = config.global.listen.iter().map(|l| (l, true));
    let tcp = config
        .entries
        .iter()
        .flat_map(|e| e.listen.iter().map(|l| (l, false)));
    http.chain(tcp)
        .filter(|(l, _)| l.tls)
        .map(|(l, http)| TlsListener {
            addr: l.addr.clone(),
            text: l.text.clone(),
            http,
            handshakes: previous
                .and_then(|p| p.tls.iter().find(|t| t.text == l.text))
                .map_or_else(Default::default, |t| t.handshakes.clone()),
        })
        .collect()
}

impl Live {
    /// The `tls` listener at `addr`, if that address terminates TLS now.
    pub fn tls_listener(&self, addr: &crate::config::Address) -> Option<&TlsListener> {
        self.tls.iter().find(|t| t.addr == *addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(timeout: &str) -> Config {
        Config::from_text(&format!(
            "[PROXY_ENTRY]\nName app\nMatch ^/\nServerList 127.0.0.1:9\nStickyCookie SID\nStickyTimeout {timeout}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_reload_keeps_the_sticky_table_with_the_new_timeout() {
        let old = Live::build(config("30m"), None, 1);
        let new = Live::build(config("2s"), Some(&old), 1);
        let (a, b) = (
            old.entries[0].sticky.as_ref().unwrap(),
            new.entries[0].sticky.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(a, b), "assignments survive the reload");
        assert_eq!(b.timeout(), 2_000);
    }
}
