//! Reads and writes on nonblocking sockets, awaiting readiness on EAGAIN.

use std::io;
use std::time::Duration;

use super::Stream;

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// One nonblocking read into the spare capacity of `buf` (appending). Ok(0) is EOF.
pub fn try_read(s: &Stream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    if let Stream::Tls(t) = s {
        return t.try_read(buf, max);
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(super::buffer::BUF_SIZE);
    }
    let room = (buf.capacity() - buf.len()).min(max.max(1));
    let len = buf.len();
    let n = recv(s.fd(), &mut buf.spare_capacity_mut()[..room])?;
    // SAFETY: recv initialised exactly `n` bytes of the spare capacity.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// A syscall that returns a count or -1, run again when a signal interrupted it.
pub(super) fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One recv(2) into `buf`.
pub(super) fn recv(
    fd: std::os::fd::RawFd,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> io::Result<usize> {
    // recv, not read: read(2) on a socket goes through the VFS layers first
    // (measured with perf: its kernel path cost ~35% more per call here).
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    retry_eintr(|| unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) })
}

/// One send(2) of `data`. MSG_NOSIGNAL: a peer that went away must give EPIPE,
/// not kill the process.
pub(super) fn send(fd: std::os::fd::RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads `data.len()` bytes from a valid slice.
    retry_eintr(|| unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

/// Wait for readiness at most `t`; a stalled peer becomes a TimedOut error.
pub async fn readable(s: &Stream, t: Duration) -> io::Result<()> {
    match monoio::time::timeout(t, s.readable()).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

pub async fn writable(s: &Stream, t: Duration) -> io::Result<()> {
    match monoio::time::timeout(t, s.writable()).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Read at least one byte (or EOF) into `buf`, waiting at most `t` between bytes.
pub async fn read(s: &Stream, buf: &mut Vec<u8>, max: usize, t: Duration) -> io::Result<usize> {
    loop {
        match try_read(s, buf, max) {
            Err(e) if would_block(&e) => readable(s, t).await?,
            r => return r,
        }
    }
}

/// One nonblocking write; on TLS the bytes are taken into the session (see
/// `TlsStream::try_write`), and `write_all` is what guarantees they left.
pub fn try_write(s: &Stream, data: &[u8]) -> io::Result<usize> {
    if let Stream::Tls(t) = s {
        return t.try_write(data);
    }
    send(s.fd(), data)
}

/// Write all of `data`.
pub async fn write_all(s: &Stream, mut data: &[u8], t: Duration) -> io::Result<()> {
    while !data.is_empty() {
        match try_write(s, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            // Boxed: the wait (a timer and a poll op, ~900 bytes) is rare for a
            // head or a small body, and inline it would sit in every request's
            // future. When a big body fills the socket, one allocation per wait is
            // nothing next to the bytes moved.
            Err(e) if would_block(&e) => Box::pin(writable(s, t)).await?,
            Err(e) => return Err(e),
        }
    }
    if let Stream::Tls(tls) = s {
        if tls.wants_write() {
            Box::pin(tls.flush(t)).await?;
        }
    }
    Ok(())
}

/// Copy exactly `n` bytes from `from` to `to` through `buf` (the `Splice off` path).
/// `buf` is used as scratch and left empty.
pub async fn copy_exact(
    from: &Stream,
    to: &Stream,
    mut n: u64,
    buf: &mut Vec<u8>,
    t: Duration,
) -> io::Result<u64> {
    let total = n;
    while n > 0 {
        buf.clear();
        let want = n.min(buf.capacity().max(super::buffer::BUF_SIZE) as u64) as usize;
        let got = read(from, buf, want, t).await?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed mid-body",
            ));
        }
        write_all(to, &buf[..got], t).await?;
        n -= got as u64;
    }
    buf.clear();
    Ok(total)
}

/// Copy until `from` reaches EOF; returns the bytes copied.
pub async fn copy_to_eof(
    from: &Stream,
    to: &Stream,
    buf: &mut Vec<u8>,
    t: Duration,
) -> io::Result<u64> {
    let mut total = 0;
    loop {
        buf.clear();
        let cap = buf.capacity().max(super::buffer::BUF_SIZE);
        let got = read(from, buf, cap, t).await?;
        if got == 0 {
            buf.clear();
            return Ok(total);
        }
        write_all(to, &buf[..got], t).await?;
        total += got as u64;
    }
}
