//! Warnings on stderr, at most a few per second.
//!
//! The Python router logs every upstream failure with the replica's address (never sent to a client).
//! The fast path does the same on stderr, which the router's process inherits, but with a replica down at
//! thousands of requests per second one line per failure would cost more than the requests; so at most
//! [`PER_SECOND`] lines are written each second, and the next line says how many were left out.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const PER_SECOND: u64 = 10;

struct Window {
    start: Option<Instant>,
    written: u64,
}

static WINDOW: Mutex<Window> = Mutex::new(Window { start: None, written: 0 });
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// One line on stderr (`paretoserve-fastpath: ...`), unconditionally.
pub fn info(args: Arguments<'_>) {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let _ = writeln!(std::io::stderr().lock(), "{stamp:.3} paretoserve-fastpath: {args}");
}

/// A warning, unless [`PER_SECOND`] were written in the last second.
pub fn warn(args: Arguments<'_>) {
    let now = Instant::now();
    {
        let mut window = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
        if window.start.is_none_or(|start| now.duration_since(start).as_secs() >= 1) {
            window.start = Some(now);
            window.written = 0;
        }
        if window.written >= PER_SECOND {
            SUPPRESSED.fetch_add(1, Relaxed);
            return;
        }
        window.written += 1;
    }
    let left_out = SUPPRESSED.swap(0, Relaxed);
    if left_out > 0 {
        info(format_args!("warning: {args} ({left_out} earlier warnings left out)"));
    } else {
        info(format_args!("warning: {args}"));
    }
}
