//! simian: a reverse proxy and load balancer for HTTP/1.x and TCP, configured in the
//! language of the Monkey HTTPd proxy_reverse plugin.
//!
//! Data flow of one request: accept ([`runtime`]) → read and parse the head
//! ([`http`]) → route by `Match` ([`route`]) → pick a server ([`balance`]) →
//! connect with availability ([`upstream`], [`net`]) → forward head and body
//! ([`proxy`]) → log.

#[macro_use]
pub mod log;
pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod context;
pub mod demo;
pub mod fault;
pub mod http;
pub mod logsink;
pub mod lru;
pub mod net;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod stats;
pub mod tls;
pub mod upstream;
