//! Statistics (SPEC section 5): counters kept per worker on the hot path, summed
//! only when someone scrapes the `StatisticsURL`.
//!
//! Each worker writes only its own cache-line-aligned slot (relaxed atomics, no
//! contention, no lock); the scrape, on whichever worker received it, reads every
//! slot. Per-server state that balancers need anyway (`active`, failures) lives in
//! [`crate::upstream::ServerState`].

pub mod cache;
pub mod counters;
pub mod names;
pub mod render;

pub use counters::{ProcessStats, RouteStats};
