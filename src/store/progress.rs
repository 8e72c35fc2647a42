//! A progress line on stderr for long work (a commit or an import of a large tree), only
//! when stderr is a terminal: scripts and logs see nothing of it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::time::human_size;

/// Counts the bytes written through it into a shared counter.
pub(crate) struct Counting<W: Write> {
    pub inner: W,
    pub count: Arc<AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A line redrawn a few times a second with the bytes counted so far; erased when
/// dropped.
pub(crate) struct Progress {
    pub count: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the line `what: N written` (when stderr is a terminal).
    pub fn start(what: String) -> Progress {
        let count = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let ticker = std::io::stderr().is_terminal().then(|| {
            let (count, done) = (Arc::clone(&count), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut shown = false;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let n = count.load(Ordering::Relaxed);
                    let _ = write!(
                        std::io::stderr(),
                        "\r\x1b[K{what}: {} written",
                        human_size(n)
                    );
                    shown = true;
                }
                if shown {
                    let _ = write!(std::io::stderr(), "\r\x1b[K");
                }
            })
        });
        Progress {
            count,
            done,
            ticker,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
