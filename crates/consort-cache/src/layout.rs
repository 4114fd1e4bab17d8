//! Where every shared word lives: the superblock, the participant table and the shards.
//!
//! All arithmetic is checked once, when a [`Layout`] is built from a validated
//! configuration; afterwards offsets are computed only from the handle's own copy of the
//! layout, never from numbers read out of shared memory. See `docs/design/cache.md`.

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
pub(crate) mod sb {
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
}
pub(crate) const STATE_READY: u64 = 1;
pub(crate) const STATE_RETIRED: u64 = 2;

/// Participant slots: a process takes one (and its OFD lock byte) per open handle.
pub(crate) const PARTICIPANTS: usize = 128;
/// Participant entry: one cache line, written only by its owner (hot counters never share
/// a line with read-mostly configuration or with another process's counters).
pub(crate) mod part {
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
pub(crate) const PART_BASE: usize = PAGE;

/// Journal capacity per shard; an operation logs at most about 20 stores.
pub(crate) const JOURNAL: usize = 64;
/// Shard-relative offsets.
pub(crate) mod sh {
    /// Futex word (u32) on its own line.
    pub const LOCK: usize = 0;
    /// Journal state: `J_IDLE`, `J_ACTIVE` (roll back) or `J_CLEARING` (roll forward).
    pub const J_STATE: usize = 64;
    pub const J_LEN: usize = 72;
    pub const J_ENTRIES: usize = 128;
    pub const META: usize = J_ENTRIES + super::JOURNAL * 16;
    pub const FREE_HEAD: usize = META;
    pub const HEAD: usize = META + 8;
    pub const TAIL: usize = META + 16;
    pub const HAND: usize = META + 24;
    pub const LEN: usize = META + 32;
    pub const BUCKETS: usize = META + 64;
}
pub(crate) const J_IDLE: u64 = 0;
pub(crate) const J_ACTIVE: u64 = 1;
pub(crate) const J_CLEARING: u64 = 2;

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
            .and_then(|b| b.checked_add(sh::BUCKETS))
            .and_then(|b| b.checked_next_multiple_of(64))
            .and_then(|b| b.checked_add(slot::VER))
            .ok_or(too_big)?;
        let shard_bytes = slot_bytes
            .checked_mul(capacity_per_shard + 1)
            .and_then(|b| b.checked_add(slots_base))
            .and_then(|b| b.checked_next_multiple_of(PAGE))
            .ok_or(too_big)?;
        let shards_base = PART_BASE + PARTICIPANTS * part::SIZE;
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
        self.shard(shard) + sh::BUCKETS + bucket * 8
    }

    #[inline]
    pub(crate) fn slot(&self, shard: usize, slot: usize) -> usize {
        self.shard(shard) + self.slots_base + slot * self.slot_bytes
    }

    #[inline]
    pub(crate) fn participant(&self, index: usize) -> usize {
        PART_BASE + index * part::SIZE
    }
}

#[cfg(test)]
mod tests;
