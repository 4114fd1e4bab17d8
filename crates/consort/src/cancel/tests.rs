//! Unit tests for `cancel`, including the regression for the `reset()` race.

use std::sync::atomic::AtomicUsize;
use std::thread;

use super::*;

/// The cleveragents `CancellationToken.reset()` race (cleveragents-core #7166): a consumer
/// saw the token cancelled, a concurrent `reset()` cleared it, and the cancellation was
/// lost. Here there is nothing to clear: once any thread has seen a token cancelled, every
/// thread sees it cancelled, forever, and every waiter wakes, however the threads interleave.
#[test]
fn issue_reset_race_a_cancellation_is_never_lost() {
    for _ in 0..200 {
        let token = CancelToken::new();
        let woke = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let token = token.clone();
                let woke = Arc::clone(&woke);
                thread::spawn(move || {
                    // A bounded wait: a lost wake-up fails the assertion below instead of
                    // hanging the test.
                    if token.wait_timeout(Duration::from_secs(10)) {
                        woke.fetch_add(1, Ordering::SeqCst);
                    }
                    assert!(token.is_cancelled());
                })
            })
            .collect();
        let children: Vec<_> = (0..4)
            .map(|_| {
                let token = token.clone();
                thread::spawn(move || token.child_token())
            })
            .collect();
        token.cancel();
        for waiter in waiters {
            waiter.join().expect("waiter");
        }
        for child in children {
            assert!(child.join().expect("child maker").is_cancelled());
        }
        assert_eq!(woke.load(Ordering::SeqCst), 4);
        assert!(token.is_cancelled());
    }
}

#[test]
fn children_follow_parents_but_not_the_reverse() {
    let root = CancelToken::new();
    let child = root.child_token();
    let grandchild = child.child_token();
    let sibling = root.child_token();
    grandchild.cancel();
    assert!(grandchild.is_cancelled());
    assert!(!child.is_cancelled() && !root.is_cancelled() && !sibling.is_cancelled());
    root.cancel();
    assert!(child.is_cancelled() && sibling.is_cancelled());
    // A child made after the parent was cancelled starts cancelled.
    assert!(root.child_token().is_cancelled());
}

#[test]
fn wait_timeout_returns_false_when_nobody_cancels() {
    let token = CancelToken::new();
    assert!(!token.wait_timeout(Duration::from_millis(10)));
    assert!(!token.is_cancelled());
}

#[test]
fn a_drop_guard_cancels_unless_disarmed() {
    let token = CancelToken::new();
    drop(token.clone().drop_guard());
    assert!(token.is_cancelled());
    let token = CancelToken::new();
    let back = token.clone().drop_guard().disarm();
    assert!(!token.is_cancelled() && !back.is_cancelled());
}

#[test]
fn dropped_children_do_not_accumulate() {
    let root = CancelToken::new();
    for _ in 0..10_000 {
        drop(root.child_token());
    }
    assert!(lock(&root.node.children).len() <= 1);
}
