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
    /// Internal: be one reader process of the two-process run, on this cache directory.
    #[arg(long, hide = true)]
    reader_of: Option<PathBuf>,
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
    if let Some(dir) = &args.reader_of {
        return reader_process(dir, &order);
    }
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
    let consort_get = rate(&order, |k| get_hit(&cache, k))?;
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
    drop(small);
    let two = two_processes(&dir.0, args.gets.max(1000))?;
    drop(cache);
    let (zipf_consort, zipf_sieve) = zipf_hit_ratios(&dir.0)?;

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
        "consort_get_2proc_per_s": two.round(),
        "two_proc_vs_one": (two / consort_get * 100.0).round() / 100.0,
        "zipf_hit_ratio": (zipf_consort * 1e4).round() / 1e4,
        "zipf_hit_ratio_sieve_reference": (zipf_sieve * 1e4).round() / 1e4,
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
        println!(
            "consort get, 2 processes {:>7.0}/s in total ({:.2}x one process)",
            two,
            two / consort_get
        );
        println!(
            "Zipf(1) hit ratio, 10% capacity: consort {:.2}%, in-process SIEVE {:.2}%",
            zipf_consort * 100.0,
            zipf_sieve * 100.0
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

/// One of the two reader processes: attach, say "ready", wait for "go", run the gets,
/// print the rate.
fn reader_process(dir: &Path, order: &[u32]) -> anyhow::Result<()> {
    let cache = Cache::attach("bench", Some(dir))?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let rate = rate(order, |k| get_hit(&cache, k))?;
    println!("{rate}");
    Ok(())
}

/// Two processes reading the same cache at once: their summed rate.
fn two_processes(dir: &Path, gets: usize) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(&exe)
            .args(["bench", "cache", "--gets", &gets.to_string(), "--reader-of"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().context("reader stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("a reader process did not start: {line:?}");
        }
        children.push((child, out));
    }
    for (child, _) in &mut children {
        child
            .stdin
            .as_mut()
            .context("reader stdin")?
            .write_all(b"go\n")?;
    }
    let mut total = 0.0;
    for (mut child, mut out) in children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        total += line.trim().parse::<f64>().context("a reader's rate")?;
        child.wait()?;
    }
    Ok(total)
}

/// Hit ratios on a Zipf(1) trace over 10K keys with a cache of 1,000 (one shard, so the
/// same policy) against a plain in-process SIEVE: `(consort, reference)`.
fn zipf_hit_ratios(dir: &Path) -> anyhow::Result<(f64, f64)> {
    const CAPACITY: usize = 1000;
    const REQUESTS: usize = 1_000_000;
    let weights: Vec<f64> = (0..KEYS).map(|i| 1.0 / (i + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(KEYS);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let trace: Vec<usize> = (0..REQUESTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|&c| c < u).min(KEYS - 1)
        })
        .collect();
    let cache = Cache::open(
        "bench-zipf",
        &Config {
            capacity: CAPACITY,
            shards: 1,
            max_key: 16,
            max_value: VALUE,
            default_ttl: None,
            dir: Some(dir.to_path_buf()),
        },
    )?;
    let mut hits = 0;
    for &i in &trace {
        if cache.get_with(&key(i), |_| ())?.is_some() {
            hits += 1;
        } else {
            cache.insert(&key(i), &value(i), None)?;
        }
    }
    let consort = hits as f64 / REQUESTS as f64;
    let mut sieve = Sieve::new(CAPACITY);
    let reference = trace.iter().filter(|&&i| sieve.access(i)).count() as f64 / REQUESTS as f64;
    Ok((consort, reference))
}

/// A textbook SIEVE (Zhang et al., NSDI '24): new entries at the head, the hand walks from
/// the tail towards the head clearing visited bits and evicts the first unvisited entry.
struct Sieve {
    capacity: usize,
    map: std::collections::HashMap<usize, usize>,
    key: Vec<usize>,
    visited: Vec<bool>,
    prev: Vec<Option<usize>>, // towards the head
    next: Vec<Option<usize>>, // towards the tail
    head: Option<usize>,
    tail: Option<usize>,
    hand: Option<usize>,
    free: Vec<usize>,
}

impl Sieve {
    fn new(capacity: usize) -> Sieve {
        Sieve {
            capacity,
            map: Default::default(),
            key: vec![0; capacity],
            visited: vec![false; capacity],
            prev: vec![None; capacity],
            next: vec![None; capacity],
            head: None,
            tail: None,
            hand: None,
            free: (0..capacity).rev().collect(),
        }
    }

    /// `true` on a hit; on a miss the key is inserted.
    fn access(&mut self, k: usize) -> bool {
        if let Some(&at) = self.map.get(&k) {
            self.visited[at] = true;
            return true;
        }
        if self.map.len() == self.capacity {
            let mut at = self.hand.or(self.tail).expect("full cache has a tail");
            while self.visited[at] {
                self.visited[at] = false;
                at = self.prev[at].or(self.tail).expect("non-empty");
            }
            self.hand = self.prev[at];
            self.unlink(at);
            self.map.remove(&self.key[at]);
            self.free.push(at);
        }
        let at = self.free.pop().expect("a free slot");
        self.key[at] = k;
        self.visited[at] = false;
        self.prev[at] = None;
        self.next[at] = self.head;
        if let Some(head) = self.head {
            self.prev[head] = Some(at);
        } else {
            self.tail = Some(at);
        }
        self.head = Some(at);
        self.map.insert(k, at);
        false
    }

    fn unlink(&mut self, at: usize) {
        match self.prev[at] {
            Some(p) => self.next[p] = self.next[at],
            None => self.head = self.next[at],
        }
        match self.next[at] {
            Some(n) => self.prev[n] = self.prev[at],
            None => self.tail = self.prev[at],
        }
    }
}

/// One measured get: borrows the value and reads a byte of it (so the read is not
/// optimised away); 1 for a hit, 0 for a miss or an error.
fn get_hit(cache: &Cache, key: &[u8]) -> usize {
    cache
        .get_with(key, |v| usize::from(black_box(v[0]) < 255) | 1)
        .ok()
        .flatten()
        .unwrap_or(0)
}
