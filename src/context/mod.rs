//! What the data path reads on a worker: the thread's own [`Worker`] state, the
//! configuration as the workers see it ([`live`]), parked idle connections
//! ([`park`]) and the shutdown flag ([`shutdown`]).
//!
//! Its own module so that both sides depend on it and not on each other: the data
//! path ([`crate::proxy`]) reads this state, and the runtime ([`crate::runtime`])
//! builds it, runs the tasks that serve connections and sweeps it.

pub mod live;
pub mod park;
pub mod rate_limit;
pub mod shutdown;

use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Address;
use crate::net::buffer::BufPool;
use crate::net::splice::PipePool;
use crate::stats::counters::PROCESS;
use crate::upstream::pool::BackendPool;
use live::Live;
use park::Parking;
use shutdown::Shutdown;

/// What a worker's tasks share (thread-local: `Rc`, no locks).
pub struct Worker {
    pub id: usize,
    pub live: Arc<ArcSwap<Live>>,
    pub bufs: BufPool,
    pub pipes: PipePool,
    pub backends: BackendPool,
    /// Client connections open on this worker. Shared with the thread that runs
    /// the worker's runtime, which counts them out if the runtime dies.
    pub conns: std::rc::Rc<Cell<usize>>,
    /// Client connections waiting in their task for their next request: closed at
    /// once on shutdown; the sweeper shuts down those past their deadline and asks
    /// those idle past [`park::PARK_AFTER`] to park.
    pub idle: RefCell<FxHashMap<RawFd, Idle>>,
    /// Connections idle long enough to give up their task.
    pub parked: Parking,
    /// The most connection tasks alive at once since the last heap trim.
    pub(crate) tasks_peak: Cell<usize>,
    /// A park failed already (logged once).
    park_failed: Cell<bool>,
    /// Reused buffer for the normalised path of the request being routed.
    pub path_scratch: RefCell<Vec<u8>>,
    /// Listening sockets of this worker, by address.
    pub listen_fds: RefCell<Vec<(Address, RawFd)>>,
    /// Access log lines not yet handed to the log thread.
    pub log_buf: RefCell<Vec<u8>>,
    /// The log's date for the current second: (unix second, `[dd/Mon/yyyy:...]`).
    pub log_date: RefCell<(u64, String)>,
    /// Rendered statistics pages, rebuilt at most every 250 ms.
    pub stats_pages: crate::stats::cache::PageCache,
    /// `SendProxy` backend connections, each kept for the one client connection
    /// (by its fd) whose PROXY header it carries; removed when that connection
    /// ends (`PrivateBackends` guard), before its fd can be reused.
    pub private_backends: RefCell<FxHashMap<RawFd, (crate::config::Address, crate::net::Stream)>>,
    pub shutdown: Shutdown,
}

/// A connection waiting in its task for its next request (see `wait_request`).
pub struct Idle {
    /// IdleTimeout deadline, crate clock (ms).
    pub deadline: u64,
    /// When the sweeper may ask it to park.
    pub park_at: u64,
    /// Set by the sweeper: give up the task, park the socket.
    pub park: bool,
    /// Wakes the waiting task when `park` is set.
    pub waker: Option<std::task::Waker>,
}

impl Worker {
    /// A worker's state before it has a listener or a connection.
    pub fn new(
        id: usize,
        live: Arc<ArcSwap<Live>>,
        parked: Parking,
        shutdown: Shutdown,
        conns: std::rc::Rc<Cell<usize>>,
    ) -> Worker {
        Worker {
            id,
            live,
            bufs: BufPool::default(),
            pipes: PipePool::default(),
            backends: BackendPool::default(),
            conns,
            idle: RefCell::new(FxHashMap::default()),
            parked,
            tasks_peak: Cell::new(0),
            park_failed: Cell::new(false),
            path_scratch: RefCell::new(Vec::with_capacity(256)),
            listen_fds: RefCell::new(Vec::new()),
            log_buf: RefCell::new(Vec::new()),
            stats_pages: Default::default(),
            private_backends: Default::default(),
            log_date: RefCell::new((0, String::new())),
            shutdown,
        }
    }

    /// Give up the task of an idle keep-alive connection: keep only its socket in
    /// the parked set. The caller's task ends right after (its `ConnGuard` counts
    /// the connection out, so it is counted back in here: it is still open).
    pub fn park(
        &self,
        client: crate::net::Stream,
        peer: crate::net::listen::Peer,
        deadline: u64,
    ) -> Result<(), crate::net::Stream> {
        if self.shutdown.started() {
            return Err(client);
        }
        let tcp = client.is_tcp();
        // A duplicate, not the fd itself: the cancelled readiness op may still hold
        // the driver's reference for a moment, and the driver closes the original
        // when it lets go. The socket lives on through the duplicate. Both steps
        // happen while `client` is still open, so a failure (EMFILE, the epoll
        // watch limit) gives the connection back instead of closing it.
        // SAFETY: plain syscall; a new fd is returned, owned just below.
        let dup = unsafe { libc::fcntl(client.fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            self.park_failed(io::Error::last_os_error());
            return Err(client);
        }
        // SAFETY: `dup` is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(dup) };
        let (sock, session) = client.split_session();
        if let Err((e, session)) = self.parked.park(fd, tcp, deadline, session, peer) {
            self.park_failed(e);
            return Err(crate::net::Stream::rejoin(sock, session));
        }
        drop(sock);
        self.conns.set(self.conns.get() + 1);
        PROCESS.client_connections.fetch_add(1, Relaxed);
        PROCESS.parked_connections.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Said once per worker: the connection keeps its task, nothing is lost.
    fn park_failed(&self, e: io::Error) {
        if !self.park_failed.replace(true) {
            crate::warn!(
                "worker {}: cannot park an idle connection ({e}); idle connections keep their task",
                self.id
            );
        }
    }

    /// Count out `n` parked connections that were closed.
    pub fn count_out_parked(&self, n: usize) {
        PROCESS.parked_connections.fetch_sub(n as u64, Relaxed);
        self.count_out(n);
    }

    /// Count out `n` client connections that were closed.
    pub fn count_out(&self, n: usize) {
        self.conns.set(self.conns.get() - n);
        PROCESS.client_connections.fetch_sub(n as u64, Relaxed);
    }

    /// Append one access log line; hand the buffer over when it is full.
    pub fn log_line(&self, e: &crate::accesslog::Entry) {
        let now = crate::stats::counters::unix_now();
        let mut date = self.log_date.borrow_mut();
        if date.0 != now {
            *date = (now, crate::accesslog::ncsa_date(now));
        }
        let mut buf = self.log_buf.borrow_mut();
        crate::accesslog::format(&mut buf, date.1.as_bytes(), e);
        if buf.len() >= crate::accesslog::FLUSH_AT {
            crate::accesslog::submit(std::mem::replace(
                &mut *buf,
                crate::accesslog::spare_buffer(),
            ));
        }
    }

    pub fn flush_log(&self) {
        let mut buf = self.log_buf.borrow_mut();
        if !buf.is_empty() {
            crate::accesslog::submit(std::mem::replace(
                &mut *buf,
                crate::accesslog::spare_buffer(),
            ));
        }
    }
}

/// Drops a client connection's `SendProxy` backend connection when the client
/// connection ends (declared after the client stream, so it runs first).
pub struct PrivateBackends<'a>(pub &'a Worker, pub RawFd);

impl Drop for PrivateBackends<'_> {
    fn drop(&mut self) {
        let mut map = self.0.private_backends.borrow_mut();
        if !map.is_empty() {
            map.remove(&self.1);
        }
    }
}
