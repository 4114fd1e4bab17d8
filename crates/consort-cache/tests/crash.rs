//! Crash points in real processes: a writer SIGKILLs itself after each of its
//! shared-memory stores, for every operation and for recovery itself; the next writer
//! must find exactly the state before or after the operation, with every invariant intact.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use support::{open, run_helper, TempDir, Watchdog};

type Snapshot = Vec<(Vec<u8>, Vec<u8>)>;

const CAPACITY: usize = 4;

fn logical(cache: &consort_cache::Cache) -> Snapshot {
    let mut all: Snapshot = cache
        .snapshot()
        .unwrap()
        .into_iter()
        .map(|(key, value, _)| (key, value))
        .collect();
    all.sort();
    all
}

/// Builds the starting state for `op` in a fresh cache.
fn setup(dir: &std::path::Path, name: &str, op: &str) -> consort_cache::Cache {
    let cache = open(dir, name, CAPACITY, 1);
    let keys: &[&str] = match op {
        // full: the insert must evict
        "evict" | "expire" => &["a", "b", "c", "d"],
        _ => &["a", "b", "c"],
    };
    for key in keys {
        let ttl = (op == "expire" && *key == "b").then_some(Duration::from_nanos(1));
        cache
            .insert(key.as_bytes(), format!("value-of-{key}").as_bytes(), ttl)
            .unwrap();
    }
    if op == "evict" {
        // visited bits: the hand has to skip some entries
        cache.get(b"a").unwrap();
        cache.get(b"c").unwrap();
    }
    cache
}

fn op_args(op: &str) -> Vec<&'static str> {
    match op {
        "insert" => vec!["insert", "x"],
        "replace" => vec!["replace", "b"],
        "remove" => vec!["remove", "b"],
        "evict" => vec!["insert", "x"],
        "expire" => vec!["purge"],
        "clear" => vec!["clear"],
        _ => unreachable!(),
    }
}

/// For every crash point k of `op`: run it in a helper that dies after store k, recover
/// here, and compare. With `nested`, first crash recovery itself after each of its stores
/// in turn. Returns the number of crash points of `op`, and of recovery summed over them.
fn every_crash_point(op: &str, nested: bool) -> (usize, usize) {
    let dir = TempDir::new(op);
    let args = op_args(op);
    // The state after a clean run.
    let name = format!("{op}-clean");
    let before = logical(&setup(dir.path(), &name, op));
    let out = run_helper(dir.path(), &name, CAPACITY, 1, &args);
    assert!(out.status.success(), "{op}: {out:?}");
    let after = logical(&open(dir.path(), &name, CAPACITY, 1));
    assert_ne!(before, after, "{op} must change something");
    let mut recovery_points = 0;
    let mut k = 1;
    loop {
        let name = format!("{op}-{k}");
        let cache = setup(dir.path(), &name, op);
        let crash = k.to_string();
        let mut full = args.clone();
        full.extend(["--crash", &crash]);
        let out = run_helper(dir.path(), &name, CAPACITY, 1, &full);
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.signal(), Some(9), "{op} k={k}: {out:?}");
        if nested {
            // Crash recovery itself at every point, then recover for good.
            let mut m = 1;
            loop {
                let crash = m.to_string();
                let out = run_helper(
                    dir.path(),
                    &name,
                    CAPACITY,
                    1,
                    &["recover", "--crash", &crash],
                );
                if out.status.success() {
                    break;
                }
                assert_eq!(out.status.signal(), Some(9), "{op} k={k} m={m}: {out:?}");
                m += 1;
                assert!(m < 500, "recovery never ends");
            }
            // Every recovery passes at least its lock and unlock points.
            assert!(
                m > 2,
                "{op} k={k}: recovery had only {} crash points",
                m - 1
            );
            recovery_points += m - 1;
        }
        cache.recover().unwrap();
        let report = cache
            .check_invariants()
            .unwrap_or_else(|err| panic!("{op} crashed at store {k}: {err}"));
        assert_eq!(report.live + report.free, CAPACITY + 1);
        let state = logical(&cache);
        assert!(
            state == before || state == after,
            "{op} crashed at store {k}: state {state:?} is neither {before:?} nor {after:?}"
        );
        drop(cache);
        consort_cache::Cache::remove_file(&name, Some(dir.path())).unwrap();
        k += 1;
        assert!(k < 1000, "{op} never completes");
    }
    (k - 1, recovery_points)
}

#[test]
fn every_crash_point_of_every_operation_ends_before_or_after() {
    let _dog = Watchdog::new("crash points", Duration::from_secs(240));
    for op in ["insert", "replace", "remove", "evict", "expire", "clear"] {
        let (points, _) = every_crash_point(op, false);
        assert!(points >= 5, "{op}: only {points} crash points");
        eprintln!("{op}: {points} crash points, all before-or-after");
    }
}

#[test]
fn a_crash_inside_recovery_is_recovered_too() {
    let _dog = Watchdog::new("nested crash points", Duration::from_secs(240));
    for op in ["evict", "replace"] {
        let (points, recovery_points) = every_crash_point(op, true);
        eprintln!(
            "{op}: {points} crash points, each with every crash inside recovery \
             ({recovery_points} in all)"
        );
        assert!(points >= 5, "{op}: only {points} crash points");
        // More than the lock and unlock points alone: recovery had journals to undo.
        assert!(
            recovery_points >= 4 * points,
            "{op}: only {recovery_points} crash points inside recovery for {points} of {op}"
        );
    }
}
