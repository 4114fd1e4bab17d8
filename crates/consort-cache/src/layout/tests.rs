//! Pins the byte layout of `LAYOUT_VERSION` 2: a change here is a change of the file format
//! and must bump the version (files of the old version are then refused, not misread).

use super::*;

#[test]
fn version_2_offsets_are_pinned() {
    assert_eq!(LAYOUT_VERSION, 2);
    assert_eq!(MAGIC, u64::from_le_bytes(*b"CNSCACH1"));
    let superblock = [
        superblock::MAGIC,
        superblock::VERSION,
        superblock::STATE,
        superblock::REGION_LEN,
        superblock::SHARDS,
        superblock::CAPACITY,
        superblock::BUCKETS,
        superblock::MAX_KEY,
        superblock::MAX_VALUE,
        superblock::DEFAULT_TTL_NS,
        superblock::HASH_SEED,
        superblock::HASH_ALGO,
        superblock::ABI,
        superblock::PARTICIPANTS,
    ];
    assert_eq!(
        superblock,
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104]
    );
    assert_eq!(
        (PARTICIPANTS_BASE, PARTICIPANTS, participant::SIZE),
        (4096, 128, 64)
    );
    let participant = [
        participant::GEN,
        participant::PID,
        participant::HITS,
        participant::MISSES,
        participant::INSERTS,
        participant::EVICTIONS,
        participant::EXPIRATIONS,
        participant::RECOVERIES,
    ];
    assert_eq!(participant, [0, 8, 16, 24, 32, 40, 48, 56]);
    let header = [
        shard_header::LOCK,
        shard_header::JOURNAL_STATE,
        shard_header::JOURNAL_LEN,
        shard_header::JOURNAL_ENTRIES,
        shard_header::FREE_HEAD,
        shard_header::HEAD,
        shard_header::TAIL,
        shard_header::HAND,
        shard_header::LEN,
        shard_header::BUCKETS,
    ];
    assert_eq!(header, [0, 64, 72, 128, 1152, 1160, 1168, 1176, 1184, 1216]);
    assert_eq!((JOURNAL_CAPACITY, JOURNAL_ENTRY), (64, 16));
    assert_eq!((JOURNAL_IDLE, JOURNAL_ACTIVE, JOURNAL_CLEARING), (0, 1, 2));
    let slot = [
        slot::PREV,
        slot::NEXT,
        slot::FREE_NEXT,
        slot::HASH,
        slot::VER,
        slot::LIVE,
        slot::CHAIN,
        slot::LENS,
        slot::EXPIRES,
        slot::VISITED,
        slot::HEADER,
    ];
    assert_eq!(slot, [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]);
    assert_eq!((STATE_READY, STATE_RETIRED, NONE), (1, 2, u64::MAX));
    assert_eq!(lock_word::token(5, 0x1234_5678), 5 | (0x34_5678 << 8));
    assert_eq!(lock_word::WAITERS, 1 << 31);
}

#[test]
fn version_2_geometry_is_pinned() {
    // The default configuration (16K entries in 8 shards, 64-byte keys, 1 KiB values),
    // the crash tests' and an edge case, as the untouched version-2 code computed them.
    let cases = [
        (
            (8, 2048, 64, 1024),
            [2049, 4096, 8, 128, 1216, 34016, 2527232, 12288, 20230144],
        ),
        ((1, 4, 16, 64), [5, 8, 2, 8, 192, 1312, 4096, 12288, 16384]),
        ((2, 5, 1, 0), [6, 16, 1, 0, 128, 1376, 4096, 12288, 20480]),
    ];
    for ((shards, capacity, max_key, max_value), expected) in cases {
        let layout = Layout::new(shards, capacity, max_key, max_value).unwrap();
        let got = [
            layout.slots,
            layout.buckets,
            layout.key_words,
            layout.value_words,
            layout.slot_bytes,
            layout.slots_base,
            layout.shard_bytes,
            layout.shards_base,
            layout.region_len,
        ];
        assert_eq!(
            got, expected,
            "{shards} shards of {capacity}, {max_key}/{max_value}"
        );
        let last = layout.slot(shards - 1, capacity) + slot::VER;
        assert_eq!(last % 64, 0, "a slot's reader words start on a cache line");
    }
}

#[test]
fn pack_word_is_the_zero_padded_native_word() {
    for len in 0..=8 {
        let bytes: Vec<u8> = (1..=len as u8).collect();
        let mut padded = [0u8; 8];
        padded[..len].copy_from_slice(&bytes);
        assert_eq!(
            super::pack_word(&bytes),
            u64::from_ne_bytes(padded),
            "{len} bytes"
        );
    }
}
