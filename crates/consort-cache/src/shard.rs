//! The algorithms: formatting a region, the per-shard writer lock, the undo journal,
//! insert/remove/evict/clear/purge, recovery, the lock-free read path and the full
//! invariant check. No `unsafe` here: every shared word is an atomic from `region`, every
//! atomic type and fence comes from `sync`.
//!
//! **Invariant:** a slot's payload (hash, lengths, key, value, expiry, chain link) is
//! written only while the slot is FREE and unreachable; every store to a reachable word
//! goes through [`Txn::store`], which journals the old value first.
//! **Invariant:** readers write nothing but a slot's `visited` word and their own counters.

use std::fs::File;
use std::time::Duration;

use crate::fault::point;
use crate::layout::{
    self, lock_word, participant, shard_header, slot, superblock, Layout, JOURNAL_ACTIVE,
    JOURNAL_CAPACITY, JOURNAL_CLEARING, JOURNAL_ENTRY, JOURNAL_IDLE, NONE, PARTICIPANTS,
};
use crate::region::{self, Region};
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::sync::{compiler_fence, fence, futex_wait, futex_wake_one, AtomicU32, AtomicU64};
use crate::sync::{MutexGuard, Ordering};
use crate::{Cache, Error, Insert, Report, Result};

/// Journal offsets with this bit are slot versions: rolled back *forward* (see `recover`).
const ENTRY_IS_VERSION: u64 = 1 << 63;
/// How often a read restarts after a concurrent change before it reports a miss.
const READ_RETRIES: usize = 32;

/// Writes a fresh superblock and empty shards into a new (zeroed, unpublished) region.
pub(crate) fn format(region: &Region, layout: &Layout, seed: u64, ttl_ns: u64) {
    let put = |off, value| region.u64(off).store(value, Relaxed);
    put(superblock::MAGIC, layout::MAGIC);
    put(superblock::VERSION, layout::LAYOUT_VERSION);
    put(superblock::REGION_LEN, layout.region_len as u64);
    put(superblock::SHARDS, layout.shards as u64);
    put(superblock::CAPACITY, layout.capacity as u64);
    put(superblock::BUCKETS, layout.buckets as u64);
    put(superblock::MAX_KEY, layout.max_key as u64);
    put(superblock::MAX_VALUE, layout.max_value as u64);
    put(superblock::DEFAULT_TTL_NS, ttl_ns);
    put(superblock::HASH_SEED, seed);
    put(superblock::HASH_ALGO, layout::HASH_XXH3);
    put(superblock::ABI, layout::ABI);
    put(superblock::PARTICIPANTS, PARTICIPANTS as u64);
    for shard in 0..layout.shards {
        reset_shard(region, layout, shard);
    }
    region
        .u64(superblock::STATE)
        .store(layout::STATE_READY, Release);
}

/// Marks an old cache file as replaced (best effort: it may not even be a cache).
pub(crate) fn retire(file: &File) {
    let Ok(meta) = file.metadata() else { return };
    if meta.len() < layout::PAGE as u64 {
        return;
    }
    if let Ok(region) = Region::map(file, layout::PAGE) {
        if region.u64(superblock::MAGIC).load(Relaxed) == layout::MAGIC {
            region
                .u64(superblock::STATE)
                .store(layout::STATE_RETIRED, Release);
        }
    }
}

/// The layout, hash seed and default TTL an existing superblock describes.
pub(crate) fn read_superblock(region: &Region) -> Result<(Layout, u64, u64), &'static str> {
    let get = |off| region.u64(off).load(Acquire);
    if get(superblock::MAGIC) != layout::MAGIC {
        return Err("not a consort cache (bad magic)");
    }
    if get(superblock::VERSION) != layout::LAYOUT_VERSION {
        return Err("made by another layout version");
    }
    if get(superblock::ABI) != layout::ABI || get(superblock::HASH_ALGO) != layout::HASH_XXH3 {
        return Err("made by a build with another word size, byte order or hash");
    }
    if get(superblock::PARTICIPANTS) != PARTICIPANTS as u64 {
        return Err("participant table size differs");
    }
    let small = |off| usize::try_from(get(off)).map_err(|_| "a size field is out of range");
    let found = Layout::new(
        small(superblock::SHARDS)?,
        small(superblock::CAPACITY)?,
        small(superblock::MAX_KEY)?,
        small(superblock::MAX_VALUE)?,
    )?;
    if found.region_len as u64 != get(superblock::REGION_LEN)
        || found.buckets as u64 != get(superblock::BUCKETS)
    {
        return Err("superblock sizes are inconsistent");
    }
    Ok((
        found,
        get(superblock::HASH_SEED),
        get(superblock::DEFAULT_TTL_NS),
    ))
}

/// Empty shard: every bucket NONE, every slot FREE on the free list, no journal.
fn reset_shard(region: &Region, layout: &Layout, shard: usize) {
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
fn next_even(v: u64) -> u64 {
    (v | 1).wrapping_add(1)
}

pub(crate) fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The shard lock, held; dropping it releases the futex word and wakes a waiter.
pub(crate) struct Guard<'a> {
    cache: &'a Cache,
    shard: usize,
    _local: MutexGuard<'a, ()>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let word = self.cache.lock_word(self.shard);
        let prev = word.swap(0, Release);
        point();
        if prev & lock_word::WAITERS != 0 {
            futex_wake_one(word);
        }
    }
}

/// An open transaction on one shard (the lock is held by the caller).
struct Txn<'a> {
    cache: &'a Cache,
    shard: usize,
}

impl Txn<'_> {
    fn begin(cache: &Cache, shard: usize) -> Txn<'_> {
        let base = cache.layout.shard(shard);
        cache
            .region
            .u64(base + shard_header::JOURNAL_LEN)
            .store(0, Release);
        point();
        cache
            .region
            .u64(base + shard_header::JOURNAL_STATE)
            .store(JOURNAL_ACTIVE, Release);
        point();
        Txn { cache, shard }
    }

    /// Journals the old value of the word at `off`, then stores `new` there.
    fn store(&self, off: usize, new: u64) -> Result<()> {
        self.log(off, new, 0)
    }

    /// Like `store`, for a slot version (rolled back to a *newer* even value).
    fn store_version(&self, off: usize, new: u64) -> Result<()> {
        self.log(off, new, ENTRY_IS_VERSION)
    }

    fn log(&self, off: usize, new: u64, kind: u64) -> Result<()> {
        let region = &self.cache.region;
        let base = self.cache.layout.shard(self.shard);
        let len_word = region.u64(base + shard_header::JOURNAL_LEN);
        let n = len_word.load(Relaxed) as usize;
        if n >= JOURNAL_CAPACITY {
            return Err(self.cache.corrupt("journal overflow"));
        }
        let word = region.u64(off);
        let entry = base + shard_header::JOURNAL_ENTRIES + n * 16;
        region.u64(entry).store(off as u64 | kind, Release);
        point();
        region.u64(entry + 8).store(word.load(Relaxed), Release);
        point();
        len_word.store(n as u64 + 1, Release);
        point();
        // The entry must be in memory before the store it protects (process death keeps
        // our stores in program order; this keeps the compiler from reordering them).
        compiler_fence(Ordering::SeqCst);
        word.store(new, Release);
        point();
        Ok(())
    }

    fn commit(self) {
        let base = self.cache.layout.shard(self.shard);
        self.cache
            .region
            .u64(base + shard_header::JOURNAL_STATE)
            .store(JOURNAL_IDLE, Release);
        point();
        self.cache
            .region
            .u64(base + shard_header::JOURNAL_LEN)
            .store(0, Release);
        point();
    }
}

impl Cache {
    pub(crate) fn lock_word(&self, shard: usize) -> &AtomicU32 {
        self.region
            .u32(self.layout.shard(shard) + shard_header::LOCK)
    }

    /// A word of shard `shard`'s header.
    fn shard_word(&self, shard: usize, field: usize) -> &AtomicU64 {
        self.region.u64(self.layout.shard(shard) + field)
    }

    /// The word at `field` of slot `index` (the index is checked by the caller).
    #[inline]
    fn slot_word(&self, shard: usize, index: usize, field: usize) -> &AtomicU64 {
        self.region.u64(self.layout.slot(shard, index) + field)
    }

    fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed)
    }

    fn place(&self, hash: u64) -> (usize, usize) {
        // Lemire's multiply-shift range reduction: no division on the read path.
        let shard = (((hash >> 32) * self.layout.shards as u64) >> 32) as usize;
        let bucket = (hash as usize) & (self.layout.buckets - 1);
        (shard, bucket)
    }

    fn count(&self, field: usize, by: u64) {
        self.region
            .u64(self.layout.participant(self.participant) + field)
            .fetch_add(by, Relaxed);
    }

    fn slot_index(&self, raw: u64, what: &'static str) -> Result<usize> {
        if raw < self.layout.slots as u64 {
            Ok(raw as usize)
        } else {
            Err(self.corrupt(what))
        }
    }

    /// Whether the owner of a lock token is a live participant.
    fn alive(&self, owner: u32) -> bool {
        let index = (owner & lock_word::PARTICIPANT_MASK) as usize;
        if index >= PARTICIPANTS {
            return false;
        }
        let gen = u64::from((owner >> lock_word::GEN_SHIFT) & lock_word::GEN_MASK as u32);
        let current = self
            .region
            .u64(self.layout.participant(index) + participant::GEN)
            .load(Acquire);
        if current & lock_word::GEN_MASK != gen {
            return false; // the slot was taken over by a newer participant
        }
        // An error probing counts as alive: never steal on doubt.
        region::byte_is_locked(&self.file, index as u32).unwrap_or(true)
    }

    /// Takes the shard's writer lock, stealing it only from a dead owner, and repairs
    /// whatever a dead owner left half done.
    pub(crate) fn lock(&self, shard: usize) -> Result<Guard<'_>> {
        if rustix::process::getpid() != self.pid {
            return Err(Error::Forked);
        }
        if self.is_retired() {
            return Err(Error::Retired(self.path.clone()));
        }
        let local = self.local[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let word = self.lock_word(shard);
        let me = self.token;
        if word.compare_exchange(0, me, Acquire, Relaxed).is_err() {
            self.lock_slow(word)?;
        }
        point();
        let guard = Guard {
            cache: self,
            shard,
            _local: local,
        };
        let state = self
            .shard_word(shard, shard_header::JOURNAL_STATE)
            .load(Acquire);
        if state != JOURNAL_IDLE {
            self.recover_shard(shard, state)?;
        }
        Ok(guard)
    }

    fn lock_slow(&self, word: &AtomicU32) -> Result<()> {
        let me = self.token;
        for _ in 0..100 {
            std::hint::spin_loop();
            if word.load(Relaxed) == 0 && word.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
                return Ok(());
            }
        }
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 2_000_000,
        };
        loop {
            let cur = word.load(Relaxed);
            if cur == 0 {
                if word
                    .compare_exchange(0, me | lock_word::WAITERS, Acquire, Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let owner = cur & !lock_word::WAITERS;
            // Our own token while we hold this process's local mutex cannot be current
            // (we died there in a previous life, or the word is corrupt): stale.
            if owner == me || !self.alive(owner) {
                if word
                    .compare_exchange(cur, me | lock_word::WAITERS, Acquire, Relaxed)
                    .is_ok()
                {
                    return Ok(());
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

    /// Undoes (or, for a clear, finishes) the operation a dead writer left open.
    fn recover_shard(&self, shard: usize, state: u64) -> Result<()> {
        let base = self.layout.shard(shard);
        let (lo, hi) = (base, base + self.layout.shard_bytes);
        let mut ok = state == JOURNAL_ACTIVE || state == JOURNAL_CLEARING;
        if state == JOURNAL_ACTIVE {
            let n = self
                .shard_word(shard, shard_header::JOURNAL_LEN)
                .load(Acquire)
                .min(JOURNAL_CAPACITY as u64) as usize;
            for i in (0..n).rev() {
                let entry = base + shard_header::JOURNAL_ENTRIES + i * JOURNAL_ENTRY;
                let raw = self.region.u64(entry).load(Acquire);
                let old = self.region.u64(entry + 8).load(Acquire);
                let off = (raw & !ENTRY_IS_VERSION) as usize;
                if off < lo || off + 8 > hi || off % 8 != 0 {
                    ok = false;
                    break;
                }
                let word = self.region.u64(off);
                if raw & ENTRY_IS_VERSION != 0 {
                    word.store(next_even(word.load(Relaxed).max(old)), Release);
                } else {
                    word.store(old, Release);
                }
                point();
            }
        }
        if ok && state == JOURNAL_ACTIVE {
            self.shard_word(shard, shard_header::JOURNAL_STATE)
                .store(JOURNAL_IDLE, Release);
            point();
            ok = self.quick_check(shard);
        }
        if !ok || state == JOURNAL_CLEARING {
            self.clear_locked(shard);
        }
        self.count(participant::RECOVERIES, 1);
        Ok(())
    }

    /// The O(1) checks after a rollback; failing them clears the shard.
    fn quick_check(&self, shard: usize) -> bool {
        let cap = self.layout.capacity as u64;
        let slots = self.layout.slots as u64;
        let idx_ok = |field| {
            let v = self.shard_word(shard, field).load(Relaxed);
            v == NONE || v < slots
        };
        self.shard_word(shard, shard_header::LEN).load(Relaxed) <= cap
            && idx_ok(shard_header::FREE_HEAD)
            && idx_ok(shard_header::HEAD)
            && idx_ok(shard_header::TAIL)
            && idx_ok(shard_header::HAND)
    }

    /// Clears one shard under its lock. Rolled *forward*: a writer that finds the journal
    /// CLEARING finishes the clear.
    fn clear_locked(&self, shard: usize) {
        self.shard_word(shard, shard_header::JOURNAL_STATE)
            .store(JOURNAL_CLEARING, Release);
        point();
        reset_shard(&self.region, &self.layout, shard);
        self.shard_word(shard, shard_header::JOURNAL_STATE)
            .store(JOURNAL_IDLE, Release);
        point();
    }

    /// Removes every entry. Each shard is cleared atomically (before or after).
    pub fn clear(&self) -> Result<()> {
        for shard in 0..self.layout.shards {
            let _guard = self.lock(shard)?;
            self.clear_locked(shard);
        }
        Ok(())
    }

    /// Walks `key`'s chain under the lock: `(slot, predecessor)`.
    fn find(
        &self,
        shard: usize,
        bucket: usize,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<(usize, Option<usize>)>> {
        let mut raw = self
            .region
            .u64(self.layout.bucket(shard, bucket))
            .load(Acquire);
        let mut pred = None;
        for _ in 0..=self.layout.slots {
            if raw == NONE {
                return Ok(None);
            }
            let index = self.slot_index(raw, "bucket chain points outside the shard")?;
            if self.slot_word(shard, index, slot::HASH).load(Relaxed) == hash
                && self.key_matches(shard, index, key)
            {
                return Ok(Some((index, pred)));
            }
            pred = Some(index);
            raw = self.slot_word(shard, index, slot::CHAIN).load(Relaxed);
        }
        Err(self.corrupt("bucket chain has a cycle"))
    }

    fn key_matches(&self, shard: usize, index: usize, key: &[u8]) -> bool {
        let lens = self.slot_word(shard, index, slot::LENS).load(Relaxed);
        if (lens >> 32) as usize != key.len() {
            return false;
        }
        let data = self.layout.slot(shard, index) + slot::HEADER;
        key.chunks(8).enumerate().all(|(i, chunk)| {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            self.region.u64(data + i * 8).load(Relaxed) == u64::from_ne_bytes(bytes)
        })
    }

    /// Inserts or replaces `key`. `ttl` overrides the cache's default TTL.
    pub fn insert(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<Insert> {
        if key.len() > self.layout.max_key || value.len() > self.layout.max_value {
            return Ok(Insert::Oversize);
        }
        let hash = self.hash(key);
        let (shard, bucket) = self.place(hash);
        let _guard = self.lock(shard)?;
        let now = now_ns();
        let ttl_ns = match ttl {
            Some(ttl) => crate::ttl_ns(Some(ttl)),
            None => self.default_ttl_ns,
        };
        let expires = if ttl_ns == 0 {
            0
        } else {
            now.saturating_add(ttl_ns)
        };
        let old = self.find(shard, bucket, hash, key)?;
        if self
            .shard_word(shard, shard_header::FREE_HEAD)
            .load(Relaxed)
            == NONE
        {
            // No spare slot although one always exists: the shard is inconsistent, and a
            // cache may always start over.
            self.clear_locked(shard);
            return self.insert_locked(shard, bucket, hash, key, value, expires, None);
        }
        self.insert_locked(shard, bucket, hash, key, value, expires, old)
    }

    /// The insert transaction: take the spare FREE slot, evict if full, write the
    /// payload into the FREE slot, link it into SIEVE and publish it with one bucket store.
    #[allow(clippy::too_many_arguments)]
    fn insert_locked(
        &self,
        shard: usize,
        bucket: usize,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires: u64,
        old: Option<(usize, Option<usize>)>,
    ) -> Result<Insert> {
        let now = now_ns();
        let txn = Txn::begin(self, shard);
        let meta = self.layout.shard(shard);
        let new = self.slot_index(
            self.shard_word(shard, shard_header::FREE_HEAD)
                .load(Relaxed),
            "free list points outside the shard",
        )?;
        let free_next = self.slot_word(shard, new, slot::FREE_NEXT).load(Relaxed);
        txn.store(meta + shard_header::FREE_HEAD, free_next)?;
        let mut evicted = None;
        if old.is_none()
            && self.shard_word(shard, shard_header::LEN).load(Relaxed)
                >= self.layout.capacity as u64
        {
            evicted = Some(self.evict_one(&txn, shard, now)?);
        }
        let base = self.layout.slot(shard, new);
        let ver = self.region.u64(base + slot::VER).load(Relaxed);
        txn.store_version(base + slot::VER, ver | 1)?;
        // Boehm's seqlock writer: the odd version is visible before any payload store.
        fence(Release);
        let bucket_off = self.layout.bucket(shard, bucket);
        let head = self.shard_word(shard, shard_header::HEAD).load(Relaxed);
        let put = |field: usize, value: u64| {
            self.region.u64(base + field).store(value, Relaxed);
            point();
        };
        put(slot::HASH, hash);
        put(slot::EXPIRES, expires);
        put(slot::LENS, (key.len() as u64) << 32 | value.len() as u64);
        put(slot::CHAIN, self.region.u64(bucket_off).load(Relaxed));
        put(slot::PREV, NONE);
        put(slot::NEXT, head);
        put(slot::VISITED, 0);
        self.write_bytes(base + slot::HEADER, key, self.layout.key_words);
        point();
        self.write_bytes(
            base + slot::HEADER + self.layout.key_words * 8,
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
            let head = self.slot_index(head, "SIEVE head outside the shard")?;
            txn.store(self.layout.slot(shard, head) + slot::PREV, new as u64)?;
        }
        txn.store(meta + shard_header::HEAD, new as u64)?;
        // Publish: one store makes the entry reachable.
        txn.store(bucket_off, new as u64)?;
        let outcome = match old {
            Some((old, pred)) => {
                let pred = pred.unwrap_or(new);
                let after = self.slot_word(shard, old, slot::CHAIN).load(Relaxed);
                txn.store(self.layout.slot(shard, pred) + slot::CHAIN, after)?;
                self.unlink_and_free(&txn, shard, old)?;
                Insert::Replaced
            }
            None => {
                let len = self.shard_word(shard, shard_header::LEN).load(Relaxed);
                txn.store(meta + shard_header::LEN, len + 1)?;
                Insert::Stored
            }
        };
        txn.commit();
        self.count(participant::INSERTS, 1);
        match evicted {
            Some(true) => self.count(participant::EXPIRATIONS, 1),
            Some(false) => self.count(participant::EVICTIONS, 1),
            None => {}
        }
        Ok(outcome)
    }

    fn write_bytes(&self, off: usize, bytes: &[u8], words: usize) {
        let mut chunks = bytes.chunks(8);
        for i in 0..words {
            let mut word = [0u8; 8];
            if let Some(chunk) = chunks.next() {
                word[..chunk.len()].copy_from_slice(chunk);
            }
            self.region
                .u64(off + i * 8)
                .store(u64::from_ne_bytes(word), Relaxed);
        }
    }

    /// Takes `index` out of the SIEVE list, marks it FREE (new version) and pushes it on
    /// the free list; its chain link was already taken care of.
    fn unlink_and_free(&self, txn: &Txn<'_>, shard: usize, index: usize) -> Result<()> {
        let meta = self.layout.shard(shard);
        let prev = self.slot_word(shard, index, slot::PREV).load(Relaxed);
        let next = self.slot_word(shard, index, slot::NEXT).load(Relaxed);
        if prev == NONE {
            txn.store(meta + shard_header::HEAD, next)?;
        } else {
            let prev = self.slot_index(prev, "SIEVE link outside the shard")?;
            txn.store(self.layout.slot(shard, prev) + slot::NEXT, next)?;
        }
        if next == NONE {
            txn.store(meta + shard_header::TAIL, prev)?;
        } else {
            let next = self.slot_index(next, "SIEVE link outside the shard")?;
            txn.store(self.layout.slot(shard, next) + slot::PREV, prev)?;
        }
        if self.shard_word(shard, shard_header::HAND).load(Relaxed) == index as u64 {
            txn.store(meta + shard_header::HAND, prev)?;
        }
        let base = self.layout.slot(shard, index);
        txn.store(base + slot::LIVE, 0)?;
        let ver = self.region.u64(base + slot::VER).load(Relaxed);
        txn.store_version(base + slot::VER, next_even(ver))?;
        let free = self
            .shard_word(shard, shard_header::FREE_HEAD)
            .load(Relaxed);
        self.region.u64(base + slot::FREE_NEXT).store(free, Relaxed);
        point();
        txn.store(meta + shard_header::FREE_HEAD, index as u64)?;
        Ok(())
    }

    /// Removes a live slot (chain, list, len) in the open transaction.
    fn remove_slot(&self, txn: &Txn<'_>, shard: usize, index: usize) -> Result<()> {
        let hash = self.slot_word(shard, index, slot::HASH).load(Relaxed);
        let bucket = (hash as usize) & (self.layout.buckets - 1);
        let bucket_off = self.layout.bucket(shard, bucket);
        let mut raw = self.region.u64(bucket_off).load(Relaxed);
        let mut pred = None;
        let mut found = false;
        for _ in 0..=self.layout.slots {
            if raw == NONE {
                break;
            }
            let at = self.slot_index(raw, "bucket chain points outside the shard")?;
            if at == index {
                found = true;
                break;
            }
            pred = Some(at);
            raw = self.slot_word(shard, at, slot::CHAIN).load(Relaxed);
        }
        if !found {
            return Err(self.corrupt("a live slot is missing from its bucket chain"));
        }
        let after = self.slot_word(shard, index, slot::CHAIN).load(Relaxed);
        match pred {
            None => txn.store(bucket_off, after)?,
            Some(pred) => txn.store(self.layout.slot(shard, pred) + slot::CHAIN, after)?,
        }
        self.unlink_and_free(txn, shard, index)?;
        let len = self.shard_word(shard, shard_header::LEN).load(Relaxed);
        txn.store(
            self.layout.shard(shard) + shard_header::LEN,
            len.saturating_sub(1),
        )?;
        Ok(())
    }

    fn expired(&self, shard: usize, index: usize, now: u64) -> bool {
        let expires = self.slot_word(shard, index, slot::EXPIRES).load(Relaxed);
        expires != 0 && now >= expires
    }

    /// SIEVE: from the hand towards the head, clear visited bits until an unvisited (or
    /// expired) entry turns up, and remove it in the open transaction. `true` if it had
    /// expired.
    fn evict_one(&self, txn: &Txn<'_>, shard: usize, now: u64) -> Result<bool> {
        let tail = self.shard_word(shard, shard_header::TAIL).load(Relaxed);
        let mut hand = self.shard_word(shard, shard_header::HAND).load(Relaxed);
        if hand == NONE {
            hand = tail;
        }
        let mut victim = self.slot_index(hand, "SIEVE hand outside the shard (or empty list)")?;
        for _ in 0..=2 * self.layout.slots {
            let visited = self.slot_word(shard, victim, slot::VISITED);
            if self.expired(shard, victim, now) || visited.load(Relaxed) == 0 {
                break;
            }
            visited.store(0, Relaxed);
            point();
            let prev = self.slot_word(shard, victim, slot::PREV).load(Relaxed);
            let next = if prev == NONE { tail } else { prev };
            victim = self.slot_index(next, "SIEVE link outside the shard")?;
        }
        let expired = self.expired(shard, victim, now);
        let prev = self.slot_word(shard, victim, slot::PREV).load(Relaxed);
        self.remove_slot(txn, shard, victim)?;
        txn.store(self.layout.shard(shard) + shard_header::HAND, prev)?;
        Ok(expired)
    }

    /// Removes `key`; `true` if it was there.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        if key.len() > self.layout.max_key {
            return Ok(false);
        }
        let hash = self.hash(key);
        let (shard, bucket) = self.place(hash);
        let _guard = self.lock(shard)?;
        let Some((index, _)) = self.find(shard, bucket, hash, key)? else {
            return Ok(false);
        };
        let txn = Txn::begin(self, shard);
        self.remove_slot(&txn, shard, index)?;
        txn.commit();
        Ok(true)
    }

    /// Removes up to `max` expired entries; returns how many.
    pub fn purge_expired(&self, max: usize) -> Result<usize> {
        let mut purged = 0;
        for shard in 0..self.layout.shards {
            if purged >= max {
                break;
            }
            let _guard = self.lock(shard)?;
            let now = now_ns();
            let mut at = self.shard_word(shard, shard_header::TAIL).load(Relaxed);
            for _ in 0..self.layout.slots {
                if at == NONE || purged >= max {
                    break;
                }
                let index = self.slot_index(at, "SIEVE link outside the shard")?;
                at = self.slot_word(shard, index, slot::PREV).load(Relaxed);
                if self.expired(shard, index, now) {
                    let txn = Txn::begin(self, shard);
                    self.remove_slot(&txn, shard, index)?;
                    txn.commit();
                    self.count(participant::EXPIRATIONS, 1);
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }

    /// Copies the value of `key` out.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// Calls `f` with the value of `key` (a validated private copy; `f` runs outside any
    /// lock and may take its time).
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        // A stack buffer no larger than needed (it is zeroed on every call).
        let bytes = self.layout.value_words * 8;
        if bytes <= 64 {
            self.get_into(key, &mut [0u8; 64], f)
        } else if bytes <= 512 {
            self.get_into(key, &mut [0u8; 512], f)
        } else {
            self.get_into(key, &mut vec![0u8; bytes], f)
        }
    }

    fn get_into<R>(
        &self,
        key: &[u8],
        buf: &mut [u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        match self.read(key, buf)? {
            Some(len) => {
                self.count(participant::HITS, 1);
                Ok(Some(f(&buf[..len])))
            }
            None => {
                self.count(participant::MISSES, 1);
                Ok(None)
            }
        }
    }

    /// The lock-free read: follow the chain, validating each slot by its version.
    fn read(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>> {
        if key.len() > self.layout.max_key {
            return Ok(None);
        }
        let hash = self.hash(key);
        let (shard, bucket) = self.place(hash);
        let cap = self.layout.slots as u64;
        let bucket_word = self.region.u64(self.layout.bucket(shard, bucket));
        'retry: for _ in 0..READ_RETRIES {
            let mut raw = bucket_word.load(Acquire);
            for _ in 0..=self.layout.slots {
                if raw == NONE {
                    return Ok(None);
                }
                if raw >= cap {
                    return Err(self.corrupt("bucket points outside the shard"));
                }
                let base = self.layout.slot(shard, raw as usize);
                // One bounds check for the whole slot; fields are indexed words.
                let words = self.region.words(base, self.layout.slot_bytes / 8);
                let w = |off: usize| &words[off / 8];
                let ver = w(slot::VER);
                let v1 = ver.load(Acquire);
                if v1 & 1 != 0 {
                    std::hint::spin_loop();
                    continue 'retry;
                }
                let live = w(slot::LIVE).load(Relaxed);
                let chain = w(slot::CHAIN).load(Relaxed);
                let lens = w(slot::LENS).load(Relaxed);
                let expires = w(slot::EXPIRES).load(Relaxed);
                let (klen, vlen) = ((lens >> 32) as usize, (lens & 0xFFFF_FFFF) as usize);
                let sane = klen <= self.layout.max_key && vlen <= self.layout.max_value;
                let data = &words[slot::HEADER / 8..];
                let matched = sane
                    && live == 1
                    && klen == key.len()
                    && key.chunks(8).zip(data).all(|(chunk, word)| {
                        let mut bytes = [0u8; 8];
                        bytes[..chunk.len()].copy_from_slice(chunk);
                        word.load(Relaxed) == u64::from_ne_bytes(bytes)
                    });
                if matched {
                    let value = &data[self.layout.key_words..];
                    for (out, word) in buf[..vlen.div_ceil(8) * 8].chunks_exact_mut(8).zip(value) {
                        out.copy_from_slice(&word.load(Relaxed).to_ne_bytes());
                    }
                }
                // Boehm's seqlock reader: data loads, acquire fence, recheck the version.
                fence(Acquire);
                if ver.load(Relaxed) != v1 {
                    continue 'retry;
                }
                if live != 1 {
                    continue 'retry; // reached through a link that changed under us
                }
                if !sane {
                    return Err(self.corrupt("a slot's lengths exceed the cache's maxima"));
                }
                if matched {
                    if expires != 0 && now_ns() >= expires {
                        return Ok(None);
                    }
                    let visited = w(slot::VISITED);
                    if visited.load(Relaxed) == 0 {
                        visited.store(1, Relaxed);
                    }
                    return Ok(Some(vlen));
                }
                raw = chain;
            }
        }
        Ok(None)
    }

    /// Checks every structural invariant of every shard (under each shard's lock):
    /// free + live = capacity, every chain holds live slots of its bucket, the SIEVE list
    /// holds exactly the live slots, `len` counts them, the journal is idle.
    pub fn check_invariants(&self) -> Result<Report> {
        let mut report = Report {
            shards: self.layout.shards,
            live: 0,
            free: 0,
        };
        for shard in 0..self.layout.shards {
            let _guard = self.lock(shard)?;
            let (live, free) = self.check_shard(shard)?;
            report.live += live;
            report.free += free;
        }
        Ok(report)
    }

    fn check_shard(&self, shard: usize) -> Result<(usize, usize)> {
        let slots = self.layout.slots;
        let fail = |what| Err(self.corrupt(what));
        if self
            .shard_word(shard, shard_header::JOURNAL_STATE)
            .load(Acquire)
            != JOURNAL_IDLE
        {
            return fail("journal not idle after recovery");
        }
        let mut seen = vec![0u8; slots]; // 1 = free list, 2 = SIEVE list
        let mut free = 0;
        let mut at = self
            .shard_word(shard, shard_header::FREE_HEAD)
            .load(Relaxed);
        while at != NONE {
            let index = self.slot_index(at, "free list points outside the shard")?;
            if seen[index] != 0 {
                return fail("free list has a cycle");
            }
            seen[index] = 1;
            if self.slot_word(shard, index, slot::LIVE).load(Relaxed) != 0 {
                return fail("a live slot is on the free list");
            }
            free += 1;
            at = self.slot_word(shard, index, slot::FREE_NEXT).load(Relaxed);
        }
        let mut live = 0;
        let mut prev = NONE;
        let mut at = self.shard_word(shard, shard_header::HEAD).load(Relaxed);
        while at != NONE {
            let index = self.slot_index(at, "SIEVE list points outside the shard")?;
            if seen[index] != 0 {
                return fail("SIEVE list has a cycle or shares a slot with the free list");
            }
            seen[index] = 2;
            if self.slot_word(shard, index, slot::LIVE).load(Relaxed) != 1 {
                return fail("a slot on the SIEVE list is not live");
            }
            if self.slot_word(shard, index, slot::VER).load(Relaxed) & 1 != 0 {
                return fail("a live slot has an odd version");
            }
            if self.slot_word(shard, index, slot::PREV).load(Relaxed) != prev {
                return fail("SIEVE list back link is wrong");
            }
            live += 1;
            prev = at;
            at = self.slot_word(shard, index, slot::NEXT).load(Relaxed);
        }
        if self.shard_word(shard, shard_header::TAIL).load(Relaxed) != prev {
            return fail("SIEVE tail is not the last entry");
        }
        let hand = self.shard_word(shard, shard_header::HAND).load(Relaxed);
        if hand != NONE && (hand >= slots as u64 || seen[hand as usize] != 2) {
            return fail("SIEVE hand is not on a live entry");
        }
        if free + live != slots {
            return fail("free + live != slots (lost slots)");
        }
        if self.shard_word(shard, shard_header::LEN).load(Relaxed) != live as u64 {
            return fail("len does not count the live entries");
        }
        let mut chained = 0;
        for bucket in 0..self.layout.buckets {
            let mut at = self
                .region
                .u64(self.layout.bucket(shard, bucket))
                .load(Relaxed);
            while at != NONE {
                let index = self.slot_index(at, "bucket chain points outside the shard")?;
                if seen[index] != 2 {
                    return fail("a bucket chain holds a slot that is not live (or twice)");
                }
                seen[index] = 3;
                let hash = self.slot_word(shard, index, slot::HASH).load(Relaxed);
                if (hash as usize) & (self.layout.buckets - 1) != bucket
                    || self.place(hash).0 != shard
                {
                    return fail("an entry sits in the wrong bucket");
                }
                chained += 1;
                at = self.slot_word(shard, index, slot::CHAIN).load(Relaxed);
            }
        }
        if chained != live {
            return fail("a live entry is in no bucket chain");
        }
        Ok((live, free))
    }

    /// Every live entry of the cache as (key, value, expires_at), sorted; for tests and
    /// tools (takes each shard lock, so it also recovers).
    #[doc(hidden)]
    pub fn snapshot(&self) -> Result<Vec<crate::Entry>> {
        let mut all = Vec::new();
        for shard in 0..self.layout.shards {
            let _guard = self.lock(shard)?;
            let mut at = self.shard_word(shard, shard_header::HEAD).load(Relaxed);
            for _ in 0..self.layout.slots {
                if at == NONE {
                    break;
                }
                let index = self.slot_index(at, "SIEVE list points outside the shard")?;
                let base = self.layout.slot(shard, index);
                let lens = self.slot_word(shard, index, slot::LENS).load(Relaxed);
                let (klen, vlen) = ((lens >> 32) as usize, (lens & 0xFFFF_FFFF) as usize);
                if klen > self.layout.max_key || vlen > self.layout.max_value {
                    return Err(self.corrupt("a slot's lengths exceed the cache's maxima"));
                }
                let bytes = |off: usize, len: usize| {
                    let mut out = Vec::with_capacity(len.div_ceil(8) * 8);
                    for i in 0..len.div_ceil(8) {
                        out.extend_from_slice(
                            &self.region.u64(off + i * 8).load(Relaxed).to_ne_bytes(),
                        );
                    }
                    out.truncate(len);
                    out
                };
                let key = bytes(base + slot::HEADER, klen);
                let value = bytes(base + slot::HEADER + self.layout.key_words * 8, vlen);
                let expires = self.slot_word(shard, index, slot::EXPIRES).load(Relaxed);
                all.push((key, value, expires));
                at = self.slot_word(shard, index, slot::NEXT).load(Relaxed);
            }
        }
        all.sort();
        Ok(all)
    }

    /// Takes every shard lock once (running recovery where a dead writer left work).
    pub fn recover(&self) -> Result<()> {
        for shard in 0..self.layout.shards {
            drop(self.lock(shard)?);
        }
        Ok(())
    }
}
