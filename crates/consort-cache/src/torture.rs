//! The SIGKILL storm, shared by the tests and `consort cache torture`: writer processes
//! hammer a cache with self-checking values while a controller SIGKILLs one of them every
//! 5 to 50 ms, respawns it, checks every invariant, and readers verify every value they get.

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Cache, Config, Result};

/// Length of a self-checking value.
pub const VALUE_LEN: usize = 64;

/// The most writer processes a storm can run: every handle of the cache but the one of the
/// checking reader ([`crate::MAX_HANDLES`] in all).
pub const MAX_WRITERS: usize = crate::MAX_HANDLES - 1;

/// The geometry the storm, the crash tests and their helper process agree on: `capacity`
/// entries in `shards` shards (one shard makes SIEVE deterministic), 16-byte keys,
/// [`VALUE_LEN`]-byte values, no default TTL, in `dir` (`None`: `/dev/shm`).
pub fn config(dir: Option<std::path::PathBuf>, capacity: usize, shards: usize) -> Config {
    Config {
        capacity,
        shards,
        max_key: 16,
        max_value: VALUE_LEN,
        default_ttl: None,
        dir,
    }
}

/// The key for key number `id`.
pub fn key(id: u64) -> [u8; 16] {
    let mut key = *b"storm-key-\0\0\0\0\0\0";
    key[10..16].copy_from_slice(&id.to_le_bytes()[..6]);
    key
}

/// A value that names its key and version and carries a checksum of both.
pub fn value(id: u64, version: u64) -> [u8; VALUE_LEN] {
    let mut out = [0u8; VALUE_LEN];
    out[0..8].copy_from_slice(&id.to_le_bytes());
    out[8..16].copy_from_slice(&version.to_le_bytes());
    let mut word = xxhash_rust::xxh3::xxh3_64(&out[0..16]);
    for chunk in out[16..].chunks_mut(8) {
        chunk.copy_from_slice(&word.to_le_bytes());
        word = word.rotate_left(7) ^ 0x9E37_79B9_7F4A_7C15;
    }
    out
}

/// Whether `bytes` is a value that [`value`] made for key number `id`.
pub fn is_valid(id: u64, bytes: &[u8]) -> bool {
    if bytes.len() != VALUE_LEN {
        return false;
    }
    let version = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    bytes == value(id, version)
}

/// A small xorshift generator (no dependency; quality is irrelevant here).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A writer's endless mix of inserts, replaces, removes, short TTLs, purges and rare
/// clears over `keys` keys. Returns only on an error.
pub fn writer_loop(cache: &Cache, keys: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut version = seed << 20;
    loop {
        let id = rng.below(keys);
        version += 1;
        match rng.below(1000) {
            0..=599 => {
                cache.insert(&key(id), &value(id, version), None)?;
            }
            600..=799 => {
                cache.remove(&key(id))?;
            }
            800..=949 => {
                let ttl = Duration::from_micros(rng.below(2000));
                cache.insert(&key(id), &value(id, version), Some(ttl))?;
            }
            950..=998 => {
                cache.purge_expired(4)?;
            }
            _ => cache.clear()?,
        }
    }
}

/// What a storm saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StormReport {
    /// Writers SIGKILLed.
    pub kills: u64,
    /// `check_invariants` failures after a kill (or at the end).
    pub violations: u64,
    /// Values returned for a key that were not that key's (torn, stale slot, garbage).
    pub wrong_values: u64,
    /// Slowest time from a kill to a completed invariant check (which takes every lock,
    /// so it includes stealing the dead writer's lock and rolling it back).
    pub max_recovery_ms: f64,
    /// Reads done by the checkers plus inserts done by the writers.
    pub ops: u64,
    /// Recoveries the cache counted during the storm.
    pub recoveries: u64,
}

/// Runs the storm for `duration` with `writers` writer processes from `spawn(i)` (each
/// must run [`writer_loop`] on the same cache) and one checking reader thread here.
///
/// # Errors
/// `InvalidInput` for 0 writers or more than [`MAX_WRITERS`], before any is started; a
/// writer that could not be started or that stopped by itself.
pub fn storm(
    cache: &Cache,
    keys: u64,
    writers: usize,
    duration: Duration,
    spawn: &mut dyn FnMut(usize) -> std::io::Result<Child>,
) -> std::io::Result<StormReport> {
    if writers == 0 || writers > MAX_WRITERS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{writers} writers: a storm runs 1 to {MAX_WRITERS}"),
        ));
    }
    let before = cache.stats();
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let wrong = AtomicU64::new(0);
    let mut report = StormReport::default();
    let mut children = Vec::new();
    for i in 0..writers {
        children.push(spawn(i)?);
    }
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut rng = Rng::new(0x5EED);
            while !stop.load(Ordering::Relaxed) {
                let id = rng.below(keys);
                match cache.get_with(&key(id), |bytes| is_valid(id, bytes)) {
                    Ok(Some(false)) | Err(_) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut rng = Rng::new(u64::from(std::process::id()) ^ 0xC0FFEE);
        let start = Instant::now();
        let outcome = (|| {
            while start.elapsed() < duration {
                std::thread::sleep(Duration::from_millis(5 + rng.below(46)));
                let victim = rng.below(children.len() as u64) as usize;
                let child = &mut children[victim];
                if let Some(status) = child.try_wait()? {
                    return Err(std::io::Error::other(format!(
                        "a storm writer stopped by itself: {status}"
                    )));
                }
                child.kill()?;
                child.wait()?;
                let killed = Instant::now();
                report.kills += 1;
                if cache.check_invariants().is_err() {
                    report.violations += 1;
                }
                let ms = killed.elapsed().as_secs_f64() * 1e3;
                report.max_recovery_ms = report.max_recovery_ms.max(ms);
                *child = spawn(victim)?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        outcome
    });
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result?;
    if cache.check_invariants().is_err() {
        report.violations += 1;
    }
    let after = cache.stats();
    report.wrong_values = wrong.load(Ordering::Relaxed);
    report.ops = reads.load(Ordering::Relaxed) + after.inserts.saturating_sub(before.inserts);
    report.recoveries = after.recoveries.saturating_sub(before.recoveries);
    Ok(report)
}
