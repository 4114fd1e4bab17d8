//! consort-cache: a hit (the value read in place), a miss, and an insert that evicts
//! (16-byte keys, 64-byte values, 10K keys). `consort bench cache` runs the side-by-side
//! comparison with LMDB, moka and Redis.

use std::hint::black_box;

use consort_cache::{Cache, Config};
use criterion::{criterion_group, criterion_main, Criterion};

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"bench-key-000000";
    k[10..16].copy_from_slice(&i.to_le_bytes()[..6]);
    k
}

fn open(name: &str, capacity: usize) -> (Cache, std::path::PathBuf) {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("consort-cache-bench-{}", std::process::id()));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let config = Config {
        capacity,
        shards: 8,
        max_key: 16,
        max_value: 64,
        default_ttl: None,
        dir: Some(dir.clone()),
    };
    (Cache::recreate(name, &config).unwrap(), dir)
}

fn bench(c: &mut Criterion) {
    let (cache, dir) = open("hits", 16_384);
    for i in 0..10_000 {
        cache.insert(&key(i), &[i as u8; 64], None).unwrap();
    }
    let mut i = 0u64;
    c.bench_function("cache_get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(cache.get_with(&key(i), |v| v[0]).unwrap())
        })
    });
    c.bench_function("cache_get_miss", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(cache.get(&key(i + 1_000_000)).unwrap())
        })
    });
    let (small, _) = open("evict", 4096);
    c.bench_function("cache_insert_evicting", |b| {
        b.iter(|| {
            i += 1;
            black_box(
                small
                    .insert(&key(i % 10_000), &[i as u8; 64], None)
                    .unwrap(),
            )
        })
    });
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
