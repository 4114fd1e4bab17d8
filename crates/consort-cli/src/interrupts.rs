//! The signals that ask `consort run` and `consort map` to stop: SIGINT (Ctrl-C), SIGTERM,
//! and SIGHUP (the terminal went away). None of them ends the process on the spot: each is
//! counted, and the command's loop reacts to the count (cancel, then kill the worker), so
//! that shared-memory blocks are unlinked and the worker is reaped however the run stops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;

/// Counts the stop signals into `count`, on a thread of its own.
pub(crate) fn watch(count: Arc<AtomicUsize>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the Ctrl-C handler")?;
    std::thread::Builder::new()
        .name("consort-signals".to_owned())
        .spawn(move || {
            for _ in signals.forever() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        })?;
    Ok(())
}
