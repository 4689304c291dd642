//! The validated, immutable configuration: what the data plane reads.
//!
//! Built only by `resolve`, after every rule of SPEC section 2 held; nothing here is
//! re-checked per request. Durations are already `Duration`, addresses already
//! resolved, regexes already compiled (in the [`crate::route::Router`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::route::Router;
pub use crate::tls::server::ClientAuth;

/// Where something was written in the config file, for messages about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

/// An address to listen on or to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: Address,
    /// The address as written: the `listener` label of the TLS statistics.
    pub text: String,
    pub tls: bool,
    /// `proxy`: connections begin with a PROXY protocol header (SPEC section 10).
    pub proxy: bool,
    pub span: Span,
}

/// One backend of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The address exactly as written (`app1:8080`): the `server` label in
    /// statistics and logs, so a user finds it in their file.
    pub text: String,
    pub addr: Address,
    /// From `weight=N`, or the number of times the server was listed (Monkey's WRR).
    pub weight: u32,
    /// `tls:host:port`: spoken to over TLS, with this SNI and verification name.
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balancer {
    Naive,
    FirstAlive,
    RoundRobin,
    LockingRoundRobin,
    LeastConnections,
    WeightedRoundRobin,
    SourceHash,
    Random,
    LeastBytes,
    LeastTime,
    Workload,
}

impl Balancer {
    pub const ALL: [Balancer; 11] = [
        Balancer::Naive,
        Balancer::FirstAlive,
        Balancer::RoundRobin,
        Balancer::LockingRoundRobin,
        Balancer::LeastConnections,
        Balancer::WeightedRoundRobin,
        Balancer::SourceHash,
        Balancer::Random,
        Balancer::LeastBytes,
        Balancer::LeastTime,
        Balancer::Workload,
    ];

    /// The canonical spelling, as printed by `--check` and the statistics.
    pub fn name(self) -> &'static str {
        match self {
            Balancer::Naive => "Naive",
            Balancer::FirstAlive => "FirstAlive",
            Balancer::RoundRobin => "RoundRobin",
            Balancer::LockingRoundRobin => "LockingRoundRobin",
            Balancer::LeastConnections => "LeastConnections",
            Balancer::WeightedRoundRobin => "WeightedRoundRobin",
            Balancer::SourceHash => "SourceHash",
            Balancer::Random => "Random",
            Balancer::LeastBytes => "LeastBytes",
            Balancer::LeastTime => "LeastTime",
            Balancer::Workload => "Workload",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceMode {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    Off,
    Tcp,
    Http(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyKind {
    Table,
    Hash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    pub kind: StickyKind,
    pub timeout: Duration,
    /// `StickyTableSize`: assignments the table holds at most (table mode).
    pub table_size: u32,
}

/// Passive availability (Monkey's high availability), SPEC section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Availability {
    /// Consecutive failed connects that take a server offline; 0 turns it off.
    pub attempts: u32,
    pub offline_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub check: HealthCheck,
    pub interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub backend: Duration,
    pub idle: Duration,
}

/// One `[PROXY_ENTRY]`, with the defaults already copied in.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub mode: Mode,
    /// `Match` patterns as written, one per token, in file order.
    pub patterns: Vec<String>,
    pub servers: Vec<Server>,
    pub balancer: Balancer,
    pub availability: Availability,
    pub timeouts: Timeouts,
    pub health: HealthSettings,
    /// Requests in flight per server; `None` is unlimited.
    pub max_connections: Option<u32>,
    pub sticky: Option<Sticky>,
    /// tcp entries only: their own listeners.
    pub listen: Vec<Listener>,
    pub wait_bytes: u64,
    pub splice: SpliceMode,
    /// The client side of its `tls:` servers; `None` when it has none.
    pub backend_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `BackendTLSVerify` (default on) and `BackendCA` (default: the system's).
    pub backend_verify: bool,
    pub backend_ca: Option<PathBuf>,
    /// `Host`: the names this entry takes; empty takes any host (SPEC section 9).
    pub hosts: Vec<super::rules::HostPattern>,
    /// `Match` was given (an entry with `Host` and no `Match` takes every path).
    pub has_match: bool,
    pub rules: super::rules::Rules,
    pub span: Span,
}

impl Entry {
    /// Whether the entry takes a request for `host` (lowercase, no port): an
    /// entry without `Host` takes any, and only those take a request without a
    /// host (SPEC section 9).
    pub fn takes_host(&self, host: Option<&str>) -> bool {
        self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)))
    }
}

/// An IP network for `StatisticsAllow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Process-wide settings: the keys only `[PROXY_DEFAULTS]` may hold.
#[derive(Debug, Clone)]
pub struct Global {
    /// http listeners (the defaults' `Listen`); empty when nothing needs them.
    pub listen: Vec<Listener>,
    /// TLS termination for every `tls` listener; `None` without certificates.
    pub tls: Option<std::sync::Arc<crate::tls::Termination>>,
    pub tls_client_ca: Option<PathBuf>,
    pub head_timeout: Duration,
    /// The defaults' `IdleTimeout`: how long a client connection may sit between
    /// requests (before a request is routed no entry applies yet).
    pub idle_timeout: Duration,
    pub global_max_connections: Option<u32>,
    pub statistics_url: Option<String>,
    pub statistics_allow: Vec<Cidr>,
    /// `TrustedProxies`: peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// The defaults' `ResponseHeader` rules: on answers no entry gave (404, 400).
    pub response_headers: super::rules::HeaderRules,
    pub access_log: Option<PathBuf>,
    pub error_log: Option<PathBuf>,
    /// `None` is `auto`: one per core.
    pub threads: Option<u32>,
    pub shutdown_timeout: Duration,
    /// `ShutdownDelay`: after SIGTERM, how long to keep serving with the
    /// `HealthURL` answering 503 before the drain starts (SPEC section 11).
    pub shutdown_delay: Duration,
    /// `HealthURL`: answered by simian itself, 200 while serving, 503 once stopping.
    pub health_url: Option<String>,
    /// `AdminSocket`: the unix socket `simian ctl` talks to (off when `None`).
    pub admin_socket: Option<PathBuf>,
}

/// A whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub global: Global,
    pub entries: Vec<Entry>,
    /// Compiled `Match` patterns of every http entry.
    pub router: Router,
    /// Routing by host, when an entry has `Host` (None: the path alone decides).
    pub hosts: Option<crate::route::HostRoutes>,
    /// Things `--check` prints that do not stop the config from loading.
    pub warnings: Vec<crate::config::Diagnostic>,
}

impl Config {
    /// The entry and pattern that take a request: by host when any entry has
    /// `Host`, then by the normalised path.
    pub fn route(&self, host: Option<&str>, path: &[u8]) -> Option<crate::route::RouteMatch> {
        match &self.hosts {
            Some(h) => h.route(host, path),
            None => self.router.route(path),
        }
    }

    pub fn threads(&self) -> usize {
        match self.global.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}
