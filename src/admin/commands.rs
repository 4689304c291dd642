//! The admin commands, on the live state: `servers`, `drain`, `maint`, `ready`,
//! `weight`. One request line in, an answer out (`Ok` text, or `Err` one line
//! that names what was wrong and what exists).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::{Balancer, Entry};
use crate::context::live::{EntryRuntime, Live};
use crate::upstream::{AdminState, ServerState};

pub const USAGE: &str = "commands: servers | drain ROUTE SERVER | maint ROUTE SERVER | \
                         ready ROUTE SERVER | weight ROUTE SERVER N";

/// Run one command line against the current configuration.
pub fn execute(live: &Live, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["servers"] => Ok(servers(live)),
        [cmd @ ("drain" | "maint" | "ready"), route, server] => {
            let state = match *cmd {
                "drain" => AdminState::Drain,
                "maint" => AdminState::Maint,
                _ => AdminState::Ready,
            };
            let (_, _, s) = find(live, route, server)?;
            let was = s.admin_state();
            s.set_admin_state(state);
            crate::info!(
                "admin: route {route} server {server}: {} (was {})",
                state.name(),
                was.name()
            );
            Ok(format!(
                "{route} {server}: {} (was {})\n",
                state.name(),
                was.name()
            ))
        }
        ["weight", route, server, n] => weight(live, route, server, n),
        [cmd @ ("servers" | "drain" | "maint" | "ready" | "weight"), ..] => {
            Err(format!("wrong arguments for `{cmd}`; {USAGE}"))
        }
        [] => Err(format!("empty command; {USAGE}")),
        [cmd, ..] => {
            let help = crate::config::suggest::nearest(
                cmd,
                ["servers", "drain", "maint", "ready", "weight"],
            )
            .map_or(String::new(), |h| format!(" ({h})"));
            Err(format!("unknown command `{cmd}`{help}; {USAGE}"))
        }
    }
}

fn weight(live: &Live, route: &str, server: &str, n: &str) -> Result<String, String> {
    let n: u32 = n
        .parse()
        .ok()
        .filter(|n| super::WEIGHT_RANGE.contains(n))
        .ok_or_else(|| {
            format!(
                "weight must be a number from {} to {}, not `{n}`",
                super::WEIGHT_RANGE.start(),
                super::WEIGHT_RANGE.end()
            )
        })?;
    let (entry, rt, s) = find(live, route, server)?;
    if entry.balancer != Balancer::WeightedRoundRobin {
        return Err(format!(
            "route {route} uses {}: weights apply to WeightedRoundRobin routes only",
            entry.balancer.name()
        ));
    }
    let was = s.weight();
    s.weight_override.store(n, Relaxed);
    let weights: Vec<u32> = rt.servers.iter().map(|s| s.weight()).collect();
    rt.balancer.set_weights(&weights);
    crate::info!("admin: route {route} server {server}: weight {n} (was {was})");
    Ok(format!("{route} {server}: weight {n} (was {was})\n"))
}

/// The route named `route` and its server written `server` in `ServerList`.
fn find<'a>(
    live: &'a Live,
    route: &str,
    server: &str,
) -> Result<(&'a Entry, &'a EntryRuntime, &'a ServerState), String> {
    let config = &live.config;
    let Some(i) = config.entries.iter().position(|e| e.name == route) else {
        let names: Vec<&str> = config.entries.iter().map(|e| e.name.as_str()).collect();
        return Err(format!(
            "unknown route `{route}`{}; routes: {}",
            hint(route, &names),
            names.join(", ")
        ));
    };
    let (entry, rt) = (&config.entries[i], &live.entries[i]);
    match rt.servers.iter().find(|s| s.spec.text == server) {
        Some(s) => Ok((entry, rt, s)),
        None => {
            let names: Vec<&str> = rt.servers.iter().map(|s| s.spec.text.as_str()).collect();
            Err(format!(
                "route {route} has no server `{server}`{}; its servers: {}",
                hint(server, &names),
                names.join(", ")
            ))
        }
    }
}

fn hint(word: &str, names: &[&str]) -> String {
    crate::config::suggest::nearest(word, names.iter().copied())
        .map_or(String::new(), |h| format!(" ({h})"))
}

/// What the operator changed, as the commands that would change it again: what
/// a binary upgrade hands to the new process, so a drained server stays drained.
pub fn as_commands(live: &Live) -> String {
    let mut out = String::new();
    for (e, rt) in live.config.entries.iter().zip(&live.entries) {
        for s in &rt.servers {
            let state = s.admin_state();
            if state != AdminState::Ready {
                let _ = writeln!(out, "{} {} {}", state.name(), e.name, s.spec.text);
            }
            let w = s.weight_override.load(Relaxed);
            if w != 0 {
                let _ = writeln!(out, "weight {} {} {w}", e.name, s.spec.text);
            }
        }
    }
    out
}

/// Apply [`as_commands`]' output (from the process this one replaced); what no
/// longer applies (a route or server gone from the file) is said and skipped.
pub fn replay(live: &Live, commands: &str) {
    for line in commands.lines().filter(|l| !l.trim().is_empty()) {
        if let Err(e) = execute(live, line) {
            crate::warn!("upgrade: not kept: `{line}`: {e}");
        }
    }
}

/// One line per server: route, server, state, admin state, weight, in flight.
fn servers(live: &Live) -> String {
    let now = crate::upstream::clock::now_ms();
    let mut rows = vec![[
        "ROUTE".to_string(),
        "SERVER".into(),
        "STATE".into(),
        "ADMIN".into(),
        "WEIGHT".into(),
        "IN-FLIGHT".into(),
    ]];
    for (e, rt) in live.config.entries.iter().zip(&live.entries) {
        for s in &rt.servers {
            let state = if s.health_down.load(Relaxed) {
                "down"
            } else if s.is_offline(now) {
                "offline"
            } else {
                "up"
            };
            rows.push([
                e.name.clone(),
                s.spec.text.clone(),
                state.into(),
                s.admin_state().name().into(),
                s.weight().to_string(),
                s.active.load(Relaxed).to_string(),
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                let _ = writeln!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn live() -> Live {
        let c = Config::from_text(
            "[PROXY_ENTRY]\nName app\nMatch ^/\nServerList 127.0.0.1:9001 127.0.0.1:9002\n\
             LoadBalancer WeightedRoundRobin\n\
             [PROXY_ENTRY]\nName rr\nMatch ^/rr\nServerList 127.0.0.1:9003\n",
        )
        .unwrap();
        Live::build(c, None, 1)
    }

    #[test]
    fn drain_maint_ready_and_weight() {
        let l = live();
        assert!(execute(&l, "drain app 127.0.0.1:9001").is_ok());
        assert_eq!(l.entries[0].servers[0].admin_state(), AdminState::Drain);
        assert!(execute(&l, "maint app 127.0.0.1:9001").is_ok());
        assert_eq!(l.entries[0].servers[0].admin_state(), AdminState::Maint);
        assert!(execute(&l, "ready app 127.0.0.1:9001").is_ok());
        assert_eq!(l.entries[0].servers[0].admin_state(), AdminState::Ready);
        assert!(execute(&l, "weight app 127.0.0.1:9002 7").is_ok());
        assert_eq!(l.entries[0].servers[1].weight(), 7);
        let table = execute(&l, "servers").unwrap();
        assert!(table.lines().count() == 4, "{table}");
        assert!(
            table.contains("127.0.0.1:9002") && table.contains(" 7 "),
            "{table}"
        );
    }

    #[test]
    fn states_survive_as_commands() {
        let a = live();
        execute(&a, "maint app 127.0.0.1:9002").unwrap();
        execute(&a, "weight app 127.0.0.1:9001 42").unwrap();
        let b = live();
        replay(&b, &as_commands(&a));
        assert_eq!(b.entries[0].servers[1].admin_state(), AdminState::Maint);
        assert_eq!(b.entries[0].servers[0].weight(), 42);
        assert_eq!(as_commands(&b), as_commands(&a));
    }

    #[test]
    fn bad_commands_say_what_exists() {
        let l = live();
        let e = execute(&l, "drian app 127.0.0.1:9001").unwrap_err();
        assert!(
            e.contains("unknown command `drian`") && e.contains("drain"),
            "{e}"
        );
        let e = execute(&l, "drain ap 127.0.0.1:9001").unwrap_err();
        assert!(
            e.contains("unknown route `ap`") && e.contains("app, rr"),
            "{e}"
        );
        let e = execute(&l, "drain app 127.0.0.1:9009").unwrap_err();
        assert!(e.contains("no server `127.0.0.1:9009`"), "{e}");
        for n in ["0", "1000000", "x", "-1"] {
            let e = execute(&l, &format!("weight app 127.0.0.1:9001 {n}")).unwrap_err();
            assert!(e.contains("from 1 to 256"), "{e}");
        }
        let e = execute(&l, "weight rr 127.0.0.1:9003 5").unwrap_err();
        assert!(
            e.contains("RoundRobin") && e.contains("WeightedRoundRobin"),
            "{e}"
        );
        let e = execute(&l, "drain app").unwrap_err();
        assert!(e.contains("wrong arguments for `drain`"), "{e}");
    }
}
