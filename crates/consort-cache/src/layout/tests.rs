//! Pins the byte layout of `LAYOUT_VERSION` 2: a change here is a change of the file format
//! and must bump the version (files of the old version are then refused, not misread).

use super::*;

#[test]
fn version_2_offsets_are_pinned() {
    assert_eq!(LAYOUT_VERSION, 2);
    assert_eq!(MAGIC, u64::from_le_bytes(*b"CNSCACH1"));
    let superblock_words = [
        sb::MAGIC,
        sb::VERSION,
        sb::STATE,
        sb::REGION_LEN,
        sb::SHARDS,
        sb::CAPACITY,
        sb::BUCKETS,
        sb::MAX_KEY,
        sb::MAX_VALUE,
        sb::DEFAULT_TTL_NS,
        sb::HASH_SEED,
        sb::HASH_ALGO,
        sb::ABI,
        sb::PARTICIPANTS,
    ];
    assert_eq!(
        superblock_words,
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104]
    );
    assert_eq!((PART_BASE, PARTICIPANTS, part::SIZE), (4096, 128, 64));
    let participant_words = [
        part::GEN,
        part::PID,
        part::HITS,
        part::MISSES,
        part::INSERTS,
        part::EVICTIONS,
        part::EXPIRATIONS,
        part::RECOVERIES,
    ];
    assert_eq!(participant_words, [0, 8, 16, 24, 32, 40, 48, 56]);
    let header_words = [
        sh::LOCK,
        sh::J_STATE,
        sh::J_LEN,
        sh::J_ENTRIES,
        sh::FREE_HEAD,
        sh::HEAD,
        sh::TAIL,
        sh::HAND,
        sh::LEN,
        sh::BUCKETS,
    ];
    assert_eq!(
        header_words,
        [0, 64, 72, 128, 1152, 1160, 1168, 1176, 1184, 1216]
    );
    assert_eq!(JOURNAL, 64);
    assert_eq!((J_IDLE, J_ACTIVE, J_CLEARING), (0, 1, 2));
    let slot_words = [
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
    assert_eq!(slot_words, [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]);
    assert_eq!((STATE_READY, STATE_RETIRED, NONE), (1, 2, u64::MAX));
    // The lock word: participant in bits 0..8, generation in 8..31, WAITERS in bit 31.
    assert_eq!(crate::shard::token(5, 0x1234_5678), 5 | (0x34_5678 << 8));
    assert_eq!(crate::shard::WAITERS, 1 << 31);
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
