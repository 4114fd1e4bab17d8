//! The per-shard writer lock: a futex word holding its owner's token
//! ([`crate::layout::lock_word`]), taken by compare-and-swap, stolen only from an owner that
//! is provably dead, released by a swap that wakes one sleeper.
//!
//! Taking the lock does not make a writer: `journal::Writer::enter` takes it and then
//! repairs whatever a dead owner left half done; every writer goes through there.
//!
//! # Invariants
//! 1. **No false steal.** A lock is stolen only from a token whose participant generation
//!    changed (the slot was taken over by a newer handle) or whose OFD lock byte is free (the
//!    kernel dropped it with the owner's last fd): never on a PID, never from a stopped or
//!    preempted live process. A probe that fails counts as alive: never steal on doubt.
//! 2. **Our own token is stale.** Threads of one process queue on the handle's local mutex
//!    first, so a word that holds our own token while we hold that mutex was left by a
//!    previous life of this handle (or is corrupt): it is taken over at once.
//! 3. **No lost wake-up.** A waiter sets WAITERS before it sleeps, and only on the value it
//!    saw; release swaps the word to 0 and wakes one sleeper if WAITERS was set. The 2 ms
//!    timeout bounds a wait whose owner died without waking anyone.
//! 4. Readers never look at the lock word, so nothing here can block a read.

use crate::error::{Error, Result};
use crate::fault::point;
use crate::handle::{Handle, Shard};
use crate::layout::{lock_word, participant, PARTICIPANTS};
use crate::region;
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::sync::{futex_wait, futex_wake_one, AtomicU32, MutexGuard, TryLockError};

/// How often a contender spins on the word before it sleeps on the futex.
const SPINS: usize = 100;

/// The shard lock, held; dropping it releases the futex word and wakes a waiter.
pub(crate) struct Guard<'a> {
    shard: Shard<'a>,
    _local: MutexGuard<'a, ()>,
}

impl<'a> Guard<'a> {
    /// The shard this guard holds.
    #[inline]
    pub(crate) fn shard(&self) -> Shard<'a> {
        self.shard
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let word = self.shard.lock_word();
        let prev = word.swap(0, Release);
        point();
        if prev & lock_word::WAITERS != 0 {
            futex_wake_one(word);
        }
    }
}

/// Takes the writer lock of shard `index`, stealing it only from a dead owner (see the
/// module invariants). The journal may be left open by that owner: callers go through
/// `journal::Writer::enter`, which repairs it.
///
/// # Errors
/// [`Error::Forked`] in a forked child of the process that opened the handle;
/// [`Error::Corrupt`] once the file was truncated under us;
/// [`Error::Retired`] once another process has recreated the cache.
pub(crate) fn acquire(handle: &Handle, index: usize) -> Result<Guard<'_>> {
    usable(handle)?;
    let local = handle.local[index]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let shard = handle.shard(index);
    let word = shard.lock_word();
    let me = handle.token;
    if word.compare_exchange(0, me, Acquire, Relaxed).is_err() {
        acquire_slow(handle, word);
    }
    point();
    Ok(Guard {
        shard,
        _local: local,
    })
}

/// Takes the writer lock of shard `index` only if it is free now: `Ok(None)` when another
/// thread of this process or another process holds it (or a dead owner's token is still
/// in the word: [`acquire`] steals it). Never waits.
///
/// # Errors
/// Those of [`acquire`].
pub(crate) fn try_acquire(handle: &Handle, index: usize) -> Result<Option<Guard<'_>>> {
    usable(handle)?;
    let local = match handle.local[index].try_lock() {
        Ok(local) => local,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return Ok(None),
    };
    let shard = handle.shard(index);
    if shard
        .lock_word()
        .compare_exchange(0, handle.token, Acquire, Relaxed)
        .is_err()
    {
        return Ok(None);
    }
    point();
    Ok(Some(Guard {
        shard,
        _local: local,
    }))
}

/// Whether `handle` may write at all: not a parent's handle in a forked child (the fork
/// hook's generation, a load where `getpid` would be a system call on every write), not on
/// a truncated file, not on a retired cache.
#[inline]
fn usable(handle: &Handle) -> Result<()> {
    if handle.fork_generation != crate::region::fork_generation() {
        return Err(Error::Forked);
    }
    handle.intact()?;
    if handle.is_retired() {
        return Err(Error::Retired(handle.path.clone()));
    }
    Ok(())
}

/// Spins a little, then loops: take a free word, steal from a dead owner, or sleep on the
/// futex (2 ms at most, then probe the owner again).
fn acquire_slow(handle: &Handle, word: &AtomicU32) {
    let me = handle.token;
    for _ in 0..SPINS {
        std::hint::spin_loop();
        if word.load(Relaxed) == 0 && word.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
            return;
        }
    }
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 2_000_000,
    };
    loop {
        let cur = word.load(Relaxed);
        if cur == 0 {
            // Someone else may be asleep: keep WAITERS set so our release wakes them.
            if word
                .compare_exchange(0, me | lock_word::WAITERS, Acquire, Relaxed)
                .is_ok()
            {
                return;
            }
            continue;
        }
        let owner = cur & !lock_word::WAITERS;
        // Our own token while we hold this process's local mutex cannot be current
        // (we died there in a previous life, or the word is corrupt): stale.
        if owner == me || !alive(handle, owner) {
            if word
                .compare_exchange(cur, me | lock_word::WAITERS, Acquire, Relaxed)
                .is_ok()
            {
                return;
            }
            continue;
        }
        if cur & lock_word::WAITERS == 0
            && word
                .compare_exchange(cur, cur | lock_word::WAITERS, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        futex_wait(word, cur | lock_word::WAITERS, &timeout);
    }
}

/// Whether the owner of a lock token is a live participant: its slot still has the token's
/// generation and someone holds the slot's OFD lock byte.
fn alive(handle: &Handle, owner: u32) -> bool {
    let index = (owner & lock_word::PARTICIPANT_MASK) as usize;
    if index >= PARTICIPANTS {
        return false;
    }
    let gen = u64::from((owner >> lock_word::GEN_SHIFT) & lock_word::GEN_MASK as u32);
    let current = handle
        .region
        .u64(handle.layout.participant(index) + participant::GEN)
        .load(Acquire);
    if current & lock_word::GEN_MASK != gen {
        return false; // the slot was taken over by a newer participant
    }
    // An error probing counts as alive: never steal on doubt.
    region::byte_is_locked(&handle.file, index as u32).unwrap_or(true)
}
