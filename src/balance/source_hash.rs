//! `SourceHash`: the same client IP goes to the same server, consistently: the IP
//! is hashed (stable across restarts and instances) to one of 65,536 groups, and a
//! group goes to the usable server with the highest rendezvous score
//! `mix(group, hash(server address as written))`. When a server goes away only the
//! groups it held move (each to its own runner-up), when it comes back exactly
//! those return, and inserting or reordering servers on reload moves only what the
//! new server wins. Grouping costs little spread (65,536 groups over n servers vary
//! like 65,536/n samples: ±6% for 256 servers, ±1% for 4, about nginx's ketama ring
//! with 160 points per server) and buys O(1): the winner of each group with every
//! server up is precomputed (one byte per group, up to 256 servers), so a pick
//! reads one byte and checks that server; only when it is unusable are the scores
//! computed (O(n)). Building the table costs 65,536·n scores, a few ms for a few
//! servers and about 50 ms for 256, off the hot path. Unix-socket clients have no
//! IP and all fall in group 0; IPv4-mapped IPv6 addresses hash as their IPv4.

use std::net::IpAddr;

use super::{mix, rendezvous_with, salts, splitmix64, stable_hash, Balance, PickContext};
use crate::config::Server;

/// Largest server count with a precomputed table (its entries are `u8`).
const TABLE_MAX_SERVERS: usize = 256;
/// log2 of the number of client groups.
const GROUP_BITS: u32 = 16;

pub struct SourceHash {
    /// Per server: hash of its address as written, the rendezvous salt.
    salts: Box<[u64]>,
    /// Per group: the winner among all servers; empty above `TABLE_MAX_SERVERS`.
    table: Box<[u8]>,
}

impl SourceHash {
    pub fn new(servers: &[Server]) -> SourceHash {
        SourceHash::build(servers, servers.len() <= TABLE_MAX_SERVERS)
    }

    fn build(servers: &[Server], with_table: bool) -> SourceHash {
        let salts: Box<[u64]> = salts(servers).into();
        let table = if with_table && !salts.is_empty() {
            (0..1u64 << GROUP_BITS)
                .map(|g| winner(group_key(g), &salts))
                .collect()
        } else {
            Box::default()
        };
        SourceHash { salts, table }
    }
}

/// The client's group, 0..2^GROUP_BITS.
fn group(ip: Option<IpAddr>) -> u64 {
    let h = match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => stable_hash(&v4.octets()),
        Some(IpAddr::V6(v6)) => stable_hash(&v6.octets()),
        None => 0,
    };
    h >> (64 - GROUP_BITS)
}

/// The rendezvous key of a group (spread over 64 bits).
fn group_key(group: u64) -> u64 {
    splitmix64(group)
}

/// The highest-scoring server of `key` among all servers (first on ties).
fn winner(key: u64, salts: &[u64]) -> u8 {
    let mut best = (0, 0);
    for (i, &salt) in salts.iter().enumerate() {
        let s = mix(key, salt);
        if i == 0 || s > best.1 {
            best = (i, s);
        }
    }
    best.0 as u8
}

impl Balance for SourceHash {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        let g = group(cx.client_ip);
        if let Some(&i) = self.table.get(g as usize) {
            let i = usize::from(i);
            if i < cx.servers.len() && cx.usable(i) {
                return Some(i);
            }
        }
        rendezvous_with(group_key(g), &self.salts, cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    fn ip(i: u32) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
    }

    fn map(b: &SourceHash, servers: &[std::sync::Arc<crate::upstream::ServerState>]) -> Vec<usize> {
        let tried = Tried::new(servers.len());
        let mut c = cx(servers, &tried);
        (0..1000)
            .map(|i| {
                c.client_ip = ip(i);
                b.pick(&c).unwrap()
            })
            .collect()
    }

    #[test]
    fn same_ip_same_server_and_spread() {
        let specs = specs(&[1; 4]);
        let servers = states(&specs);
        let b = SourceHash::new(&specs);
        let first = map(&b, &servers);
        assert_eq!(first, map(&b, &servers));
        assert_eq!(
            first,
            map(&SourceHash::new(&specs), &servers),
            "a rebuild agrees"
        );
        let mut counts = [0; 4];
        first.iter().for_each(|&i| counts[i] += 1);
        assert!(
            counts.iter().all(|&c| (200..=300).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn only_clients_of_the_lost_server_move() {
        let specs = specs(&[1; 4]);
        let servers = states(&specs);
        let b = SourceHash::new(&specs);
        let before = map(&b, &servers);
        offline(&servers[2]);
        let after = map(&b, &servers);
        let mut moved = 0;
        for (x, y) in before.iter().zip(&after) {
            assert!(x == y || *x == 2, "a client of {x} moved to {y}");
            assert_ne!(*y, 2);
            moved += usize::from(x != y);
        }
        assert_eq!(moved, before.iter().filter(|&&x| x == 2).count());
        // Back online: everyone returns.
        servers[2].connect_succeeded();
        assert_eq!(map(&b, &servers), before);
    }

    #[test]
    fn table_is_only_a_cache() {
        let specs = specs(&[1; 7]);
        let servers = states(&specs);
        let (with, without) = (
            SourceHash::build(&specs, true),
            SourceHash::build(&specs, false),
        );
        assert_eq!(map(&with, &servers), map(&without, &servers));
        offline(&servers[3]);
        assert_eq!(map(&with, &servers), map(&without, &servers));
    }

    #[test]
    fn reorder_and_insert_keep_clients() {
        let specs4 = specs(&[1; 4]);
        let servers4 = states(&specs4);
        let before = map(&SourceHash::new(&specs4), &servers4);
        // The same servers reversed, plus a new one in front.
        let mut specs5: Vec<_> = specs4.iter().rev().cloned().collect();
        specs5.insert(0, spec(99, 1));
        let servers5 = states(&specs5);
        let after = map(&SourceHash::new(&specs5), &servers5);
        for (x, y) in before.iter().zip(&after) {
            assert!(*y == 0 || specs5[*y].text == specs4[*x].text);
        }
    }

    #[test]
    fn mapped_v6_and_unix_clients() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(group(Some(v4)), group(Some(v6)));
        assert_eq!(group(None), 0);
    }

    #[test]
    fn skips_and_none() {
        check_skips(&SourceHash::new(&specs(&[1; 4])));
        check_all_offline(&SourceHash::new(&specs(&[1; 3])));
    }
}
