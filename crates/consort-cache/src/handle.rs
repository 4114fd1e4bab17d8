//! One open handle on a cache region, as every layer above sees it: the mapping, the
//! handle's own copy of the layout, the hash seed, and who the handle is (participant slot,
//! lock token, fork generation). A [`Shard`] is the view of one shard through it.
//!
//! # Invariants
//! 1. Offsets come only from the handle's own [`Layout`]; a slot index read from shared
//!    memory is used only after [`Shard::slot_index`] checked it against that layout.
//! 2. The participant slot is ours while the handle lives: the handle's open file
//!    description holds its OFD lock byte, and its generation was bumped when we took it, so
//!    no token left behind by an earlier owner of the slot names us.
//! 3. A handle writes only its own participant entry (generation, pid, counters); the
//!    counters are `Relaxed` adds, so a reader bumps them without a lock.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::{
    lock_word, participant, shard_header, superblock, Layout, PARTICIPANTS, STATE_RETIRED,
};
use crate::region::{self, Region};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed};
use crate::sync::{AtomicU32, AtomicU64, Mutex};

/// What [`Handle::intact`] reports once the file was truncated under us.
pub(crate) const TRUNCATED: &str =
    "the file was truncated while this process had it mapped (recreate the cache)";

/// An open cache region and who we are in it.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) region: Region,
    pub(crate) layout: Layout,
    pub(crate) path: PathBuf,
    /// Its open file description holds our participant's liveness lock byte.
    pub(crate) file: File,
    pub(crate) seed: u64,
    /// TTL of entries inserted without one (ns, 0 = never), from the superblock.
    pub(crate) default_ttl_ns: u64,
    /// This handle's participant slot and lock token.
    pub(crate) participant: usize,
    pub(crate) token: u32,
    /// The fork generation the handle was opened in (a forked child must open its own).
    pub(crate) fork_generation: u64,
    /// One per shard: threads of this process queue here, so a shard's futex word
    /// holding our own token while we wait can only be stale.
    pub(crate) local: Box<[Mutex<()>]>,
    /// Our entry in the fork hook's table (`region::fork`), released on drop.
    #[cfg(not(loom))]
    fork_entry: Option<usize>,
}

impl Handle {
    /// Takes the first free participant slot of `region` (its OFD lock byte on `file`),
    /// bumps the slot's generation and records our pid.
    pub(crate) fn new(
        file: File,
        region: Region,
        path: PathBuf,
        layout: Layout,
        seed: u64,
    ) -> Result<Handle> {
        let io_err = |source| Error::Io {
            op: "lock",
            path: path.clone(),
            source,
        };
        let mut taken = None;
        for index in 0..PARTICIPANTS {
            if region::try_lock_byte(&file, index as u32).map_err(io_err)? {
                taken = Some(index);
                break;
            }
        }
        let Some(participant) = taken else {
            return Err(Error::TooManyHandles(path));
        };
        let base = layout.participant(participant);
        let gen_word = region.u64(base + participant::GEN);
        let mut gen = gen_word.load(Relaxed);
        loop {
            gen = gen.wrapping_add(1);
            // A token's generation bits are never all zero.
            if gen & lock_word::GEN_MASK != 0 {
                break;
            }
        }
        gen_word.swap(gen, AcqRel);
        let pid = rustix::process::getpid();
        region
            .u64(base + participant::PID)
            .store(u64::from(pid.as_raw_nonzero().get() as u32), Relaxed);
        let token = lock_word::token(participant, gen);
        let default_ttl_ns = region.u64(superblock::DEFAULT_TTL_NS).load(Relaxed);
        let local = (0..layout.shards).map(|_| Mutex::new(())).collect();
        #[cfg(not(loom))]
        let fork_entry = region::fork::register(std::os::fd::AsRawFd::as_raw_fd(&file), &region);
        Ok(Handle {
            region,
            layout,
            path,
            file,
            seed,
            default_ttl_ns,
            participant,
            token,
            fork_generation: region::fork_generation(),
            local,
            #[cfg(not(loom))]
            fork_entry,
        })
    }

    pub(crate) fn corrupt(&self, what: &'static str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// `Ok` unless the file was truncated under our mapping (the SIGBUS guard caught a
    /// fault in it, see `region.rs`): then nothing read from it can be trusted.
    #[inline]
    pub(crate) fn intact(&self) -> Result<()> {
        if self.region.truncated() {
            return Err(self.corrupt(TRUNCATED));
        }
        Ok(())
    }

    /// Whether another process has replaced this cache (the superblock says RETIRED).
    pub(crate) fn is_retired(&self) -> bool {
        self.region.u64(superblock::STATE).load(Acquire) == STATE_RETIRED
    }

    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed)
    }

    /// The shard and bucket of a hash: bits 32.. pick the shard, the low bits the bucket.
    #[inline]
    pub(crate) fn place(&self, hash: u64) -> (usize, usize) {
        // Lemire's multiply-shift range reduction: no division on the read path.
        let shard = (((hash >> 32) * self.layout.shards as u64) >> 32) as usize;
        let bucket = (hash as usize) & (self.layout.buckets - 1);
        (shard, bucket)
    }

    /// Adds `by` to one of our own participant counters.
    #[inline]
    pub(crate) fn count(&self, field: usize, by: u64) {
        self.region
            .u64(self.layout.participant(self.participant) + field)
            .fetch_add(by, Relaxed);
    }

    #[inline]
    pub(crate) fn shard(&self, index: usize) -> Shard<'_> {
        Shard {
            handle: self,
            index,
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Before the fields drop: the handle leaves the fork hook's table, then its mapping
        // is unmapped and its fd closed.
        #[cfg(not(loom))]
        if let Some(index) = self.fork_entry {
            region::fork::unregister(index);
        }
    }
}

/// One shard's words, every offset from the handle's layout.
#[derive(Clone, Copy)]
pub(crate) struct Shard<'a> {
    pub(crate) handle: &'a Handle,
    pub(crate) index: usize,
}

impl<'a> Shard<'a> {
    /// Byte offset of the shard in the region.
    #[inline]
    pub(crate) fn base(&self) -> usize {
        self.handle.layout.shard(self.index)
    }

    /// A word of the shard header ([`shard_header`]).
    #[inline]
    pub(crate) fn word(&self, field: usize) -> &'a AtomicU64 {
        self.handle.region.u64(self.base() + field)
    }

    /// The futex word of the shard's writer lock.
    #[inline]
    pub(crate) fn lock_word(&self) -> &'a AtomicU32 {
        self.handle.region.u32(self.base() + shard_header::LOCK)
    }

    #[inline]
    pub(crate) fn bucket_offset(&self, bucket: usize) -> usize {
        self.handle.layout.bucket(self.index, bucket)
    }

    #[inline]
    pub(crate) fn bucket(&self, bucket: usize) -> &'a AtomicU64 {
        self.handle.region.u64(self.bucket_offset(bucket))
    }

    /// Byte offset of slot `slot` (checked by the caller, see [`Shard::slot_index`]).
    #[inline]
    pub(crate) fn slot_offset(&self, slot: usize) -> usize {
        self.handle.layout.slot(self.index, slot)
    }

    /// The word at `field` ([`crate::layout::slot`]) of slot `slot`.
    #[inline]
    pub(crate) fn slot_word(&self, slot: usize, field: usize) -> &'a AtomicU64 {
        self.handle.region.u64(self.slot_offset(slot) + field)
    }

    /// A slot index read from shared memory, checked against the layout; `what` names the
    /// link that was out of range.
    #[inline]
    pub(crate) fn slot_index(&self, raw: u64, what: &'static str) -> Result<usize> {
        if raw < self.handle.layout.slots as u64 {
            Ok(raw as usize)
        } else {
            Err(self.handle.corrupt(what))
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of every expiry word.
pub(crate) fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the same clock at tick resolution, never ahead
/// of [`now_ns`], and cheaper to read.
pub(crate) fn coarse_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// A TTL as stored: nanoseconds, at least 1; `None` is 0 ("never expires").
pub(crate) fn ttl_ns(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| {
        u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}
