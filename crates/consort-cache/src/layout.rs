//! Where every shared word lives: the superblock, the participant table and the shards,
//! and how the lock word packs its owner. Pure arithmetic: no memory is touched here.
//!
//! # Invariants
//! 1. The byte layout is the one `LAYOUT_VERSION` names: any change to an offset or a
//!    size rule bumps it (`layout/tests.rs` pins the offsets of version 2).
//! 2. All arithmetic is checked once, when a [`Layout`] is built from a validated
//!    configuration; afterwards offsets are computed only from the handle's own copy of the
//!    layout, never from numbers read out of shared memory.
//! 3. Every shared word is 8-byte aligned, except the 4-byte lock word at the start of each
//!    (page-aligned) shard.
//!
//! See `docs/design/cache.md` for the picture.

/// `b"CNSCACH1"` as a little-endian word.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"CNSCACH1");
/// Bumped on any change to the layout below.
pub(crate) const LAYOUT_VERSION: u64 = 2;
/// Identifies the hash function (xxh3-64 with a per-region seed).
pub(crate) const HASH_XXH3: u64 = 1;
/// Ties the layout to this build's word size and byte order.
pub(crate) const ABI: u64 =
    (std::mem::size_of::<usize>() as u64) << 8 | (cfg!(target_endian = "little") as u64);

pub(crate) const PAGE: usize = 4096;
/// Marks "no slot" in every index word.
pub(crate) const NONE: u64 = u64::MAX;

/// Superblock word offsets (page 0).
pub(crate) mod superblock {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    /// `STATE_READY` or `STATE_RETIRED`.
    pub const STATE: usize = 16;
    pub const REGION_LEN: usize = 24;
    pub const SHARDS: usize = 32;
    pub const CAPACITY: usize = 40;
    pub const BUCKETS: usize = 48;
    pub const MAX_KEY: usize = 56;
    pub const MAX_VALUE: usize = 64;
    pub const DEFAULT_TTL_NS: usize = 72;
    pub const HASH_SEED: usize = 80;
    pub const HASH_ALGO: usize = 88;
    pub const ABI: usize = 96;
    pub const PARTICIPANTS: usize = 104;
    /// Entries callers skipped as over the key or value limit ([`crate::Cache::count_oversize`]),
    /// summed over every process. On its own cache line, which no read loads (the line of
    /// `STATE` is loaded by every operation). Added without a version change: the page is
    /// zeros past `PARTICIPANTS` in every file of this version, and older code never reads
    /// it.
    pub const OVERSIZE_SKIPS: usize = 192;
}
pub(crate) const STATE_READY: u64 = 1;
pub(crate) const STATE_RETIRED: u64 = 2;

/// Participant slots: a process takes one (and its OFD lock byte) per open handle.
pub(crate) const PARTICIPANTS: usize = 128;
/// Participant entry: one cache line, written only by its owner (hot counters never share
/// a line with read-mostly configuration or with another process's counters).
pub(crate) mod participant {
    pub const SIZE: usize = 64;
    pub const GEN: usize = 0;
    pub const PID: usize = 8;
    pub const HITS: usize = 16;
    pub const MISSES: usize = 24;
    pub const INSERTS: usize = 32;
    pub const EVICTIONS: usize = 40;
    pub const EXPIRATIONS: usize = 48;
    pub const RECOVERIES: usize = 56;
}
pub(crate) const PARTICIPANTS_BASE: usize = PAGE;

/// Journal capacity per shard; an operation logs at most about 20 stores.
pub(crate) const JOURNAL_CAPACITY: usize = 64;
/// Bytes per journal entry: the word's offset (bit 63: "a slot version"), its old value.
pub(crate) const JOURNAL_ENTRY: usize = 16;
/// Shard-relative offsets of the shard header; the bucket array follows it.
pub(crate) mod shard_header {
    /// Futex word (u32) on its own line; see [`super::lock_word`].
    pub const LOCK: usize = 0;
    /// `JOURNAL_IDLE`, `JOURNAL_ACTIVE` (roll back) or `JOURNAL_CLEARING` (roll forward).
    pub const JOURNAL_STATE: usize = 64;
    /// Entries logged by the open transaction.
    pub const JOURNAL_LEN: usize = 72;
    pub const JOURNAL_ENTRIES: usize = 128;
    pub const META: usize = JOURNAL_ENTRIES + super::JOURNAL_CAPACITY * super::JOURNAL_ENTRY;
    /// First slot of the free list.
    pub const FREE_HEAD: usize = META;
    /// SIEVE list: newest entry (head), oldest (tail), and the hand walking from the tail.
    pub const HEAD: usize = META + 8;
    pub const TAIL: usize = META + 16;
    pub const HAND: usize = META + 24;
    /// Live entries.
    pub const LEN: usize = META + 32;
    /// The bucket array: one word per bucket, the first slot of its chain.
    pub const BUCKETS: usize = META + 64;
}
/// No transaction open.
pub(crate) const JOURNAL_IDLE: u64 = 0;
/// A transaction is open: a writer that finds it so rolls the journal back.
pub(crate) const JOURNAL_ACTIVE: u64 = 1;
/// A clear is under way: a writer that finds it so finishes the clear.
pub(crate) const JOURNAL_CLEARING: u64 = 2;

/// The shard lock word (`u32` futex at [`shard_header::LOCK`]): 0 when free, else the
/// owner's token: bits 0..8 its participant index, bits 8..31 the low 23 bits of that
/// participant's generation, bit 31 "someone sleeps on the futex".
pub(crate) mod lock_word {
    pub const PARTICIPANT_MASK: u32 = 0xFF;
    pub const GEN_SHIFT: u32 = 8;
    pub const GEN_MASK: u64 = 0x7F_FFFF;
    pub const WAITERS: u32 = 1 << 31;

    /// The token of `participant` at generation `gen`.
    pub fn token(participant: usize, gen: u64) -> u32 {
        participant as u32 | (((gen & GEN_MASK) as u32) << GEN_SHIFT)
    }
}

/// Slot header words (offsets inside a slot); key bytes then value bytes follow.
/// Writer-only words come first; the words a reader loads start at `VER` on a 64-byte
/// boundary and run contiguously into the key and value, so a small entry's read touches
/// as few cache lines as possible.
pub(crate) mod slot {
    /// SIEVE list neighbours (towards the head = newer, towards the tail = older).
    pub const PREV: usize = 0;
    pub const NEXT: usize = 8;
    pub const FREE_NEXT: usize = 16;
    /// The key's hash (picks the bucket; writers check it before the key bytes).
    pub const HASH: usize = 24;
    /// Odd while being written; only ever grows. 64-byte aligned.
    pub const VER: usize = 32;
    /// 1 while reachable from a bucket.
    pub const LIVE: usize = 40;
    /// Next slot in the bucket's chain.
    pub const CHAIN: usize = 48;
    /// key_len << 32 | value_len.
    pub const LENS: usize = 56;
    pub const EXPIRES: usize = 64;
    /// SIEVE visited bit; the only word a reader writes.
    pub const VISITED: usize = 72;
    pub const HEADER: usize = 80;
}

/// The region's geometry, computed with checked arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub shards: usize,
    /// Entries per shard.
    pub capacity: usize,
    /// Slots per shard: one more than `capacity`, so an insert into a full shard always
    /// has a FREE slot to write into before it evicts (payloads never overwrite a slot
    /// that was reachable when the transaction began).
    pub slots: usize,
    /// Buckets per shard (a power of two).
    pub buckets: usize,
    pub max_key: usize,
    pub max_value: usize,
    /// Words holding the (zero-padded) key; the value starts after them.
    pub key_words: usize,
    pub value_words: usize,
    pub slot_bytes: usize,
    /// Shard-relative offset of slot 0 (so every slot's `VER` is 64-byte aligned).
    pub slots_base: usize,
    pub shard_bytes: usize,
    pub shards_base: usize,
    pub region_len: usize,
}

/// Upper bounds that keep every offset far inside `usize` and `u32` slot indexes.
pub(crate) const MAX_SHARDS: usize = 1 << 12;
pub(crate) const MAX_CAPACITY: usize = 1 << 28;
pub(crate) const MAX_ITEM: usize = 1 << 24;
pub(crate) const MAX_REGION: usize = 1 << 40;

impl Layout {
    /// `Err(reason)` when a parameter is out of range or the region would be too large.
    pub(crate) fn new(
        shards: usize,
        capacity_per_shard: usize,
        max_key: usize,
        max_value: usize,
    ) -> Result<Layout, &'static str> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err("shards must be in 1..=4096");
        }
        if capacity_per_shard == 0 || capacity_per_shard > MAX_CAPACITY {
            return Err("capacity per shard must be in 1..=2^28");
        }
        if max_key == 0 || max_key > MAX_ITEM || max_value > MAX_ITEM {
            return Err("max key must be in 1..=16 MiB and max value at most 16 MiB");
        }
        let too_big = "the region would be larger than 1 TiB";
        let buckets = capacity_per_shard
            .checked_mul(2)
            .and_then(usize::checked_next_power_of_two)
            .ok_or(too_big)?;
        let key_words = max_key.div_ceil(8);
        let value_words = max_value.div_ceil(8);
        let slot_bytes = (slot::HEADER + 8 * (key_words + value_words)).next_multiple_of(64);
        let slots_base = buckets
            .checked_mul(8)
            .and_then(|b| b.checked_add(shard_header::BUCKETS))
            .and_then(|b| b.checked_next_multiple_of(64))
            .and_then(|b| b.checked_add(slot::VER))
            .ok_or(too_big)?;
        let shard_bytes = slot_bytes
            .checked_mul(capacity_per_shard + 1)
            .and_then(|b| b.checked_add(slots_base))
            .and_then(|b| b.checked_next_multiple_of(PAGE))
            .ok_or(too_big)?;
        let shards_base = PARTICIPANTS_BASE + PARTICIPANTS * participant::SIZE;
        let region_len = shard_bytes
            .checked_mul(shards)
            .and_then(|b| b.checked_add(shards_base))
            .filter(|&len| len <= MAX_REGION)
            .ok_or(too_big)?;
        Ok(Layout {
            shards,
            capacity: capacity_per_shard,
            slots: capacity_per_shard + 1,
            buckets,
            max_key,
            max_value,
            key_words,
            value_words,
            slot_bytes,
            slots_base,
            shard_bytes,
            shards_base,
            region_len,
        })
    }

    #[inline]
    pub(crate) fn shard(&self, shard: usize) -> usize {
        self.shards_base + shard * self.shard_bytes
    }

    #[inline]
    pub(crate) fn bucket(&self, shard: usize, bucket: usize) -> usize {
        self.shard(shard) + shard_header::BUCKETS + bucket * 8
    }

    #[inline]
    pub(crate) fn slot(&self, shard: usize, slot: usize) -> usize {
        self.shard(shard) + self.slots_base + slot * self.slot_bytes
    }

    #[inline]
    pub(crate) fn participant(&self, index: usize) -> usize {
        PARTICIPANTS_BASE + index * participant::SIZE
    }
}

/// Up to 8 bytes as the word a slot holds them in (native order, zero-padded): what a key's
/// or value's bytes look like in shared memory.
///
/// Built with shifts, not by copying into a byte array and loading it as a word: a short
/// `copy_from_slice` is a `memcpy` call whose byte stores the following 8-byte load cannot
/// be forwarded from, a stall measured at 15% of a cache read.
#[inline]
pub(crate) fn pack_word(bytes: &[u8]) -> u64 {
    if let Ok(exact) = <[u8; 8]>::try_from(bytes) {
        return u64::from_ne_bytes(exact);
    }
    let mut word = 0u64;
    for (index, &byte) in bytes.iter().take(8).enumerate() {
        let shift = if cfg!(target_endian = "little") {
            8 * index
        } else {
            8 * (7 - index)
        };
        word |= u64::from(byte) << shift;
    }
    word
}

#[cfg(test)]
mod tests;
