//! One open cache as the Python objects hold it: a handle that follows a fork and a
//! recreate by opening the cache again, transparently.
//!
//! A forked child must not write through its parent's handle (consort-cache's fork hook has
//! already made that handle let go of the parent's liveness lock, and its writes give
//! `Error::Forked`); a handle whose cache another process recreated gives `Error::Retired`.
//! Both are answered the same way: open the cache again by name and config, and use the new
//! handle from then on.
//!
//! # Invariants
//! 1. Until closed, `current` always points at a `Cache` boxed in `opened`, and `opened`
//!    only grows: a `&Cache` handed out borrows the holder and stays valid whatever
//!    another thread reopens meanwhile (the old handle still reads; its writes fail and
//!    come back here). The price is one mapping and one fd per reopen, kept until the
//!    holder is dropped; reopens happen once per fork and once per recreate.
//! 2. The hot path is two loads and a compare: the fork generation the current handle was
//!    opened in against the process's, and the pointer.
//! 3. A reopen waits (it may open a file, attach, recover) with the GIL released, and it
//!    takes the `opened` mutex only after releasing the GIL, so no thread ever waits for the
//!    mutex while holding the GIL.
//! 4. [`Holder::close`] frees every handle (mapping, fd, liveness lock) at once when no call
//!    is using one, else the last such call frees them as it ends. A call that uses a
//!    handle holds a [`Using`] (from [`Holder::cache`], or [`Holder::write`] for its whole
//!    run, the GIL-released part included); `users` counts them. Every change of `users`
//!    and every free happens with the GIL held (a `Using` is neither `Send` nor `Sync`, so
//!    it never crosses a `detach`), which serializes them: plain loads and stores suffice.
//!    A handle used by a call whose Python code (a value's unpickling) closes the cache is
//!    therefore freed when that call ends, not under it.
//!
//! # Caveats
//! A fork while another thread of the parent is inside a call leaves the child's `users`
//! above zero for good: the child's `close()` then refuses later calls but its handles are
//! freed only when the holder is dropped.
//!
//! A fork while another thread of the parent is inside a reopen (holding `opened`) leaves
//! the child that mutex locked, and the child's first use of this cache waits forever, as
//! with any lock held across `fork()`. A reopen is rare (once per fork or recreate) and
//! short (one open).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use consort_cache::{Cache, Config, Error};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// What to do when a cache of the name exists with other parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnMismatch {
    /// Raise `CacheMismatchError` (the mapping's default); a reopen after another process
    /// recreated the cache with other parameters raises too.
    Raise,
    /// Replace it (a memo is disposable: the decorator's rule); a reopen follows whatever
    /// cache is there now, so two processes that disagree do not replace each other's in
    /// turn.
    Recreate,
}

/// An open cache that reopens itself after a fork or a recreate.
#[derive(Debug)]
pub(crate) struct Holder {
    pub(crate) name: String,
    pub(crate) config: Config,
    on_mismatch: OnMismatch,
    current: AtomicPtr<Cache>,
    /// The fork generation (`consort_cache::fork_generation`) `current` was opened in.
    generation: AtomicU64,
    /// Every handle this holder opened, the current one included (invariant 1). Boxed so
    /// that each keeps its address when the vector grows.
    #[allow(clippy::vec_box)]
    opened: Mutex<Vec<Box<Cache>>>,
    closed: AtomicBool,
    /// How many [`Using`]s are alive (invariant 4; changed only with the GIL held).
    users: AtomicUsize,
}

/// A handle in use by one call: keeps [`Holder::close`] from freeing it (invariant 4).
#[derive(Debug)]
pub(crate) struct Using<'a> {
    holder: &'a Holder,
    cache: &'a Cache,
    /// Neither `Send` nor `Sync`: created and dropped with the GIL held, never detached.
    _gil_bound: std::marker::PhantomData<*const ()>,
}

impl std::ops::Deref for Using<'_> {
    type Target = Cache;

    #[inline]
    fn deref(&self) -> &Cache {
        self.cache
    }
}

impl Drop for Using<'_> {
    #[inline]
    fn drop(&mut self) {
        let holder = self.holder;
        // The GIL is held (invariant 4): no other thread changes `users` meanwhile.
        let users = holder.users.load(Ordering::Relaxed) - 1;
        holder.users.store(users, Ordering::Relaxed);
        if users == 0 && holder.closed.load(Ordering::Relaxed) {
            holder.free();
        }
    }
}

impl Holder {
    /// Opens (or creates) the cache `name`, with the GIL released while it may wait.
    pub(crate) fn open(
        py: Python<'_>,
        name: String,
        config: Config,
        on_mismatch: OnMismatch,
    ) -> PyResult<Holder> {
        let generation = consort_cache::fork_generation();
        let cache = py
            .detach(|| open_cache(&name, &config, on_mismatch))
            .map_err(to_py)?;
        let mut cache = Box::new(cache);
        let current = AtomicPtr::new(&mut *cache);
        Ok(Holder {
            name,
            config,
            on_mismatch,
            current,
            generation: AtomicU64::new(generation),
            opened: Mutex::new(vec![cache]),
            closed: AtomicBool::new(false),
            users: AtomicUsize::new(0),
        })
    }

    /// The handle to use now: the current one, or a new one if this process is a fork of
    /// the one that opened it.
    ///
    /// # Errors
    /// `ValueError` once closed; those of opening the cache again after a fork.
    #[inline]
    pub(crate) fn cache(&self, py: Python<'_>) -> PyResult<Using<'_>> {
        Ok(self.using(self.handle(py)?))
    }

    /// Counts a user of `cache` (a handle of this holder) until the `Using` drops. With the
    /// GIL held (the caller has a `Python` token, or is `cache`/`write`).
    #[inline]
    fn using<'a>(&'a self, cache: &'a Cache) -> Using<'a> {
        let users = self.users.load(Ordering::Relaxed);
        self.users.store(users + 1, Ordering::Relaxed);
        Using {
            holder: self,
            cache,
            _gil_bound: std::marker::PhantomData,
        }
    }

    /// The handle to use now, not yet counted as used (see [`Holder::cache`]).
    #[inline]
    fn handle(&self, py: Python<'_>) -> PyResult<&Cache> {
        if self.generation.load(Ordering::Acquire) == consort_cache::fork_generation()
            && !self.closed.load(Ordering::Relaxed)
        {
            let current = self.current();
            // A file another process recreated must not go on serving hits the live cache
            // no longer has: reopen the name (one load of the superblock's state).
            if !current.is_retired() {
                return Ok(current);
            }
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.closed_error());
        }
        self.reopen(py, self.current.load(Ordering::Acquire))
    }

    #[cold]
    fn closed_error(&self) -> PyErr {
        PyValueError::new_err(format!("the shared cache {:?} is closed", self.name))
    }

    #[inline]
    fn current(&self) -> &Cache {
        // SAFETY: until closed, `current` always points at a `Cache` boxed in `opened`,
        // which never shrinks until then (invariant 1), and every caller checked `closed`
        // with the GIL held; a handle in use is not freed until its `Using` drops
        // (invariant 4); the box's heap address does not move when the vector grows.
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    /// Runs a write `op` (with the GIL released: it may wait for another process's shard
    /// lock or recover a dead writer's work), opening the cache again when it says the
    /// handle is a parent's (`Forked`) or the cache was recreated (`Retired`).
    pub(crate) fn write<T: Send>(
        &self,
        py: Python<'_>,
        op: impl Fn(&Cache) -> consort_cache::Result<T> + Sync,
    ) -> PyResult<T> {
        // One count for the whole run: every handle of this holder stays allocated until
        // it ends (a reopen's new handle as much as the first).
        let using = self.cache(py)?;
        let mut cache: &Cache = &using;
        for _ in 0..4 {
            match py.detach(|| op(cache)) {
                Err(Error::Forked | Error::Retired(_)) => {
                    cache = self.reopen(py, cache as *const Cache as *mut Cache)?;
                }
                other => return other.map_err(to_py),
            }
        }
        Err(crate::errors::CacheError::new_err(format!(
            "the shared cache {:?} keeps being recreated by other processes",
            self.name
        )))
    }

    /// Inserts `key`: first without waiting and with the GIL held (no thread switch when
    /// the shard lock is free, as it nearly always is), else through [`Holder::write`].
    pub(crate) fn insert(
        &self,
        py: Python<'_>,
        key: &[u8],
        value: &[u8],
        ttl: Option<std::time::Duration>,
    ) -> PyResult<consort_cache::Insert> {
        match self.cache(py)?.try_insert(key, value, ttl) {
            Ok(Some(done)) => return Ok(done),
            Ok(None) | Err(Error::Forked | Error::Retired(_)) => {}
            Err(err) => return Err(to_py(err)),
        }
        self.write(py, |cache| cache.insert(key, value, ttl))
    }

    /// Opens the cache again unless another thread already replaced `stale`.
    #[cold]
    fn reopen(&self, py: Python<'_>, stale: *mut Cache) -> PyResult<&Cache> {
        // Compared as an address only (never dereferenced), so it can cross the detach.
        let stale = stale as usize;
        py.detach(|| {
            let mut opened = self
                .opened
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.closed.load(Ordering::Relaxed) {
                return Ok(()); // reported below, with the GIL held
            }
            let generation = consort_cache::fork_generation();
            if self.current.load(Ordering::Acquire) as usize != stale
                && self.generation.load(Ordering::Acquire) == generation
            {
                return Ok(());
            }
            let mut cache = Box::new(reopen_cache(&self.name, &self.config, self.on_mismatch)?);
            self.current.store(&mut *cache, Ordering::Release);
            self.generation.store(generation, Ordering::Release);
            opened.push(cache);
            Ok(())
        })
        .map_err(to_py)?;
        // With the GIL held again: a close meanwhile (with the GIL) has freed the handles,
        // and none frees them between here and the caller's `Using` (invariant 4).
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.closed_error());
        }
        Ok(self.current())
    }

    /// Refuses every later call ("closed") and frees every handle: now, or when the last
    /// call still using one ends (invariant 4). The GIL is held (`py`).
    pub(crate) fn close(&self, py: Python<'_>) {
        let _ = py;
        self.closed.store(true, Ordering::Relaxed);
        if self.users.load(Ordering::Relaxed) == 0 {
            self.free();
        }
    }

    /// Drops every handle (unmaps, closes the fd, lets go of the liveness lock). Only once
    /// closed and with no user (invariant 4); `current` is never dereferenced again, since
    /// every path to it checks `closed` first.
    fn free(&self) {
        let handles = std::mem::take(
            &mut *self
                .opened
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        drop(handles);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

fn open_cache(
    name: &str,
    config: &Config,
    on_mismatch: OnMismatch,
) -> consort_cache::Result<Cache> {
    match Cache::open(name, config) {
        Err(Error::Mismatch { .. }) if on_mismatch == OnMismatch::Recreate => {
            Cache::recreate(name, config)
        }
        other => other,
    }
}

/// The cache to use after a fork or a recreate (see [`OnMismatch`]).
fn reopen_cache(
    name: &str,
    config: &Config,
    on_mismatch: OnMismatch,
) -> consort_cache::Result<Cache> {
    if on_mismatch == OnMismatch::Recreate {
        match Cache::attach(name, config.dir.as_deref()) {
            Err(Error::NotFound(_)) => {}
            other => return other,
        }
    }
    open_cache(name, config, on_mismatch)
}
