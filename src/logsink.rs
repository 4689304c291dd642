//! A log destination written by its own thread behind a bounded queue, so that no
//! worker ever waits on a log file (SPEC section 12): a write(2) to a busy disk, a
//! full pipe or a FIFO nobody reads can stall for as long as it likes, and a
//! stalled worker stalls every connection it serves. When the writer falls behind
//! and the queue is full, lines are dropped and counted instead.
//!
//! The access log and the error log each have one (`accesslog.rs`, `log.rs`).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// Where the lines go.
pub enum Target {
    Stderr,
    File(File),
    /// Nowhere (an access log that is not configured): lines are discarded.
    Discard,
}

impl Target {
    /// Open `path` for appending, as logrotate expects.
    pub fn open(path: &std::path::Path) -> std::io::Result<Target> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Target::File)
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Target::Stderr => std::io::stderr().write_all(b),
            Target::File(f) => f.write_all(b),
            Target::Discard => Ok(()),
        }
    }
}

enum Msg {
    Lines(Vec<u8>),
    /// SIGHUP: logrotate moved the file; the caller opened the new one.
    Reopen(Target),
    /// Exit: everything queued before this is written; then say so.
    Finish(flume::Sender<()>),
}

/// A started sink: the sending side, the drop count and spare buffers.
pub struct Sink {
    tx: flume::Sender<Msg>,
    /// Written buffers on their way back, so a worker does not grow a fresh one
    /// (and the writer free one) for every batch.
    spare: (flume::Sender<Vec<u8>>, flume::Receiver<Vec<u8>>),
    dropped: AtomicU64,
}

impl Sink {
    /// Start the writer thread `name`, holding at most `capacity` batches queued.
    /// `spares`: written buffers kept for reuse (`spare_buffer`); 0 when the
    /// callers never ask for one, or the kept buffers would only hold memory.
    /// `on_error` reports a failed write (the error log for the access log).
    pub fn start(
        name: &str,
        target: Target,
        (capacity, spares): (usize, usize),
        on_error: fn(&std::io::Error),
    ) -> std::io::Result<Sink> {
        let (tx, rx) = flume::bounded::<Msg>(capacity);
        let spare = flume::bounded::<Vec<u8>>(spares);
        let give_back = spare.0.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_until_finished(rx, target, give_back, on_error))?;
        Ok(Sink {
            tx,
            spare,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue `bytes` (whole lines) without waiting. False (and its lines counted
    /// as dropped) when the queue is full or the writer is gone.
    pub fn submit(&self, bytes: Vec<u8>) -> bool {
        match self.tx.try_send(Msg::Lines(bytes)) {
            Ok(()) => true,
            Err(e) => {
                if let Msg::Lines(mut b) = e.into_inner() {
                    let lines = memchr::memchr_iter(b'\n', &b).count() as u64;
                    self.dropped.fetch_add(lines, Relaxed);
                    b.clear();
                    let _ = self.spare.0.try_send(b);
                }
                false
            }
        }
    }

    /// A buffer for the next batch: a returned one if any.
    pub fn spare_buffer(&self, capacity: usize) -> Vec<u8> {
        self.spare
            .1
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// Switch to `target` after what is queued. Waits at most a second for room:
    /// the caller is the signal thread, which must not hang on a stuck writer.
    pub fn reopen(&self, target: Target) -> bool {
        self.tx
            .send_timeout(Msg::Reopen(target), Duration::from_secs(1))
            .is_ok()
    }

    /// Write out everything queued, waiting at most `within` (a writer stuck on a
    /// FIFO nobody reads must not keep the process from exiting).
    pub fn finish(&self, within: Duration) -> bool {
        let (done, wait) = flume::bounded(1);
        self.tx.send_timeout(Msg::Finish(done), within).is_ok() && wait.recv_timeout(within).is_ok()
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

fn write_until_finished(
    rx: flume::Receiver<Msg>,
    mut target: Target,
    give_back: flume::Sender<Vec<u8>>,
    on_error: fn(&std::io::Error),
) {
    for m in rx.iter() {
        match m {
            Msg::Lines(mut b) => {
                if let Err(e) = target.write_all(&b) {
                    on_error(&e);
                }
                b.clear();
                let _ = give_back.try_send(b);
            }
            Msg::Reopen(t) => target = t,
            Msg::Finish(done) => {
                let _ = done.send(());
                return;
            }
        }
    }
}

/// A sink started once per process, reachable from anywhere.
pub type Global = OnceLock<Sink>;

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(_: &std::io::Error) {}

    #[test]
    fn lines_are_written_in_order_and_finish_flushes() {
        let dir = std::env::temp_dir().join(format!("simian-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        let sink = Sink::start("t", Target::open(&path).unwrap(), (8, 0), quiet).unwrap();
        for i in 0..5 {
            assert!(sink.submit(format!("{i}\n").into_bytes()));
        }
        assert!(sink.finish(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n1\n2\n3\n4\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_buffers_are_kept_only_for_sinks_that_reuse_them() {
        // The error log allocates each line: keeping its written buffers for
        // reuse held 10,000 of them (the soak's RSS grew by 3 MB).
        let dir = std::env::temp_dir().join(format!("simian-spare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (spares, kept) in [(0, 0), (4, 4)] {
            let path = dir.join(format!("{spares}.log"));
            let sink = Sink::start("t", Target::open(&path).unwrap(), (64, spares), quiet).unwrap();
            for i in 0..20 {
                assert!(sink.submit(format!("{i}\n").into_bytes()));
            }
            assert!(sink.finish(Duration::from_secs(5)));
            assert_eq!(sink.spare.1.len(), kept);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_instead_of_blocking() {
        // A pipe nobody reads: the writer blocks once the pipe buffer is full.
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let w = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        let sink = Sink::start("t", Target::File(w), (4, 0), quiet).unwrap();
        let line = vec![b'x'; 4095];
        let t = std::time::Instant::now();
        let mut refused = 0;
        for _ in 0..1000 {
            if !sink.submit([&line[..], b"\n"].concat()) {
                refused += 1;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(2), "submit blocked");
        assert!(refused > 900, "{refused}");
        assert_eq!(sink.dropped(), refused);
        assert!(!sink.finish(Duration::from_millis(100)));
        unsafe { libc::close(fds[0]) };
    }
}
