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
//! 3. Nothing *we* map is ever truncated (the file is built complete before it is
//!    published), so an access inside `len` faults only if someone else truncates the file.
//! 4. **A truncated file is a corrupt cache, not a SIGBUS.** Every mapping is registered with
//!    the SIGBUS guard ([`guard`]): a fault inside it marks the region truncated and puts
//!    zero pages where the file's pages were, so the faulting access completes; the layers
//!    above check [`Region::truncated`] before they trust what they read (a read checks
//!    before it hands out a value) and turn it into `Error::Corrupt`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

#[cfg(not(loom))]
pub(crate) use mapped::Region;

/// Puts the SIGBUS guard's handler back on top of whatever SIGBUS handler was installed
/// since this process's first cache mapping, chaining to that handler from then on; does
/// nothing before the first mapping or when the guard's handler is on top.
///
/// Call it after installing a SIGBUS handler that does not chain to the one it replaced
/// (Python's `faulthandler.enable()`), with [`sigbus_guard_step_aside`] before: then a
/// truncated cache file is an [`Error::Corrupt`](crate::Error::Corrupt) again rather than
/// that handler's report and a crash.
#[cfg(not(loom))]
pub fn sigbus_guard_reassert() {
    guard::reassert();
}

/// Puts back the SIGBUS disposition the guard replaced, if the guard's handler is on top,
/// so that a handler installed next (and one that later restores what it found) finds that
/// one and not the guard's. The guard is off until [`sigbus_guard_reassert`].
#[cfg(not(loom))]
pub fn sigbus_guard_step_aside() {
    guard::step_aside();
}

#[cfg(loom)]
pub(crate) use heap::Region;

/// First byte of the liveness lock range (locks beyond EOF are legal and never touch data).
const LOCK_BASE: i64 = 1 << 40;

#[cfg(not(loom))]
mod mapped {
    use std::fs::File;
    use std::io;

    use memmap2::{MmapOptions, MmapRaw};

    use super::guard::{self, Guarded};
    use crate::sync::Ordering::Relaxed;
    use crate::sync::{AtomicU32, AtomicU64};

    /// One shared mapping of a whole cache file.
    #[derive(Debug)]
    pub(crate) struct Region {
        map: MmapRaw,
        len: usize,
        /// Our entry in the SIGBUS guard's registry, released on drop.
        guard: &'static Guarded,
    }

    impl Region {
        /// Maps `len` bytes of `file` (the caller checked that the file is at least that
        /// long) and registers the mapping with the SIGBUS guard.
        ///
        /// # Errors
        /// When `mmap` fails, or when this process already has [`guard::MAX_MAPPINGS`] cache
        /// mappings.
        pub(crate) fn map(file: &File, len: usize) -> io::Result<Region> {
            let map = MmapOptions::new().len(len).map_raw(file)?;
            let guard = guard::register(map.as_ptr() as usize, len)?;
            Ok(Region { map, len, guard })
        }

        /// The mapping's first byte, for the fork hook.
        pub(crate) fn start(&self) -> usize {
            self.map.as_ptr() as usize
        }

        /// The mapping's length.
        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// The address of this mapping's entry in the SIGBUS guard's registry.
        pub(crate) fn guard_entry(&self) -> usize {
            std::ptr::from_ref(self.guard) as usize
        }

        /// Whether someone truncated the file under this mapping: a fault inside it has been
        /// caught, and zero pages now stand where the file's pages were.
        ///
        /// `Relaxed`: the thread that faulted set the flag in its signal handler before the
        /// faulting access completed, so its own later load sees it; a thread that read zero
        /// pages another thread's handler put in place read them after that handler's
        /// `mmap`, which the kernel makes visible to other CPUs only after a TLB shootdown,
        /// a full barrier on x86 and aarch64 (a hardware argument, not a language one).
        /// Callers load it after the data they want to trust (the read path after its
        /// acquire fence), so the compiler cannot move it before them.
        #[inline]
        pub(crate) fn truncated(&self) -> bool {
            self.guard.truncated.load(Relaxed)
        }

        /// The 8-byte word at byte offset `off`.
        ///
        /// # Panics
        /// If `off` is unaligned or out of bounds: offsets come only from the handle's own
        /// checked [`crate::layout::Layout`], never from shared memory, so this is a bug.
        // Always inlined: every shared word goes through here, and the panic's formatting
        // (moved out to `layout_bug`) had made it too big to inline, a call per access.
        #[inline(always)]
        pub(crate) fn u64(&self, off: usize) -> &AtomicU64 {
            if !(off % 8 == 0 && off.checked_add(8).is_some_and(|end| end <= self.len)) {
                layout_bug(1, off, self.len);
            }
            // SAFETY: the range [off, off+8) is inside the live mapping (checked above),
            // 8-byte aligned (the mapping is page aligned and off % 8 == 0), and the mapping
            // outlives `&self`. Shared memory may change under us at any time, which is
            // exactly what an atomic permits; no non-atomic reference to these bytes is ever
            // created.
            unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast::<u64>()) }
        }

        /// `count` consecutive 8-byte words starting at byte offset `off` (one bounds check
        /// for a whole slot on the read path).
        #[inline(always)]
        pub(crate) fn words(&self, off: usize, count: usize) -> &[AtomicU64] {
            let fits = off % 8 == 0
                && count
                    .checked_mul(8)
                    .and_then(|len| len.checked_add(off))
                    .is_some_and(|end| end <= self.len);
            if !fits {
                layout_bug(count, off, self.len);
            }
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

    impl Drop for Region {
        fn drop(&mut self) {
            // Before the fields drop: the mapping is unregistered, then unmapped.
            guard::unregister(self.guard);
        }
    }

    /// The panic of an offset outside the region: offsets come only from the handle's own
    /// checked layout, never from shared memory, so reaching this is a bug.
    #[cold]
    #[inline(never)]
    fn layout_bug(count: usize, off: usize, len: usize) -> ! {
        panic!("cache layout bug: {count} words at {off} outside the {len} byte region")
    }
}

/// The SIGBUS guard: truncating a cache file under a process that maps it must not kill the
/// process (issue 14: the same user can do it with `truncate`, `: > file` or a copy).
///
/// The kernel raises SIGBUS (`BUS_ADRERR`) when a mapped page lies beyond the end of the
/// file. The first mapping installs [`on_sigbus`] for the whole process; a fault whose
/// address lies in a registered mapping marks that mapping truncated and maps anonymous zero
/// pages (`MAP_FIXED`) from the faulting page to the mapping's end, so the access completes
/// and reads zeros; the layers above then report `Error::Corrupt` rather than trust them.
/// Any other SIGBUS goes to the handler that was there before ours, or, for the default
/// action, is raised again with it, so a fault elsewhere still kills as it did.
///
/// Costs: nothing on the hot path but one load of the region's flag per operation; a
/// registry of [`MAX_MAPPINGS`] entries in static memory; one handler per process.
///
/// A handler installed over ours afterwards (Python's `faulthandler.enable()` after the
/// first cache opened, or its `disable()`, which restores what it found) would decide
/// first, or turn the guard off: [`step_aside`] and [`reassert`] around such a call put ours
/// back on top, chaining to whatever is there now (consort's Python package wraps
/// `faulthandler.enable` and `disable` so). A handler we chain to that re-raises the signal
/// (faulthandler does, after its report) gets the default action: the process dies of the
/// fault, once.
///
/// # Caveats
/// - A program that installs its own SIGBUS handler after its first cache mapping, without
///   chaining to ours and without [`reassert`] after, turns the guard off.
/// - Between [`step_aside`] and [`reassert`] the guard is off: a truncation another thread
///   faults on in that window kills, as it did before the guard.
/// - `mmap` is not on POSIX's list of async-signal-safe functions; on Linux it is one system
///   call that takes no user-space lock, which is what makes calling it here sound in
///   practice.
#[cfg(not(loom))]
mod guard {
    use std::ffi::{c_int, c_void};
    use std::io;

    use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
    use crate::sync::{AtomicBool, AtomicUsize, Mutex, Once};

    /// How many cache mappings one process may have at once.
    pub(crate) const MAX_MAPPINGS: usize = 1024;

    /// One registered mapping. Entries live in static memory, so the handler can read any of
    /// them at any time without a lock and without following a pointer.
    #[derive(Debug)]
    pub(crate) struct Guarded {
        /// First byte of the mapping; 0 while the entry guards nothing.
        start: AtomicUsize,
        len: AtomicUsize,
        /// Taken by one registration at a time.
        taken: AtomicBool,
        /// Set by the handler: a fault inside the mapping was caught.
        pub(crate) truncated: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Guarded = Guarded {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        taken: AtomicBool::new(false),
        truncated: AtomicBool::new(false),
    };

    static REGISTRY: [Guarded; MAX_MAPPINGS] = [FREE; MAX_MAPPINGS];
    /// Entries `0..IN_USE` may be taken: the handler scans no further.
    static IN_USE: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: Once = Once::new();
    /// The system page size, read once before the handler is installed.
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
    /// The SIGBUS disposition we replaced: its `sa_sigaction` and `sa_flags`.
    /// Two slots, so that [`reassert`] can change it while a handler reads it: the
    /// handler reads the slot `PREVIOUS_SLOT` names, [`reassert`] writes the other and then
    /// switches.
    static PREVIOUS_ACTION: [AtomicUsize; 2] = [
        AtomicUsize::new(libc::SIG_DFL),
        AtomicUsize::new(libc::SIG_DFL),
    ];
    static PREVIOUS_FLAGS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
    static PREVIOUS_SLOT: AtomicUsize = AtomicUsize::new(0);
    /// The whole disposition we replaced, for [`step_aside`] to restore (never read by
    /// the handler). Also serializes [`install`], [`reassert`] and [`step_aside`].
    static PREVIOUS: Mutex<Option<Disposition>> = Mutex::new(None);
    /// Set while [`chain`] runs a handler it chained to: a second SIGBUS meanwhile (that
    /// handler chaining back to ours) takes the default action instead of recursing.
    static CHAINING: AtomicBool = AtomicBool::new(false);

    /// A `struct sigaction`, to keep in a static.
    #[derive(Clone, Copy)]
    struct Disposition(libc::sigaction);

    // SAFETY: a `struct sigaction` is plain data (a function address, flags, a mask).
    unsafe impl Send for Disposition {}

    /// Registers the mapping `[start, start + len)` (installing the handler the first time).
    pub(crate) fn register(start: usize, len: usize) -> io::Result<&'static Guarded> {
        INSTALL.call_once(install);
        for (index, entry) in REGISTRY.iter().enumerate() {
            if entry
                .taken
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
            {
                IN_USE.fetch_max(index + 1, SeqCst);
                entry.truncated.store(false, Relaxed);
                // Release: a handler that reads this length also sees the `start = 0` of
                // the entry's previous unregistration, and so cannot pair this length with
                // the previous mapping's start (see `find`).
                entry.len.store(len, Release);
                // `start` is what makes the entry live for the handler: stored last.
                entry.start.store(start, Release);
                return Ok(entry);
            }
        }
        Err(io::Error::other(format!(
            "this process already has {MAX_MAPPINGS} cache mappings"
        )))
    }

    /// Marks the registry entry at address `entry` (a `Guarded` of `REGISTRY`, from
    /// `Region::guard_entry`) truncated; any other address is ignored. Async-signal-safe.
    pub(crate) fn mark_truncated(entry: usize) {
        if let Some(guarded) = REGISTRY
            .iter()
            .find(|guarded| std::ptr::from_ref(*guarded) as usize == entry)
        {
            guarded.truncated.store(true, SeqCst);
        }
    }

    /// Forgets a mapping that is about to be unmapped.
    pub(crate) fn unregister(entry: &'static Guarded) {
        entry.start.store(0, Release);
        entry.taken.store(false, Release);
    }

    /// The registered mapping that holds `addr`: its entry, start and length.
    ///
    /// Another thread may be re-registering an entry while the handler reads it. Its start
    /// and length are read as a pair: start, length, start again; a pair whose two starts
    /// differ is being changed and is passed over. Were a stale start paired with a new
    /// length, the handler could map zero pages over memory that is not a cache's.
    fn find(addr: usize) -> Option<(&'static Guarded, usize, usize)> {
        let in_use = IN_USE.load(Acquire).min(MAX_MAPPINGS);
        REGISTRY[..in_use].iter().find_map(|entry| {
            let start = entry.start.load(Acquire);
            let len = entry.len.load(Acquire);
            let again = entry.start.load(Acquire);
            (start != 0 && start == again && addr >= start && addr - start < len)
                .then_some((entry, start, len))
        })
    }

    fn install() {
        PAGE_SIZE.store(rustix::param::page_size(), Relaxed);
        put_on_top();
    }

    /// The current SIGBUS disposition, or `None` if it cannot be read.
    fn current() -> Option<libc::sigaction> {
        // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are a valid value.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null `act` only queries the current disposition into `current`, a
        // valid, exclusively borrowed `struct sigaction`.
        (unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) } == 0)
            .then_some(current)
    }

    fn ours() -> usize {
        on_sigbus as *const () as usize
    }

    /// Puts our handler back on top if another took its place since (chaining to that
    /// one from then on); nothing before the first cache mapping (which installs it),
    /// nothing if ours is on top.
    pub(crate) fn reassert() {
        if INSTALL.is_completed() {
            put_on_top();
        }
    }

    fn put_on_top() {
        let mut previous = PREVIOUS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(found) = current() else {
            return; // no guard: a truncation kills, as it did before
        };
        if found.sa_sigaction == ours() {
            return;
        }
        let slot = PREVIOUS_SLOT.load(Relaxed) ^ 1;
        PREVIOUS_ACTION[slot].store(found.sa_sigaction, Relaxed);
        PREVIOUS_FLAGS[slot].store(found.sa_flags as usize, Relaxed);
        PREVIOUS_SLOT.store(slot, SeqCst);
        *previous = Some(Disposition(found));
        // SAFETY: as above, all-zero bytes are a valid `sigaction`.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = ours();
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `act.sa_mask` is a valid, exclusively borrowed `sigset_t`.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: `act` is a valid `struct sigaction` whose handler has the SA_SIGINFO
        // signature, and it stays valid for the call; the old action is not asked for.
        unsafe { libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) };
    }

    /// Puts back the disposition ours replaced, if ours is on top, so that a handler about
    /// to be installed (and one that later restores what it found) chains to that one and
    /// not to ours; [`reassert`] after it puts ours back on top.
    pub(crate) fn step_aside() {
        let previous = PREVIOUS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(Disposition(previous)) = *previous else {
            return;
        };
        if current().is_some_and(|found| found.sa_sigaction == ours()) {
            // SAFETY: `previous` is a disposition the kernel gave us, valid as it was.
            unsafe { libc::sigaction(libc::SIGBUS, &previous, std::ptr::null_mut()) };
        }
    }

    /// The SIGBUS handler: async-signal-safe (atomics, `mmap`, `sigaction`, `raise`; no
    /// allocation, no lock, no panic).
    extern "C" fn on_sigbus(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        if !info.is_null() {
            // SAFETY: for an SA_SIGINFO handler the kernel passes a valid `siginfo_t`, and
            // for SIGBUS its address field is the faulting address.
            let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
            if code == libc::BUS_ADRERR {
                if let Some((entry, start, len)) = find(addr) {
                    entry.truncated.store(true, SeqCst);
                    let page = addr & !(PAGE_SIZE.load(Relaxed) - 1);
                    // SAFETY: `[page, start + len)` lies inside a mapping of ours that is
                    // registered, and a mapping is unregistered before it is unmapped, so
                    // MAP_FIXED replaces only our own pages. Only atomics ever refer to those
                    // bytes, and zero bytes are valid atomics.
                    let mapped = unsafe {
                        libc::mmap(
                            page as *mut c_void,
                            start + len - page,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                            -1,
                            0,
                        )
                    };
                    if mapped != libc::MAP_FAILED {
                        return; // the faulting access now reads (or writes) a zero page
                    }
                }
            }
        }
        chain(signal, info, context);
    }

    /// Hands a SIGBUS that is not ours to the disposition we replaced.
    fn chain(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        let slot = PREVIOUS_SLOT.load(SeqCst);
        let mut action = PREVIOUS_ACTION[slot].load(Relaxed);
        let flags = PREVIOUS_FLAGS[slot].load(Relaxed) as c_int;
        if action == ours() || CHAINING.load(SeqCst) {
            action = libc::SIG_DFL; // chained back to us: die of it rather than recurse
        }
        if action == libc::SIG_IGN && !info.is_null() {
            // SAFETY: as in `on_sigbus`, the kernel's `siginfo_t` is valid.
            let code = unsafe { (*info).si_code };
            if code <= 0 {
                return; // sent by kill(2) or sigqueue(3), and ignored: as without us
            }
        }
        if action == libc::SIG_DFL || action == libc::SIG_IGN {
            // The default action, as if we had never been here: the signal is blocked while
            // we run, so it is delivered, and kills, when we return.
            // SAFETY: `signal` is async-signal-safe and takes plain values.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
            // SAFETY: `raise` is async-signal-safe and takes a plain value.
            unsafe { libc::raise(signal) };
            return;
        }
        CHAINING.store(true, SeqCst);
        if flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous disposition was installed with SA_SIGINFO, so its
            // `sa_sigaction` is a handler of this signature, and it is called with the
            // kernel's own arguments.
            let handler = unsafe {
                std::mem::transmute::<usize, extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)>(
                    action,
                )
            };
            handler(signal, info, context);
        } else {
            // SAFETY: without SA_SIGINFO, `sa_sigaction` is a plain `sa_handler`.
            let handler = unsafe { std::mem::transmute::<usize, extern "C" fn(c_int)>(action) };
            handler(signal);
        }
        if raised_again(signal) {
            // That handler re-raised the signal (faulthandler does, after its report, to
            // let the disposition under it act): the signal is blocked while we run, so it
            // is pending, and delivered when we return. Delivered to ours (faulthandler
            // restored what it found), it would come back here: make it the default.
            // SAFETY: `signal` is async-signal-safe and takes plain values.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        CHAINING.store(false, SeqCst);
    }

    /// Whether `signal` is pending for this thread or the process. Async-signal-safe.
    fn raised_again(signal: c_int) -> bool {
        // SAFETY: all-zero bytes are a valid `sigset_t`.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `sigpending` (async-signal-safe) fills a valid, exclusively borrowed set;
        // `sigismember` reads it.
        unsafe { libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, signal) == 1 }
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

        /// A heap region cannot be truncated.
        pub(crate) fn truncated(&self) -> bool {
            false
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

/// The fork generation of this process (see [`fork`]); always 0 under loom, which has no
/// fork.
#[inline]
pub(crate) fn fork_generation() -> u64 {
    #[cfg(not(loom))]
    return fork::generation();
    #[cfg(loom)]
    0
}

/// What a forked child needs: its own liveness.
///
/// A child forked without exec inherits its parent's fds and mappings, and both hold a
/// reference to the open file description that carries the parent's participant lock byte
/// (an OFD lock lives until the last reference to its description goes, and a `MAP_SHARED`
/// mapping is one). While the child lived, a parent that died holding a shard lock looked
/// alive and its lock could not be stolen: every process sharing the cache wedged.
///
/// Every handle registers its fd and mapping here. A `pthread_atfork` child hook (installed
/// with the first registration) gives each one, in the child, a description of its own:
/// it opens the file again through `/proc/self/fd/<fd>` (the same inode, even renamed or
/// unlinked), maps that over the old mapping in place (`MAP_FIXED`: same address, same
/// pages, so every reference into it stays valid), and moves the new fd onto the old
/// number (`dup3`). The child then holds no reference to the parent's description, and no
/// lock byte. It bumps [`generation`], by which the layers above (and consort's Python
/// package) know that their handles are a parent's and open the cache again; the old
/// handle stays readable, and its writes give `Error::Forked` before they touch its fd.
///
/// # Caveats
/// - Without `/proc` the hook cannot reopen the file: it maps zero pages over the mapping
///   instead and marks it truncated, so the child's old handle reports `Error::Corrupt`
///   rather than keep the parent's lock (a child that opens the cache again is unaffected).
/// - A fork racing a handle's open or drop in another thread can leave the child one
///   reference to the parent's description: a handle is registered only once its fd and
///   mapping exist, and unregistered before either goes, so the hook never touches
///   anything that is not a live handle's.
#[cfg(not(loom))]
pub(crate) mod fork {
    use std::os::fd::RawFd;

    use crate::sync::Ordering::{Acquire, Relaxed, Release};
    use crate::sync::{AtomicU64, AtomicUsize, Once};

    /// How many handles one process may have open at once (as many as it may map).
    const MAX_HANDLES: usize = super::guard::MAX_MAPPINGS;

    /// One registered handle: `fd + 1` (0: free; `TAKING`: being registered), mapping.
    struct Entry {
        fd: AtomicUsize,
        start: AtomicUsize,
        len: AtomicUsize,
    }

    const TAKING: usize = usize::MAX;

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Entry = Entry {
        fd: AtomicUsize::new(0),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    };
    static TABLE: [Entry; MAX_HANDLES] = [FREE; MAX_HANDLES];
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    static INSTALL: Once = Once::new();
    /// The guard's registry entry of each handle's mapping, to mark it truncated.
    static GUARDS: [AtomicUsize; MAX_HANDLES] = [const { AtomicUsize::new(0) }; MAX_HANDLES];

    /// How many times this process is a fork of the process that started it (0 in the
    /// original; each fork hands its child one more).
    #[inline]
    pub(crate) fn generation() -> u64 {
        GENERATION.load(Relaxed)
    }

    /// Registers a handle's `fd` and `region` for the child hook; `None` when the table is
    /// full (then a forked child keeps that handle's description, as before this hook).
    pub(crate) fn register(fd: RawFd, region: &super::Region) -> Option<usize> {
        INSTALL.call_once(|| {
            // SAFETY: `in_child` is an `extern "C" fn()` valid for the life of the process
            // (a static function); no prepare or parent hook is given.
            unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        });
        let value = usize::try_from(fd).ok()?.checked_add(1)?;
        let index = TABLE.iter().position(|entry| {
            entry
                .fd
                .compare_exchange(0, TAKING, Acquire, Relaxed)
                .is_ok()
        })?;
        let entry = &TABLE[index];
        entry.start.store(region.start(), Relaxed);
        entry.len.store(region.len(), Relaxed);
        GUARDS[index].store(region.guard_entry(), Relaxed);
        // The fd is what makes the entry live for the hook: stored last.
        entry.fd.store(value, Release);
        Some(index)
    }

    /// Forgets entry `index` (before its mapping and fd go).
    pub(crate) fn unregister(index: usize) {
        TABLE[index].fd.store(0, Release);
    }

    /// The child hook: async-signal-safe (atomics, `open`, `mmap`, `dup3`, `close`; no
    /// allocation, no lock), as a hook of a multithreaded parent's fork must be.
    extern "C" fn in_child() {
        GENERATION.fetch_add(1, Relaxed);
        for (index, entry) in TABLE.iter().enumerate() {
            let value = entry.fd.load(Acquire);
            if value == 0 || value == TAKING {
                continue;
            }
            let fd = (value - 1) as RawFd;
            let (start, len) = (entry.start.load(Relaxed), entry.len.load(Relaxed));
            if !reopen(fd, start, len) {
                super::guard::mark_truncated(GUARDS[index].load(Relaxed));
                // SAFETY: `[start, start + len)` is a live handle's mapping (registered
                // handles are unregistered before they unmap); zero pages are valid atomics.
                unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                let flags = libc::O_RDWR | libc::O_CLOEXEC;
                // SAFETY: a NUL-terminated path; the result is -1 or a new fd that we own.
                let null = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
                if null >= 0 {
                    // SAFETY: `null` is ours, `fd` a live handle's; see `reopen`.
                    unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) };
                    // SAFETY: `null` was opened above and is not used after.
                    unsafe { libc::close(null) };
                }
            }
        }
    }

    /// Opens the file of `fd` again (a new description), maps it over `[start, start+len)`
    /// and moves it onto `fd`. `false` if it could not, with nothing changed.
    fn reopen(fd: RawFd, start: usize, len: usize) -> bool {
        // "/proc/self/fd/" and the decimal fd, NUL-terminated, without allocating.
        let mut path = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        path[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd as u32;
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..count {
            path[prefix.len() + i] = digits[count - 1 - i];
        }
        // SAFETY: `path` is NUL-terminated (zeroed beyond the digits); the result is -1 or
        // a new fd that we own.
        let new = unsafe {
            libc::open(
                path.as_ptr().cast::<libc::c_char>(),
                libc::O_RDWR | libc::O_CLOEXEC,
            )
        };
        if new < 0 {
            return false;
        }
        // SAFETY: `[start, start + len)` is a live handle's mapping of this very file
        // (registered handles are unregistered before they unmap); MAP_FIXED replaces it
        // with a mapping of the same pages of the same file, at the same address, so every
        // reference into it stays valid and sees the same bytes.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                new,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            // SAFETY: `new` was opened above and is not used after.
            unsafe { libc::close(new) };
            return false;
        }
        // SAFETY: `fd` is a live handle's fd, open in the parent at the fork, so the child
        // has it too; `dup3` makes it refer to the new description instead, dropping the
        // child's reference to the parent's, and the handle keeps a valid fd of its file.
        unsafe { libc::dup3(new, fd, libc::O_CLOEXEC) };
        // SAFETY: `new` was opened above; its description lives on as `fd`.
        unsafe { libc::close(new) };
        true
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
