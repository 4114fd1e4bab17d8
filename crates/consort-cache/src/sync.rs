//! The one door to atomics, the process-local mutex and the futex: std's and the kernel's in
//! every build that runs, loom's under `cfg(loom)`, so that `tests/loom.rs` model-checks the
//! very code a process runs.
//!
//! Every module that touches shared memory takes its atomics, fences, `Mutex` and futex calls
//! from here. Only `fault` (a process-wide countdown) and `torture`
//! (in-process counters) use std's atomics directly, because they are not shared memory and
//! loom has nothing to say about them. The SIGBUS guard's registry in `region` is not shared
//! memory either and does not exist under loom; it takes std's process-local atomics and
//! `Once` from here all the same, so that this file stays the one door.
//!
//! Under loom:
//! - the atomics are loom's, wrapped so that a thread that fault injection has killed
//!   (`fault::crashed`) changes nothing any more: its stores are lost and its
//!   read-modify-writes report success without storing, as a SIGKILLed process's would never
//!   happen at all. Reporting success lets the dead thread run to the end of its call without
//!   spinning on a lock it believes it holds; nothing it does after its death is visible.
//! - `compiler_fence` stays std's: it only orders a dying writer's stores for the *compiler*,
//!   and a dead model thread's earlier stores are already visible to whoever joins it.
//! - the futex is a `yield_now` (wait) and nothing (wake): loom threads cannot sleep on a word.
//!   The model never contends for a lock that a live thread holds, so neither is reached there.

pub(crate) use std::sync::atomic::{compiler_fence, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};
/// Process-local, for the SIGBUS guard of `region` (not built under loom).
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicUsize},
    Once,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard, TryLockError};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence;
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use model::{AtomicU32, AtomicU64};
#[cfg(loom)]
pub(crate) use std::sync::TryLockError;

/// Sleeps on `word` while it holds `expected`, for at most `timeout` (spurious wake-ups and
/// errors just return: every caller re-reads the word).
#[cfg(not(loom))]
#[inline]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: &rustix::time::Timespec) {
    let _ = rustix::thread::futex::wait(
        word,
        rustix::thread::futex::Flags::empty(),
        expected,
        Some(timeout),
    );
}

/// Wakes one thread sleeping on `word`, in any process (the futex is not `PRIVATE`).
#[cfg(not(loom))]
#[inline]
pub(crate) fn futex_wake_one(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
}

#[cfg(loom)]
pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: &rustix::time::Timespec) {
    loom::thread::yield_now();
}

#[cfg(loom)]
pub(crate) fn futex_wake_one(_word: &AtomicU32) {}

#[cfg(loom)]
mod model {
    use super::Ordering;
    use crate::fault::crashed;

    macro_rules! mortal_atomic {
        ($name:ident, $int:ty) => {
            #[doc = concat!("loom's `", stringify!($name), "`, inert in a thread that has died.")]
            #[derive(Debug)]
            pub(crate) struct $name(loom::sync::atomic::$name);

            // Each width uses only some of these (the lock word is the only `u32`).
            #[allow(dead_code)]
            impl $name {
                #[track_caller]
                pub(crate) fn new(value: $int) -> $name {
                    $name(loom::sync::atomic::$name::new(value))
                }

                #[track_caller]
                pub(crate) fn load(&self, order: Ordering) -> $int {
                    self.0.load(order)
                }

                #[track_caller]
                pub(crate) fn store(&self, value: $int, order: Ordering) {
                    if !crashed() {
                        self.0.store(value, order);
                    }
                }

                #[track_caller]
                pub(crate) fn swap(&self, value: $int, order: Ordering) -> $int {
                    if crashed() {
                        return self.0.load(Ordering::Relaxed);
                    }
                    self.0.swap(value, order)
                }

                #[track_caller]
                pub(crate) fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                    if crashed() {
                        return self.0.load(Ordering::Relaxed);
                    }
                    self.0.fetch_add(value, order)
                }

                #[track_caller]
                pub(crate) fn compare_exchange(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    if crashed() {
                        return Ok(current);
                    }
                    self.0.compare_exchange(current, new, success, failure)
                }
            }
        };
    }

    mortal_atomic!(AtomicU64, u64);
    mortal_atomic!(AtomicU32, u32);
}
