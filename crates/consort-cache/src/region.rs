//! The mapping and the kernel-held locks: the only module with `unsafe`.
//!
//! A [`Region`] is one `MAP_SHARED` mapping of a cache file (under `cfg(loom)`, a heap
//! buffer of loom atomics standing in for it). Liveness tokens are OFD byte-range locks
//! (`F_OFD_SETLK`) on bytes far beyond the end of the file: the kernel releases them when the
//! holder's last fd closes, including on SIGKILL, and they mean the same thing in every PID
//! namespace.
//!
//! # Invariants
//! 1. Every shared word is reached through [`Region::u64`], [`Region::words`] or
//!    [`Region::u32`], which bounds- and alignment-check the offset and hand out atomic
//!    references: no plain (racy) load or store of shared bytes exists, and no `&mut` to
//!    them is ever created.
//! 2. A reference never outlives the mapping: each borrows `&self`, which owns the mapping.
//! 3. Nothing mapped is ever truncated (the file is built complete before it is published),
//!    so an access inside `len` never faults.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

#[cfg(not(loom))]
pub(crate) use mapped::Region;

#[cfg(loom)]
pub(crate) use heap::Region;

/// First byte of the liveness lock range (locks beyond EOF are legal and never touch data).
const LOCK_BASE: i64 = 1 << 40;

#[cfg(not(loom))]
mod mapped {
    use std::fs::File;
    use std::io;

    use memmap2::{MmapOptions, MmapRaw};

    use crate::sync::{AtomicU32, AtomicU64};

    /// One shared mapping of a whole cache file.
    #[derive(Debug)]
    pub(crate) struct Region {
        map: MmapRaw,
        len: usize,
    }

    impl Region {
        /// Maps `len` bytes of `file` (the caller checked that the file is at least that long).
        pub(crate) fn map(file: &File, len: usize) -> io::Result<Region> {
            let map = MmapOptions::new().len(len).map_raw(file)?;
            Ok(Region { map, len })
        }

        /// The 8-byte word at byte offset `off`.
        ///
        /// # Panics
        /// If `off` is unaligned or out of bounds: offsets come only from the handle's own
        /// checked [`crate::layout::Layout`], never from shared memory, so this is a bug.
        #[inline]
        pub(crate) fn u64(&self, off: usize) -> &AtomicU64 {
            assert!(
                off % 8 == 0 && off.checked_add(8).is_some_and(|end| end <= self.len),
                "cache layout bug: word offset {off} outside the {} byte region",
                self.len
            );
            // SAFETY: the range [off, off+8) is inside the live mapping (checked above),
            // 8-byte aligned (the mapping is page aligned and off % 8 == 0), and the mapping
            // outlives `&self`. Shared memory may change under us at any time, which is
            // exactly what an atomic permits; no non-atomic reference to these bytes is ever
            // created.
            unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast::<u64>()) }
        }

        /// `count` consecutive 8-byte words starting at byte offset `off` (one bounds check
        /// for a whole slot on the read path).
        #[inline]
        pub(crate) fn words(&self, off: usize, count: usize) -> &[AtomicU64] {
            assert!(
                off % 8 == 0
                    && count
                        .checked_mul(8)
                        .and_then(|len| len.checked_add(off))
                        .is_some_and(|end| end <= self.len),
                "cache layout bug: {count} words at {off} outside the {} byte region",
                self.len
            );
            // SAFETY: as in `u64`, for every word of the range: in bounds (checked above),
            // 8-byte aligned, alive as long as `&self`, only ever accessed atomically.
            // `AtomicU64` has the size and alignment of `u64`, so the words form a valid
            // slice.
            unsafe {
                std::slice::from_raw_parts(
                    self.map.as_mut_ptr().add(off).cast::<AtomicU64>(),
                    count,
                )
            }
        }

        /// The 4-byte word at byte offset `off` (same rules as [`Region::u64`]).
        #[inline]
        pub(crate) fn u32(&self, off: usize) -> &AtomicU32 {
            assert!(
                off % 4 == 0 && off.checked_add(4).is_some_and(|end| end <= self.len),
                "cache layout bug: word offset {off} outside the {} byte region",
                self.len
            );
            // SAFETY: as in `u64`: in bounds, 4-byte aligned, lives as long as `&self`, and
            // only ever accessed atomically.
            unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast::<u32>()) }
        }
    }
}

/// Under loom: the same interface over heap words of loom atomics (loom's atomics cannot be
/// laid over memory, and a model needs no file). Creating a loom atomic costs about as much
/// as a dozen model steps, and a model creates its region afresh for every execution, so
/// only the words a model can touch exist: the ranges given to [`Region::heap`]. Touching
/// any other word is a bug of the model and panics. No `unsafe` here.
#[cfg(loom)]
mod heap {
    use std::fs::File;
    use std::io;
    use std::ops::Range;

    use crate::layout::PAGE;
    use crate::sync::{AtomicU32, AtomicU64};

    /// A region of `len` bytes, of which only some ranges are held as words.
    pub(crate) struct Region {
        /// (first byte offset, words), in increasing order.
        segments: Vec<(usize, Box<[AtomicU64]>)>,
        /// 32-bit words exist only at page starts: the shards' lock words are the only ones.
        lock_words: Box<[AtomicU32]>,
        len: usize,
    }

    impl std::fmt::Debug for Region {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Region").field("len", &self.len).finish()
        }
    }

    impl Region {
        /// No file can be mapped under loom: a model uses [`Region::heap`].
        pub(crate) fn map(_file: &File, _len: usize) -> io::Result<Region> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a loom build has no shared mappings (use Cache::in_memory)",
            ))
        }

        /// A zeroed region of `len` bytes (whole pages) in which the words of `modelled`
        /// (8-byte aligned, increasing, disjoint byte ranges) exist.
        pub(crate) fn heap(len: usize, modelled: &[Range<usize>]) -> Region {
            assert!(len % PAGE == 0, "a region is whole pages");
            let segments = modelled
                .iter()
                .map(|range| {
                    assert!(range.start % 8 == 0 && range.end % 8 == 0 && range.end <= len);
                    let words = (range.start..range.end)
                        .step_by(8)
                        .map(|_| AtomicU64::new(0))
                        .collect();
                    (range.start, words)
                })
                .collect();
            Region {
                segments,
                lock_words: (0..len / PAGE).map(|_| AtomicU32::new(0)).collect(),
                len,
            }
        }

        pub(crate) fn u64(&self, off: usize) -> &AtomicU64 {
            &self.words(off, 1)[0]
        }

        pub(crate) fn words(&self, off: usize, count: usize) -> &[AtomicU64] {
            assert!(
                off % 8 == 0 && off + count * 8 <= self.len,
                "cache layout bug: {count} words at {off} outside the {} byte region",
                self.len
            );
            for (start, words) in &self.segments {
                let first = (off.wrapping_sub(*start)) / 8;
                if off >= *start && first + count <= words.len() {
                    return &words[first..first + count];
                }
            }
            panic!(
                "the loom model holds no words at {off}..{}",
                off + count * 8
            )
        }

        pub(crate) fn u32(&self, off: usize) -> &AtomicU32 {
            assert!(
                off % PAGE == 0 && off < self.len,
                "under loom, 32-bit words exist only at page starts, not at {off}"
            );
            &self.lock_words[off / PAGE]
        }
    }
}

fn ofd_lock(
    file: &File,
    cmd: libc::c_int,
    kind: libc::c_short,
    byte: u32,
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = LOCK_BASE + i64::from(byte);
    lock.l_len = 1;
    // OFD locks require 0 here.
    lock.l_pid = 0;
    // SAFETY: the fd is open for the duration of the call (borrowed from `file`) and `lock`
    // is a valid, exclusively borrowed `struct flock` for the kernel to read and fill in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut lock as *mut libc::flock) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock)
}

/// Takes the liveness lock on `byte` without waiting: `Ok(false)` if another open file
/// description holds it.
pub(crate) fn try_lock_byte(file: &File, byte: u32) -> io::Result<bool> {
    match ofd_lock(
        file,
        libc::F_OFD_SETLK,
        libc::F_WRLCK as libc::c_short,
        byte,
    ) {
        Ok(_) => Ok(true),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Whether some other open file description holds the liveness lock on `byte`.
pub(crate) fn byte_is_locked(file: &File, byte: u32) -> io::Result<bool> {
    let lock = ofd_lock(
        file,
        libc::F_OFD_GETLK,
        libc::F_WRLCK as libc::c_short,
        byte,
    )?;
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}
