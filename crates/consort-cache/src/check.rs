//! The full invariant check, and the snapshot the tests compare states with: both walk a
//! shard under its writer lock (so both recover first) and change nothing. The header check
//! is the cheap part of the full one: lock-free, read-only, a few words per shard.
//!
//! Checked per shard, with the journal IDLE (the invariants of `docs/design/cache.md`):
//! 1. every slot is on exactly one of the free list (`live = 0`) and the SIEVE list
//!    (`live = 1`), and `free + live = capacity + 1`: no slot is lost;
//! 2. every live slot is in exactly one bucket chain, the one its hash names; chains hold
//!    only live slots; `len` counts the live slots;
//! 3. live slots have even versions; the SIEVE back links, tail and hand agree with the list.
//!
//! Every walk is bounded (a cycle is reported, not followed) and every index is checked.

use crate::error::Result;
use crate::handle::{Handle, Shard};
use crate::journal::{header_fault, Writer};
use crate::layout::{shard_header, slot, JOURNAL_IDLE, NONE};
use crate::sync::Ordering::{Acquire, Relaxed};

/// What [`Cache::check_invariants`](crate::Cache::check_invariants) verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub shards: usize,
    /// Live entries (in a bucket chain, in the SIEVE list, counted in `len`).
    pub live: usize,
    /// Free slots; `live + free` is the capacity.
    pub free: usize,
}

/// One entry as [`Cache::snapshot`](crate::Cache::snapshot) lists it: key, value, expiry
/// (monotonic ns, 0 = never).
pub type Entry = (Vec<u8>, Vec<u8>, u64);

/// The cheap checks, without a lock and changing nothing: the file was not truncated under
/// us, and every shard's header is sane (`journal::header_fault`). The superblock was
/// checked when the handle was opened.
pub(crate) fn check_headers(handle: &Handle) -> Result<()> {
    handle.intact()?;
    for shard in 0..handle.layout.shards {
        if let Some(what) = header_fault(handle.shard(shard)) {
            return Err(handle.corrupt(what));
        }
    }
    // Reading a truncated page is what trips the guard: look again after the reads.
    handle.intact()
}

/// Checks the headers, then every shard under its lock. The headers come first because
/// taking a lock runs recovery, which clears a shard whose journal it cannot trust: that
/// would hide the corruption this check is there to report.
pub(crate) fn check_invariants(handle: &Handle) -> Result<Report> {
    check_headers(handle)?;
    let mut report = Report {
        shards: handle.layout.shards,
        live: 0,
        free: 0,
    };
    for shard in 0..handle.layout.shards {
        let writer = Writer::enter(handle, shard)?;
        let (live, free) = check_shard(writer.shard())?;
        report.live += live;
        report.free += free;
    }
    Ok(report)
}

fn check_shard(shard: Shard<'_>) -> Result<(usize, usize)> {
    let handle = shard.handle;
    let slots = handle.layout.slots;
    let fail = |what| Err(handle.corrupt(what));
    if shard.word(shard_header::JOURNAL_STATE).load(Acquire) != JOURNAL_IDLE {
        return fail("journal not idle after recovery");
    }
    let mut seen = vec![0u8; slots]; // 1 = free list, 2 = SIEVE list
    let mut free = 0;
    let mut at = shard.word(shard_header::FREE_HEAD).load(Relaxed);
    while at != NONE {
        let index = shard.slot_index(at, "free list points outside the shard")?;
        if seen[index] != 0 {
            return fail("free list has a cycle");
        }
        seen[index] = 1;
        if shard.slot_word(index, slot::LIVE).load(Relaxed) != 0 {
            return fail("a live slot is on the free list");
        }
        free += 1;
        at = shard.slot_word(index, slot::FREE_NEXT).load(Relaxed);
    }
    let mut live = 0;
    let mut prev = NONE;
    let mut at = shard.word(shard_header::HEAD).load(Relaxed);
    while at != NONE {
        let index = shard.slot_index(at, "SIEVE list points outside the shard")?;
        if seen[index] != 0 {
            return fail("SIEVE list has a cycle or shares a slot with the free list");
        }
        seen[index] = 2;
        if shard.slot_word(index, slot::LIVE).load(Relaxed) != 1 {
            return fail("a slot on the SIEVE list is not live");
        }
        if shard.slot_word(index, slot::VER).load(Relaxed) & 1 != 0 {
            return fail("a live slot has an odd version");
        }
        if shard.slot_word(index, slot::PREV).load(Relaxed) != prev {
            return fail("SIEVE list back link is wrong");
        }
        live += 1;
        prev = at;
        at = shard.slot_word(index, slot::NEXT).load(Relaxed);
    }
    if shard.word(shard_header::TAIL).load(Relaxed) != prev {
        return fail("SIEVE tail is not the last entry");
    }
    let hand = shard.word(shard_header::HAND).load(Relaxed);
    if hand != NONE && (hand >= slots as u64 || seen[hand as usize] != 2) {
        return fail("SIEVE hand is not on a live entry");
    }
    if free + live != slots {
        return fail("free + live != slots (lost slots)");
    }
    if shard.word(shard_header::LEN).load(Relaxed) != live as u64 {
        return fail("len does not count the live entries");
    }
    let mut chained = 0;
    for bucket in 0..handle.layout.buckets {
        let mut at = shard.bucket(bucket).load(Relaxed);
        while at != NONE {
            let index = shard.slot_index(at, "bucket chain points outside the shard")?;
            if seen[index] != 2 {
                return fail("a bucket chain holds a slot that is not live (or twice)");
            }
            seen[index] = 3;
            let hash = shard.slot_word(index, slot::HASH).load(Relaxed);
            if (hash as usize) & (handle.layout.buckets - 1) != bucket
                || handle.place(hash).0 != shard.index
            {
                return fail("an entry sits in the wrong bucket");
            }
            chained += 1;
            at = shard.slot_word(index, slot::CHAIN).load(Relaxed);
        }
    }
    if chained != live {
        return fail("a live entry is in no bucket chain");
    }
    Ok((live, free))
}

/// Every live entry as (key, value, expires_at), sorted; takes each shard lock.
pub(crate) fn snapshot(handle: &Handle) -> Result<Vec<Entry>> {
    let layout = &handle.layout;
    let mut all = Vec::new();
    for shard in 0..layout.shards {
        let writer = Writer::enter(handle, shard)?;
        let shard = writer.shard();
        let mut at = shard.word(shard_header::HEAD).load(Relaxed);
        for _ in 0..layout.slots {
            if at == NONE {
                break;
            }
            let index = shard.slot_index(at, "SIEVE list points outside the shard")?;
            let base = shard.slot_offset(index);
            let lens = shard.slot_word(index, slot::LENS).load(Relaxed);
            let (klen, vlen) = ((lens >> 32) as usize, (lens & 0xFFFF_FFFF) as usize);
            if klen > layout.max_key || vlen > layout.max_value {
                return Err(handle.corrupt("a slot's lengths exceed the cache's maxima"));
            }
            let bytes = |off: usize, len: usize| {
                let mut out = Vec::with_capacity(len.div_ceil(8) * 8);
                for i in 0..len.div_ceil(8) {
                    out.extend_from_slice(
                        &handle.region.u64(off + i * 8).load(Relaxed).to_ne_bytes(),
                    );
                }
                out.truncate(len);
                out
            };
            let key = bytes(base + slot::HEADER, klen);
            let value = bytes(base + slot::HEADER + layout.key_words * 8, vlen);
            let expires = shard.slot_word(index, slot::EXPIRES).load(Relaxed);
            all.push((key, value, expires));
            at = shard.slot_word(index, slot::NEXT).load(Relaxed);
        }
    }
    all.sort();
    Ok(all)
}
