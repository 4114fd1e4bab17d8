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

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fault;
mod layout;
mod region;
mod shard;
mod sync;
pub mod torture;

#[cfg(all(feature = "fault", not(loom)))]
pub use fault::stop_after;
#[cfg(any(feature = "fault", loom))]
pub use fault::{crash_after, points_passed};

use layout::{lock_word, participant, superblock, Layout, PARTICIPANTS};
use region::Region;
use sync::Mutex;

/// What can go wrong; every variant names the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache name is not 1 to 128 characters of `[A-Za-z0-9._-]` starting with no `.`.
    #[error("invalid cache name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A configuration value is out of range.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(&'static str),
    /// The existing cache was made with other parameters (use [`Cache::recreate`]).
    #[error("cache {path} exists with {field} = {existing}, not {requested}")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        existing: u64,
        requested: u64,
    },
    /// The directory or file is not private to this user (owner, mode, or a symlink).
    #[error("{path} is not private to this user: {reason}")]
    NotPrivate { path: PathBuf, reason: String },
    /// The file is not a cache of this layout version, or its bytes are inconsistent.
    #[error("cache {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: &'static str },
    /// Another process recreated the cache; open it again to use the new one.
    #[error("cache {0} was recreated by another process; open it again")]
    Retired(PathBuf),
    /// All participant slots are taken by live handles.
    #[error("cache {0} has {PARTICIPANTS} open handles already")]
    TooManyHandles(PathBuf),
    /// The handle was opened by the parent of this forked process; open it again here.
    #[error("a cache handle cannot be used across fork(); open the cache again in the child")]
    Forked,
    /// No cache of that name exists.
    #[error("no cache {0}")]
    NotFound(PathBuf),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// One entry as [`Cache::snapshot`] lists it: key, value, expiry (monotonic ns, 0 = never).
pub type Entry = (Vec<u8>, Vec<u8>, u64);

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a cache is made (and what an existing one must match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How many entries fit in total (rounded up to a multiple of `shards`).
    pub capacity: usize,
    /// Independent writer locks; keys are spread over them by hash.
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

/// What [`Cache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new entry.
    Stored,
    /// The key had an entry; it now has this value.
    Replaced,
    /// The key or value is longer than the cache allows; nothing changed.
    Oversize,
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
    /// Entries now stored.
    pub len: u64,
    /// Entries that fit.
    pub capacity: u64,
}

/// What [`Cache::check_invariants`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub shards: usize,
    /// Live entries (in a bucket chain, in the SIEVE list, counted in `len`).
    pub live: usize,
    /// Free slots; `live + free` is the capacity.
    pub free: usize,
}

/// An open cache. Share it between threads; open it again in a forked child.
#[derive(Debug)]
pub struct Cache {
    region: Region,
    file: File,
    path: PathBuf,
    layout: Layout,
    seed: u64,
    default_ttl_ns: u64,
    /// This handle's participant slot and lock token.
    participant: usize,
    token: u32,
    pid: rustix::process::Pid,
    /// One per shard: threads of this process queue here, so a shard's futex word
    /// holding our own token while we wait can only be stale.
    local: Box<[Mutex<()>]>,
}

impl Cache {
    /// Opens the cache `name`, creating it if it does not exist. An existing cache made with
    /// other parameters gives [`Error::Mismatch`].
    pub fn open(name: &str, config: &Config) -> Result<Cache> {
        let (dir, layout) = prepare(name, config)?;
        let path = dir.join(format!("{name}.cache"));
        for _ in 0..100 {
            match attach(&path, Some((&layout, config))) {
                Err(Error::NotFound(_)) => {}
                Err(Error::Retired(_)) => {
                    std::thread::yield_now();
                    continue;
                }
                other => return other,
            }
            match create(&dir, &path, &layout, config, false) {
                Ok(Some(cache)) => return Ok(cache),
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
        create(&dir, &path, &layout, config, true)?.ok_or(Error::NotFound(path))
    }

    /// Opens an existing cache whatever its parameters (for tools such as `consort cache`).
    pub fn attach(name: &str, dir: Option<&Path>) -> Result<Cache> {
        validate_name(name)?;
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => default_dir(),
        };
        check_dir(&dir)?;
        let path = dir.join(format!("{name}.cache"));
        // A retired file at the path means a recreate is renaming over it right now.
        for _ in 0..100 {
            match attach(&path, None) {
                Err(Error::Retired(_)) => std::thread::yield_now(),
                other => return other,
            }
        }
        Err(Error::Retired(path))
    }

    /// Removes the cache file `name` (processes that have it open keep using their mapping).
    pub fn remove_file(name: &str, dir: Option<&Path>) -> Result<()> {
        validate_name(name)?;
        let dir = dir.map_or_else(default_dir, Path::to_path_buf);
        let path = dir.join(format!("{name}.cache"));
        fs::remove_file(&path).map_err(|source| Error::Io {
            op: "remove",
            path,
            source,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total capacity in entries.
    pub fn capacity(&self) -> usize {
        self.layout.capacity * self.layout.shards
    }

    /// Whether another process has replaced this cache with [`Cache::recreate`].
    pub fn is_retired(&self) -> bool {
        self.region
            .u64(superblock::STATE)
            .load(sync::Ordering::Acquire)
            == layout::STATE_RETIRED
    }

    /// The counters of every participant, summed, and the current fill.
    pub fn stats(&self) -> Stats {
        use sync::Ordering::Relaxed;
        let mut stats = Stats {
            capacity: self.capacity() as u64,
            ..Stats::default()
        };
        for index in 0..PARTICIPANTS {
            let base = self.layout.participant(index);
            let read = |off| self.region.u64(base + off).load(Relaxed);
            stats.hits += read(participant::HITS);
            stats.misses += read(participant::MISSES);
            stats.inserts += read(participant::INSERTS);
            stats.evictions += read(participant::EVICTIONS);
            stats.expirations += read(participant::EXPIRATIONS);
            stats.recoveries += read(participant::RECOVERIES);
        }
        for shard in 0..self.layout.shards {
            let len = self
                .region
                .u64(self.layout.shard(shard) + layout::shard_header::LEN)
                .load(Relaxed);
            stats.len += len.min(self.layout.capacity as u64);
        }
        stats
    }

    fn corrupt(&self, what: &'static str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what,
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 128 {
        return bad("it must be 1 to 128 characters long");
    }
    if name.starts_with('.') {
        return bad("it must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONSORT_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let uid = rustix::process::geteuid().as_raw();
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("consort-cache-{uid}"))
}

/// Creates `dir` 0700 if needed, then insists it is a real directory of ours, closed to
/// group and others.
fn check_dir(dir: &Path) -> Result<()> {
    let io_err = |op, source| Error::Io {
        op,
        path: dir.to_path_buf(),
        source,
    };
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(io_err("create directory", err)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|err| io_err("stat", err))?;
    let not_private = |reason: String| {
        Err(Error::NotPrivate {
            path: dir.to_path_buf(),
            reason,
        })
    };
    if !meta.file_type().is_dir() {
        return not_private("not a directory (or a symlink)".into());
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return not_private(format!("owned by uid {}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return not_private(format!("mode {:o}, wanted 0700", meta.mode() & 0o777));
    }
    Ok(())
}

fn prepare(name: &str, config: &Config) -> Result<(PathBuf, Layout)> {
    validate_name(name)?;
    if config.capacity == 0 {
        return Err(Error::InvalidConfig("capacity must be at least 1"));
    }
    let shards = config.shards;
    let per_shard = config.capacity.div_ceil(shards.max(1));
    let layout = Layout::new(shards, per_shard, config.max_key, config.max_value)
        .map_err(Error::InvalidConfig)?;
    let dir = config.dir.clone().unwrap_or_else(default_dir);
    check_dir(&dir)?;
    Ok((dir, layout))
}

fn ttl_ns(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| {
        u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}

/// Builds a complete cache in a private temporary file, then links it at `path`
/// (`replace` = rename over whatever is there). `Ok(None)`: another process linked first.
fn create(
    dir: &Path,
    path: &Path,
    layout: &Layout,
    config: &Config,
    replace: bool,
) -> Result<Option<Cache>> {
    let mut random = [0u8; 16];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).map_err(|err| {
        Error::Io {
            op: "getrandom",
            path: path.to_path_buf(),
            source: err.into(),
        }
    })?;
    let [tag, seed] =
        [0, 8].map(|at| u64::from_le_bytes(random[at..at + 8].try_into().expect("8 bytes")));
    let tmp = dir.join(format!(".{tag:016x}.tmp"));
    let io_err = |op, source| Error::Io {
        op,
        path: tmp.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|err| io_err("create", err))?;
    let built = (|| {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|err| io_err("chmod", err))?;
        file.set_len(layout.region_len as u64)
            .map_err(|err| io_err("resize", err))?;
        // Reserve the pages now, so a full tmpfs fails here (ENOSPC), not with SIGBUS later.
        match rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            layout.region_len as u64,
        ) {
            Ok(()) => {}
            Err(err) if err == rustix::io::Errno::OPNOTSUPP => {}
            Err(err) => return Err(io_err("allocate", err.into())),
        }
        let region = Region::map(&file, layout.region_len).map_err(|err| io_err("map", err))?;
        shard::format(&region, layout, seed, ttl_ns(config.default_ttl));
        Ok(region)
    })();
    let region = match built {
        Ok(region) => region,
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
    };
    let old = if replace {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .ok()
    } else {
        None
    };
    let published = if replace {
        fs::rename(&tmp, path)
    } else {
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        linked
    };
    match published {
        Ok(()) => {}
        Err(err) if !replace && err.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io {
                op: "publish",
                path: path.to_path_buf(),
                source: err,
            });
        }
    }
    if let Some(old) = old {
        shard::retire(&old);
    }
    Cache::from_parts(file, region, path.to_path_buf(), *layout, seed).map(Some)
}

/// Opens and validates an existing cache file; with `expected`, every parameter must match.
fn attach(path: &Path, expected: Option<(&Layout, &Config)>) -> Result<Cache> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotFound(path.to_path_buf()))
        }
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::NotPrivate {
                path: path.to_path_buf(),
                reason: "it is a symlink".into(),
            })
        }
        Err(source) => {
            return Err(Error::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let meta = file.metadata().map_err(|source| Error::Io {
        op: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    let not_private = |reason: String| Error::NotPrivate {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.file_type().is_file() {
        return Err(not_private("not a regular file".into()));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(not_private(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(not_private(format!(
            "mode {:o}, wanted 0600",
            meta.mode() & 0o777
        )));
    }
    let corrupt = |what| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let size = usize::try_from(meta.len()).map_err(|_| corrupt("file too large"))?;
    if size < layout::PAGE {
        return Err(corrupt("file shorter than its superblock"));
    }
    let region = Region::map(&file, size).map_err(|source| Error::Io {
        op: "map",
        path: path.to_path_buf(),
        source,
    })?;
    let (found, seed, ttl) = shard::read_superblock(&region).map_err(corrupt)?;
    if found.region_len > size {
        return Err(corrupt("file shorter than the layout it describes"));
    }
    if let Some((want, config)) = expected {
        let fields: [(&'static str, usize, usize); 4] = [
            ("shards", found.shards, want.shards),
            ("capacity per shard", found.capacity, want.capacity),
            ("max_key", found.max_key, want.max_key),
            ("max_value", found.max_value, want.max_value),
        ];
        for (field, existing, requested) in fields {
            if existing != requested {
                return Err(Error::Mismatch {
                    path: path.to_path_buf(),
                    field,
                    existing: existing as u64,
                    requested: requested as u64,
                });
            }
        }
        let requested = ttl_ns(config.default_ttl);
        if ttl != requested {
            return Err(Error::Mismatch {
                path: path.to_path_buf(),
                field: "default_ttl (ns)",
                existing: ttl,
                requested,
            });
        }
    }
    // Map exactly the described length (a longer file is fine; we never look past it).
    let region = if found.region_len == size {
        region
    } else {
        drop(region);
        Region::map(&file, found.region_len).map_err(|source| Error::Io {
            op: "map",
            path: path.to_path_buf(),
            source,
        })?
    };
    if region.u64(superblock::STATE).load(sync::Ordering::Acquire) == layout::STATE_RETIRED {
        return Err(Error::Retired(path.to_path_buf()));
    }
    Cache::from_parts(file, region, path.to_path_buf(), found, seed)
}

impl Cache {
    fn from_parts(
        file: File,
        region: Region,
        path: PathBuf,
        layout: Layout,
        seed: u64,
    ) -> Result<Cache> {
        use sync::Ordering::{AcqRel, Relaxed};
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
        Ok(Cache {
            region,
            file,
            path,
            layout,
            seed,
            default_ttl_ns,
            participant,
            token,
            pid,
            local,
        })
    }
}
