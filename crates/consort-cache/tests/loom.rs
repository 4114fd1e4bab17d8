//! Loom model of the cache's own code: `Cache::in_memory` builds a real cache (one shard,
//! one entry, two slots) over a heap region of loom atomics, and the crate's read path
//! (`src/read.rs`), write path (`src/write.rs`) and journal (`src/journal.rs`) run on it
//! unchanged: a lock-free reader races a writer that may die after any of its stores, then
//! recovery rolls the journal back (`Cache::recover`). Loom explores the interleavings (up
//! to a preemption bound) and the values each load may see under the C++ memory model, so a
//! missing fence or a too-weak ordering in the real code fails here.
//!
//! A dead writer is a model thread whose later stores are all lost (`src/sync.rs` under
//! loom), which is what a SIGKILL does to them; joining it stands for the kernel releasing
//! its liveness lock. The real SIGKILLs are in `tests/crash.rs`.
//!
//! Each model also asserts that its reader returned every outcome the scenario allows in
//! some execution, so a model that stopped racing would fail rather than pass vacuously.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p consort-cache --release --test loom`
//! (about 30 s); `CONSORT_SLOW_TESTS=1` adds one preemption to every model (much longer).
//! Removing `fence(Acquire)` from `read.rs`, `fence(Release)` from `write.rs`, or weakening
//! the journal's `Release` stores makes it fail; `docs/design/cache.md` records the runs.
#![cfg(loom)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use consort_cache::{crash_after, points_passed, Cache, Config};
use loom::thread;

const KEY: &[u8] = b"key";
/// Two words each, so a value mixed from two writes is visible as such.
const OLD: &[u8] = &[1; 16];
const NEW: &[u8] = &[2; 16];

/// A cache with one shard of one entry: two slots, so a removed entry's slot is the next
/// insert's slot and a reader that straddles both sees its payload rewritten.
fn config() -> Config {
    Config {
        capacity: 1,
        shards: 1,
        max_key: 8,
        max_value: 16,
        default_ttl: None,
        dir: None,
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert(&'static [u8]),
    Remove,
}

impl Op {
    fn run(self, cache: &Cache) {
        match self {
            Op::Insert(value) => {
                cache.insert(KEY, value, None).unwrap();
            }
            Op::Remove => {
                cache.remove(KEY).unwrap();
            }
        }
    }
}

/// What the key holds before and after `ops[i]`, starting from `start`.
fn states(start: Option<&'static [u8]>, ops: &[Op]) -> Vec<Option<&'static [u8]>> {
    let mut states = vec![start];
    for op in ops {
        states.push(match op {
            Op::Insert(value) => Some(value),
            Op::Remove => None,
        });
    }
    states
}

struct Scenario {
    /// Run to completion before the writer and the reader start.
    setup: &'static [Op],
    /// The writer's operations; it dies after its `crash_at`th store.
    writer: &'static [Op],
    /// Every value the reader may return (anything else is torn or stale).
    readable: &'static [Option<&'static [u8]>],
}

/// What a model saw over all its executions.
#[derive(Debug)]
struct Explored {
    /// The writer's operation it died in, `None` if it finished.
    died_in: Option<usize>,
    executions: u64,
    /// Bit `i` set: some execution's reader returned `readable[i]`.
    read: u64,
}

/// Runs `scenario` under loom, with at most `preemptions` preemptions per execution, and
/// the writer dying right after its `crash_at`th store (0: it never dies).
fn model(scenario: &'static Scenario, preemptions: usize, crash_at: u64) -> Explored {
    // Written by the model, read after it: std atomics, which loom does not see.
    let died_in = std::sync::Arc::new(AtomicU64::new(u64::MAX));
    let executions = std::sync::Arc::new(AtomicU64::new(0));
    let read = std::sync::Arc::new(AtomicU64::new(0));
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.max_branches = 100_000;
    let (report, count, seen) = (died_in.clone(), executions.clone(), read.clone());
    builder.check(move || {
        count.fetch_add(1, SeqCst);
        let cache = loom::sync::Arc::new(Cache::in_memory(&config()).unwrap());
        for op in scenario.setup {
            op.run(&cache);
        }
        let start = states(None, scenario.setup).pop().unwrap();
        let writer = {
            let cache = cache.clone();
            let report = report.clone();
            thread::spawn(move || {
                crash_after(crash_at);
                for (i, op) in scenario.writer.iter().enumerate() {
                    op.run(&cache);
                    if crash_at > 0 && points_passed() == crash_at {
                        report.store(i as u64, SeqCst);
                        return Some(i);
                    }
                }
                None
            })
        };
        let reader = {
            let cache = cache.clone();
            let seen = seen.clone();
            thread::spawn(move || {
                let got = cache.get(KEY).unwrap();
                let Some(i) = scenario.readable.iter().position(|&v| v == got.as_deref()) else {
                    panic!("a reader accepted a torn or stale value: {got:?}");
                };
                seen.fetch_or(1 << i, SeqCst);
            })
        };
        let died_in = writer.join().unwrap();
        // The writer is dead (or done): the next writer rolls back what it left open.
        cache.recover().unwrap();
        let report = cache.check_invariants().unwrap();
        assert_eq!(report.live + report.free, 2, "a slot was lost: {report:?}");
        let states = states(start, scenario.writer);
        let got = cache.get(KEY).unwrap();
        let allowed = match died_in {
            Some(i) => &states[i..=i + 1],
            None => &states[states.len() - 1..],
        };
        assert!(
            allowed.contains(&got.as_deref()),
            "after dying in {died_in:?} and recovery the key holds {got:?}, not one of {allowed:?}"
        );
        reader.join().unwrap();
    });
    Explored {
        died_in: match died_in.load(SeqCst) {
            u64::MAX => None,
            i => Some(i as usize),
        },
        executions: executions.load(SeqCst),
        read: read.load(SeqCst),
    }
}

/// Every outcome the scenario allows was read by some execution: the race is real, not a
/// reader that always ran before or after the writer.
#[track_caller]
fn assert_read_everything(scenario: &Scenario, read: u64) {
    let all = (1 << scenario.readable.len()) - 1;
    assert_eq!(
        read, all,
        "the reader never returned some of {:?}",
        scenario.readable
    );
}

/// Models the writer dying at every one of its crash points in turn, until it survives;
/// returns how many there were and the outcomes read over all of them.
fn every_crash_point(scenario: &'static Scenario, preemptions: usize) -> (u64, u64) {
    let mut read = 0;
    let mut crash_at = 1;
    loop {
        let explored = model(scenario, preemptions, crash_at);
        read |= explored.read;
        if explored.died_in.is_none() {
            return (crash_at - 1, read);
        }
        crash_at += 1;
    }
}

/// `CONSORT_SLOW_TESTS` buys one more preemption per execution (about ten times longer).
fn slow(preemptions: usize) -> usize {
    preemptions + usize::from(std::env::var_os("CONSORT_SLOW_TESTS").is_some())
}

/// A reader that found the entry races its removal and the reuse of its slot for a new
/// value of the same key.
static REUSE: Scenario = Scenario {
    setup: &[Op::Insert(OLD)],
    writer: &[Op::Remove, Op::Insert(NEW)],
    readable: &[None, Some(OLD), Some(NEW)],
};

/// The entry was removed before the reader started (its slot still holds the old payload),
/// and the writer reuses the slot for a new value.
static REPUBLISH: Scenario = Scenario {
    setup: &[Op::Insert(OLD), Op::Remove],
    writer: &[Op::Insert(NEW)],
    readable: &[None, Some(NEW)],
};

/// The reader must return the old value, the new one or a miss, never a mix: this is what
/// the seqlock is for (the odd version and `fence(Release)` before the payload in
/// `write.rs`, the even version's release store after it, `fence(Acquire)` before the
/// version check in `read.rs`).
#[test]
fn a_reader_never_accepts_a_slot_rewritten_under_it() {
    let explored = model(&REUSE, slow(2), 0);
    eprintln!("remove + insert, no crash: {explored:?}");
    assert_eq!(explored.died_in, None);
    assert!(explored.executions >= 1000, "{explored:?}");
    assert_read_everything(&REUSE, explored.read);
}

/// The same race with the writer dying after each of its stores, then recovery: the reader
/// still sees only whole values, and recovery leaves exactly the state before or after the
/// operation the writer died in.
#[test]
fn a_reader_never_accepts_a_torn_value_whatever_store_the_writer_dies_at() {
    let (points, read) = every_crash_point(&REUSE, slow(0));
    eprintln!("remove + insert: {points} crash points, each before-or-after");
    assert!(points >= 70, "only {points} crash points");
    assert_read_everything(&REUSE, read);
}

/// A reader racing the insert that reuses a removed entry's slot sees a miss or the new
/// value, never the removed one (the stale payload must not validate), whatever store the
/// writer dies at.
#[test]
fn a_reader_never_sees_a_removed_value_through_a_new_link() {
    let explored = model(&REPUBLISH, slow(2), 0);
    eprintln!("insert into a reused slot, no crash: {explored:?}");
    assert_eq!(explored.died_in, None);
    assert_read_everything(&REPUBLISH, explored.read);
    let (points, read) = every_crash_point(&REPUBLISH, slow(2));
    eprintln!("insert into a reused slot: {points} crash points, each before-or-after");
    assert!(points >= 40, "only {points} crash points");
    assert_read_everything(&REPUBLISH, read);
}
