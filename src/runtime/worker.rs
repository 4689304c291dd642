//! One worker: a thread with its own monoio runtime, its own listeners, buffers,
//! pipes and backend connection pool. Nothing here is shared with other workers
//! but the `Live` configuration and the per-server atomics inside it.
//!
//! The state the worker's tasks share is [`Worker`], in [`crate::context`]; this
//! module builds it, accepts, runs one task per connection, resumes parked
//! connections and sweeps idle ones.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Address, Mode};
use crate::context::live::Live;
use crate::context::park::Parking;
use crate::context::shutdown::Shutdown;
use crate::context::Worker;
use crate::log;
use crate::net::listen::{Listener, Registered};
use crate::runtime::isolate::Isolated;
use crate::runtime::supervise;
use crate::stats::counters::PROCESS;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Http,
    /// A tcp entry: the one whose `Listen` has this address in the configuration
    /// current when a connection is accepted (a reload may reorder entries).
    Tcp,
}

/// Orders from the control plane to a worker (reload).
pub enum Ctrl {
    /// Start accepting on a new listener.
    Listen(Listener, Service),
    /// Stop accepting on this address and close the socket.
    Close(crate::config::Address),
}

pub struct WorkerSpec {
    pub id: usize,
    pub listeners: Vec<(Listener, Service)>,
    pub ctrl: flume::Receiver<Ctrl>,
    pub live: Arc<ArcSwap<Live>>,
    pub shutdown: Shutdown,
    pub pin_cpu: Option<usize>,
    /// Counts this worker in once it accepts on its listeners.
    pub ready: Arc<std::sync::atomic::AtomicUsize>,
}

/// Run a worker to completion (until shutdown has drained it). A panic that
/// escapes every task and ends the runtime starts a new runtime on the same
/// listening sockets (kept open here, outside any runtime).
pub fn run(spec: WorkerSpec) -> std::io::Result<()> {
    if let Some(cpu) = spec.pin_cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set(Some(cpu)) {
            crate::warn!("worker {}: cannot pin to cpu {cpu}: {e:?}", spec.id);
        }
    }
    let kept: Kept = Rc::new(RefCell::new(spec.listeners));
    let conns = Rc::new(Cell::new(0));
    let ready = Cell::new(Some(spec.ready));
    loop {
        let once = || {
            run_once(
                &spec.ctrl,
                &spec.live,
                &spec.shutdown,
                spec.id,
                &kept,
                &conns,
                &ready,
            )
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(once)) {
            Ok(r) => return r,
            Err(_) if spec.shutdown.started() => return Ok(()),
            Err(_) => {
                // Connections of the dead runtime are gone with it.
                let lost = conns.replace(0);
                PROCESS.client_connections.fetch_sub(lost as u64, Relaxed);
                crate::error!(
                    "worker {}: its runtime died (a panic outside any connection; {lost} connections closed); starting it again",
                    spec.id
                );
                std::thread::sleep(super::supervise::RESTART_AFTER);
            }
        }
    }
}

/// The listening sockets of a worker, outside its runtime: each runtime
/// registers copies (dup), so a runtime that dies closes only its copies.
type Kept = Rc<RefCell<Vec<(Listener, Service)>>>;

fn run_once(
    ctrl: &flume::Receiver<Ctrl>,
    live: &Arc<ArcSwap<Live>>,
    shutdown: &Shutdown,
    id: usize,
    kept: &Kept,
    conns: &Rc<Cell<usize>>,
    ready: &Cell<Option<Arc<std::sync::atomic::AtomicUsize>>>,
) -> std::io::Result<()> {
    let mut rt = runtime()?;
    rt.block_on(async move {
        let parked = Parking::new()?;
        if id == 0 {
            let driver = if monoio::utils::is_legacy() {
                "epoll (legacy)"
            } else if COOP_TASKRUN.load(Relaxed) {
                "io_uring (COOP_TASKRUN)"
            } else {
                "io_uring"
            };
            crate::info!("I/O driver: {driver}");
        }
        let w = Rc::new(Worker::new(
            id,
            live.clone(),
            parked,
            shutdown.clone(),
            conns.clone(),
        ));
        let w2 = w.clone();
        monoio::spawn(supervise::task(id, "log flusher", move || {
            flush_log_every(w2.clone(), Duration::from_millis(500))
        }));
        let w2 = w.clone();
        monoio::spawn(supervise::task(id, "idle sweeper", move || {
            sweep_idle_every(w2.clone(), Duration::from_millis(250))
        }));
        let w2 = w.clone();
        monoio::spawn(supervise::task(id, "parked connection waker", move || {
            resume_parked(w2.clone())
        }));
        let stops: Rc<Stops> = Rc::default();
        for (l, service) in kept.borrow().iter() {
            match l.try_clone() {
                Ok(l) => listen(&w, &stops, l, *service),
                Err(e) => crate::error!("worker {id}: cannot listen on {}: {e}", l.addr),
            }
        }
        // The first start only: the process is ready once every worker accepts.
        if let Some(r) = ready.take() {
            r.fetch_add(1, Release);
        }
        let (w2, stops2, ctrl, kept) = (w.clone(), stops.clone(), ctrl.clone(), kept.clone());
        monoio::spawn(supervise::task(id, "control channel", move || {
            control(w2.clone(), stops2.clone(), ctrl.clone(), kept.clone())
        }));
        if crate::fault::point("worker-runtime") {
            panic!("fault injected: worker-runtime");
        }
        // The listening sockets were shut down by the control thread as the drain
        // began (`Running::stop_listening`), or handed to a new process: the
        // accept loops end and close this worker's descriptors.
        w.shutdown.wait().await;
        // Draining: keep-alive clients between requests get a short grace for a
        // request already on its way, then the sweeper closes them; busy ones
        // finish their request (their response carries `Connection: close`).
        let soon = crate::upstream::clock::now_ms()
            + crate::context::shutdown::DRAIN_IDLE_GRACE.as_millis() as u64;
        for idle in w.idle.borrow_mut().values_mut() {
            idle.deadline = idle.deadline.min(soon);
            idle.park_at = u64::MAX;
        }
        w.count_out_parked(w.parked.close_all());
        // Draining: wait for the connections of this worker to finish.
        while w.conns.get() > 0 && !w.shutdown.deadline_passed() {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        w.backends.clear();
        w.flush_log();
        Ok(())
    })
}

/// Orders from the control plane: listeners opened and closed by a reload.
async fn control(w: Rc<Worker>, stops: Rc<Stops>, ctrl: flume::Receiver<Ctrl>, kept: Kept) {
    while let Ok(msg) = ctrl.recv_async().await {
        match msg {
            Ctrl::Listen(l, service) => {
                match l.try_clone() {
                    Ok(copy) => kept.borrow_mut().push((copy, service)),
                    Err(e) => crate::warn!(
                        "worker {}: {}: no spare copy of the listener ({e}); it would not survive a runtime restart",
                        w.id,
                        l.addr
                    ),
                }
                listen(&w, &stops, l, service)
            }
            Ctrl::Close(addr) => {
                kept.borrow_mut().retain(|(l, _)| l.addr != addr);
                for (_, fd) in w.listen_fds.borrow().iter().filter(|(a, _)| *a == addr) {
                    // SAFETY: plain syscall on a listener this worker still owns.
                    unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
                }
                w.listen_fds.borrow_mut().retain(|(a, _)| *a != addr);
                stops.borrow_mut().retain(|(a, stop)| {
                    if *a == addr {
                        stop.set(true);
                    }
                    *a != addr
                });
            }
        }
    }
}

/// Whether the ring was set up with COOP_TASKRUN (said in the driver log line).
static COOP_TASKRUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// This worker's monoio runtime: io_uring with COOP_TASKRUN where the kernel has
/// it (5.19+), plain io_uring where it does not, epoll where io_uring is missing.
///
/// COOP_TASKRUN: by default the kernel interrupts a running worker (an IPI) each
/// time one of its sockets gets data, to run io_uring's completion work at once;
/// with it, that work waits for the worker's next syscall, which comes within
/// microseconds on a busy worker anyway. Measured on small keep-alive GETs (one
/// pinned thread, interleaved A/B, docs/decisions.md): 18.6 -> 15.7 µs of CPU per request, all
/// of it kernel time (reschedule IPIs were 3.6% of the profile).
fn runtime() -> std::io::Result<Runtime> {
    let entries = 1024;
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun();
    match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .uring_builder(coop)
        .with_entries(entries)
        .enable_timer()
        .build()
    {
        Ok(rt) => {
            COOP_TASKRUN.store(true, Relaxed);
            Ok(rt)
        }
        Err(e) => {
            crate::debug!("io_uring with COOP_TASKRUN: {e}; trying without");
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(entries)
                .enable_timer()
                .build()
        }
    }
}

/// The stop flag of each accept loop of a worker, by address (reload closes some).
type Stops = RefCell<Vec<(Address, Rc<Cell<bool>>)>>;

fn listen(w: &Rc<Worker>, stops: &Stops, l: Listener, service: Service) {
    let addr = l.addr.clone();
    match l.register() {
        Ok(reg) => {
            let stop = Rc::new(Cell::new(false));
            w.listen_fds.borrow_mut().push((addr.clone(), reg.fd()));
            stops.borrow_mut().push((addr, stop.clone()));
            let (w, reg) = (w.clone(), Rc::new(reg));
            monoio::spawn(supervise::task(w.id, "accept loop", move || {
                accept_loop(w.clone(), reg.clone(), service, stop.clone())
            }));
        }
        Err(e) => crate::error!("worker {}: cannot register listener {addr}: {e}", w.id),
    }
}

/// Resolves when the listener must stop: shutdown, or a reload removed it. Polled:
/// this is the control plane, a 50 ms check is free and needs no cross-thread wake.
async fn stopped(w: &Worker, stop: &Cell<bool>) {
    while !stop.get() && !w.shutdown.started() {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parked connections closed at once when `GlobalMaxConnections` is reached and
/// a new connection waits (nginx frees up to 32 reusable connections).
const RECLAIM_AT_LIMIT: usize = 16;

async fn accept_loop(w: Rc<Worker>, l: Rc<Registered>, service: Service, stop: Rc<Cell<bool>>) {
    loop {
        monoio::select! {
            _ = stopped(&w, &stop) => return,
            r = l.readable() => if let Err(e) = r {
                crate::error!("listener {}: {e}", l.addr);
                monoio::time::sleep(Duration::from_millis(100)).await;
            },
        }
        if crate::fault::point("accept-loop") {
            panic!("fault injected: accept-loop");
        }
        // Accept everything queued: one readiness wake for a burst.
        loop {
            if w.shutdown.started() || stop.get() {
                return;
            }
            // Take the slot before accepting, so GlobalMaxConnections holds exactly
            // across workers; above it connections wait in the kernel backlog
            // (HAProxy's maxconn).
            let before = PROCESS.client_connections.fetch_add(1, Relaxed);
            // What the current configuration says of this listener, in one load
            // (a reload may add `proxy` or `tls` to an address it keeps).
            let (max, proxy, tls) = {
                let live = w.live.load();
                (
                    live.config.global.global_max_connections,
                    live.proxy_listeners.contains(&l.addr),
                    service == Service::Http && live.tls_listener(&l.addr).is_some(),
                )
            };
            if max.is_some_and(|m| before >= u64::from(m)) {
                PROCESS.client_connections.fetch_sub(1, Relaxed);
                // Idle keep-alive connections give way to new ones: close a few
                // parked ones and accept again.
                let closed = w.parked.close_some(RECLAIM_AT_LIMIT);
                if closed > 0 {
                    w.count_out_parked(closed);
                    continue;
                }
                monoio::time::sleep(Duration::from_millis(5)).await;
                break;
            }
            match l.try_accept() {
                Ok((stream, peer)) => {
                    w.conns.set(w.conns.get() + 1);
                    let kind = match service {
                        Service::Http if tls => Kind::HttpTls(l.addr.clone()),
                        Service::Http => Kind::Http,
                        Service::Tcp => Kind::Tcp(l.addr.clone()),
                    };
                    spawn_connection(&w, stream, peer, kind, proxy);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    PROCESS.client_connections.fetch_sub(1, Relaxed);
                    break;
                }
                Err(e) => {
                    PROCESS.client_connections.fetch_sub(1, Relaxed);
                    // EMFILE and friends: back off instead of spinning on a full queue.
                    crate::error!("accept on {}: {e}", l.addr);
                    monoio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}

/// What a connection task runs.
enum Kind {
    Http,
    /// A parked keep-alive connection whose next request (or EOF) arrived.
    Resumed,
    /// An http connection on a `tls` listener: the handshake comes first.
    HttpTls(Address),
    /// A tcp entry's connection, by the address it was accepted on.
    Tcp(Address),
}

/// Run one client connection in its own task; it was counted in (`conns`,
/// `client_connections`) by the caller, and is counted out when the task ends.
fn spawn_connection(
    w: &Rc<Worker>,
    stream: crate::net::Stream,
    peer: crate::net::listen::Peer,
    kind: Kind,
    proxy: bool,
) {
    let tasks = w.conns.get() - w.parked.len();
    if tasks > w.tasks_peak.get() {
        w.tasks_peak.set(tasks);
    }
    let w2 = w.clone();
    monoio::spawn(async move {
        let guard = ConnGuard(w2.clone());
        // A `proxy` listener: the PROXY protocol header names the client, first.
        let peer = if proxy {
            let t = w2.live.load().config.global.head_timeout;
            match crate::proxy::client_address::accept(&stream, peer, t).await {
                Some(p) => p,
                None => return,
            }
        } else {
            peer
        };
        // Each kind boxed at its own size: an idle HTTP connection must not carry
        // the (larger) state of a tcp tunnel.
        let conn: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> = match &kind {
            Kind::Http => Box::pin(crate::proxy::http::serve(&w2, stream, peer, true)),
            Kind::Resumed => Box::pin(crate::proxy::http::serve(&w2, stream, peer, false)),
            Kind::HttpTls(addr) => Box::pin(async {
                // The configuration is held for the handshake only: each request
                // loads the current one.
                let tls = {
                    let live = w2.live.load_full();
                    crate::proxy::tls::terminate(&live, stream, peer, addr).await
                };
                if let Some(s) = tls {
                    crate::proxy::http::serve(&w2, s, peer, true).await;
                }
            }),
            Kind::Tcp(addr) => Box::pin(crate::proxy::tcp::serve(&w2, stream, peer, addr)),
        };
        if log::enabled(log::Level::Debug) {
            crate::debug!("connection future: {} bytes", std::mem::size_of_val(&*conn));
        }
        if Isolated(conn).await.is_err() {
            crate::error!(
                "worker {}: a connection task panicked (bug); connection closed",
                w2.id
            );
        }
        drop(guard);
    });
}

/// Serve parked connections again as their next request (or their EOF) arrives.
async fn resume_parked(w: Rc<Worker>) {
    let mut ready = Vec::new();
    while !w.shutdown.started() {
        if let Err(e) = w.parked.ready().await {
            crate::error!("worker {}: parked connections: {e}", w.id);
            monoio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        w.parked.take_ready(&mut ready);
        PROCESS
            .parked_connections
            .fetch_sub(ready.len() as u64, Relaxed);
        for p in ready.drain(..) {
            // Still counted in `conns` and `client_connections` since it was parked.
            if p.tcp && p.peer.addr.is_none() {
                // getpeername failed: reset while parked. Nothing to serve, and a
                // request without its client address must not be forwarded.
                drop(p);
                w.count_out(1);
                continue;
            }
            match crate::net::Stream::from_fd(p.fd, p.tcp) {
                Ok(stream) => {
                    let stream = crate::net::Stream::rejoin(stream, p.tls);
                    spawn_connection(&w, stream, p.peer, Kind::Resumed, false)
                }
                Err(e) => {
                    crate::warn!("worker {}: cannot resume a parked connection: {e}", w.id);
                    w.count_out(1);
                }
            }
        }
    }
}

/// Close keep-alive connections idle past their deadline (see `wait_request`):
/// one timer per worker instead of one per connection. Removing the entry tells
/// the connection it was swept; shutdown(2) wakes its readiness wait.
async fn sweep_idle_every(w: Rc<Worker>, every: Duration) {
    let mut due = Vec::new();
    // Through the drain too: it closes the connections whose grace ran out.
    while !(w.shutdown.started() && w.conns.get() == 0) {
        monoio::time::sleep(every).await;
        if crate::fault::point("sweeper") {
            panic!("fault injected: sweeper");
        }
        let now = crate::upstream::clock::now_ms();
        let mut asked = false;
        w.idle.borrow_mut().retain(|fd, idle| {
            let keep = idle.deadline > now;
            if !keep {
                due.push(*fd);
            } else if idle.park_at <= now && !idle.park {
                idle.park = true;
                asked = true;
                if let Some(waker) = idle.waker.take() {
                    waker.wake();
                }
            }
            keep
        });
        for fd in due.drain(..) {
            // SAFETY: plain syscall; the fd is open while its connection waits.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        w.count_out_parked(w.parked.expire(now));
        w.backends.expire();
        if asked {
            // Let the connections just asked to park do it (they are queued ahead
            // of us), so the memory their tasks held is released in this sweep.
            yield_once().await;
        }
        release_memory(&w);
    }
}

/// Resolves on its second poll: the task goes to the back of the run queue once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// After a burst: free the pooled buffers nobody used since the last sweep, shrink
/// the idle map, and give free heap pages back (see `trim`).
///
/// At most one trim per sweep (malloc_trim locks every arena, other workers' too),
/// and only after a burst (see TRIM_AT).
fn release_memory(w: &Worker) {
    /// Buffers kept whatever happens: a few requests never wait for malloc.
    const RESERVE: usize = 16;
    /// A drop this large in live tasks or pooled buffers is worth a trim.
    const TRIM_AT: usize = 256;
    let freed = w.bufs.release_unused(RESERVE);
    let tasks = w.conns.get() - w.parked.len();
    if freed >= TRIM_AT / 4 || w.tasks_peak.get() >= tasks + TRIM_AT {
        let mut idle = w.idle.borrow_mut();
        if idle.capacity() > 4 * idle.len().max(64) {
            idle.shrink_to_fit();
        }
        drop(idle);
        crate::runtime::trim::heap();
        w.tasks_peak.set(tasks);
    }
}

async fn flush_log_every(w: Rc<Worker>, every: Duration) {
    loop {
        monoio::time::sleep(every).await;
        w.flush_log();
        if w.shutdown.started() && w.conns.get() == 0 {
            return;
        }
    }
}

/// Counts a connection out however its task ends.
struct ConnGuard(Rc<Worker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.count_out(1);
    }
}

/// Listeners every worker needs for a configuration: the http ones and each tcp
/// entry's own.
pub fn services(live: &Live) -> Vec<(crate::config::Address, Service)> {
    let c = &live.config;
    let mut out: Vec<_> = c
        .global
        .listen
        .iter()
        .map(|l| (l.addr.clone(), Service::Http))
        .collect();
    for e in &c.entries {
        if e.mode == Mode::Tcp {
            out.extend(e.listen.iter().map(|l| (l.addr.clone(), Service::Tcp)));
        }
    }
    out
}
