//! The cache file: names, the private directory, create (a complete region built in a
//! temporary file, then linked), attach (every field of the superblock checked against the
//! file), recreate (rename over the name, then mark the old superblock RETIRED).
//!
//! # Invariants
//! 1. **A published file is complete**: it is built, formatted and READY in `.<random>.tmp`
//!    before `link()` or `rename()` gives it the cache's name, and we never truncate
//!    anything mapped, so no process faults on a short file of our making (one that
//!    someone else truncates is caught by the SIGBUS guard of `region.rs`).
//! 2. **Private**: the directory is a real 0700 directory of ours, the file a regular 0600
//!    file of ours, opened with `O_NOFOLLOW | O_CLOEXEC`; anything else is refused.
//! 3. **No trust in the superblock**: magic, layout version, ABI, hash and every size are
//!    checked, and the layout is recomputed from the sizes with checked arithmetic, before
//!    anything past the superblock is touched.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::journal::reset_shard;
use crate::layout::{self, superblock, Layout, PARTICIPANTS};
use crate::region::Region;
use crate::sync::Ordering::{Acquire, Relaxed, Release};

/// Accepts `[A-Za-z0-9._-]{1,128}` not starting with `.`: no path traversal.
pub(crate) fn validate_name(name: &str) -> Result<()> {
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

/// `$CONSORT_CACHE_DIR`, else `/dev/shm/consort-cache-<uid>` (the temp dir without `/dev/shm`).
pub(crate) fn default_dir() -> PathBuf {
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
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
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
    let me = rustix::process::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me {
        return not_private(format!(
            "the cache directory belongs to uid {} (mode {mode:04o}), not to this user \
             (uid {me}); it must be this user's own, with mode 0700",
            meta.uid()
        ));
    }
    if mode & 0o077 != 0 {
        return not_private(format!(
            "the cache directory has mode {mode:04o}; it must have mode 0700 (nothing for \
             group or others)"
        ));
    }
    Ok(())
}

/// Builds a complete cache in a private temporary file, then links it at `path`
/// (`replace` = rename over whatever is there). `Ok(None)`: another process linked first.
pub(crate) fn create(
    dir: &Path,
    path: &Path,
    layout: &Layout,
    default_ttl_ns: u64,
    replace: bool,
) -> Result<Option<Handle>> {
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
        format(&region, layout, seed, default_ttl_ns);
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
        retire(&old);
    }
    Handle::new(file, region, path.to_path_buf(), *layout, seed).map(Some)
}

/// Opens and validates an existing cache file; with `expected` (a layout and a default TTL
/// in ns), every parameter must match.
pub(crate) fn attach(path: &Path, expected: Option<(&Layout, u64)>) -> Result<Handle> {
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
    let (found, seed, ttl) = read_superblock(&region).map_err(corrupt)?;
    if found.region_len > size {
        return Err(corrupt("file shorter than the layout it describes"));
    }
    if let Some((want, requested_ttl)) = expected {
        // The capacity as the caller gave it comes first: "capacity per shard" would speak
        // of a number the caller never wrote.
        let total = |layout: &Layout| layout.shards.saturating_mul(layout.capacity);
        let fields: [(&'static str, usize, usize); 5] = [
            ("capacity", total(&found), total(want)),
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
        if ttl != requested_ttl {
            return Err(Error::Mismatch {
                path: path.to_path_buf(),
                field: "default_ttl (ns)",
                existing: ttl,
                requested: requested_ttl,
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
    if region.u64(superblock::STATE).load(Acquire) == layout::STATE_RETIRED {
        return Err(Error::Retired(path.to_path_buf()));
    }
    Handle::new(file, region, path.to_path_buf(), found, seed)
}

/// Writes a fresh superblock and empty shards into a new (zeroed, unpublished) region.
fn format(region: &Region, layout: &Layout, seed: u64, ttl_ns: u64) {
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
fn retire(file: &File) {
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
fn read_superblock(region: &Region) -> Result<(Layout, u64, u64), &'static str> {
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

/// A cache over a heap region instead of a file, for the loom model (`tests/loom.rs`):
/// formatted as a new file would be, with a fixed hash seed (a model must run the same way
/// on every schedule) and a memfd whose open file description holds the participant lock.
/// The region holds the words a model touches: the superblock, the first participant's
/// entry (a fresh memfd always gives participant 0) and each shard up to its last slot.
#[cfg(loom)]
pub(crate) fn in_memory(layout: &Layout, default_ttl_ns: u64) -> Result<Handle> {
    const SEED: u64 = 0x5EED;
    let path = PathBuf::from("<loom model>");
    let fd = rustix::fs::memfd_create("consort-cache-loom", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|err| Error::Io {
            op: "memfd_create",
            path: path.clone(),
            source: err.into(),
        })?;
    let mut modelled = vec![
        0..superblock::PARTICIPANTS + 8,
        superblock::OVERSIZE_SKIPS..superblock::OVERSIZE_SKIPS + 8,
        layout.participant(0)..layout.participant(1),
    ];
    for shard in 0..layout.shards {
        modelled.push(layout.shard(shard)..layout.slot(shard, layout.slots));
    }
    let region = Region::heap(layout.region_len, &modelled);
    format(&region, layout, SEED, default_ttl_ns);
    Handle::new(File::from(fd), region, path, *layout, SEED)
}
