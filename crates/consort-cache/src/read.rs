//! The lock-free read: follow the key's bucket chain and copy the entry out, validating
//! every slot by its version (Boehm's seqlock reader, with relaxed atomic data loads, so
//! there is no data race in the language sense).
//!
//! ```text
//! idx = bucket.load(Acquire)
//! per slot: v1 = ver.load(Acquire); odd -> restart
//!           relaxed loads: live, chain, lengths, expiry, key words, value words (private copy)
//!           fence(Acquire); ver.load(Relaxed) != v1 -> restart; !live -> restart
//! ```
//!
//! # Invariants
//! 1. **Never blocks, never takes a lock**: a dead writer cannot stop a reader, which never
//!    looks at the lock word. A read restarts at most `READ_RETRIES` times, then reports a
//!    miss; a chain walk is bounded by the number of slots.
//! 2. **Never returns a torn or wrong value**: a copy is used only if the slot's version was
//!    even and unchanged across it and the slot was live; the acquire fence orders the data
//!    loads before the second version load, pairing with the writer's release fence
//!    (`write.rs`, invariant 2). A dead writer can make a read miss, never return a wrong
//!    value.
//! 3. **Writes nothing shared** but a slot's `visited` word (test before set, `Relaxed`) and
//!    the reader's own participant counters.
//! 4. Lengths are clamped before use and every index is bounds-checked, so a corrupt slot
//!    gives a miss or `Error::Corrupt`, never a wild read.
//! 5. A file truncated under us gives `Error::Corrupt`: the read checks the region's
//!    truncation flag after its loads, before it calls `f` (`region.rs`, invariant 4).

use crate::error::Result;
use crate::handle::{now_ns, Handle};
use crate::layout::{pack_word, participant, slot, NONE};
use crate::sync::fence;
use crate::sync::Ordering::{Acquire, Relaxed};

/// How often a read restarts after a concurrent change before it reports a miss.
const READ_RETRIES: usize = 32;

/// Calls `f` with a validated private copy of `key`'s value, counting a hit or a miss.
pub(crate) fn get_with<R>(
    handle: &Handle,
    key: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Result<Option<R>> {
    // A stack buffer no larger than needed (it is zeroed on every call).
    let bytes = handle.layout.value_words * 8;
    if bytes <= SMALL {
        return get_into(handle, key, &mut [0u8; SMALL], f);
    }
    // Most values are short even where the maximum is long: a stack buffer first, and only
    // a value that does not fit is read again into the thread's large buffer.
    let mut small = [0u8; MEDIUM];
    let found = read(handle, key, &mut small);
    handle.intact()?;
    match found? {
        Some(Ok(len)) => {
            handle.count(participant::HITS, 1);
            Ok(Some(f(&small[..len])))
        }
        None => {
            handle.count(participant::MISSES, 1);
            Ok(None)
        }
        Some(Err(_longer)) => {
            // A large buffer is this thread's, reused: a fresh zeroed one per call would
            // cost an allocation and a memset of `max_value` bytes. It is taken out while in
            // use, so an `f` that reads the cache again gets a buffer of its own.
            let mut buf = BUFFER.with(std::cell::Cell::take);
            if buf.len() < bytes {
                buf.resize(bytes, 0);
            }
            let result = get_into(handle, key, &mut buf, f);
            BUFFER.with(|cell| cell.set(buf));
            result
        }
    }
}

/// Value buffers on the stack: whole when the maximum fits, a first try when it does not.
const SMALL: usize = 64;
const MEDIUM: usize = 256;

thread_local! {
    /// The reused buffer of reads of values longer than `MEDIUM` (see `get_with`).
    static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Reads into `buf`, which holds the cache's longest value, and calls `f`.
fn get_into<R>(
    handle: &Handle,
    key: &[u8],
    buf: &mut [u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Result<Option<R>> {
    let found = read(handle, key, buf);
    // After the read's loads (and its acquire fence): a copy made from zero pages that the
    // SIGBUS guard put in place of a truncated file is never handed to `f`.
    handle.intact()?;
    match found? {
        Some(Ok(len)) => {
            handle.count(participant::HITS, 1);
            Ok(Some(f(&buf[..len])))
        }
        // `buf` holds any value the cache allows, so a value "too long" for it is one whose
        // length changed under the read: a miss, as a read that keeps restarting is.
        Some(Err(_)) | None => {
            handle.count(participant::MISSES, 1);
            Ok(None)
        }
    }
}

/// The lock-free read: follow the chain, validating each slot by its version. Copies the
/// value into `buf` and returns `Ok(length)`, or `Err(length)` without copying when the
/// value is longer than `buf`.
fn read(handle: &Handle, key: &[u8], buf: &mut [u8]) -> Result<Option<Result<usize, usize>>> {
    let layout = &handle.layout;
    if key.len() > layout.max_key {
        return Ok(None);
    }
    let hash = handle.hash(key);
    let (shard, bucket) = handle.place(hash);
    let cap = layout.slots as u64;
    // A key of up to 128 bytes as the words a slot holds (the last zero-padded), made once
    // rather than per slot visited; a longer key is compared chunk by chunk.
    let mut inline = [0u64; 16];
    let packed = (key.len() <= 8 * inline.len()).then(|| {
        let mut n = 0;
        for chunk in key.chunks(8) {
            inline[n] = pack_word(chunk);
            n += 1;
        }
        &inline[..n]
    });
    let bucket_word = handle.region.u64(layout.bucket(shard, bucket));
    'retry: for _ in 0..READ_RETRIES {
        let mut raw = bucket_word.load(Acquire);
        for _ in 0..=layout.slots {
            if raw == NONE {
                return Ok(None);
            }
            if raw >= cap {
                return Err(handle.corrupt("bucket points outside the shard"));
            }
            let base = layout.slot(shard, raw as usize);
            // One bounds check for the whole slot; fields are indexed words.
            let words = handle.region.words(base, layout.slot_bytes / 8);
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
            let sane = klen <= layout.max_key && vlen <= layout.max_value;
            let data = &words[slot::HEADER / 8..];
            let matched = sane
                && live == 1
                && klen == key.len()
                && match packed {
                    Some(words) => words.iter().zip(data).all(|(k, w)| w.load(Relaxed) == *k),
                    None => key
                        .chunks(8)
                        .zip(data)
                        .all(|(chunk, word)| word.load(Relaxed) == pack_word(chunk)),
                };
            let fits = vlen.div_ceil(8) * 8 <= buf.len();
            if matched && fits {
                let value = &data[layout.key_words..];
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
                return Err(handle.corrupt("a slot's lengths exceed the cache's maxima"));
            }
            if matched {
                if expires != 0 && now_ns() >= expires {
                    return Ok(None);
                }
                let visited = w(slot::VISITED);
                if visited.load(Relaxed) == 0 {
                    visited.store(1, Relaxed);
                }
                return Ok(Some(if fits { Ok(vlen) } else { Err(vlen) }));
            }
            raw = chain;
        }
    }
    Ok(None)
}
