//! The log's writer: lines are appended to a shared buffer, and a background thread writes
//! them to stderr in batches. Under load there is an audit line per `Check` (tens of
//! thousands a second); handing each to a writer thread that sleeps between lines (as a
//! channel does) costs a wake-up and a write(2) per line, about 5 µs of CPU per `Check`
//! (BENCHMARKS.md). Here only the first line into an empty buffer wakes the writer, which
//! then lingers [`LINGER`] for the rest of the batch: one wake-up and one write per batch.
//!
//! Lossless: when the buffer holds [`MAX_BUFFERED`] bytes (stderr blocked), writers wait.
//! The [`Guard`] flushes what is left when dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits after the first line of a batch before it writes the batch.
const LINGER: Duration = Duration::from_millis(2);
/// Writers wait when this much is waiting to be written.
const MAX_BUFFERED: usize = 8 << 20;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer gets its first bytes (to the writer thread), and when it
    /// is emptied (to writers waiting for room).
    changed: Condvar,
}

/// The `MakeWriter` to give `tracing_subscriber::fmt`.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread after it has written everything, when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer to `out` and its guard (keep it for the life of the process).
pub fn batch_writer<W: Write + Send + 'static>(mut out: W) -> (BatchWriter, Guard) {
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut batch = Vec::new();
            loop {
                let closing = {
                    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                    while st.buf.is_empty() && !st.closed {
                        st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    if st.buf.is_empty() {
                        return;
                    }
                    st.closed
                };
                // Closing: write what is there now, without waiting for more.
                if !closing {
                    std::thread::sleep(LINGER);
                }
                {
                    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut batch, &mut st.buf);
                }
                s.changed.notify_all();
                // Nowhere to report a failed write to but the log itself.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
            }
        })
        .expect("spawning the log writer thread");
    (
        BatchWriter {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    )
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One formatted line. tracing's fmt layer writes an event with one `write_all`, which is
/// one [`Write::write`] here (it takes every byte): lines of different threads never mix.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.buf.len() >= MAX_BUFFERED && !st.closed {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        let first = st.buf.is_empty();
        st.buf.extend_from_slice(bytes);
        drop(st);
        if first {
            self.shared.changed.notify_all();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that keeps what it gets, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_and_the_guard_flushes_the_rest() {
        let sink = Sink::default();
        let (writer, guard) = batch_writer(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        use tracing_subscriber::fmt::MakeWriter;
                        // As tracing's fmt layer writes an event: one write_all.
                        let line = format!("{t} {i}\n");
                        w.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..5000).collect::<Vec<_>>(),
                "thread {t}'s lines in order"
            );
        }
    }

    #[test]
    fn a_single_line_is_written_soon_without_the_guard() {
        let sink = Sink::default();
        let (writer, _guard) = batch_writer(sink.clone());
        use tracing_subscriber::fmt::MakeWriter;
        writer.make_writer().write_all(b"hello\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "not written in 5 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
    }
}
