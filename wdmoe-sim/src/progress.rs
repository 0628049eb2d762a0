//! A minimal progress bar on stderr, drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts finished items and redraws at most every 100 ms.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: AtomicUsize,
    last: Mutex<Instant>,
    enabled: bool,
    label: String,
}

impl Progress {
    /// A bar over `total` items; hidden unless stderr is a terminal and
    /// `enabled` is set.
    pub fn new(label: &str, total: usize, enabled: bool) -> Self {
        Self {
            total,
            done: AtomicUsize::new(0),
            last: Mutex::new(Instant::now() - Duration::from_secs(1)),
            enabled: enabled && std::io::stderr().is_terminal(),
            label: label.to_string(),
        }
    }

    /// One item done.
    pub fn tick(&self) {
        let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.enabled {
            return;
        }
        if let Ok(mut last) = self.last.try_lock() {
            if d == self.total || last.elapsed() >= Duration::from_millis(100) {
                *last = Instant::now();
                self.draw(d);
            }
        }
    }

    fn draw(&self, d: usize) {
        let w = 30;
        let filled = (d * w) / self.total.max(1);
        let _ = write!(
            std::io::stderr(),
            "\r{} [{}{}] {}/{}",
            self.label,
            "#".repeat(filled),
            "-".repeat(w - filled),
            d,
            self.total
        );
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if self.enabled {
            let _ = write!(
                std::io::stderr(),
                "\r{}\r",
                " ".repeat(self.label.len() + 50)
            );
        }
    }
}
