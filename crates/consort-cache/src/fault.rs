//! Crash points for tests: with the `fault` feature, a writer can be told to SIGKILL (or
//! SIGSTOP) itself right after its Nth shared-memory store. Without the feature,
//! [`point`] is an empty inline function.

#[cfg(feature = "fault")]
mod imp {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
    static PASSED: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);

    /// SIGKILL this process right after its `n`th store from now (`n` ≥ 1; 0 disarms).
    pub fn crash_after(n: u64) {
        STOP.store(false, Ordering::SeqCst);
        COUNTDOWN.store(n, Ordering::SeqCst);
    }

    /// SIGSTOP this process right after its `n`th store from now; it carries on when
    /// continued (a live, stopped lock holder).
    pub fn stop_after(n: u64) {
        STOP.store(true, Ordering::SeqCst);
        COUNTDOWN.store(n, Ordering::SeqCst);
    }

    /// How many crash points this process has passed while armed.
    pub fn points_passed() -> u64 {
        PASSED.load(Ordering::SeqCst)
    }

    #[inline]
    pub(crate) fn point() {
        // Disarmed (the usual case, e.g. benches built with the feature): one relaxed load.
        let left = COUNTDOWN.load(Ordering::Relaxed);
        if left == 0 {
            return;
        }
        PASSED.fetch_add(1, Ordering::Relaxed);
        COUNTDOWN.store(left - 1, Ordering::Relaxed);
        if left == 1 {
            let me = rustix::process::getpid();
            if STOP.load(Ordering::Relaxed) {
                let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
            } else {
                let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
                std::process::abort();
            }
        }
    }
}

#[cfg(feature = "fault")]
pub(crate) use imp::point;
#[cfg(feature = "fault")]
pub use imp::{crash_after, points_passed, stop_after};

/// No crash points in this build.
#[cfg(not(feature = "fault"))]
#[inline(always)]
pub(crate) fn point() {}
