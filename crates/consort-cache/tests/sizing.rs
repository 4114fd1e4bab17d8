//! What consort's Python package needs of a cache: the capacity exactly as asked (and one
//! shard when asked, so one SIEVE order over all its entries), hit and miss counters that
//! any participant can zero for all, and the fork generation. (A forked child letting go of
//! its parent's liveness lock needs `fork()`, which safe Rust does not have: the Python
//! tests in `crates/consort-py/tests/test_processes.py` cover it with real forks.)

mod support;

use std::time::Duration;

use consort_cache::{Cache, Config};
use support::{config, open, TempDir, Watchdog};

#[test]
fn capacity_is_exactly_what_was_asked() {
    let _dog = Watchdog::new("capacity", Duration::from_secs(60));
    let dir = TempDir::new("capacity");
    // (capacity, shards asked, shards expected)
    let cases = [
        (1, 8, 1),
        (2, 8, 2),
        (3, 8, 3),
        (7, 8, 7),
        (9, 8, 3),
        (100, 8, 5),
        (256, 4, 4),
        (1000, 8, 8),
        (1001, 8, 7),
        (8193, 8, 3),   // 3 × 2731
        (10_007, 8, 1), // a prime
        (3, 1, 1),
    ];
    for (index, &(capacity, shards, expected)) in cases.iter().enumerate() {
        let name = format!("cap{index}");
        let cache = open(dir.path(), &name, capacity, shards);
        assert_eq!(cache.capacity(), capacity, "capacity {capacity}");
        assert_eq!(
            cache.shards(),
            expected,
            "capacity {capacity}, shards {shards}"
        );
        assert_eq!(cache.stats().capacity, capacity as u64);
        if capacity <= 100 && expected == 1 {
            for key in 0..capacity as u32 + 10 {
                cache.insert(&key.to_le_bytes(), b"v", None).unwrap();
            }
            assert_eq!(cache.stats().len, capacity as u64, "a full one-shard cache");
        }
        cache.check_invariants().unwrap();
    }
}

#[test]
fn a_small_cache_evicts_in_one_sieve_order() {
    let _dog = Watchdog::new("sieve", Duration::from_secs(60));
    let dir = TempDir::new("sieve");
    let cache = open(dir.path(), "sieve", 3, 1);
    for key in [b"a", b"b", b"c"] {
        cache.insert(key, b"1", None).unwrap();
    }
    // `a` is visited; the hand starts at the tail (`a`), clears it and evicts `b`.
    assert!(cache.get(b"a").unwrap().is_some());
    cache.insert(b"d", b"1", None).unwrap();
    let live = |key: &[u8]| cache.get(key).unwrap().is_some();
    assert!(live(b"a") && !live(b"b") && live(b"c") && live(b"d"));
}

#[test]
fn reset_counters_zeroes_every_participants_hits_and_misses() {
    let _dog = Watchdog::new("reset", Duration::from_secs(60));
    let dir = TempDir::new("reset");
    let config = Config {
        capacity: 4096,
        ..config(dir.path(), 4096, 4)
    };
    let first = Cache::open("reset", &config).unwrap();
    let second = Cache::open("reset", &config).unwrap();
    first.insert(b"k", b"v", None).unwrap();
    for _ in 0..5 {
        assert!(first.get(b"k").unwrap().is_some());
        assert!(second.get(b"k").unwrap().is_some());
        assert!(second.get(b"missing").unwrap().is_none());
    }
    let before = first.stats();
    assert_eq!((before.hits, before.misses, before.inserts), (10, 5, 1));
    second.reset_counters().unwrap();
    let after = first.stats();
    assert_eq!((after.hits, after.misses), (0, 0), "{after:?}");
    assert_eq!(
        (after.inserts, after.len),
        (1, 1),
        "the rest stays: {after:?}"
    );
    assert!(first.get(b"k").unwrap().is_some());
    assert_eq!(second.stats().hits, 1);
    first.check_invariants().unwrap();
}

#[test]
fn the_original_process_is_fork_generation_zero() {
    assert_eq!(consort_cache::fork_generation(), 0);
}

#[test]
fn try_insert_writes_when_the_lock_is_free() {
    let _dog = Watchdog::new("try_insert", Duration::from_secs(60));
    let dir = TempDir::new("try");
    let cache = open(dir.path(), "try", 4, 8);
    // 100 keys over 4 one-slot shards: every shard gets some (the seed is random; 10 keys
    // left a shard empty one run in 18).
    for round in 0..3u8 {
        for key in 0..100u8 {
            let done = cache.try_insert(&[key], &[round], None).unwrap();
            assert!(done.is_some(), "declined round {round} key {key}");
        }
    }
    assert_eq!(cache.stats().len, 4);
    assert_eq!(
        cache.try_insert(&[0; 17], b"", None).unwrap(),
        Some(consort_cache::Insert::Oversize)
    );
    cache.check_invariants().unwrap();
}
