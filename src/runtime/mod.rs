//! The process: workers (one monoio runtime per thread), listeners, signals.
//!
//! Control plane only: nothing here runs per request. The signal thread loads and
//! validates a new configuration on SIGHUP and swaps it into the `ArcSwap` the
//! workers read; SIGTERM/SIGINT start a graceful drain; SIGQUIT exits at once.

pub mod live;
pub mod shutdown;
pub mod worker;

use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;

use crate::config::{Address, Config};
use crate::net::listen::{probe_free, Listener};
use live::Live;
use shutdown::Shutdown;
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
    pub live: Arc<ArcSwap<Live>>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Actual addresses bound (port 0 resolved), http listeners first.
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
    if let Some(l) = config.global.listen.iter().find(|l| l.tls) {
        bail!(
            "Listen {} tls: TLS termination is not implemented in this version of simian (see README)",
            l.addr
        );
    }
    let threads = opts
        .threads
        .map_or_else(|| config.threads(), |n| n as usize)
        .max(1);
    let live = Arc::new(ArcSwap::from_pointee(Live::build(config, None, threads)));
    let services = worker::services(&live.load());

    for (addr, _) in &services {
        probe_free(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    // Unix sockets: one socket shared by all workers. TCP: one per worker
    // (SO_REUSEPORT), the first bound here so that port 0 resolves once.
    let mut per_worker: Vec<Vec<(Listener, Service)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (addr, service) in &services {
        let first = Listener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let actual = match (addr, first.local_addr()) {
            (Address::Inet(_), Some(a)) => Address::Inet(a),
            _ => addr.clone(),
        };
        if let Address::Inet(a) = actual {
            bound.push(a);
        }
        for (i, list) in per_worker.iter_mut().enumerate() {
            let l = if i == 0 {
                first.try_clone()?
            } else if matches!(addr, Address::Unix(_)) {
                first.try_clone()?
            } else {
                Listener::bind(&actual).with_context(|| format!("cannot listen on {actual}"))?
            };
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
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let spec = WorkerSpec {
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
    Ok(Running {
        shutdown,
        live,
        threads: handles,
        bound,
    })
}

/// Reload: read and validate the file, then swap. A broken file changes nothing.
pub fn reload(live: &ArcSwap<Live>, path: &std::path::Path) -> Result<(), String> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            crate::stats::counters::PROCESS
                .reloads_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e.to_string());
        }
    };
    for w in &config.warnings {
        crate::warn!("{}", w.short());
    }
    let old = live.load();
    let old_services = worker::services(&old);
    let new = Live::build(config, Some(&old), old.workers);
    let new_services = worker::services(&new);
    if old_services
        .iter()
        .map(|s| &s.0)
        .ne(new_services.iter().map(|s| &s.0))
    {
        crate::warn!(
            "reload: Listen addresses changed; listeners are kept as they were until a restart"
        );
    }
    live.store(Arc::new(new));
    let p = &crate::stats::counters::PROCESS;
    p.reloads_ok
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    p.last_reload_ok.store(
        crate::stats::counters::unix_now(),
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(())
}

/// Run in the foreground until a signal stops us (the `simian -c FILE` command).
pub fn run(config: Config, config_path: &std::path::Path, opts: &RunOptions) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    crate::log::set_file(config.global.error_log.as_deref())
        .with_context(|| "cannot open the ErrorLog file".to_string())?;
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT])
        .context("cannot install signal handlers")?;
    crate::accesslog::start(config.global.access_log.clone())
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
                match reload(&running.live, config_path) {
                    Ok(()) => crate::info!("configuration reloaded from {}", config_path.display()),
                    Err(e) => {
                        crate::error!("reload failed, keeping the running configuration:\n{e}")
                    }
                }
                // Log files are reopened either way (logrotate moved them).
                let g = &running.live.load().config.global;
                crate::accesslog::reopen(g.access_log.clone());
                if let Err(e) = crate::log::set_file(g.error_log.as_deref()) {
                    crate::error!("cannot reopen the error log: {e}");
                }
            }
            SIGQUIT => {
                crate::info!("SIGQUIT: exiting now");
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
