//! Panic isolation for connection tasks.
//!
//! monoio does not catch a panic in a task: it would unwind through the runtime and
//! take the worker, and every connection on it, down. The release profile keeps
//! `panic = "unwind"` precisely so that this wrapper can stop a bug hit by one
//! connection at that connection: its future is dropped (closing its sockets) and
//! the worker goes on. Written by hand: it is a dozen lines, and `futures`'
//! `catch_unwind` would pull in the whole crate for it.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Isolated<'a>(pub Pin<Box<dyn Future<Output = ()> + 'a>>);

impl Future for Isolated<'_> {
    /// `Err(())` when the inner future panicked (already reported by the panic hook).
    type Output = Result<(), ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
