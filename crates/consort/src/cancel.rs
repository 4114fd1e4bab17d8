//! `CancelToken`: a one-way cancellation signal with child tokens and a drop guard.
//!
//! One of the bugs that started this project was a cancellation token with a `reset()`:
//! a task that reset its token between a `cancel()` and the check lost the signal. This
//! token has no way back. A token is cancelled once and stays cancelled; a new piece of
//! work gets a new token (usually a [`CancelToken::child_token`]).
//!
//! # Invariants
//! 1. `is_cancelled` never goes from true to false. There is no reset, by design.
//! 2. A child is cancelled when its parent is, including a child created after the parent
//!    was cancelled. Cancelling a child never cancels its parent.
//! 3. A waiter that checks the flag and then sleeps cannot miss a `cancel()`: both happen
//!    under the node's lock, and `cancel` notifies after setting the flag.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// A one-way cancellation signal, cheap to clone (clones share the signal).
#[derive(Clone, Default)]
pub struct CancelToken {
    node: Arc<Node>,
}

#[derive(Default)]
struct Node {
    cancelled: AtomicBool,
    children: Mutex<Vec<Weak<Node>>>,
    wakeup: Condvar,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// A new token, not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancels this token and all its descendants. Cancelling twice does nothing more.
    pub fn cancel(&self) {
        self.node.cancel();
    }

    /// Whether the token was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.node.cancelled.load(Ordering::Acquire)
    }

    /// A token cancelled when this one is (not the other way round).
    pub fn child_token(&self) -> CancelToken {
        let child = Arc::new(Node::default());
        let mut children = lock(&self.node.children);
        // Checked under the lock that `cancel` takes to walk the children, so a child is
        // either seen by that walk or sees the flag here.
        if self.node.cancelled.load(Ordering::Acquire) {
            child.cancelled.store(true, Ordering::Release);
        } else {
            children.retain(|weak| weak.strong_count() > 0);
            children.push(Arc::downgrade(&child));
        }
        CancelToken { node: child }
    }

    /// Blocks until the token is cancelled or `timeout` passes; returns whether it was.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = lock(&self.node.children);
        loop {
            if self.is_cancelled() {
                return true;
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(remaining) => remaining,
                    None => return false,
                },
                None => Duration::from_secs(3600),
            };
            guard = self
                .node
                .wakeup
                .wait_timeout(guard, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// Blocks until the token is cancelled.
    pub fn wait(&self) {
        while !self.wait_timeout(Duration::from_secs(3600)) {}
    }

    /// A guard that cancels this token when dropped, unless [`DropGuard::disarm`]ed.
    pub fn drop_guard(self) -> DropGuard {
        DropGuard { token: Some(self) }
    }
}

impl Node {
    fn cancel(&self) {
        let children = {
            let mut children = lock(&self.children);
            if self.cancelled.swap(true, Ordering::AcqRel) {
                return;
            }
            self.wakeup.notify_all();
            std::mem::take(&mut *children)
        };
        // Outside our lock: a deep tree never holds two locks at once.
        for child in children {
            if let Some(child) = child.upgrade() {
                child.cancel();
            }
        }
    }
}

/// Cancels its token when dropped.
#[derive(Debug)]
pub struct DropGuard {
    token: Option<CancelToken>,
}

impl DropGuard {
    /// Gives the token back without cancelling it.
    pub fn disarm(mut self) -> CancelToken {
        self.token
            .take()
            .expect("a guard holds its token until dropped")
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            token.cancel();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests;
