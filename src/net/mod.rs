//! Sockets as the data plane uses them: nonblocking fds driven by readiness.
//!
//! Every read, write and splice is a plain nonblocking syscall; when it would block
//! we await the fd's readiness through monoio (a PollAdd on io_uring, epoll on the
//! legacy driver). Why not io_uring's own read/splice ops: dropping an in-flight
//! io_uring read (as any timeout does) loses the bytes the kernel already read, and
//! the ring's splice runs on kernel worker threads and lost to a plain copy here
//! (../shared/MONOIO.md). A dropped readiness wait loses nothing, so every timeout
//! in simian is a timeout on a readiness wait, on both drivers.

pub mod buffer;
pub mod connect;
pub mod io;
pub mod linger;
pub mod listen;
pub mod proxy_protocol;
pub mod splice;
pub mod stream;
pub mod tls;

pub use stream::Stream;
