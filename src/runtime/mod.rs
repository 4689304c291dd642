//! The process: workers (one monoio runtime per thread), listeners, signals.
//!
//! Control plane only: nothing here runs per request. The signal thread loads and
//! validates a new configuration on SIGHUP and swaps it into the `ArcSwap` the
//! workers read; SIGTERM/SIGINT start a graceful drain; SIGQUIT exits at once.

pub mod handover;
pub mod isolate;
pub mod supervise;
pub mod trim;
pub mod upgrade;
pub mod worker;

use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;

use crate::config::{Address, Config};
use crate::context::live::Live;
use crate::context::shutdown::Shutdown;
use crate::net::listen::{probe_free, Listener};
use worker::{Service, WorkerSpec};

/// Options from the command line that override or complete the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub threads: Option<u32>,
    pub pid_file: Option<std::path::PathBuf>,
    pub pin_cpus: bool,
    /// SIGUSR2 starts a binary upgrade (not in `demo`, whose command line
    /// would start a second demo).
    pub upgrade: bool,
}

/// A running proxy (the handle `demo` and tests use to stop it).
pub struct Running {
    pub shutdown: Shutdown,
    /// One control channel per worker (new and closed listeners on reload).
    ctrl: Vec<flume::Sender<worker::Ctrl>>,
    pub live: Arc<ArcSwap<Live>>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// TCP addresses listened on, http listeners first.
    pub bound: Vec<std::net::SocketAddr>,
    /// One handle on each listening socket, what an upgrade hands over.
    sockets: parking_lot::Mutex<Vec<Listener>>,
    /// Workers accepting on their listeners.
    ready: Arc<std::sync::atomic::AtomicUsize>,
}

impl Running {
    /// Wait for every worker to finish (after shutdown has started).
    pub fn join(self) -> anyhow::Result<()> {
        let mut failed = false;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    crate::error!("worker failed: {e}");
                    failed = true;
                }
                Err(_) => {
                    crate::error!("worker panicked");
                    failed = true;
                }
            }
        }
        if failed {
            bail!("a worker stopped with an error (see the log)");
        }
        Ok(())
    }
}

/// Bind every listener and start the workers.
pub fn start(config: Config, opts: &RunOptions) -> anyhow::Result<Running> {
    let threads = opts
        .threads
        .map_or_else(|| config.threads(), |n| n as usize)
        .max(1);
    let live = Arc::new(ArcSwap::from_pointee(Live::build(config, None, threads)));
    crate::admin::commands::replay(&live.load(), &handover::take_admin_state());
    let services = worker::services(&live.load());

    // A process started by an upgrade accepts on the old one's sockets: none is
    // bound again, so no connection is refused in between.
    let mut inherited = handover::take_sockets();
    for (addr, _) in &services {
        if !inherited.iter().any(|l| l.addr == *addr) {
            probe_free(addr).with_context(|| format!("cannot listen on {addr}"))?;
        }
    }
    let mut per_worker: Vec<Vec<(Listener, Service)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for (addr, service) in &services {
        if let Address::Inet(a) = addr {
            bound.push(*a);
        }
        let (mine, rest): (Vec<Listener>, Vec<Listener>) =
            inherited.into_iter().partition(|l| l.addr == *addr);
        inherited = rest;
        let (distinct, each) = if mine.is_empty() {
            let ls = bind_for_workers(addr, threads)?;
            (distinct_sockets(addr, &ls)?, ls)
        } else {
            let each = spread(&mine, threads)?;
            (mine, each)
        };
        sockets.extend(distinct);
        for (i, l) in each.into_iter().enumerate() {
            if *service == Service::Http {
                l.defer_accept();
            }
            per_worker[i % threads].push((l, *service));
        }
    }
    for l in inherited {
        crate::info!(
            "upgrade: {} is not in the configuration any more: not listening on it",
            l.addr
        );
    }
    let shutdown = Shutdown::default();
    crate::stats::counters::PROCESS.last_reload_ok.store(
        crate::stats::counters::unix_now(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    let mut ctrl = Vec::new();
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let (tx, rx) = flume::unbounded();
        ctrl.push(tx);
        let spec = WorkerSpec {
            ctrl: rx,
            id,
            listeners,
            live: live.clone(),
            shutdown: shutdown.clone(),
            pin_cpu: opts.pin_cpus.then_some(id % ncpu),
            ready: ready.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("simian-worker-{id}"))
            .spawn(move || worker::run(spec))
            .context("cannot start a worker thread")?;
        handles.push(h);
    }
    // Always started, even with no checks configured: a reload may turn them on.
    crate::upstream::health::start(live.clone(), shutdown.clone())
        .context("cannot start the health checker")?;
    Ok(Running {
        shutdown,
        ctrl,
        live,
        threads: handles,
        bound,
        sockets: parking_lot::Mutex::new(sockets),
        ready,
    })
}

/// One handle on each distinct socket of `ls` (TCP: one per worker; unix: one).
fn distinct_sockets(addr: &Address, ls: &[Listener]) -> anyhow::Result<Vec<Listener>> {
    let n = if matches!(addr, Address::Unix(_)) {
        1
    } else {
        ls.len()
    };
    ls.iter()
        .take(n)
        .map(|l| l.try_clone().context("cannot keep a listener for upgrades"))
        .collect()
}

/// Inherited sockets of one address over `workers` workers: every socket is
/// accepted on (a connection queued on one nobody serves would wait forever),
/// and every worker gets one; a worker may get several, or share one.
fn spread(sockets: &[Listener], workers: usize) -> anyhow::Result<Vec<Listener>> {
    let n = sockets.len().max(workers);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(sockets[i % sockets.len()].try_clone()?);
    }
    Ok(out)
}

/// Bind one listener per worker for `addr` (TCP: SO_REUSEPORT, one each; unix:
/// one socket shared).
fn bind_for_workers(addr: &Address, workers: usize) -> anyhow::Result<Vec<Listener>> {
    let first = Listener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let mut out = Vec::with_capacity(workers);
    for i in 0..workers {
        out.push(if i == 0 || matches!(addr, Address::Unix(_)) {
            first.try_clone()?
        } else {
            Listener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?
        });
    }
    Ok(out)
}

impl Running {
    /// Wait until every worker accepts on its listeners; `false` after `limit`.
    pub fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while self.ready.load(std::sync::atomic::Ordering::Acquire) < self.ctrl.len() {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    /// Refuse new connections at once: shutdown(2) of every listening socket, as
    /// the drain starts. Done here, on the handles this thread keeps, not by the
    /// workers: a worker's descriptor may already be closed by its accept loop
    /// (and its number reused), and another handle would keep the socket
    /// listening, with connections waiting in a backlog nobody accepts from.
    pub fn stop_listening(&self) {
        for l in self.sockets.lock().iter() {
            // SAFETY: plain syscall on a descriptor we hold open.
            unsafe { libc::shutdown(l.raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// A handle on each listening socket, for the new process of an upgrade.
    fn sockets_for_upgrade(&self) -> std::io::Result<Vec<Listener>> {
        self.sockets
            .lock()
            .iter()
            .map(Listener::try_clone)
            .collect()
    }

    /// Reload: read and validate the file, open the listeners it adds, then swap
    /// and close the listeners it dropped. A broken file, or a new address that
    /// cannot be bound, changes nothing.
    pub fn reload(&self, path: &std::path::Path) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let p = &crate::stats::counters::PROCESS;
        let r = self.try_reload(path);
        match &r {
            Ok(()) => {
                p.reloads_ok.fetch_add(1, Relaxed);
                p.last_reload_ok
                    .store(crate::stats::counters::unix_now(), Relaxed);
            }
            Err(_) => {
                p.reloads_failed.fetch_add(1, Relaxed);
            }
        }
        r
    }

    fn try_reload(&self, path: &std::path::Path) -> Result<(), String> {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        for w in &config.warnings {
            crate::warn!("{}", w.short());
        }
        let old = self.live.load();
        let old_services = worker::services(&old);
        let new = Live::build(config, Some(&old), old.workers);
        let new_services = worker::services(&new);
        // Kept addresses keep their sockets: no gap for them.
        let added: Vec<_> = new_services
            .iter()
            .filter(|s| !old_services.contains(s))
            .collect();
        let removed: Vec<_> = old_services
            .iter()
            .filter(|s| !new_services.contains(s))
            .collect();
        let mut opened = Vec::new();
        for (addr, service) in &added {
            let busy_elsewhere = old_services.iter().any(|(a, _)| a == addr);
            if !busy_elsewhere {
                probe_free(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            }
            let ls = bind_for_workers(addr, self.ctrl.len()).map_err(|e| format!("{e:#}"))?;
            if *service == Service::Http {
                ls.iter().for_each(Listener::defer_accept);
            }
            let keep = distinct_sockets(addr, &ls).map_err(|e| format!("{e:#}"))?;
            opened.push((ls, *service, keep));
        }
        self.live.store(Arc::new(new));
        {
            let mut sockets = self.sockets.lock();
            sockets.retain(|l| !removed.iter().any(|(a, _)| *a == l.addr));
            for (_, _, keep) in &mut opened {
                sockets.append(keep);
            }
        }
        for (addr, _) in removed {
            for tx in &self.ctrl {
                let _ = tx.send(worker::Ctrl::Close(addr.clone()));
            }
            crate::info!("reload: stopped listening on {addr}");
        }
        for (ls, service, _) in opened {
            for (l, tx) in ls.into_iter().zip(&self.ctrl) {
                let addr = l.addr.clone();
                if tx.send(worker::Ctrl::Listen(l, service)).is_err() {
                    crate::error!("reload: a worker is gone; {addr} not opened on it");
                }
            }
        }
        Ok(())
    }
}

/// Run in the foreground until a signal stops us (the `simian -c FILE` command).
pub fn run(config: Config, config_path: &std::path::Path, opts: &RunOptions) -> anyhow::Result<()> {
    crate::log::set_file(config.global.error_log.as_deref())
        .with_context(|| "cannot open the ErrorLog file".to_string())?;
    let r = serve_until_stopped(config, config_path, opts);
    // Every way out: the workers handed over their last lines when they
    // stopped; a log file that takes longer than this to take them is not
    // worth hanging the exit for.
    crate::accesslog::finish(LOG_FINISH);
    crate::log::finish(LOG_FINISH);
    r
}

const LOG_FINISH: std::time::Duration = std::time::Duration::from_secs(5);

fn serve_until_stopped(
    config: Config,
    config_path: &std::path::Path,
    opts: &RunOptions,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR2])
            .context("cannot install signal handlers")?;
    // The path we were started from, now: a package upgrade may replace the file
    // later, and SIGUSR2 must start what is there then.
    let exe = std::env::current_exe().context("cannot tell where the simian binary is")?;
    crate::accesslog::start(config.global.access_log.as_deref())
        .with_context(|| "cannot open the AccessLog file".to_string())?;
    let admin_path = config.global.admin_socket.clone();
    let running = start(config, opts)?;
    if !running.wait_ready(upgrade::READY_WITHIN) {
        bail!(
            "the workers did not start accepting within {}s",
            upgrade::READY_WITHIN.as_secs()
        );
    }
    let mut admin = match &admin_path {
        Some(p) => Some(crate::admin::socket::AdminSocket::start(
            p,
            running.live.clone(),
        )?),
        None => None,
    };
    let upgraded = handover::is_upgrade();
    if upgraded && crate::fault::point("upgrade-never-ready") {
        // Tests of the old process's timeout (debug builds only).
        std::thread::sleep(upgrade::READY_WITHIN + std::time::Duration::from_secs(5));
    }
    handover::report_ready();
    // After the report: the pid file never names a process that is not serving.
    write_pid_file(opts)?;
    notify_systemd(upgraded);
    crate::info!(
        "simian {} listening on {}{}",
        env!("CARGO_PKG_VERSION"),
        running
            .bound
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if upgraded {
            " (sockets taken over from the previous process)"
        } else {
            ""
        }
    );
    let mut pending: Option<upgrade::Pending> = None;
    // SIGTERM arrived: the drain starts at this instant (after ShutdownDelay).
    let mut drain_at: Option<std::time::Instant> = None;
    let handed_to = loop {
        for sig in signals.pending() {
            match sig {
                SIGHUP => reload(&running, config_path, &mut admin),
                SIGUSR2 if !opts.upgrade => {
                    crate::info!("SIGUSR2 ignored: no binary upgrade in this mode")
                }
                SIGUSR2 if pending.is_some() => {
                    crate::warn!("SIGUSR2 ignored: an upgrade is already under way")
                }
                SIGUSR2 if drain_at.is_some() => {
                    crate::warn!("SIGUSR2 ignored: this process is stopping")
                }
                SIGUSR2 => match running.sockets_for_upgrade() {
                    Ok(fds) => {
                        let admin = crate::admin::commands::as_commands(&running.live.load());
                        pending = Some(upgrade::start(exe.clone(), fds, admin))
                    }
                    Err(e) => crate::error!("upgrade failed, still serving: {e}"),
                },
                SIGQUIT => {
                    crate::info!("SIGQUIT: exiting now");
                    if let Some(p) = pending.take() {
                        p.abort();
                    }
                    // Free the ports now: the io_uring rings are torn down after
                    // the process is gone, and until then (5-10 ms measured) they
                    // keep the listening sockets open, refusing a restart's bind.
                    running.stop_listening();
                    crate::log::finish(std::time::Duration::from_millis(500));
                    std::process::exit(0);
                }
                _ if drain_at.is_some() => {
                    crate::info!("second stop signal: draining now");
                    drain_at = Some(std::time::Instant::now());
                }
                _ => {
                    running.shutdown.announce_stop();
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                    if let Some(p) = pending.take() {
                        crate::warn!("stopping: the upgrade under way is abandoned");
                        p.abort();
                    }
                    let delay = running.live.load().config.global.shutdown_delay;
                    if !delay.is_zero() {
                        crate::info!(
                            "stopping: serving {} more (ShutdownDelay) with the HealthURL answering 503",
                            humantime::format_duration(delay)
                        );
                    }
                    drain_at = Some(std::time::Instant::now() + delay);
                }
            }
        }
        if let Some(outcome) = pending.as_ref().and_then(|p| p.outcome()) {
            pending = None;
            match outcome {
                Ok(pid) => break Some(pid),
                Err(e) => {
                    crate::error!("upgrade failed, this process keeps serving: {e}");
                    // Whatever the failed process wrote there, this one serves.
                    if let Err(e) = write_pid_file(opts) {
                        crate::error!("{e:#}");
                    }
                }
            }
        }
        if drain_at.is_some_and(|t| std::time::Instant::now() >= t) {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let t = running.live.load().config.global.shutdown_timeout;
    match handed_to {
        Some(pid) => {
            crate::info!(
                "upgrade: process {pid} serves; this one stops accepting and drains for up to {}",
                humantime::format_duration(t)
            );
            // The new process says so too; from the old one it needs no
            // NotifyAccess=all, and it lands before this process exits.
            let _ = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)]);
            if let Some(a) = admin.take() {
                a.hand_over();
            }
            running.shutdown.start_handover(t);
        }
        None => {
            crate::info!(
                "shutting down: draining connections for up to {}",
                humantime::format_duration(t)
            );
            // Flag first: an accept loop woken by the shutdown(2) sees it and
            // ends, instead of trying to accept on a socket no longer listening.
            running.shutdown.start(t);
            running.stop_listening();
        }
    }
    drop(admin);
    let r = running.join();
    if let Some(p) = &opts.pid_file {
        // Only our own: after an upgrade it names the new process.
        let ours =
            std::fs::read_to_string(p).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

fn write_pid_file(opts: &RunOptions) -> anyhow::Result<()> {
    if let Some(p) = &opts.pid_file {
        // Written whole, then renamed: a reader never sees an empty file.
        let mut tmp = p.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|_| std::fs::rename(&tmp, p))
            .with_context(|| format!("cannot write pid file {}", p.display()))?;
    }
    Ok(())
}

/// SIGHUP: reload, reopen the log files, follow a changed `AdminSocket`.
fn reload(
    running: &Running,
    config_path: &std::path::Path,
    admin: &mut Option<crate::admin::socket::AdminSocket>,
) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    match running.reload(config_path) {
        Ok(()) => crate::info!("configuration reloaded from {}", config_path.display()),
        Err(e) => crate::error!("reload failed, keeping the running configuration:\n{e}"),
    }
    // Log files are reopened either way (logrotate moved them).
    let live = running.live.load();
    let g = &live.config.global;
    crate::accesslog::reopen(g.access_log.as_deref());
    if let Err(e) = crate::log::set_file(g.error_log.as_deref()) {
        crate::error!("cannot reopen the error log: {e}");
    }
    if admin.as_ref().map(|a| &a.path) != g.admin_socket.as_ref() {
        *admin = None;
        if let Some(p) = &g.admin_socket {
            match crate::admin::socket::AdminSocket::start(p, running.live.clone()) {
                Ok(a) => *admin = Some(a),
                Err(e) => crate::error!("{e:#}"),
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// Tell systemd (Type=notify) we serve; after an upgrade, that we are the main
/// process now (the unit has NotifyAccess=all for this message).
fn notify_systemd(upgraded: bool) {
    let pid = std::process::id();
    let r = if upgraded {
        sd_notify::notify(&[
            sd_notify::NotifyState::MainPid(pid),
            sd_notify::NotifyState::Ready,
        ])
    } else {
        sd_notify::notify(&[sd_notify::NotifyState::Ready])
    };
    if let Err(e) = r {
        crate::warn!("cannot notify systemd: {e}");
    }
}
