//! One pick of each balancer, in ns (issue 4, "Measure"): single thread with 8 and
//! 256 servers, then RoundRobin vs LockingRoundRobin (and WeightedRoundRobin) with
//! two threads picking from the same balancer. A plain `Instant` loop, no harness:
//! `cargo bench --bench balance` prints a markdown table.
//!
//! The servers carry load that differs per server and is never zero, so the
//! least-* strategies scan the whole list (their worst case: an idle server ends
//! the scan early); clients vary by IP and port so SourceHash and Naive see many.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use simian::balance::{self, Balance, PickContext, Tried};
use simian::config::{Address, Balancer, Server, Span};
use simian::upstream::ServerState;

const CLIENTS: usize = 1024;

fn specs(n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| {
            let text = format!("10.1.{}.{}:8080", i / 256, i % 256);
            let addr = Address::Inet(text.parse().unwrap());
            Server {
                text,
                addr,
                weight: 1 + (i % 3) as u32,
                tls: None,
                span: Span::default(),
            }
        })
        .collect()
}

fn states(specs: &[Server], idle: bool) -> Vec<Arc<ServerState>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = ServerState::new(s.clone());
            if !idle {
                st.active.store(1 + (i * 7 % 13) as u32, Relaxed);
                st.bytes
                    .store(1_000_000 + (i as u64 * 7919 % 100_003), Relaxed);
                st.busy_ms
                    .store(50_000 + (i as u64 * 104_729 % 9_973), Relaxed);
            }
            Arc::new(st)
        })
        .collect()
}

fn clients() -> Vec<(IpAddr, u16)> {
    (0..CLIENTS as u32)
        .map(|i| {
            (
                IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))),
                32768 + (i * 37 % 28000) as u16,
            )
        })
        .collect()
}

/// `iters` picks; returns the elapsed time.
fn run(
    b: &dyn Balance,
    servers: &[Arc<ServerState>],
    clients: &[(IpAddr, u16)],
    iters: usize,
) -> Duration {
    let tried = Tried::new(servers.len());
    let t = Instant::now();
    for k in 0..iters {
        let (ip, port) = clients[k % CLIENTS];
        let cx = PickContext {
            servers,
            client_ip: Some(ip),
            client_port: port,
            now_ms: 1_000,
            tried: &tried,
            max_connections: Some(10_000),
            sticky: false,
        };
        black_box(b.pick(black_box(&cx)));
    }
    t.elapsed()
}

/// The fastest of several short timed rounds, in ns per pick: the machine is
/// shared, and the minimum is the round least disturbed by other processes.
fn ns_per_pick(b: &dyn Balance, servers: &[Arc<ServerState>], clients: &[(IpAddr, u16)]) -> f64 {
    let mut iters = 1_000;
    while run(b, servers, clients, iters) < Duration::from_millis(10) {
        iters *= 2;
    }
    (0..15)
        .map(|_| run(b, servers, clients, iters).as_nanos() as f64 / iters as f64)
        .fold(f64::INFINITY, f64::min)
}

/// Two threads picking from one balancer at once: ns per pick as each thread sees it.
fn contended(kind: Balancer, n: usize) -> f64 {
    let specs = specs(n);
    let servers = Arc::new(states(&specs, false));
    let b: Arc<dyn Balance> = Arc::from(balance::build(kind, &specs));
    let iters = 1_000_000;
    (0..9)
        .map(|_| {
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (b, servers, barrier) = (b.clone(), servers.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let clients = clients();
                        barrier.wait();
                        run(&*b, &servers, &clients, iters)
                    })
                })
                .collect();
            let worst = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .max()
                .unwrap();
            worst.as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The loop's own cost: a balancer that always answers server 0.
struct Baseline;

impl Balance for Baseline {
    fn pick(&self, _: &PickContext) -> Option<usize> {
        Some(0)
    }
}

fn main() {
    let clients = clients();
    let small = (specs(8), states(&specs(8), false));
    let large = (specs(256), states(&specs(256), false));
    println!("| balancer | 8 servers (ns/pick) | 256 servers (ns/pick) |");
    println!("|---|---:|---:|");
    let (a, b) = (
        ns_per_pick(&Baseline, &small.1, &clients),
        ns_per_pick(&Baseline, &large.1, &clients),
    );
    println!("| (loop baseline: `Some(0)`) | {a:.1} | {b:.1} |");
    for kind in Balancer::ALL {
        let a = ns_per_pick(&*balance::build(kind, &small.0), &small.1, &clients);
        let b = ns_per_pick(&*balance::build(kind, &large.0), &large.1, &clients);
        println!("| {} | {a:.1} | {b:.1} |", kind.name());
    }
    // The least-* scans stop at the first idle server: their best case.
    let idle = states(&large.0, true);
    for kind in [Balancer::LeastConnections, Balancer::Workload] {
        let a = ns_per_pick(
            &*balance::build(kind, &small.0),
            &states(&small.0, true),
            &clients,
        );
        let b = ns_per_pick(&*balance::build(kind, &large.0), &idle, &clients);
        println!("| {} (all idle) | {a:.1} | {b:.1} |", kind.name());
    }
    // One server down: SourceHash recomputes the scores for the clients it held
    // (1/n of them), WRR draws for the slots it held.
    large.1[0].health_down.store(true, Relaxed);
    small.1[0].health_down.store(true, Relaxed);
    for kind in [Balancer::SourceHash, Balancer::WeightedRoundRobin] {
        let a = ns_per_pick(&*balance::build(kind, &small.0), &small.1, &clients);
        let b = ns_per_pick(&*balance::build(kind, &large.0), &large.1, &clients);
        println!("| {} (server 0 down) | {a:.1} | {b:.1} |", kind.name());
    }
    println!();
    println!(
        "| 2 threads, one balancer | 8 servers (ns/pick/thread) | 256 servers (ns/pick/thread) |"
    );
    println!("|---|---:|---:|");
    for kind in [
        Balancer::RoundRobin,
        Balancer::LockingRoundRobin,
        Balancer::WeightedRoundRobin,
    ] {
        println!(
            "| {} | {:.1} | {:.1} |",
            kind.name(),
            contended(kind, 8),
            contended(kind, 256)
        );
    }
    println!();
    for n in [8, 256] {
        let specs = specs(n);
        let t = Instant::now();
        black_box(balance::build(Balancer::SourceHash, &specs));
        let sh = t.elapsed();
        let t = Instant::now();
        black_box(balance::build(Balancer::WeightedRoundRobin, &specs));
        println!(
            "build with {n} servers: SourceHash {sh:?}, WeightedRoundRobin {:?}",
            t.elapsed()
        );
    }
}
