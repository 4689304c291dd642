//! Active health checks (`HealthCheck tcp|PATH`): one checker for the whole
//! process, on its own thread and monoio runtime, off the data path.
//!
//! Each round it reads the current configuration, checks every server whose
//! `HealthCheckInterval` has passed (all of them concurrently), and flips the
//! server's `health_down` flag after `UnhealthyThreshold` consecutive failures or
//! `HealthyThreshold` consecutive successes. Workers only read that flag (through
//! `ServerState::is_available`), the same state passive failures feed.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::HealthCheck;
use crate::context::live::Live;
use crate::context::shutdown::Shutdown;
use crate::net::{connect::connect_server, io as nio};
use crate::upstream::ServerState;

/// Consecutive results of one server, kept by the checker only.
#[derive(Default)]
struct Streak {
    ok: u32,
    failed: u32,
    last: Option<Instant>,
}

/// Start the checker thread. It ends when `shutdown` starts.
pub fn start(live: Arc<ArcSwap<Live>>, shutdown: Shutdown) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("simian-health".into())
        .spawn(move || loop {
            // A panic in a check (a bug) must not end health checking for good:
            // the checker starts again, with its streaks reset.
            let round = || {
                let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build();
                match rt {
                    Ok(mut rt) => rt.block_on(run(live.clone(), shutdown.clone())),
                    Err(e) => {
                        crate::error!("health checks disabled: cannot start their runtime: {e}")
                    }
                }
            };
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(round)) {
                Ok(()) => return,
                Err(_) if shutdown.started() => return,
                Err(_) => {
                    crate::error!("the health checker panicked (bug); started again");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(())
}

async fn run(live: Arc<ArcSwap<Live>>, shutdown: Shutdown) {
    // Keyed by the server state's address: a server that survives a reload keeps
    // its ServerState, hence its streak.
    let mut streaks: HashMap<usize, Streak> = HashMap::new();
    while !shutdown.started() {
        if crate::fault::point("health-checker") {
            panic!("fault injected: health-checker");
        }
        let l = live.load_full();
        let now = Instant::now();
        let mut round = Vec::new();
        for (e, rt) in l.config.entries.iter().zip(&l.entries) {
            for s in &rt.servers {
                if e.health.check == HealthCheck::Off {
                    // Checks turned off by a reload: the server is no longer held down.
                    s.health_down.store(false, Relaxed);
                    continue;
                }
                let st = streaks.entry(Arc::as_ptr(s) as usize).or_default();
                if st
                    .last
                    .is_some_and(|t| now.duration_since(t) < e.health.interval)
                {
                    continue;
                }
                st.last = Some(now);
                round.push((
                    s.clone(),
                    e.health.clone(),
                    e.timeouts.connect,
                    e.name.clone(),
                    (e.backend_tls.clone(), e.rules.send_proxy),
                ));
            }
        }
        let results = Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for (s, h, timeout, name, (tls, send_proxy)) in round {
            let results = results.clone();
            tasks.push(monoio::spawn(async move {
                let ok = check(&s, &h.check, timeout, tls.as_ref(), send_proxy).await;
                results.borrow_mut().push((s, h, name, ok));
            }));
        }
        for t in tasks {
            t.await;
        }
        for (s, h, name, ok) in results.borrow_mut().drain(..) {
            let st = streaks.entry(Arc::as_ptr(&s) as usize).or_default();
            apply(&s, st, &h, ok, &name);
        }
        // Forget servers that left the configuration.
        let alive: std::collections::HashSet<usize> = l
            .entries
            .iter()
            .flat_map(|rt| rt.servers.iter().map(|s| Arc::as_ptr(s) as usize))
            .collect();
        streaks.retain(|k, _| alive.contains(k));
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn apply(
    s: &ServerState,
    st: &mut Streak,
    h: &crate::config::HealthSettings,
    ok: bool,
    entry: &str,
) {
    if ok {
        s.health_ok.fetch_add(1, Relaxed);
        st.ok += 1;
        st.failed = 0;
        if st.ok >= h.healthy_threshold && s.health_down.swap(false, Relaxed) {
            crate::info!("entry {entry}: server {} is healthy again", s.spec.text);
        }
    } else {
        s.health_failed.fetch_add(1, Relaxed);
        st.failed += 1;
        st.ok = 0;
        if st.failed >= h.unhealthy_threshold && !s.health_down.swap(true, Relaxed) {
            s.offline_transitions.fetch_add(1, Relaxed);
            crate::warn!(
                "entry {entry}: server {} failed {} health checks: taken down",
                s.spec.text,
                st.failed
            );
        }
    }
}

/// One check: a TCP connect (and TLS handshake for a `tls:` server), or
/// `GET PATH` wanting a 2xx/3xx status.
async fn check(
    s: &ServerState,
    kind: &HealthCheck,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
    send_proxy: Option<crate::config::ProxyVersion>,
) -> bool {
    let Ok(conn) = connect_server(&s.spec, tls, timeout).await else {
        return false;
    };
    // A server that expects PROXY headers (SendProxy) gets one saying the check
    // is the balancer's own (v2 LOCAL, v1 UNKNOWN): HAProxy's check-send-proxy.
    if let Some(v) = send_proxy {
        use crate::net::proxy_protocol::{V1_UNKNOWN, V2_LOCAL};
        let header: &[u8] = match v {
            crate::config::ProxyVersion::V1 => V1_UNKNOWN,
            crate::config::ProxyVersion::V2 => &V2_LOCAL,
        };
        if nio::write_all(&conn, header, timeout).await.is_err() {
            return false;
        }
    }
    let HealthCheck::Http(path) = kind else {
        return true;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: simian-health-check\r\nConnection: close\r\n\r\n",
        s.spec.text.strip_prefix("tls:").unwrap_or(&s.spec.text)
    );
    if nio::write_all(&conn, req.as_bytes(), timeout)
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::with_capacity(1024);
    // The status line is all we need; allow the whole check the connect timeout
    // plus a second for the answer.
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = &buf[..end];
            let status = line
                .split(|&b| b == b' ')
                .nth(1)
                .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u16>().ok());
            return matches!(status, Some(200..=399));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match nio::read(&conn, &mut buf, 1024, left).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if buf.len() > 8192 => return false,
            Ok(_) => {}
        }
    }
}
