//! The mapping and the kernel-held locks: the only module with `unsafe`.
//!
//! A [`Region`] is one `MAP_SHARED` mapping of a cache file. Every shared word is reached
//! through [`Region::u64`] or [`Region::u32`], which bounds- and alignment-check the offset
//! and hand out an atomic reference: no plain (racy) loads or stores of shared bytes exist.
//! Liveness tokens are OFD byte-range locks (`F_OFD_SETLK`) on bytes far beyond the end of
//! the file: the kernel releases them when the holder's last fd closes, including on SIGKILL,
//! and they mean the same thing in every PID namespace.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapOptions, MmapRaw};

/// First byte of the liveness lock range (locks beyond EOF are legal and never touch data).
const LOCK_BASE: i64 = 1 << 40;

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
        // SAFETY: the range [off, off+8) is inside the live mapping (checked above), 8-byte
        // aligned (the mapping is page aligned and off % 8 == 0), and the mapping outlives
        // `&self`. Shared memory may change under us at any time, which is exactly what an
        // atomic permits; no non-atomic reference to these bytes is ever created.
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
        // `AtomicU64` has the size and alignment of `u64`, so the words form a valid slice.
        unsafe {
            std::slice::from_raw_parts(self.map.as_mut_ptr().add(off).cast::<AtomicU64>(), count)
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
        // SAFETY: as in `u64`: in bounds, 4-byte aligned, lives as long as `&self`, and only
        // ever accessed atomically.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast::<u32>()) }
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
    lock.l_pid = 0; // OFD locks require 0
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
