//! Panic containment above the connection tasks (SPEC section 12): a worker's own
//! tasks (accept loops, sweeper, parked-connection waker, log flusher, control
//! channel) and the threads' runtimes are started again when a panic ends them,
//! and the log says which. A connection task's panic closes that connection only
//! (`isolate.rs`).

use std::future::Future;
use std::time::Duration;

use crate::runtime::isolate::Isolated;

/// A pause before starting a failed part again, so that a panic that repeats
/// every time costs a log line a tenth of a second, not a spinning core.
pub const RESTART_AFTER: Duration = Duration::from_millis(100);

/// Run the task `make()` builds until it ends normally; build and run it again
/// each time it panics.
pub async fn task<F, Fut>(worker: usize, what: &'static str, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    while Isolated(Box::pin(make())).await.is_err() {
        crate::error!("worker {worker}: the {what} panicked (bug); started again");
        monoio::time::sleep(RESTART_AFTER).await;
    }
}
