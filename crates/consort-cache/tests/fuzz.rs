//! Corrupted region bytes never crash or hang a process: every operation ends in a value,
//! a miss, or a typed `Corrupt` error (and writers repair or clear what they can).

mod support;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use consort_cache::{Cache, Error};
use proptest::prelude::*;
use support::{open, TempDir, Watchdog};

/// Superblock page plus the participant table; the shards start after it.
const SHARDS_BASE: u64 = 3 * 4096;

fn fill(cache: &Cache) {
    for i in 0..40u32 {
        cache
            .insert(&i.to_le_bytes(), &[i as u8; 24], None)
            .unwrap();
    }
}

fn acceptable<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Ok(_) | Err(Error::Corrupt { .. }) => {}
        Err(err) => panic!("unexpected error on corrupt bytes: {err}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn corrupt_shards_give_misses_or_typed_errors(
        writes in prop::collection::vec((0u64..1_000_000, any::<u64>()), 1..64)
    ) {
        let _dog = Watchdog::new("fuzz shards", Duration::from_secs(60));
        let dir = TempDir::new("fuzz");
        let cache = open(dir.path(), "f", 32, 2);
        fill(&cache);
        let file = std::fs::OpenOptions::new().write(true).open(cache.path()).unwrap();
        let len = file.metadata().unwrap().len();
        for (at, word) in &writes {
            let off = SHARDS_BASE + (at % (len - SHARDS_BASE - 8)) / 8 * 8;
            file.write_at(&word.to_ne_bytes(), off).unwrap();
        }
        for i in 0..40u32 {
            acceptable(cache.get(&i.to_le_bytes()));
        }
        acceptable(cache.check_invariants());
        for i in 0..10u32 {
            acceptable(cache.insert(&(i + 100).to_le_bytes(), b"after", None));
            acceptable(cache.remove(&i.to_le_bytes()));
        }
        acceptable(cache.purge_expired(100));
        // A clear always brings a cache back.
        cache.clear().unwrap();
        cache.insert(b"fresh", b"1", None).unwrap();
        prop_assert_eq!(cache.get(b"fresh").unwrap(), Some(b"1".to_vec()));
        prop_assert_eq!(cache.check_invariants().unwrap().live, 1);
    }

    #[test]
    fn corrupt_superblocks_are_refused_or_harmless(
        writes in prop::collection::vec((0u64..SHARDS_BASE, any::<u8>()), 1..16)
    ) {
        let _dog = Watchdog::new("fuzz superblock", Duration::from_secs(60));
        let dir = TempDir::new("fuzzsb");
        {
            let cache = open(dir.path(), "s", 32, 2);
            fill(&cache);
            let file = std::fs::OpenOptions::new().write(true).open(cache.path()).unwrap();
            for (off, byte) in &writes {
                file.write_at(&[*byte], *off).unwrap();
            }
        }
        match Cache::attach("s", Some(dir.path())) {
            Ok(cache) => {
                for i in 0..40u32 {
                    acceptable(cache.get(&i.to_le_bytes()));
                }
                acceptable(cache.check_invariants());
            }
            Err(Error::Corrupt { .. } | Error::TooManyHandles(_) | Error::Retired(_)) => {}
            Err(err) => panic!("unexpected error on a corrupt superblock: {err}"),
        }
    }
}
