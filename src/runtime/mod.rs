//! The process: workers (one monoio runtime per thread), listeners, signals.
//!
//! Control plane only: nothing here runs per request. The signal thread loads and
//! validates a new configuration on SIGHUP and swaps it into the `ArcSwap` the
//! workers read; SIGTERM/SIGINT start a graceful drain; SIGQUIT exits at once.

pub mod isolate;
pub mod supervise;
pub mod trim;
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
    let services = worker::services(&live.load());

    for (addr, _) in &services {
        probe_free(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let mut per_worker: Vec<Vec<(Listener, Service)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (addr, service) in &services {
        if let Address::Inet(a) = addr {
            bound.push(*a);
        }
        for (list, l) in per_worker.iter_mut().zip(bind_for_workers(addr, threads)?) {
            if *service == Service::Http {
                l.defer_accept();
            }
            list.push((l, *service));
        }
    }
    let shutdown = Shutdown::default();
    crate::stats::counters::PROCESS.last_reload_ok.store(
        crate::stats::counters::unix_now(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    let mut ctrl = Vec::new();
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
    })
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
            opened.push((ls, *service));
        }
        self.live.store(Arc::new(new));
        for (addr, _) in removed {
            for tx in &self.ctrl {
                let _ = tx.send(worker::Ctrl::Close(addr.clone()));
            }
            crate::info!("reload: stopped listening on {addr}");
        }
        for (ls, service) in opened {
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
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT])
        .context("cannot install signal handlers")?;
    crate::accesslog::start(config.global.access_log.as_deref())
        .with_context(|| "cannot open the AccessLog file".to_string())?;
    let running = start(config, opts)?;
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", p.display()))?;
    }
    crate::info!(
        "simian {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        running
            .bound
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                match running.reload(config_path) {
                    Ok(()) => crate::info!("configuration reloaded from {}", config_path.display()),
                    Err(e) => {
                        crate::error!("reload failed, keeping the running configuration:\n{e}")
                    }
                }
                // Log files are reopened either way (logrotate moved them).
                let g = &running.live.load().config.global;
                crate::accesslog::reopen(g.access_log.as_deref());
                if let Err(e) = crate::log::set_file(g.error_log.as_deref()) {
                    crate::error!("cannot reopen the error log: {e}");
                }
            }
            SIGQUIT => {
                crate::info!("SIGQUIT: exiting now");
                crate::log::finish(std::time::Duration::from_millis(500));
                std::process::exit(0);
            }
            _ => {
                let t = running.live.load().config.global.shutdown_timeout;
                crate::info!(
                    "shutting down: draining connections for up to {}",
                    humantime::format_duration(t)
                );
                running.shutdown.start(t);
                break;
            }
        }
    }
    let r = running.join();
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    r
}
