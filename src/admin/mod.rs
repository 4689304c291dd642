//! Runtime control (SPEC section 11): the `AdminSocket` simian listens on and the
//! commands `simian ctl` sends there. Control plane only: a command flips an
//! atomic the data path already reads (a server's admin state) or swaps a
//! balancer's weights; nothing here runs per request.

pub mod commands;
pub mod socket;

/// Weights `simian ctl weight` accepts (HAProxy's `set weight` range, 0 aside:
/// to take a server out, `drain` or `maint` it).
pub const WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=256;
