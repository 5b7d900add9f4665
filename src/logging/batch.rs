//! The background writer: the request path appends each finished line to one shared buffer (no
//! allocation per line); a thread writes the whole buffer with one `write` per batch and
//! lingers a millisecond before each, so a busy proxy wakes it about once per millisecond
//! rather than once per line. Not lossy: past [`MAX_PENDING`] bytes a line waits.

use std::fmt;
use std::io::{self, Write as _};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Past this many bytes waiting, a line waits for the writer (the log is not lossy). About
/// 5,000 access lines: a millisecond's linger at any rate a proxy serves.
const MAX_PENDING: usize = 1 << 20;

/// How long the writer lets lines gather after the first one of a batch.
const LINGER: Duration = Duration::from_millis(1);

/// A [`MakeWriter`] whose lines a background thread writes in batches (see the module doc).
/// In order, never dropped; a line logged after the [`LogGuard`] is dropped is written at once.
#[derive(Clone)]
pub struct Batch {
    shared: Arc<Shared>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch").finish_non_exhaustive()
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writer waits here for a first line (or a full buffer, or the close).
    ready: Condvar,
    /// Lines wait here for room below [`MAX_PENDING`].
    room: Condvar,
    /// Where the lines go; held by whoever is writing to it.
    out: Mutex<Box<dyn io::Write + Send>>,
}

struct Pending {
    lines: Vec<u8>,
    /// The writer is waiting for a first line: the line that ends that wait wakes it (and only
    /// that one: a wake-up is a system call).
    idle: bool,
    /// Lines waiting for room.
    blocked: usize,
    /// The guard was dropped: the writer writes what is left and stops.
    closed: bool,
    /// The writer has stopped (or never started): lines are written by whoever logs them.
    direct: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held but a failed write, which leaves the state
    // whole: use it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batch {
    /// The writer and the guard that flushes it; the thread writes to `out`. If the thread
    /// cannot be started, every line is written to `out` as it is logged.
    pub fn spawn(out: impl io::Write + Send + 'static) -> (Batch, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                lines: Vec::new(),
                idle: false,
                blocked: 0,
                closed: false,
                direct: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("session-proxy-log".into())
            .spawn(move || {
                // Should the writer ever panic, lines are written by their callers from then
                // on: a request must never wait for a writer that is gone.
                let _exit = WriterGone(worker.clone());
                worker.run();
            });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                lock(&shared.pending).direct = true;
                let _ = writeln!(
                    lock(&shared.out),
                    "session-proxy: no log writer thread ({e}); writing each line as it comes"
                );
                None
            }
        };
        let guard = LogGuard {
            shared: shared.clone(),
            thread,
        };
        (Batch { shared }, guard)
    }

    fn push(&self, line: &[u8]) -> io::Result<()> {
        let shared = &*self.shared;
        let mut p = lock(&shared.pending);
        while p.lines.len() >= MAX_PENDING && !p.direct {
            p.blocked += 1;
            shared.ready.notify_one();
            p = shared.room.wait(p).unwrap_or_else(PoisonError::into_inner);
            p.blocked -= 1;
        }
        if p.direct {
            drop(p);
            let mut out = lock(&shared.out);
            return out.write_all(line).and_then(|()| out.flush());
        }
        p.lines.extend_from_slice(line);
        let wake = std::mem::replace(&mut p.idle, false);
        drop(p);
        if wake {
            shared.ready.notify_one();
        }
        Ok(())
    }
}

/// Dropped when the writer thread ends, however it ends.
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        lock(&self.0.pending).direct = true;
        self.0.room.notify_all();
    }
}

impl Shared {
    /// The writer thread: waits for a line, lets more gather for [`LINGER`], writes them all.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut p = lock(&self.pending);
                while p.lines.is_empty() && !p.closed {
                    p.idle = true;
                    p = self.ready.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                p.idle = false;
                if !p.closed && p.blocked == 0 {
                    p = self
                        .ready
                        .wait_timeout(p, LINGER)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if p.lines.is_empty() && p.closed {
                    // Under the lock: a line logged from now on is written by its caller,
                    // after every line before it.
                    p.direct = true;
                    self.room.notify_all();
                    break;
                }
                std::mem::swap(&mut p.lines, &mut batch);
                if p.blocked > 0 {
                    self.room.notify_all();
                }
            }
            let mut out = lock(&self.out);
            // A failed write (stderr closed) loses this batch, never the proxy's requests.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            drop(out);
            batch.clear();
            if batch.capacity() > 2 * MAX_PENDING {
                batch = Vec::new();
            }
        }
        let _ = lock(&self.out).flush();
    }
}

impl io::Write for &Batch {
    /// Takes the whole of `buf`: tracing-subscriber hands over one finished line per call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batch {
    type Writer = &'a Batch;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Writes the lines still queued, and stops the writer, when dropped.
#[must_use = "dropping the guard stops the log's writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Writes that take a while: the log writer falls behind.
    struct Slow(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(2));
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Not lossy: more than `MAX_PENDING` bytes from four threads at once into a slow writer
    /// all arrive, each thread's in order, whole lines; lines logged after the guard is
    /// dropped are written too.
    #[test]
    fn the_batch_writer_loses_no_line_and_keeps_their_order() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (batch, guard) = Batch::spawn(Slow(out.clone()));
        let per_thread = 2 * MAX_PENDING / 100 / 4 + 1000;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let batch = batch.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let line = format!("{t} {i:08} {}\n", "x".repeat(80));
                        std::io::Write::write_all(&mut &batch, line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        std::io::Write::write_all(&mut &batch, b"after\n").unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        let mut lines = text.lines();
        for line in lines.by_ref().take(4 * per_thread) {
            let (t, rest) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(rest[..8].parse::<usize>().unwrap(), next[t], "{line}");
            assert_eq!(rest.len(), 8 + 1 + 80, "{line}");
            next[t] += 1;
        }
        assert_eq!(next, [per_thread; 4]);
        assert_eq!(lines.collect::<Vec<_>>(), ["after"]);
    }

    /// Panics on its first write, then keeps what it is given.
    struct PanicsOnce(Arc<Mutex<Vec<u8>>>, bool);

    impl std::io::Write for PanicsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !std::mem::replace(&mut self.1, true) {
                panic!("a writer that fails hard");
            }
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_thread_that_panicked_never_blocks_a_line() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (batch, guard) = Batch::spawn(PanicsOnce(out.clone(), false));
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Twice the queue's limit: without a writer, the second half would wait forever.
            for i in 0..(2 * MAX_PENDING / 100 + 100) {
                let line = format!("{i:08} {}\n", "x".repeat(90));
                std::io::Write::write_all(&mut &batch, line.as_bytes()).unwrap();
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a line waited for a writer that had panicked");
        drop(guard);
        assert!(!out.lock().unwrap().is_empty());
    }
}
