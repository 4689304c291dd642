//! Backends as the data plane sees them: live per-server state shared by every
//! worker, the per-worker pool of idle connections, and availability rules.

pub mod clock;
pub mod health;
pub mod pool;
pub mod server;
pub mod sticky;

pub use server::{AdminState, ServerState};
