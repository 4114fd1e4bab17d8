//! Loom model of the cache's slot protocol (`src/shard.rs`): a lock-free reader against a
//! writer that reuses the slot and may die after any of its steps, followed by recovery
//! rolling the journal back. Loom explores every interleaving and weak-memory outcome.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p consort-cache --release --test loom`.
//! The `should_panic` variants are the mutation checks: removing either seqlock fence lets
//! a reader accept a torn value.
#![cfg(loom)]

use loom::sync::atomic::{fence, AtomicBool, AtomicU64};
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

#[derive(Clone, Copy)]
struct Variant {
    writer_fence: bool,
    reader_fence: bool,
}

const REAL: Variant = Variant {
    writer_fence: true,
    reader_fence: true,
};

struct Slot {
    ver: AtomicU64,
    live: AtomicU64,
    /// Two payload words; a consistent value has them equal.
    data: [AtomicU64; 2],
    /// The "kernel released the dead writer's lock" event.
    dead: AtomicBool,
}

fn next_even(v: u64) -> u64 {
    (v | 1) + 1
}

/// Seven writer steps: a committed remove frees the slot (live = 0, version 4), then an
/// insert reuses it for value 2 (version 5, payload, live = 1, version 6). The writer dies
/// after `steps` of them.
fn writer(slot: &Slot, steps: usize, v: Variant) {
    let step = |n: usize| steps >= n;
    if step(1) {
        slot.live.store(0, Release);
    }
    if step(2) {
        slot.ver.store(4, Release);
    }
    if step(3) {
        slot.ver.store(5, Release);
        if v.writer_fence {
            fence(Release);
        }
    }
    if step(4) {
        slot.data[0].store(2, Relaxed);
    }
    if step(5) {
        slot.data[1].store(2, Relaxed);
    }
    if step(6) {
        slot.live.store(1, Release);
    }
    if step(7) {
        slot.ver.store(6, Release);
        return;
    }
    // Died: the kernel drops its lock; the next writer rolls the open transaction back.
    slot.dead.store(true, Release);
}

/// Rolls back what the journal holds for a writer that died after `steps` steps.
fn recovery(slot: &Slot, steps: usize) {
    while !slot.dead.load(Acquire) {
        thread::yield_now();
    }
    match steps {
        1 => slot.live.store(1, Release), // the remove's journal: live was 1
        3..=6 => {
            // the insert's journal, newest entry first: live (old 0), version (old 4)
            if steps >= 6 {
                slot.live.store(0, Release);
            }
            let cur = slot.ver.load(Relaxed);
            slot.ver.store(next_even(cur.max(4)), Release);
        }
        _ => {} // no open transaction
    }
}

/// Boehm's reader: version (acquire), relaxed loads, acquire fence, version again; a
/// snapshot counts only if the versions match, are even, and the slot is live.
fn reader(slot: &Slot, v: Variant) {
    let v1 = slot.ver.load(Acquire);
    let live = slot.live.load(Relaxed);
    let a = slot.data[0].load(Relaxed);
    let b = slot.data[1].load(Relaxed);
    if v.reader_fence {
        fence(Acquire);
    }
    let v2 = slot.ver.load(Relaxed);
    if v1 == v2 && v1 % 2 == 0 && live == 1 {
        assert_eq!(a, b, "a reader accepted a torn value (ver {v1})");
    }
}

fn model(steps: usize, v: Variant) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let slot = Arc::new(Slot {
            ver: AtomicU64::new(2),
            live: AtomicU64::new(1),
            data: [AtomicU64::new(1), AtomicU64::new(1)],
            dead: AtomicBool::new(false),
        });
        let w = {
            let slot = slot.clone();
            thread::spawn(move || writer(&slot, steps, v))
        };
        let r = {
            let slot = slot.clone();
            thread::spawn(move || reader(&slot, v))
        };
        if steps < 7 {
            recovery(&slot, steps);
        }
        w.join().unwrap();
        r.join().unwrap();
    });
}

#[test]
fn readers_never_accept_a_torn_value_whatever_step_the_writer_dies_at() {
    for steps in 0..=7 {
        model(steps, REAL);
    }
}

#[test]
#[should_panic(expected = "torn value")]
fn without_the_writer_fence_a_torn_value_gets_through() {
    model(
        7,
        Variant {
            writer_fence: false,
            ..REAL
        },
    );
}

#[test]
#[should_panic(expected = "torn value")]
fn without_the_reader_fence_a_torn_value_gets_through() {
    model(
        7,
        Variant {
            reader_fence: false,
            ..REAL
        },
    );
}
