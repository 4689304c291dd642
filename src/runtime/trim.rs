//! Giving memory back to the kernel after a burst.
//!
//! Freed memory stays in the allocator's arenas: a burst of thousands of
//! connections (their tasks, futures and buffers) leaves RSS high long after the
//! connections went idle or away. glibc returns free pages only at the top of a
//! heap by itself; `malloc_trim` also releases free pages in the middle. It walks
//! the arenas (well under a millisecond for a few MB), so the sweeper calls it only
//! after a large drop in live connection tasks or pooled buffers, never per request.

/// Release free heap pages to the kernel.
pub fn heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments beyond the pad; safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
