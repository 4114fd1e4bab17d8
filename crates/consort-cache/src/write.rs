//! The write operations: insert (with SIEVE eviction), remove, purge of expired entries and
//! clear, each one transaction of the journal under the shard's writer lock.
//!
//! An insert takes the shard's spare FREE slot (a shard has one slot more than its capacity,
//! so there always is one), evicts if the shard is full, writes the payload into the FREE
//! slot, links it at the SIEVE head and **publishes it with one bucket store**; a replace
//! then unlinks and frees the old slot in the same transaction.
//!
//! # Invariants
//! 1. **A slot's payload (hash, lengths, key, value, expiry, chain link, SIEVE links) is
//!    written only while the slot is FREE and unreachable**; every store to a reachable word
//!    (bucket heads, chain links of live slots, SIEVE links, free list head, `live`, `ver`,
//!    `len`, hand) goes through [`Txn::store`].
//! 2. **Seqlock writer.** A slot's version is odd, and that odd value is ordered before any
//!    payload store by `fence(Release)`, while the payload is written; it becomes even again
//!    before the slot is published.
//! 3. Every slot index read from the shard is bounds-checked before use; every loop over a
//!    chain or list is bounded by the number of slots, so a corrupt shard gives
//!    `Error::Corrupt`, never a hang.
//! 4. A shard without a spare slot is inconsistent: it is cleared (a cache may always start
//!    over) rather than trusted.

use std::time::Duration;

use crate::error::Result;
use crate::fault::point;
use crate::handle::{coarse_now_ns, now_ns, ttl_ns, Handle, Shard};
use crate::journal::{next_even, Txn, Writer};
use crate::layout::{pack_word, participant, shard_header, slot, NONE};
use crate::sync::fence;
use crate::sync::Ordering::{Acquire, Relaxed, Release};

/// What [`Cache::insert`](crate::Cache::insert) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new entry.
    Stored,
    /// The key had an entry; it now has this value.
    Replaced,
    /// The key or value is longer than the cache allows; nothing changed.
    Oversize,
}

/// Inserts or replaces `key`; `ttl` overrides the cache's default TTL.
pub(crate) fn insert(
    handle: &Handle,
    key: &[u8],
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<Insert> {
    insert_via(handle, key, value, ttl, |handle, shard| {
        Writer::enter(handle, shard).map(Some)
    })?
    .ok_or_else(|| handle.corrupt("a writer that never declines declined"))
}

/// Like [`insert`], but only if it need not wait: `Ok(None)` when the shard's lock is held
/// (by another thread or process) or a dead writer's work must be repaired first.
pub(crate) fn try_insert(
    handle: &Handle,
    key: &[u8],
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<Option<Insert>> {
    insert_via(handle, key, value, ttl, Writer::try_enter)
}

fn insert_via<'a>(
    handle: &'a Handle,
    key: &[u8],
    value: &[u8],
    ttl: Option<Duration>,
    enter: impl FnOnce(&'a Handle, usize) -> Result<Option<Writer<'a>>>,
) -> Result<Option<Insert>> {
    if key.len() > handle.layout.max_key || value.len() > handle.layout.max_value {
        return Ok(Some(Insert::Oversize));
    }
    let hash = handle.hash(key);
    let (shard, bucket) = handle.place(hash);
    let Some(writer) = enter(handle, shard)? else {
        return Ok(None);
    };
    let ttl_ns = match ttl {
        Some(ttl) => ttl_ns(Some(ttl)),
        None => handle.default_ttl_ns,
    };
    // The clock is read only when an entry expires (it costs a vDSO call).
    let expires = if ttl_ns == 0 {
        0
    } else {
        now_ns().saturating_add(ttl_ns)
    };
    let old = find(writer.shard(), bucket, hash, key)?;
    if writer.shard().word(shard_header::FREE_HEAD).load(Relaxed) == NONE {
        // No spare slot although one always exists: the shard is inconsistent, and a
        // cache may always start over.
        writer.clear();
        return insert_locked(&writer, bucket, hash, key, value, expires, None).map(Some);
    }
    insert_locked(&writer, bucket, hash, key, value, expires, old).map(Some)
}

/// Removes `key`; `true` if it was there.
pub(crate) fn remove(handle: &Handle, key: &[u8]) -> Result<bool> {
    if key.len() > handle.layout.max_key {
        return Ok(false);
    }
    let hash = handle.hash(key);
    let (shard, bucket) = handle.place(hash);
    let writer = Writer::enter(handle, shard)?;
    let Some((index, _)) = find(writer.shard(), bucket, hash, key)? else {
        return Ok(false);
    };
    let txn = Txn::begin(&writer);
    remove_slot(&txn, index)?;
    shrink(&txn)?;
    txn.commit();
    Ok(true)
}

/// Removes up to `max` expired entries, oldest first, shard by shard; returns how many.
pub(crate) fn purge_expired(handle: &Handle, max: usize) -> Result<usize> {
    let mut purged = 0;
    for shard in 0..handle.layout.shards {
        if purged >= max {
            break;
        }
        let writer = Writer::enter(handle, shard)?;
        let shard = writer.shard();
        let now = now_ns();
        let mut at = shard.word(shard_header::TAIL).load(Relaxed);
        for _ in 0..handle.layout.slots {
            if at == NONE || purged >= max {
                break;
            }
            let index = shard.slot_index(at, "SIEVE link outside the shard")?;
            at = shard.slot_word(index, slot::PREV).load(Relaxed);
            if expired(shard, index, now) {
                let txn = Txn::begin(&writer);
                remove_slot(&txn, index)?;
                shrink(&txn)?;
                txn.commit();
                handle.count(participant::EXPIRATIONS, 1);
                purged += 1;
            }
        }
    }
    Ok(purged)
}

/// Removes every entry. Each shard is cleared atomically (before or after), not the cache.
pub(crate) fn clear(handle: &Handle) -> Result<()> {
    for shard in 0..handle.layout.shards {
        Writer::enter(handle, shard)?.clear();
    }
    Ok(())
}

/// Zeroes every participant's hit and miss counters while holding every shard lock.
pub(crate) fn reset_counters(handle: &Handle) -> Result<()> {
    let writers = (0..handle.layout.shards)
        .map(|shard| Writer::enter(handle, shard))
        .collect::<Result<Vec<_>>>()?;
    for index in 0..crate::layout::PARTICIPANTS {
        let base = handle.layout.participant(index);
        handle
            .region
            .u64(base + participant::HITS)
            .store(0, Relaxed);
        handle
            .region
            .u64(base + participant::MISSES)
            .store(0, Relaxed);
    }
    drop(writers);
    Ok(())
}

/// Walks `key`'s chain under the lock: `(slot, predecessor)`.
fn find(
    shard: Shard<'_>,
    bucket: usize,
    hash: u64,
    key: &[u8],
) -> Result<Option<(usize, Option<usize>)>> {
    let mut raw = shard.bucket(bucket).load(Acquire);
    let mut pred = None;
    for _ in 0..=shard.handle.layout.slots {
        if raw == NONE {
            return Ok(None);
        }
        let index = shard.slot_index(raw, "bucket chain points outside the shard")?;
        if shard.slot_word(index, slot::HASH).load(Relaxed) == hash
            && key_matches(shard, index, key)
        {
            return Ok(Some((index, pred)));
        }
        pred = Some(index);
        raw = shard.slot_word(index, slot::CHAIN).load(Relaxed);
    }
    Err(shard.handle.corrupt("bucket chain has a cycle"))
}

fn key_matches(shard: Shard<'_>, index: usize, key: &[u8]) -> bool {
    let lens = shard.slot_word(index, slot::LENS).load(Relaxed);
    if (lens >> 32) as usize != key.len() {
        return false;
    }
    let data = shard.slot_offset(index) + slot::HEADER;
    key.chunks(8)
        .enumerate()
        .all(|(i, chunk)| shard.handle.region.u64(data + i * 8).load(Relaxed) == pack_word(chunk))
}

/// The insert transaction: take the spare FREE slot, evict if full, write the
/// payload into the FREE slot, link it into SIEVE and publish it with one bucket store.
#[allow(clippy::too_many_arguments)]
fn insert_locked(
    writer: &Writer<'_>,
    bucket: usize,
    hash: u64,
    key: &[u8],
    value: &[u8],
    expires: u64,
    old: Option<(usize, Option<usize>)>,
) -> Result<Insert> {
    let txn = Txn::begin(writer);
    let shard = writer.shard();
    let handle = shard.handle;
    let region = &handle.region;
    let meta = shard.base();
    let new = shard.slot_index(
        shard.word(shard_header::FREE_HEAD).load(Relaxed),
        "free list points outside the shard",
    )?;
    let free_next = shard.slot_word(new, slot::FREE_NEXT).load(Relaxed);
    txn.store(meta + shard_header::FREE_HEAD, free_next)?;
    let mut evicted = None;
    if old.is_none() && shard.word(shard_header::LEN).load(Relaxed) >= handle.layout.capacity as u64
    {
        // The coarse clock (a memory read, no `rdtsc`): eviction only prefers expired
        // entries, and the coarse clock lags, never leads, so nothing counts as expired early.
        evicted = Some(evict_one(&txn, coarse_now_ns())?);
    }
    let base = shard.slot_offset(new);
    let ver = region.u64(base + slot::VER).load(Relaxed);
    txn.store_version(base + slot::VER, ver | 1)?;
    // Boehm's seqlock writer: the odd version is visible before any payload store.
    fence(Release);
    let bucket_off = shard.bucket_offset(bucket);
    let head = shard.word(shard_header::HEAD).load(Relaxed);
    let put = |field: usize, value: u64| {
        region.u64(base + field).store(value, Relaxed);
        point();
    };
    put(slot::HASH, hash);
    put(slot::EXPIRES, expires);
    put(slot::LENS, (key.len() as u64) << 32 | value.len() as u64);
    put(slot::CHAIN, region.u64(bucket_off).load(Relaxed));
    put(slot::PREV, NONE);
    put(slot::NEXT, head);
    put(slot::VISITED, 0);
    // Only the key's own words: readers and `find` compare `key.len()` bytes (the last
    // word zero-padded), so the rest of the key area is never read; writing all of it cost
    // `max_key / 8` stores per insert (64 for a 512-byte maximum).
    write_bytes(shard, base + slot::HEADER, key, key.len().div_ceil(8));
    point();
    write_bytes(
        shard,
        base + slot::HEADER + handle.layout.key_words * 8,
        value,
        value.len().div_ceil(8),
    );
    point();
    txn.store(base + slot::LIVE, 1)?;
    txn.store_version(base + slot::VER, next_even(ver | 1))?;
    // SIEVE: new entries go to the head.
    if head == NONE {
        txn.store(meta + shard_header::TAIL, new as u64)?;
    } else {
        let head = shard.slot_index(head, "SIEVE head outside the shard")?;
        txn.store(shard.slot_offset(head) + slot::PREV, new as u64)?;
    }
    txn.store(meta + shard_header::HEAD, new as u64)?;
    // Publish: one store makes the entry reachable.
    txn.store(bucket_off, new as u64)?;
    let outcome = match old {
        Some((old, pred)) => {
            let pred = pred.unwrap_or(new);
            let after = shard.slot_word(old, slot::CHAIN).load(Relaxed);
            txn.store(shard.slot_offset(pred) + slot::CHAIN, after)?;
            unlink_and_free(&txn, old)?;
            Insert::Replaced
        }
        // An eviction took one entry out for this one: `len` is unchanged.
        None if evicted.is_some() => Insert::Stored,
        None => {
            let len = shard.word(shard_header::LEN).load(Relaxed);
            txn.store(meta + shard_header::LEN, len + 1)?;
            Insert::Stored
        }
    };
    txn.commit();
    handle.count(participant::INSERTS, 1);
    match evicted {
        Some(true) => handle.count(participant::EXPIRATIONS, 1),
        Some(false) => handle.count(participant::EVICTIONS, 1),
        None => {}
    }
    Ok(outcome)
}

/// Stores `bytes` zero-padded into `words` words at `off` (a FREE slot's key or value).
fn write_bytes(shard: Shard<'_>, off: usize, bytes: &[u8], words: usize) {
    let mut chunks = bytes.chunks(8);
    for i in 0..words {
        let word = chunks.next().map_or(0, pack_word);
        shard.handle.region.u64(off + i * 8).store(word, Relaxed);
    }
}

/// Takes `index` out of the SIEVE list, marks it FREE (new version) and pushes it on
/// the free list; its chain link was already taken care of.
fn unlink_and_free(txn: &Txn<'_>, index: usize) -> Result<()> {
    let shard = txn.shard();
    let meta = shard.base();
    let prev = shard.slot_word(index, slot::PREV).load(Relaxed);
    let next = shard.slot_word(index, slot::NEXT).load(Relaxed);
    if prev == NONE {
        txn.store(meta + shard_header::HEAD, next)?;
    } else {
        let prev = shard.slot_index(prev, "SIEVE link outside the shard")?;
        txn.store(shard.slot_offset(prev) + slot::NEXT, next)?;
    }
    if next == NONE {
        txn.store(meta + shard_header::TAIL, prev)?;
    } else {
        let next = shard.slot_index(next, "SIEVE link outside the shard")?;
        txn.store(shard.slot_offset(next) + slot::PREV, prev)?;
    }
    if shard.word(shard_header::HAND).load(Relaxed) == index as u64 {
        txn.store(meta + shard_header::HAND, prev)?;
    }
    let base = shard.slot_offset(index);
    txn.store(base + slot::LIVE, 0)?;
    let ver = shard.handle.region.u64(base + slot::VER).load(Relaxed);
    txn.store_version(base + slot::VER, next_even(ver))?;
    let free = shard.word(shard_header::FREE_HEAD).load(Relaxed);
    shard
        .handle
        .region
        .u64(base + slot::FREE_NEXT)
        .store(free, Relaxed);
    point();
    txn.store(meta + shard_header::FREE_HEAD, index as u64)?;
    Ok(())
}

/// One entry fewer: `len` decremented in the open transaction.
fn shrink(txn: &Txn<'_>) -> Result<()> {
    let shard = txn.shard();
    let len = shard.word(shard_header::LEN).load(Relaxed);
    txn.store(shard.base() + shard_header::LEN, len.saturating_sub(1))
}

/// Removes a live slot (chain, list) in the open transaction; the caller adjusts `len`
/// ([`shrink`]), or leaves it as it is when the slot makes room for a new one (an
/// eviction: one out, one in, two journal entries saved).
fn remove_slot(txn: &Txn<'_>, index: usize) -> Result<()> {
    let shard = txn.shard();
    let hash = shard.slot_word(index, slot::HASH).load(Relaxed);
    let bucket = (hash as usize) & (shard.handle.layout.buckets - 1);
    let bucket_off = shard.bucket_offset(bucket);
    let mut raw = shard.handle.region.u64(bucket_off).load(Relaxed);
    let mut pred = None;
    let mut found = false;
    for _ in 0..=shard.handle.layout.slots {
        if raw == NONE {
            break;
        }
        let at = shard.slot_index(raw, "bucket chain points outside the shard")?;
        if at == index {
            found = true;
            break;
        }
        pred = Some(at);
        raw = shard.slot_word(at, slot::CHAIN).load(Relaxed);
    }
    if !found {
        return Err(shard
            .handle
            .corrupt("a live slot is missing from its bucket chain"));
    }
    let after = shard.slot_word(index, slot::CHAIN).load(Relaxed);
    match pred {
        None => txn.store(bucket_off, after)?,
        Some(pred) => txn.store(shard.slot_offset(pred) + slot::CHAIN, after)?,
    }
    unlink_and_free(txn, index)
}

fn expired(shard: Shard<'_>, index: usize, now: u64) -> bool {
    let expires = shard.slot_word(index, slot::EXPIRES).load(Relaxed);
    expires != 0 && now >= expires
}

/// SIEVE: from the hand towards the head, clear visited bits until an unvisited (or
/// expired) entry turns up, and remove it in the open transaction. `true` if it had
/// expired.
fn evict_one(txn: &Txn<'_>, now: u64) -> Result<bool> {
    let shard = txn.shard();
    let tail = shard.word(shard_header::TAIL).load(Relaxed);
    let mut hand = shard.word(shard_header::HAND).load(Relaxed);
    if hand == NONE {
        hand = tail;
    }
    let mut victim = shard.slot_index(hand, "SIEVE hand outside the shard (or empty list)")?;
    for _ in 0..=2 * shard.handle.layout.slots {
        let visited = shard.slot_word(victim, slot::VISITED);
        if expired(shard, victim, now) || visited.load(Relaxed) == 0 {
            break;
        }
        visited.store(0, Relaxed);
        point();
        let prev = shard.slot_word(victim, slot::PREV).load(Relaxed);
        let next = if prev == NONE { tail } else { prev };
        victim = shard.slot_index(next, "SIEVE link outside the shard")?;
    }
    let expired = expired(shard, victim, now);
    let prev = shard.slot_word(victim, slot::PREV).load(Relaxed);
    remove_slot(txn, victim)?;
    // `unlink_and_free` already moved a hand that pointed at the victim to `prev`.
    if shard.word(shard_header::HAND).load(Relaxed) != prev {
        txn.store(shard.base() + shard_header::HAND, prev)?;
    }
    Ok(expired)
}
