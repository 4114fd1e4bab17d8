//! The creator registry: one small file per block consort created, naming the process that
//! created it, so that leaked blocks can be listed and, once their creator is dead, removed.
//!
//! The registry is a private directory (0700, owned by the user), the first of:
//! 1. `$CONSORT_SHM_REGISTRY`;
//! 2. `$XDG_RUNTIME_DIR/consort/shm`, when `XDG_RUNTIME_DIR` is an absolute path;
//! 3. `/tmp/consort-<uid>/shm`.
//!
//! It holds one file per block, 0600, named like the block (`psm_1a2b3c4d`), of
//! `key=value` lines: `pid=` and `start=` (the creator, with its start time in clock ticks
//! since boot from `/proc/<pid>/stat`, `-` where unknown), `pgid=` (the creator's process
//! group, written by consort's Python worker), `rsize=`, then `ino=` (the object's inode)
//! once the block exists, and `kept=1` after [`SharedMemory::keep`]. Unknown keys are
//! ignored.
//!
//! Two kinds of creator write records: `SharedMemory::create` in Rust, and consort's own
//! Python worker (`python/consort_worker.py`) for every block its `SharedMemory` and
//! `NDArray` classes create, with the same format, rules and directory (it reads the same
//! environment variables). The worker never unlinks its blocks (the service that receives
//! them does, and removes the record with them), so a record of a dead worker is a block
//! nobody took over: [`gc`] collects it, and so does `consort run` at its end through
//! [`gc_worker`], since it knows its worker's pid.
//!
//! # Invariants
//! 1. A record is written before its block is created and removed after its block is
//!    unlinked (`SharedMemory::create` and its `Drop`), so a block consort created is never
//!    unrecorded while it exists, unless the registry could not be written (logged).
//! 2. [`Registry::gc`] unlinks a block only when all hold: it has a record here; the
//!    record's creator is dead (no such pid, a zombie, or a pid reused by a process with
//!    another start time); the record is not kept; and the object now at that name is the
//!    one recorded (same inode, or, for a record written by a creator that died before the
//!    inode line, an object owned by this user).
//! 3. Nothing else is touched: no unrecorded block, no file outside the directory.
//!    [`Registry::gc_worker`] is [`Registry::gc`] narrowed to the records of one worker.
//! 4. The directory is used only when it is a real directory owned by this user and closed
//!    to others: anyone able to write records could make `gc` unlink live blocks.
//!
//! # Caveats
//! Processes that see different `XDG_RUNTIME_DIR` or `CONSORT_SHM_REGISTRY` values use
//! different registries. On macOS there is no `/proc`: the start time is unknown, and a
//! creator counts as alive while any process has its pid.
//!
//! [`SharedMemory::keep`]: super::SharedMemory::keep
#![deny(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::shm::OFlags;
use serde::Serialize;

use super::validate_name;

/// What the registry knows about one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BlockInfo {
    /// The block's name, without the leading slash.
    pub name: String,
    /// The size it was created with.
    pub rsize: u64,
    /// Its size now, or `None` when the block no longer exists (a stale record).
    pub size: Option<u64>,
    /// The process that created it.
    pub creator_pid: u32,
    /// Whether that process is still running.
    pub creator_alive: bool,
    /// Whether the creator asked to keep the block past its handle.
    pub kept: bool,
}

/// A creator registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

/// Lists the blocks in the default registry, by name.
///
/// # Errors
/// When the registry directory exists but cannot be read or is not private.
pub fn list() -> io::Result<Vec<BlockInfo>> {
    Registry::at(default_dir()).list()
}

/// Unlinks, in the default registry, the blocks whose creator is dead and that were not
/// kept; returns their names.
///
/// # Errors
/// When the registry directory exists but cannot be read or is not private.
pub fn gc() -> io::Result<Vec<String>> {
    Registry::at(default_dir()).gc()
}

/// In the default registry, unlinks the blocks that the worker `pid` (or a process of its
/// process group) created and that are still recorded, once their creators are dead;
/// returns their names. See [`Registry::gc_worker`].
///
/// # Errors
/// As [`gc`].
pub fn gc_worker(pid: u32) -> io::Result<Vec<String>> {
    Registry::at(default_dir()).gc_worker(pid)
}

/// The names [`gc`] would unlink now in the default registry, unlinking nothing.
///
/// # Errors
/// As [`gc`].
pub fn collectable() -> io::Result<Vec<String>> {
    Registry::at(default_dir()).collectable()
}

/// The default registry directory (see the module documentation); it may not exist yet.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONSORT_SHM_REGISTRY").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if runtime.is_absolute() {
            return runtime.join("consort").join("shm");
        }
    }
    let uid = rustix::process::getuid().as_raw();
    PathBuf::from(format!("/tmp/consort-{uid}")).join("shm")
}

impl Registry {
    /// The registry in `dir`, which is created (0700) when first written.
    pub fn at(dir: impl Into<PathBuf>) -> Registry {
        Registry { dir: dir.into() }
    }

    /// The registry directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists the recorded blocks, by name. A missing directory is an empty registry;
    /// unreadable or malformed records are skipped.
    ///
    /// # Errors
    /// When the directory cannot be read or is not private to this user.
    pub fn list(&self) -> io::Result<Vec<BlockInfo>> {
        let mut found = Vec::new();
        for (name, entry) in self.records()? {
            found.push(BlockInfo {
                size: inspect(&name).ok().flatten().map(|object| object.size),
                creator_alive: creator_alive(entry.pid, entry.start),
                name,
                rsize: entry.rsize,
                creator_pid: entry.pid,
                kept: entry.kept,
            });
        }
        Ok(found)
    }

    /// Unlinks the recorded blocks whose creator is dead and that were not kept, removes
    /// the records of blocks that no longer exist, and returns the names unlinked.
    ///
    /// # Errors
    /// When the directory cannot be read or is not private to this user.
    pub fn gc(&self) -> io::Result<Vec<String>> {
        self.collect(false, true, |_| true)
    }

    /// As [`Registry::gc`], but only for the records of the process `pid` or of a process
    /// whose process group is `pid` (a worker is the leader of its own group, and a
    /// launcher such as `pixi run` keeps its Python in that group).
    ///
    /// A supervisor calls this once its worker is gone, to unlink the blocks the worker
    /// made and never handed back (a crash, or a script that made more than it returned).
    ///
    /// # Errors
    /// As [`Registry::gc`].
    pub fn gc_worker(&self, pid: u32) -> io::Result<Vec<String>> {
        self.collect(false, true, |entry| {
            entry.pid == pid || entry.pgid == Some(pid)
        })
    }

    /// The names [`Registry::gc`] would unlink now, by the same checks; nothing is unlinked
    /// and no record is removed (for `consort shm gc --dry-run`).
    ///
    /// # Errors
    /// As [`Registry::gc`].
    pub fn collectable(&self) -> io::Result<Vec<String>> {
        self.collect(false, false, |_| true)
    }

    /// As [`Registry::gc`], but kept blocks of dead creators are unlinked too.
    ///
    /// # Errors
    /// As [`Registry::gc`].
    pub fn gc_including_kept(&self) -> io::Result<Vec<String>> {
        self.collect(true, true, |_| true)
    }

    /// Creates the directory if needed (0700) and checks that it is private to this user:
    /// whether records can be written here.
    ///
    /// # Errors
    /// When the directory cannot be created, or is not a directory owned by this user and
    /// closed to others.
    pub fn prepare(&self) -> io::Result<()> {
        self.ensure()
    }

    /// The creator recorded for the block `name`, if there is a record.
    ///
    /// # Errors
    /// When the directory exists but is not private, or the record cannot be read.
    pub(crate) fn creator_of(&self, name: &str) -> io::Result<Option<Creator>> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        match fs::symlink_metadata(&self.dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
            Ok(meta) => check_private(&self.dir, &meta)?,
        }
        match fs::read_to_string(self.dir.join(name)) {
            Ok(text) => Ok(Entry::parse(&text).map(|entry| Creator {
                pid: entry.pid,
                pgid: entry.pgid,
            })),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Finds the blocks of dead creators whose record passes `select` and, when `act`,
    /// unlinks them and removes their records; otherwise only names what it would unlink.
    fn collect(
        &self,
        include_kept: bool,
        act: bool,
        select: impl Fn(&Entry) -> bool,
    ) -> io::Result<Vec<String>> {
        let mut unlinked = Vec::new();
        let uid = rustix::process::getuid().as_raw();
        for (name, entry) in self.records()? {
            if !select(&entry)
                || creator_alive(entry.pid, entry.start)
                || (entry.kept && !include_kept)
            {
                continue;
            }
            let object = match inspect(&name) {
                Ok(object) => object,
                Err(err) => {
                    tracing::warn!("shm gc: leaving {name:?} alone: {err}");
                    continue;
                }
            };
            if let Some(object) = object {
                let ours = match entry.ino {
                    Some(ino) => ino == object.ino,
                    None => object.uid == uid,
                };
                if ours {
                    if !act {
                        unlinked.push(name.clone());
                        continue;
                    }
                    match rustix::shm::unlink(format!("/{name}").as_str()) {
                        Ok(()) => unlinked.push(name.clone()),
                        // Another gc got there first.
                        Err(rustix::io::Errno::NOENT) => {}
                        Err(err) => {
                            tracing::warn!("shm gc: unlinking {name:?}: {err}");
                            continue;
                        }
                    }
                }
            }
            if !act {
                continue;
            }
            // The block is gone (or the name now belongs to someone else): the record
            // describes nothing any more.
            remove_file(&self.dir.join(&name));
        }
        Ok(unlinked)
    }

    /// The parsed records, sorted by name; a missing directory has none.
    fn records(&self) -> io::Result<Vec<(String, Entry)>> {
        match fs::symlink_metadata(&self.dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
            Ok(meta) => check_private(&self.dir, &meta)?,
        }
        let mut records = Vec::new();
        for dir_entry in fs::read_dir(&self.dir)? {
            let dir_entry = dir_entry?;
            let Some(name) = dir_entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Temporary files and strangers are not records.
            if name.starts_with('.') || validate_name(&name).is_err() {
                continue;
            }
            match fs::read_to_string(dir_entry.path()) {
                Ok(text) => match Entry::parse(&text) {
                    Some(entry) => records.push((name, entry)),
                    None => tracing::debug!("shm registry: malformed record {name:?} skipped"),
                },
                // Removed by its creator while we listed.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        records.sort_by(|left, right| left.0.cmp(&right.0));
        Ok(records)
    }

    /// Creates the directory if needed and checks that it is private.
    fn ensure(&self) -> io::Result<()> {
        if let Some(parent) = self.dir.parent() {
            // `/tmp/consort-<uid>` must be ours too, or another user could swap `shm` in it.
            if parent.file_name().is_some_and(|name| {
                name.to_string_lossy().starts_with("consort-") || name == "consort"
            }) {
                ensure_private_dir(parent)?;
            }
        }
        ensure_private_dir(&self.dir)
    }
}

/// Who a record says created its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Creator {
    /// The creating process.
    pub(crate) pid: u32,
    /// Its process group, when the record says (consort's Python worker writes it).
    pub(crate) pgid: Option<u32>,
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pid: u32,
    start: Option<u64>,
    pgid: Option<u32>,
    rsize: u64,
    ino: Option<u64>,
    kept: bool,
}

impl Entry {
    fn parse(text: &str) -> Option<Entry> {
        let (mut pid, mut start, mut pgid, mut rsize, mut ino, mut kept) =
            (None, None, None, None, None, false);
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "pid" => pid = value.parse().ok(),
                "start" => start = value.parse().ok(),
                "pgid" => pgid = value.parse().ok(),
                "rsize" => rsize = value.parse().ok(),
                "ino" => ino = value.parse().ok(),
                "kept" => kept = value == "1",
                _ => {}
            }
        }
        Some(Entry {
            pid: pid?,
            start,
            pgid,
            rsize: rsize?,
            ino,
            kept,
        })
    }
}

/// The record of a block this process is creating or created; see [`super::SharedMemory`].
#[derive(Debug)]
pub(crate) struct Record {
    path: PathBuf,
    /// Open between `begin` and `commit`.
    file: Option<File>,
}

/// Why [`Record::begin`] did not write a record.
#[derive(Debug)]
pub(crate) enum BeginError {
    /// A record of that name exists: pick another name.
    Taken,
    /// The registry cannot be written.
    Unavailable(io::Error),
}

impl Record {
    /// Writes the record of a block about to be created, in the default registry.
    pub(crate) fn begin(name: &str, rsize: usize) -> Result<Record, BeginError> {
        let registry = Registry::at(default_dir());
        registry.ensure().map_err(BeginError::Unavailable)?;
        let path = registry.dir.join(name);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BeginError::Taken)
            }
            Err(err) => return Err(BeginError::Unavailable(err)),
        };
        let pid = std::process::id();
        let start = process_start(pid).map_or_else(|| "-".to_owned(), |start| start.to_string());
        if let Err(err) = write!(file, "pid={pid}\nstart={start}\nrsize={rsize}\n") {
            remove_file(&path);
            return Err(BeginError::Unavailable(err));
        }
        Ok(Record {
            path,
            file: Some(file),
        })
    }

    /// Adds the inode of the block, now that it exists.
    pub(crate) fn commit(&mut self, ino: u64) {
        if let Some(mut file) = self.file.take() {
            if let Err(err) = writeln!(file, "ino={ino}") {
                tracing::warn!("shm registry: {}: {err}", self.path.display());
            }
        }
    }

    /// Marks the block kept: `gc` leaves it alone.
    pub(crate) fn mark_kept(mut self) {
        let file = match self.file.take() {
            Some(file) => Ok(file),
            None => OpenOptions::new().append(true).open(&self.path),
        };
        if let Err(err) = file.and_then(|mut file| writeln!(file, "kept=1")) {
            tracing::warn!("shm registry: {}: {err}", self.path.display());
        }
    }

    /// Removes the record, once its block is unlinked (or was never created).
    pub(crate) fn remove(self) {
        remove_file(&self.path);
    }
}

/// Removes the default registry's record of `name`, if there is one.
pub(crate) fn forget(name: &str) {
    if validate_name(name).is_ok() {
        remove_file(&default_dir().join(name));
    }
}

fn remove_file(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!("shm registry: removing {}: {err}", path.display()),
    }
}

fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Err(err) => return Err(err),
    }
    check_private(dir, &fs::symlink_metadata(dir)?)
}

fn check_private(dir: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let uid = rustix::process::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory owned by uid {uid} and closed to others; refusing to use it as the shared-memory registry",
            dir.display()
        )));
    }
    Ok(())
}

/// What `fstat` says about a shared-memory object.
struct Object {
    ino: u64,
    uid: u32,
    size: u64,
}

/// Opens the block `name` read-only to read its inode, owner and size; `None` when there
/// is no such block.
fn inspect(name: &str) -> io::Result<Option<Object>> {
    let fd = match rustix::shm::open(format!("/{name}").as_str(), OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    Ok(Some(Object {
        ino: stat.st_ino as u64,
        uid: stat.st_uid,
        size: stat.st_size as u64,
    }))
}

/// Whether the process `pid`, started at `start` (clock ticks since boot) when known, is
/// still running. A zombie is dead: it holds no mapping and will never unlink anything.
fn creator_alive(pid: u32, start: Option<u64>) -> bool {
    if let Some((state, started)) = proc_stat(pid) {
        return !matches!(state, 'Z' | 'X') && start.map_or(true, |start| start == started);
    }
    if Path::new("/proc/self/stat").exists() {
        // `/proc` works and has no such process.
        return false;
    }
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(raw) {
        Ok(()) => true,
        Err(rustix::io::Errno::PERM) => true,
        Err(_) => false,
    }
}

/// The start time of `pid` in clock ticks since boot (Linux), for telling a recycled pid
/// from the creator.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// The state letter and start time of `pid`, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: parse after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // Field 22 of the file is the start time; `rest` begins at field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests;
