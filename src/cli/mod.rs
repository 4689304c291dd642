//! The command line (SPEC section 1): flags, subcommands, and what each prints.

pub mod check;
pub mod ctl;
pub mod explain;
pub mod forward;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_CONFIG: &str = "/etc/simian/proxy.conf";

#[derive(Debug, Parser)]
#[command(
    name = "simian",
    version,
    about = "A reverse proxy and load balancer for HTTP/1.x and TCP",
    long_about = "A reverse proxy and load balancer for HTTP/1.x and TCP, configured in the \
                  language of the Monkey HTTPd proxy_reverse plugin.\n\n\
                  Signals: SIGHUP reloads the configuration and reopens log files; \
                  SIGUSR2 starts the binary again on the same listening sockets (upgrade); \
                  SIGTERM/SIGINT drain and exit (after ShutdownDelay); SIGQUIT exits at once."
)]
pub struct Cli {
    /// Configuration file
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Validate the configuration (or `forward`'s arguments), print the route table
    /// and exit (0 valid, 1 invalid)
    #[arg(long, global = true)]
    pub check: bool,
    /// Worker threads (overrides `Threads`)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Write the process id to this file
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Pin worker thread i to CPU i (mod the number of CPUs)
    #[arg(long)]
    pub pin_cpus: bool,
    /// error, warn, info, debug
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show which entry (and pattern) would take a request for URL, and why
    Explain {
        /// Client address to assume (for SourceHash)
        #[arg(long, value_name = "IP")]
        client: Option<std::net::IpAddr>,
        /// Cookie to assume, NAME=VALUE (for StickyCookie)
        #[arg(long, value_name = "NAME=V")]
        cookie: Option<String>,
        /// A URL (http://host/path?q) or a path (/path?q)
        url: String,
    },
    /// Forward TCP without a configuration file (fproxy/eproxy style):
    /// `simian forward [OPTIONS] LISTEN... -- BACKEND...` or `simian forward 8080 10.0.0.1 80`
    Forward(forward::ForwardArgs),
    /// Send a command to a running simian's AdminSocket: servers | drain ROUTE SERVER |
    /// maint ROUTE SERVER | ready ROUTE SERVER | weight ROUTE SERVER N
    Ctl {
        /// The admin socket (default: the `AdminSocket` of the configuration file)
        #[arg(short = 's', long = "socket", value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The command and its arguments
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run three built-in backends and the proxy in front of them, and print what to try
    Demo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Also serve HTTPS, with a self-signed certificate made at start.
        #[arg(long)]
        tls: bool,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        tls_listen: String,
    },
}
