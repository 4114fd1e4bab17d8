//! The undo journal: every store to a word that a reader or a later writer can reach is
//! logged (offset, old value) before it is made, so a writer killed at any instruction
//! leaves a shard that the next writer rolls back to exactly its state before the
//! operation. A clear is the one operation rolled forward instead.
//!
//! [`Writer`] is the only way to write a shard: it takes the shard lock
//! ([`crate::lock::acquire`]) and runs recovery when the journal is not idle, so a
//! transaction ([`Txn`], which borrows a `Writer`) always starts on a consistent shard.
//!
//! ```text
//! begin:   len = 0; state = ACTIVE
//! store:   entry[len] = {off, old}; len += 1; compiler_fence; *off = new
//! commit:  state = IDLE (the commit point); len = 0
//! recover: ACTIVE   -> undo newest first, state = IDLE, O(1) checks (else clear)
//!          CLEARING -> finish the clear
//! ```
//!
//! # Invariants
//! 1. **Journal before store.** A journaled word changes only after its entry and the new
//!    length are stored; the `compiler_fence` keeps the compiler from reordering them, and a
//!    dying process's stores stay in memory in program order (the platform assumption in
//!    `docs/design/cache.md`).
//! 2. **Versions never go back.** A slot version is undone to the smallest even value above
//!    both its logged and its current value, so a reader that straddled the crash always
//!    sees a change.
//! 3. **Undo is idempotent.** Recovery only stores old values (and versions upwards) and
//!    marks the journal IDLE last, so a writer killed inside recovery leaves work that the
//!    next one redoes from the start (`tests/crash.rs` kills recovery at every store).
//! 4. **Nothing from shared memory is trusted.** Entries outside the shard or misaligned,
//!    and a state that is neither ACTIVE nor CLEARING, clear the shard instead; so does a
//!    rolled-back shard whose head, tail, hand, free head or length is out of range.

use std::cell::Cell;

use crate::error::Result;
use crate::fault::point;
use crate::handle::{Handle, Shard};
use crate::layout::{
    lock_word, participant, shard_header, slot, Layout, JOURNAL_ACTIVE, JOURNAL_CAPACITY,
    JOURNAL_CLEARING, JOURNAL_ENTRY, JOURNAL_IDLE, NONE, PARTICIPANTS,
};
use crate::lock::{self, Guard};
use crate::region::Region;
use crate::sync::Ordering::{self, Acquire, Relaxed, Release};
use crate::sync::{compiler_fence, AtomicU64};

/// Journal offsets with this bit are slot versions: rolled back *forward* (invariant 2).
const ENTRY_IS_VERSION: u64 = 1 << 63;

/// A shard's writer: its lock held and its journal idle.
pub(crate) struct Writer<'a> {
    guard: Guard<'a>,
}

impl<'a> Writer<'a> {
    /// Takes the writer lock of shard `index` and undoes (or, for a clear, finishes)
    /// whatever operation a dead writer left open there.
    ///
    /// # Errors
    /// Those of [`lock::acquire`].
    pub(crate) fn enter(handle: &'a Handle, index: usize) -> Result<Writer<'a>> {
        let guard = lock::acquire(handle, index)?;
        let shard = guard.shard();
        let state = shard.word(shard_header::JOURNAL_STATE).load(Acquire);
        if state != JOURNAL_IDLE {
            recover(shard, state);
        }
        Ok(Writer { guard })
    }

    /// Like [`Writer::enter`], but only if it need not wait: `Ok(None)` when the lock is
    /// held or the journal needs recovery (which the caller then runs by `enter`, where it
    /// may take its time).
    ///
    /// # Errors
    /// Those of [`lock::try_acquire`].
    pub(crate) fn try_enter(handle: &'a Handle, index: usize) -> Result<Option<Writer<'a>>> {
        let Some(guard) = lock::try_acquire(handle, index)? else {
            return Ok(None);
        };
        let state = guard
            .shard()
            .word(shard_header::JOURNAL_STATE)
            .load(Acquire);
        if state != JOURNAL_IDLE {
            return Ok(None); // the guard drops: released, for `enter` to take and repair
        }
        Ok(Some(Writer { guard }))
    }

    #[inline]
    pub(crate) fn shard(&self) -> Shard<'a> {
        self.guard.shard()
    }

    /// Empties the shard. Rolled *forward*: a writer that finds the journal CLEARING
    /// finishes the clear, so the clear is atomic (before or after) for this shard.
    pub(crate) fn clear(&self) {
        clear(self.shard());
    }
}

/// An open transaction on one shard; it cannot outlive its [`Writer`].
pub(crate) struct Txn<'w> {
    shard: Shard<'w>,
    /// The journal's length word and its entries (two words each), bounds-checked once at
    /// `begin` rather than on every store.
    len_word: &'w AtomicU64,
    entries: &'w [AtomicU64],
    /// The journal's length as this writer last stored it: it is the only writer of the
    /// shard, so it need not load the word back (recovery reads the stored word).
    len: Cell<usize>,
}

impl<'w> Txn<'w> {
    pub(crate) fn begin(writer: &'w Writer<'_>) -> Txn<'w> {
        let shard = writer.shard();
        let region = &shard.handle.region;
        let len_word = shard.word(shard_header::JOURNAL_LEN);
        let entries = region.words(
            shard.base() + shard_header::JOURNAL_ENTRIES,
            JOURNAL_CAPACITY * JOURNAL_ENTRY / 8,
        );
        len_word.store(0, Release);
        point();
        shard
            .word(shard_header::JOURNAL_STATE)
            .store(JOURNAL_ACTIVE, Release);
        point();
        Txn {
            shard,
            len_word,
            entries,
            len: Cell::new(0),
        }
    }

    #[inline]
    pub(crate) fn shard(&self) -> Shard<'w> {
        self.shard
    }

    /// Journals the old value of the word at `off`, then stores `new` there.
    #[inline]
    pub(crate) fn store(&self, off: usize, new: u64) -> Result<()> {
        self.log(off, new, 0)
    }

    /// Like `store`, for a slot version (rolled back to a *newer* even value).
    #[inline]
    pub(crate) fn store_version(&self, off: usize, new: u64) -> Result<()> {
        self.log(off, new, ENTRY_IS_VERSION)
    }

    #[inline]
    fn log(&self, off: usize, new: u64, kind: u64) -> Result<()> {
        let n = self.len.get();
        let Some(entry) = self.entries.get(2 * n..2 * n + 2) else {
            return Err(self.shard.handle.corrupt("journal overflow"));
        };
        let word = self.shard.handle.region.u64(off);
        entry[0].store(off as u64 | kind, Release);
        point();
        entry[1].store(word.load(Relaxed), Release);
        point();
        self.len_word.store(n as u64 + 1, Release);
        self.len.set(n + 1);
        point();
        // The entry must be in memory before the store it protects (process death keeps
        // our stores in program order; this keeps the compiler from reordering them).
        compiler_fence(Ordering::SeqCst);
        word.store(new, Release);
        point();
        Ok(())
    }

    /// The commit point: once the state is IDLE, nothing of this transaction is undone.
    pub(crate) fn commit(self) {
        self.shard
            .word(shard_header::JOURNAL_STATE)
            .store(JOURNAL_IDLE, Release);
        point();
        self.shard.word(shard_header::JOURNAL_LEN).store(0, Release);
        point();
    }
}

/// Undoes (or, for a clear, finishes) the operation a dead writer left open.
fn recover(shard: Shard<'_>, state: u64) {
    let handle = shard.handle;
    let base = shard.base();
    let (lo, hi) = (base, base + handle.layout.shard_bytes);
    let mut ok = state == JOURNAL_ACTIVE || state == JOURNAL_CLEARING;
    if state == JOURNAL_ACTIVE {
        let n = shard
            .word(shard_header::JOURNAL_LEN)
            .load(Acquire)
            .min(JOURNAL_CAPACITY as u64) as usize;
        for i in (0..n).rev() {
            let entry = base + shard_header::JOURNAL_ENTRIES + i * JOURNAL_ENTRY;
            let raw = handle.region.u64(entry).load(Acquire);
            let old = handle.region.u64(entry + 8).load(Acquire);
            let off = (raw & !ENTRY_IS_VERSION) as usize;
            if off < lo || off + 8 > hi || off % 8 != 0 {
                ok = false;
                break;
            }
            let word = handle.region.u64(off);
            if raw & ENTRY_IS_VERSION != 0 {
                word.store(next_even(word.load(Relaxed).max(old)), Release);
            } else {
                word.store(old, Release);
            }
            point();
        }
    }
    if ok && state == JOURNAL_ACTIVE {
        shard
            .word(shard_header::JOURNAL_STATE)
            .store(JOURNAL_IDLE, Release);
        point();
        ok = quick_check(shard);
    }
    if !ok || state == JOURNAL_CLEARING {
        clear(shard);
    }
    handle.count(participant::RECOVERIES, 1);
}

/// The O(1) checks after a rollback; failing them clears the shard.
fn quick_check(shard: Shard<'_>) -> bool {
    meta_fault(shard).is_none()
}

/// What is wrong with the shard's meta words (length, list heads, hand), if anything.
fn meta_fault(shard: Shard<'_>) -> Option<&'static str> {
    let layout = &shard.handle.layout;
    let slots = layout.slots as u64;
    let idx_ok = |field| {
        let v = shard.word(field).load(Relaxed);
        v == NONE || v < slots
    };
    if shard.word(shard_header::LEN).load(Relaxed) > layout.capacity as u64 {
        return Some("a shard's len exceeds its capacity");
    }
    let in_range = idx_ok(shard_header::FREE_HEAD)
        && idx_ok(shard_header::HEAD)
        && idx_ok(shard_header::TAIL)
        && idx_ok(shard_header::HAND);
    (!in_range).then_some("a shard's free list, SIEVE head, tail or hand points outside it")
}

/// The cheap checks of a shard's header, without its lock and changing nothing: what is
/// wrong, if anything. They hold at every instant of a healthy cache, a live writer's
/// transaction and a dead writer's half-done one included, because every word they look at
/// is only ever stored with a value that passes them (a lock token of a real participant, a
/// known journal state, a journal length within capacity and entries inside the shard, list
/// indices in range, `len` at most the capacity). So a failure is corruption, never a race.
pub(crate) fn header_fault(shard: Shard<'_>) -> Option<&'static str> {
    let handle = shard.handle;
    let owner = shard.lock_word().load(Relaxed) & !lock_word::WAITERS;
    if owner != 0 && (owner & lock_word::PARTICIPANT_MASK) as usize >= PARTICIPANTS {
        return Some("a shard's lock word names no participant");
    }
    let state = shard.word(shard_header::JOURNAL_STATE).load(Acquire);
    if ![JOURNAL_IDLE, JOURNAL_ACTIVE, JOURNAL_CLEARING].contains(&state) {
        return Some("a shard's journal is in no known state");
    }
    let len = shard.word(shard_header::JOURNAL_LEN).load(Acquire);
    if len > JOURNAL_CAPACITY as u64 {
        return Some("a shard's journal is longer than its capacity");
    }
    if state == JOURNAL_ACTIVE {
        let base = shard.base();
        let (lo, hi) = (base, base + handle.layout.shard_bytes);
        for i in 0..len as usize {
            let entry = base + shard_header::JOURNAL_ENTRIES + i * JOURNAL_ENTRY;
            let off = (handle.region.u64(entry).load(Acquire) & !ENTRY_IS_VERSION) as usize;
            if off < lo || off + 8 > hi || off % 8 != 0 {
                return Some("a shard's journal names a word outside the shard");
            }
        }
    }
    meta_fault(shard)
}

/// The rolled-forward clear: CLEARING is its commit point.
fn clear(shard: Shard<'_>) {
    shard
        .word(shard_header::JOURNAL_STATE)
        .store(JOURNAL_CLEARING, Release);
    point();
    reset_shard(&shard.handle.region, &shard.handle.layout, shard.index);
    shard
        .word(shard_header::JOURNAL_STATE)
        .store(JOURNAL_IDLE, Release);
    point();
}

/// Empty shard: every bucket NONE, every slot FREE on the free list (with a new even
/// version), no entry. Used by a clear and by formatting a new region.
pub(crate) fn reset_shard(region: &Region, layout: &Layout, shard: usize) {
    for bucket in 0..layout.buckets {
        region
            .u64(layout.bucket(shard, bucket))
            .store(NONE, Release);
    }
    point();
    for index in 0..layout.slots {
        let base = layout.slot(shard, index);
        region.u64(base + slot::LIVE).store(0, Release);
        let ver = region.u64(base + slot::VER);
        ver.store(next_even(ver.load(Relaxed)), Release);
        let next = if index + 1 < layout.slots {
            index as u64 + 1
        } else {
            NONE
        };
        region.u64(base + slot::FREE_NEXT).store(next, Relaxed);
    }
    point();
    let meta = layout.shard(shard);
    region.u64(meta + shard_header::FREE_HEAD).store(0, Release);
    region.u64(meta + shard_header::HEAD).store(NONE, Release);
    region.u64(meta + shard_header::TAIL).store(NONE, Release);
    region.u64(meta + shard_header::HAND).store(NONE, Release);
    region.u64(meta + shard_header::LEN).store(0, Release);
    point();
}

/// The smallest even number above `v` (versions only grow, so a reader that saw any
/// earlier value always notices a change).
#[inline]
pub(crate) fn next_even(v: u64) -> u64 {
    (v | 1).wrapping_add(1)
}
