//! A key-value cache in shared memory that many processes use at once, and that no dead
//! process can wedge or corrupt.
//!
//! - **Reads never block and never return a torn value**: entries are immutable while
//!   reachable, published by one atomic store, and validated by a per-slot version.
//! - **Writers** take a per-shard futex lock whose owner token is a (participant, generation)
//!   pair; the participant's liveness is an OFD file lock that the kernel drops when it dies.
//! - **Every in-place store goes through an undo journal**, so a writer SIGKILLed at any
//!   instruction leaves the shard in exactly its state before or after the operation once
//!   the next writer rolls the journal back.
//! - SIEVE eviction, a per-entry TTL on `CLOCK_MONOTONIC`, per-process statistics.
//!
//! ```no_run
//! use consort_cache::{Cache, Config};
//! let cache = Cache::open("embeddings", &Config::default())?;
//! cache.insert(b"key", b"value", None)?;
//! assert_eq!(cache.get(b"key")?.as_deref(), Some(&b"value"[..]));
//! # Ok::<(), consort_cache::Error>(())
//! ```
//!
//! The layout, its invariants and the platform assumptions are in `docs/design/cache.md`.
//!
//! # Modules, lowest first
//! Each module uses only the ones above it in this list, and `write`, `read` and `check`
//! not each other either (`tests/tidy.rs` checks the imports); `lib.rs` is the public face
//! and delegates every operation to them.
//!
//! - `fault`: crash points (feature `fault`, and the loom model).
//! - `sync`: std's atomics, mutex and futex, or loom's under `cfg(loom)`.
//! - `layout`: every offset of the file, the lock word's bits, checked arithmetic.
//! - `region`: the mapping and the OFD liveness locks; the only `unsafe`.
//! - `error`: [`Error`].
//! - `handle`: one open handle (mapping, layout copy, participant, token), one shard's words.
//! - `lock`: the per-shard futex writer lock and its steal rule.
//! - `journal`: the undo journal, transactions, recovery; its `Writer` is the only way to
//!   write a shard.
//! - `write`: insert, remove, SIEVE eviction, purge, clear.
//! - `read`: the lock-free read.
//! - `check`: the full invariant check and the snapshot.
//! - `file`: names, the private directory, create, attach, recreate, the superblock.
//! - [`torture`]: the SIGKILL storm shared by the tests and the CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

// Lowest first; each module uses only the ones before it (`tests/tidy.rs` checks).
mod fault;
mod sync;

// The file format, and the memory it lives in.
mod layout;
mod region;

// What every layer shares: the error type, the open handle and its shard views.
mod error;
mod handle;

// The writer's side: the lock,
mod lock;
// then the journal on top of it (its `Writer` is the only way to write a shard).
mod journal;

// The operations; none uses another.
mod check;
mod read;
mod write;

// The file around the region: create, attach, recreate.
mod file;

pub mod torture;

pub use check::{Entry, Report};
pub use error::{Error, Result};
#[cfg(all(feature = "fault", not(loom)))]
pub use fault::stop_after;
#[cfg(any(feature = "fault", loom))]
pub use fault::{crash_after, points_passed};
#[cfg(not(loom))]
pub use region::{sigbus_guard_reassert, sigbus_guard_step_aside};
pub use write::Insert;

use handle::{ttl_ns, Handle};
use layout::{participant, shard_header, superblock, Layout, PARTICIPANTS};

/// How many handles may have one cache open at once, all processes together (a further
/// open gives [`Error::TooManyHandles`]).
pub const MAX_HANDLES: usize = PARTICIPANTS;

/// How many times this process is a fork (without exec) of the process that started it.
///
/// A forked child must not use its parent's handles for writing: they would share the
/// parent's liveness lock. When the child starts, every handle it inherited lets go of the
/// parent's open file description at once and this number grows by one; those handles stay
/// readable, their writes give [`Error::Forked`], and a library above compares this number
/// with the one it saw at open to know when to open the cache again (consort's Python
/// package does so transparently).
#[inline]
pub fn fork_generation() -> u64 {
    region::fork_generation()
}

/// Where caches live when [`Config::dir`] is `None`: `$CONSORT_CACHE_DIR` when set, else
/// `/dev/shm/consort-cache-<uid>` (the temporary directory where there is no `/dev/shm`).
pub fn default_dir() -> PathBuf {
    file::default_dir()
}

/// How a cache is made (and what an existing one must match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How many entries fit in total, exactly (see `shards`).
    pub capacity: usize,
    /// The most independent writer locks to spread keys over (by hash). A cache uses the
    /// largest number of shards up to this that divides `capacity`, so its capacity is
    /// exactly the one asked for (a prime capacity is one shard). Each shard evicts in its
    /// own SIEVE order: one shard gives one order over all entries (consort's Python
    /// package uses one for caches under 2,048 entries).
    pub shards: usize,
    /// Longest key in bytes.
    pub max_key: usize,
    /// Longest value in bytes.
    pub max_value: usize,
    /// TTL of entries inserted without one; `None` means they do not expire.
    pub default_ttl: Option<Duration>,
    /// Where the cache file lives; default `$CONSORT_CACHE_DIR`, else
    /// `/dev/shm/consort-cache-<uid>` (a 0700 directory owned by this user).
    pub dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            capacity: 16 * 1024,
            shards: 8,
            max_key: 64,
            max_value: 1024,
            default_ttl: None,
            dir: None,
        }
    }
}

/// Counters summed over every process that ever used the cache, and its fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Times a writer rolled back (or finished) a dead writer's operation.
    pub recoveries: u64,
    /// Entries callers skipped as over the limits ([`Cache::count_oversize`]).
    pub oversize_skips: u64,
    /// Entries now stored.
    pub len: u64,
    /// Entries that fit.
    pub capacity: u64,
}

/// An open cache. Share it between threads; open it again in a forked child.
#[derive(Debug)]
pub struct Cache {
    handle: Handle,
}

impl Cache {
    /// Opens the cache `name`, creating it if it does not exist. An existing cache made with
    /// other parameters gives [`Error::Mismatch`].
    pub fn open(name: &str, config: &Config) -> Result<Cache> {
        let (dir, layout) = prepare(name, config)?;
        let path = dir.join(format!("{name}.cache"));
        let default_ttl_ns = ttl_ns(config.default_ttl);
        for _ in 0..100 {
            match file::attach(&path, Some((&layout, default_ttl_ns))) {
                Err(Error::NotFound(_)) => {}
                Err(Error::Retired(_)) => {
                    std::thread::yield_now();
                    continue;
                }
                other => return other.map(Cache::from_handle),
            }
            match file::create(&dir, &path, &layout, default_ttl_ns, false) {
                Ok(Some(handle)) => return Ok(Cache::from_handle(handle)),
                Ok(None) => continue, // someone else created it first: attach to theirs
                Err(err) => return Err(err),
            }
        }
        Err(Error::Corrupt {
            path,
            what: "it keeps being recreated or removed while we open it",
        })
    }

    /// Makes a fresh, empty cache `name` with `config`, replacing any existing one by
    /// rename: processes that have the old one mapped keep a valid mapping (never a
    /// SIGBUS) and get [`Error::Retired`] on their next write.
    pub fn recreate(name: &str, config: &Config) -> Result<Cache> {
        let (dir, layout) = prepare(name, config)?;
        let path = dir.join(format!("{name}.cache"));
        file::create(&dir, &path, &layout, ttl_ns(config.default_ttl), true)?
            .map(Cache::from_handle)
            .ok_or(Error::NotFound(path))
    }

    /// Opens an existing cache whatever its parameters (for tools such as `consort cache`).
    pub fn attach(name: &str, dir: Option<&Path>) -> Result<Cache> {
        file::validate_name(name)?;
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => file::default_dir(),
        };
        file::check_dir(&dir)?;
        let path = dir.join(format!("{name}.cache"));
        // A retired file at the path means a recreate is renaming over it right now.
        for _ in 0..100 {
            match file::attach(&path, None) {
                Err(Error::Retired(_)) => std::thread::yield_now(),
                other => return other.map(Cache::from_handle),
            }
        }
        Err(Error::Retired(path))
    }

    /// Removes the cache file `name` (processes that have it open keep using their mapping).
    pub fn remove_file(name: &str, dir: Option<&Path>) -> Result<()> {
        file::validate_name(name)?;
        let dir = dir.map_or_else(file::default_dir, Path::to_path_buf);
        let path = dir.join(format!("{name}.cache"));
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            op: "remove",
            path,
            source,
        })
    }

    /// A cache over a heap buffer instead of a file, for the loom model (`tests/loom.rs`):
    /// `config.dir` is ignored and the hash seed is fixed.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn in_memory(config: &Config) -> Result<Cache> {
        let layout = layout_for(config)?;
        file::in_memory(&layout, ttl_ns(config.default_ttl)).map(Cache::from_handle)
    }

    fn from_handle(handle: Handle) -> Cache {
        Cache { handle }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.handle.path
    }

    /// Total capacity in entries.
    pub fn capacity(&self) -> usize {
        self.handle.layout.capacity * self.handle.layout.shards
    }

    /// Whether another process has replaced this cache with [`Cache::recreate`].
    pub fn is_retired(&self) -> bool {
        self.handle.is_retired()
    }

    /// The counters of every participant, summed (saturating), and the current fill.
    ///
    /// # Caveats
    /// Nothing here is checked: a corrupt file gives whatever it holds, and a file truncated
    /// under this process reads as zeros. [`Cache::check_headers`] says whether to trust it.
    pub fn stats(&self) -> Stats {
        use sync::Ordering::Relaxed;
        let handle = &self.handle;
        let mut stats = Stats {
            capacity: self.capacity() as u64,
            ..Stats::default()
        };
        for index in 0..PARTICIPANTS {
            let base = handle.layout.participant(index);
            let read = |off| handle.region.u64(base + off).load(Relaxed);
            // Saturating: the counters are whatever the file holds, garbage included.
            let add = |sum: &mut u64, off| *sum = sum.saturating_add(read(off));
            add(&mut stats.hits, participant::HITS);
            add(&mut stats.misses, participant::MISSES);
            add(&mut stats.inserts, participant::INSERTS);
            add(&mut stats.evictions, participant::EVICTIONS);
            add(&mut stats.expirations, participant::EXPIRATIONS);
            add(&mut stats.recoveries, participant::RECOVERIES);
        }
        stats.oversize_skips = handle.region.u64(superblock::OVERSIZE_SKIPS).load(Relaxed);
        for shard in 0..handle.layout.shards {
            let len = handle.shard(shard).word(shard_header::LEN).load(Relaxed);
            stats.len += len.min(handle.layout.capacity as u64);
        }
        stats
    }

    /// Counts one entry skipped as over the key or value limit, in the file's shared
    /// counter ([`Stats::oversize_skips`]): for a caller that checks the limits itself and
    /// computes rather than stores (a memoizing decorator).
    pub fn count_oversize(&self) {
        use sync::Ordering::Relaxed;
        self.handle
            .region
            .u64(superblock::OVERSIZE_SKIPS)
            .fetch_add(1, Relaxed);
    }

    /// Counts one hit (or miss) in this process's counters without a lookup: for a caller
    /// that served a result another call of its own computed (a single-flight waiter given
    /// its leader's result), whether or not that result was stored.
    pub fn count(&self, hit: bool) {
        let field = if hit {
            participant::HITS
        } else {
            participant::MISSES
        };
        self.handle.count(field, 1);
    }

    /// How many shards the cache has (see [`Config::shards`]).
    pub fn shards(&self) -> usize {
        self.handle.layout.shards
    }

    /// Longest key in bytes.
    pub fn max_key(&self) -> usize {
        self.handle.layout.max_key
    }

    /// Longest value in bytes.
    pub fn max_value(&self) -> usize {
        self.handle.layout.max_value
    }

    /// TTL of entries inserted without one; `None` means they do not expire.
    pub fn default_ttl(&self) -> Option<Duration> {
        (self.handle.default_ttl_ns != 0).then(|| Duration::from_nanos(self.handle.default_ttl_ns))
    }

    /// Zeroes the hit and miss counters of every participant, and the oversize skips, in
    /// every process.
    ///
    /// Takes every shard lock (in shard order, running recovery where a dead writer left
    /// work) and holds them all while it zeroes, so no write of this cache runs meanwhile.
    /// Reads take no lock: a hit or miss counted during the reset lands before it (and is
    /// zeroed) or after it (and counts), never half; the counters are atomic adds.
    ///
    /// # Errors
    /// Those of a write ([`Error::Forked`], [`Error::Retired`], [`Error::Corrupt`]).
    pub fn reset_counters(&self) -> Result<()> {
        let result = write::reset_counters(&self.handle);
        if result.is_ok() {
            use sync::Ordering::Relaxed;
            self.handle
                .region
                .u64(superblock::OVERSIZE_SKIPS)
                .store(0, Relaxed);
        }
        self.intact(result)
    }

    /// The cheap checks, without a lock and changing nothing: the file was not truncated
    /// under this process, and every shard's header words are sane (lock owner, journal
    /// state, length and entries, list heads, hand, fill). They hold at every instant of a
    /// healthy cache, live and dead writers included, so a failure is corruption. Run them
    /// before trusting [`Cache::stats`] of a file you did not make.
    ///
    /// # Errors
    /// [`Error::Corrupt`], naming what is wrong.
    pub fn check_headers(&self) -> Result<()> {
        check::check_headers(&self.handle)
    }

    /// Inserts or replaces `key`. `ttl` overrides the cache's default TTL.
    pub fn insert(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<Insert> {
        self.intact(write::insert(&self.handle, key, value, ttl))
    }

    /// Like [`Cache::insert`], but only if it need not wait: `Ok(None)`, with nothing done,
    /// when the key's shard lock is held by another thread or process, or a dead writer's
    /// operation must be repaired first. A caller that must not block (a Python thread
    /// holding the GIL) tries this first and calls [`Cache::insert`] where it may wait.
    pub fn try_insert(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Option<Insert>> {
        self.intact(write::try_insert(&self.handle, key, value, ttl))
    }

    /// Removes `key`; `true` if it was there.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.intact(write::remove(&self.handle, key))
    }

    /// Removes up to `max` expired entries; returns how many.
    pub fn purge_expired(&self, max: usize) -> Result<usize> {
        self.intact(write::purge_expired(&self.handle, max))
    }

    /// Removes every entry. Each shard is cleared atomically (before or after).
    pub fn clear(&self) -> Result<()> {
        self.intact(write::clear(&self.handle))
    }

    /// `result`, unless the file was truncated under us meanwhile: then what the operation
    /// did, it did to zero pages, and the truncation is the error to report.
    fn intact<T>(&self, result: Result<T>) -> Result<T> {
        self.handle.intact()?;
        result
    }

    /// Copies the value of `key` out.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// Calls `f` with the value of `key` (a validated private copy; `f` runs outside any
    /// lock and may take its time).
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        read::get_with(&self.handle, key, f)
    }

    /// Checks every structural invariant of every shard (under each shard's lock):
    /// free + live = capacity, every chain holds live slots of its bucket, the SIEVE list
    /// holds exactly the live slots, `len` counts them, the journal is idle.
    pub fn check_invariants(&self) -> Result<Report> {
        self.intact(check::check_invariants(&self.handle))
    }

    /// Every live entry of the cache as (key, value, expires_at), sorted; for tests and
    /// tools (takes each shard lock, so it also recovers).
    #[doc(hidden)]
    pub fn snapshot(&self) -> Result<Vec<Entry>> {
        self.intact(check::snapshot(&self.handle))
    }

    /// Takes every shard lock once (running recovery where a dead writer left work).
    pub fn recover(&self) -> Result<()> {
        for shard in 0..self.handle.layout.shards {
            drop(journal::Writer::enter(&self.handle, shard)?);
        }
        self.handle.intact()
    }
}

/// The directory and layout `config` asks for, both checked (the directory is created).
fn prepare(name: &str, config: &Config) -> Result<(PathBuf, Layout)> {
    file::validate_name(name)?;
    let layout = layout_for(config)?;
    let dir = config.dir.clone().unwrap_or_else(file::default_dir);
    file::check_dir(&dir)?;
    Ok((dir, layout))
}

fn layout_for(config: &Config) -> Result<Layout> {
    if config.capacity == 0 {
        return Err(Error::InvalidConfig("capacity must be at least 1"));
    }
    let shards = shards_for(config.capacity, config.shards);
    Layout::new(
        shards,
        config.capacity / shards,
        config.max_key,
        config.max_value,
    )
    .map_err(Error::InvalidConfig)
}

/// The largest number of shards up to `requested` that divides `capacity`; at least 1.
fn shards_for(capacity: usize, requested: usize) -> usize {
    let mut shards = requested.min(capacity).max(1);
    while capacity % shards != 0 {
        shards -= 1;
    }
    shards
}
