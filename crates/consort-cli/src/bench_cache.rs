//! `consort bench cache`: consort-cache against LMDB (heed), moka (in-process) and a Redis
//! server on loopback, side by side in one run: 16-byte keys, 64-byte values, 10K keys,
//! all gets hit. Only ratios taken in the same run mean anything on a shared machine.
//!
//! `unsafe` here is only heed's: opening an LMDB environment is `unsafe` because LMDB
//! forbids opening the same file twice in one process, which this private temp dir rules out.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort_cache::{Cache, Config};
use serde_json::json;

#[derive(Debug, Args)]
pub struct CacheBenchArgs {
    /// Gets per measured system.
    #[arg(long, default_value_t = 4_000_000)]
    gets: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const KEYS: usize = 10_000;
const VALUE: usize = 64;

fn key(i: usize) -> [u8; 16] {
    let mut k = *b"bench-key-000000";
    k[10..16].copy_from_slice(&(i as u64).to_le_bytes()[..6]);
    k
}

fn value(i: usize) -> [u8; VALUE] {
    [(i % 251) as u8; VALUE]
}

/// A fixed pseudo-random visiting order over the keys, shared by every system.
fn order(n: usize) -> Vec<u32> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % KEYS as u64) as u32
        })
        .collect()
}

/// Runs `get` over `order`, returns gets per second.
fn rate(order: &[u32], mut get: impl FnMut(&[u8; 16]) -> usize) -> anyhow::Result<f64> {
    let keys: Vec<[u8; 16]> = (0..KEYS).map(key).collect();
    for i in order.iter().take(100_000) {
        black_box(get(&keys[*i as usize]));
    }
    let start = Instant::now();
    let mut found = 0;
    for i in order {
        found += get(&keys[*i as usize]);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if found != order.len() {
        bail!("only {found} of {} gets hit", order.len());
    }
    Ok(order.len() as f64 / elapsed)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!("consort-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &CacheBenchArgs) -> anyhow::Result<()> {
    let order = order(args.gets.max(1000));
    let dir = TempDir::new("cache")?;

    // consort-cache
    let config = Config {
        capacity: 16_384,
        shards: 8,
        max_key: 16,
        max_value: VALUE,
        default_ttl: None,
        dir: Some(dir.0.clone()),
    };
    let cache = Cache::open("bench", &config)?;
    for i in 0..KEYS {
        cache.insert(&key(i), &value(i), None)?;
    }
    let consort_get = rate(&order, |k| {
        cache
            .get_with(k, |v| usize::from(black_box(v[0]) < 255) | 1)
            .ok()
            .flatten()
            .unwrap_or(0)
    })?;
    // p99 of single gets (each timed with Instant, whose own cost is included).
    let keys: Vec<[u8; 16]> = (0..KEYS).map(key).collect();
    let mut samples: Vec<u64> = order
        .iter()
        .take(200_000)
        .map(|i| {
            let start = Instant::now();
            black_box(cache.get_with(&keys[*i as usize], |v| v[0]).ok());
            start.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let p50_ns = samples[samples.len() / 2];
    let p99_ns = samples[samples.len() * 99 / 100];
    let timer_ns = {
        let start = Instant::now();
        for _ in 0..100_000 {
            black_box(Instant::now());
        }
        start.elapsed().as_nanos() as u64 / 100_000
    };
    // inserts with eviction: 10K distinct keys cycling through a 4K-entry cache
    let small = Cache::open(
        "bench-evict",
        &Config {
            capacity: 4096,
            ..config.clone()
        },
    )?;
    let inserts = args.gets.clamp(100_000, 2_000_000);
    let start = Instant::now();
    for (n, i) in order.iter().take(inserts).enumerate() {
        small.insert(&keys[*i as usize], &value(n), None)?;
    }
    let consort_insert = inserts as f64 / start.elapsed().as_secs_f64();
    let evictions = small.stats().evictions;
    drop((cache, small));

    let lmdb_get = lmdb(&dir.0.join("lmdb"), &order)?;
    let moka_get = moka(&order)?;
    let (redis_get, redis_pipelined) = match redis(&order) {
        Ok(rates) => (Some(rates.0), Some(rates.1)),
        Err(err) => {
            eprintln!("redis skipped: {err:#}");
            (None, None)
        }
    };

    let object = json!({
        "consort_get_per_s": consort_get.round(),
        "lmdb_get_per_s": lmdb_get.round(),
        "moka_get_per_s": moka_get.round(),
        "redis_get_per_s": redis_get.map(f64::round),
        "redis_get_pipelined16_per_s": redis_pipelined.map(f64::round),
        "consort_get_p50_ns": p50_ns,
        "consort_get_p99_ns": p99_ns,
        "timer_overhead_ns": timer_ns,
        "consort_insert_per_s": consort_insert.round(),
        "insert_evictions": evictions,
        "get_vs_lmdb": (consort_get / lmdb_get * 100.0).round() / 100.0,
        "get_vs_moka": (consort_get / moka_get * 100.0).round() / 100.0,
    });
    if args.json {
        println!("{object}");
    } else {
        println!(
            "10K keys, 16 B keys, 64 B values, {} gets each, all hits",
            order.len()
        );
        println!("consort-cache get   {:>12.0}/s", consort_get);
        println!(
            "LMDB (heed) get     {:>12.0}/s   consort is {:.1}x",
            lmdb_get,
            consort_get / lmdb_get
        );
        println!(
            "moka get            {:>12.0}/s   consort is {:.1}x",
            moka_get,
            consort_get / moka_get
        );
        match (redis_get, redis_pipelined) {
            (Some(one), Some(piped)) => {
                println!(
                    "redis get (1 client){:>12.0}/s   pipelined x16: {:.0}/s",
                    one, piped
                )
            }
            _ => println!("redis get           skipped (no redis-server)"),
        }
        println!(
            "consort get p50/p99 {p50_ns} / {p99_ns} ns (timer overhead ~{timer_ns} ns included)"
        );
        println!(
            "consort insert      {:>12.0}/s with eviction ({evictions} evictions)",
            consort_insert
        );
    }
    Ok(())
}

fn lmdb(path: &Path, order: &[u32]) -> anyhow::Result<f64> {
    use heed::types::Bytes;
    use heed::{Database, EnvFlags, EnvOpenOptions};
    std::fs::create_dir_all(path)?;
    let mut options = EnvOpenOptions::new();
    options.map_size(256 << 20).max_dbs(1);
    // SAFETY: NO_SYNC/NO_META_SYNC only weaken durability (a benchmark on tmpfs), and this
    // directory is private to this run, so the environment is opened exactly once.
    let env = unsafe {
        options.flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC);
        options.open(path)?
    };
    let mut wtxn = env.write_txn()?;
    let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, None)?;
    for i in 0..KEYS {
        db.put(&mut wtxn, &key(i), &value(i))?;
    }
    wtxn.commit()?;
    // One read transaction for all gets: LMDB's fastest mode.
    let rtxn = env.read_txn()?;
    rate(order, |k| {
        db.get(&rtxn, k)
            .ok()
            .flatten()
            .map_or(0, |v| usize::from(black_box(v[0]) < 255) | 1)
    })
}

fn moka(order: &[u32]) -> anyhow::Result<f64> {
    let cache: moka::sync::Cache<[u8; 16], Arc<[u8]>> = moka::sync::Cache::new(16_384);
    for i in 0..KEYS {
        cache.insert(key(i), Arc::from(&value(i)[..]));
    }
    cache.run_pending_tasks();
    rate(order, |k| {
        cache
            .get(k)
            .map_or(0, |v| usize::from(black_box(v[0]) < 255) | 1)
    })
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (one client, no pipelining; one client, pipeline of 16) gets per second.
fn redis(order: &[u32]) -> anyhow::Result<(f64, f64)> {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let server = Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?,
    );
    let started = Instant::now();
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(err) => return Err(err).context("connecting to redis-server"),
        }
    };
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let command = |parts: &[&[u8]]| {
        let mut buf = format!("*{}\r\n", parts.len()).into_bytes();
        for part in parts {
            buf.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            buf.extend_from_slice(part);
            buf.extend_from_slice(b"\r\n");
        }
        buf
    };
    let mut line = Vec::new();
    // Reads one reply; returns 1 for a bulk string of VALUE bytes.
    let mut reply = |input: &mut BufReader<TcpStream>| -> anyhow::Result<usize> {
        line.clear();
        input.read_until(b'\n', &mut line)?;
        if line.first() == Some(&b'$') {
            let len: i64 = std::str::from_utf8(&line[1..line.len() - 2])?.parse()?;
            if len >= 0 {
                let mut body = vec![0; len as usize + 2];
                std::io::Read::read_exact(input, &mut body)?;
                return Ok(usize::from(len as usize == VALUE));
            }
        }
        Ok(0)
    };
    let mut batch = Vec::new();
    for i in 0..KEYS {
        batch.extend(command(&[b"SET", &key(i), &value(i)]));
    }
    out.write_all(&batch)?;
    for _ in 0..KEYS {
        reply(&mut input)?;
    }
    let gets: Vec<Vec<u8>> = (0..KEYS).map(|i| command(&[b"GET", &key(i)])).collect();
    let single = &order[..order.len().min(20_000)];
    let start = Instant::now();
    let mut hits = 0;
    for i in single {
        out.write_all(&gets[*i as usize])?;
        hits += reply(&mut input)?;
    }
    let one = single.len() as f64 / start.elapsed().as_secs_f64();
    let piped = &order[..order.len().min(320_000)];
    let start = Instant::now();
    for chunk in piped.chunks(16) {
        batch.clear();
        for i in chunk {
            batch.extend_from_slice(&gets[*i as usize]);
        }
        out.write_all(&batch)?;
        for _ in chunk {
            hits += reply(&mut input)?;
        }
    }
    let pipelined = piped.len() as f64 / start.elapsed().as_secs_f64();
    if hits != single.len() + piped.len() {
        bail!("redis: only {hits} gets hit");
    }
    drop(server);
    Ok((one, pipelined))
}
