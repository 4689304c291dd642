//! The data path: client connections, one exchange with a backend per request,
//! bodies, tunnels.

pub mod body;
pub mod client_address;
pub mod exchange;
pub mod forward;
pub mod health;
pub mod http;
pub mod rules;
pub mod statistics;
pub mod tcp;
pub mod tls;
pub mod tunnel;
