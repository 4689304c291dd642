//! `simian forward`: a config-less TCP forwarder with fproxy's options and
//! eproxy's shape. The arguments become a one-entry `Mode tcp` configuration,
//! which then goes through exactly the same validation as a file.

use std::fmt::Write;

use crate::config::{Config, ConfigErrors};

/// `simian forward` options, as fproxy spelled them.
#[derive(Debug, Clone, clap::Args)]
pub struct ForwardArgs {
    /// Balancer: a name (RoundRobin, LeastConnections, SourceHash, ...) or fproxy's
    /// number: 0 round robin, 1 least connections, 2 least bytes, 3 least time,
    /// 4 workload
    #[arg(
        short = 's',
        long = "balance",
        value_name = "NAME|0-4",
        default_value = "RoundRobin"
    )]
    pub balance: String,
    /// Close tunnels idle this long (fproxy -t; 0 = never)
    #[arg(short = 't', long = "idle-timeout", value_name = "DUR")]
    pub idle_timeout: Option<String>,
    /// Connect to a backend only after the client sent N bytes (fproxy -y)
    #[arg(short = 'y', long = "wait-bytes", value_name = "N")]
    pub wait_bytes: Option<u64>,
    /// How long a failed backend stays offline (fproxy -g; = OfflineTimeOut)
    #[arg(short = 'g', long = "grace", value_name = "DUR")]
    pub grace: Option<String>,
    /// Failed connects before a backend goes offline (AttemptsCount)
    #[arg(long = "attempts", value_name = "N")]
    pub attempts: Option<u32>,
    /// Splice: auto, on or off
    #[arg(long = "splice", value_name = "MODE")]
    pub splice: Option<String>,
    /// Write a PROXY protocol header (v1 or v2) first on each backend connection
    #[arg(long = "send-proxy", value_name = "v1|v2")]
    pub send_proxy: Option<String>,
    /// Connections start with a PROXY protocol header naming the client
    #[arg(long = "accept-proxy")]
    pub accept_proxy: bool,
    /// Addresses to listen on: PORT, IP:PORT, [IPv6]:PORT, /unix/path (fproxy: port 80 when omitted)
    #[arg(value_name = "LISTEN", required = true)]
    pub listen: Vec<String>,
    /// Backends, after `--`: IP:PORT, [IPv6]:PORT, host:port, /unix/path
    #[arg(last = true, value_name = "BACKEND")]
    pub backends: Vec<String>,
}

/// fproxy's -s numbers.
fn balancer_name(s: &str) -> &str {
    match s {
        "0" => "RoundRobin",
        "1" => "LeastConnections",
        "2" => "LeastBytes",
        "3" => "LeastTime",
        "4" => "Workload",
        other => other,
    }
}

/// One address argument in config syntax. `listening`: a bare port listens on all
/// IPv4 addresses; a bare host gets port 80 (fproxy).
fn address(arg: &str, listening: bool) -> String {
    if arg.starts_with('/') {
        return format!("unix:{arg}");
    }
    if arg.starts_with("unix:") || arg.starts_with('[') && arg.contains("]:") {
        return arg.to_string();
    }
    if arg.starts_with('[') && arg.ends_with(']') {
        return format!("{arg}:80");
    }
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        let host = if listening { "0.0.0.0" } else { "127.0.0.1" };
        return format!("{host}:{arg}");
    }
    if arg.matches(':').count() > 1 {
        return format!("[{arg}]:80"); // a bare IPv6 address
    }
    if arg.contains(':') {
        arg.to_string()
    } else {
        format!("{arg}:80")
    }
}

/// eproxy's shape: `simian forward 8080 10.0.0.1 80` (no `--`).
fn eproxy_shape(a: &ForwardArgs) -> Option<(Vec<String>, Vec<String>)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (a.backends.is_empty(), a.listen.as_slice()) {
        (true, [lport, host, bport]) if digits(lport) && digits(bport) => Some((
            vec![lport.clone()],
            vec![format!(
                "{}:{bport}",
                host.trim_start_matches('[').trim_end_matches(']')
            )],
        )),
        _ => None,
    }
}

/// The configuration text the arguments stand for.
pub fn config_text(a: &ForwardArgs) -> Result<String, String> {
    let (listen, backends) = match eproxy_shape(a) {
        Some(x) => x,
        None if a.backends.is_empty() => return Err(
            "no backend: write them after `--` (simian forward 8080 -- 10.0.0.1:80 10.0.0.2:80)"
                .into(),
        ),
        None => (a.listen.clone(), a.backends.clone()),
    };
    let mut t = String::from("[PROXY_DEFAULTS]\n[PROXY_ENTRY]\n    Name forward\n    Mode tcp\n");
    for l in &listen {
        let proxy = if a.accept_proxy { " proxy" } else { "" };
        let _ = writeln!(t, "    Listen {}{proxy}", address(l, true));
    }
    let servers: Vec<String> = backends.iter().map(|b| address(b, false)).collect();
    let _ = writeln!(t, "    ServerList {}", servers.join(" "));
    let _ = writeln!(t, "    LoadBalancer {}", balancer_name(&a.balance));
    match a.idle_timeout.as_deref() {
        // fproxy -t0: no idle timeout; 30 days (the longest duration) is as good as never.
        Some("0") => t.push_str("    IdleTimeout 30d\n"),
        Some(d) => {
            let _ = writeln!(t, "    IdleTimeout {d}");
        }
        None => {}
    }
    if let Some(n) = a.wait_bytes {
        let _ = writeln!(t, "    WaitBytes {n}");
    }
    if let Some(g) = &a.grace {
        let _ = writeln!(t, "    OfflineTimeOut {g}");
    }
    if let Some(n) = a.attempts {
        let _ = writeln!(t, "    AttemptsCount {n}");
    }
    if let Some(s) = &a.splice {
        let _ = writeln!(t, "    Splice {s}");
    }
    if let Some(v) = &a.send_proxy {
        let _ = writeln!(t, "    SendProxy {v}");
    }
    Ok(t)
}

/// Validate the arguments into a configuration (errors point into the generated
/// configuration, which is printed with them).
pub fn config(a: &ForwardArgs) -> Result<(Config, String), String> {
    let text = config_text(a)?;
    Config::parse(text.as_bytes(), std::path::Path::new("<forward arguments>"))
        .map(|c| (c, text.clone()))
        .map_err(|e: ConfigErrors| {
            format!("{e}\n(the arguments stand for this configuration:)\n{text}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(address("8080", true), "0.0.0.0:8080");
        assert_eq!(address("10.0.0.1", false), "10.0.0.1:80");
        assert_eq!(address("::1", false), "[::1]:80");
        assert_eq!(address("[::1]:5432", false), "[::1]:5432");
        assert_eq!(address("/run/app.sock", false), "unix:/run/app.sock");
        assert_eq!(address("localhost:81", false), "localhost:81");
    }
}
