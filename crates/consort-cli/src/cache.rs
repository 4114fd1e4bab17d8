//! `consort cache`: inspect a shared-memory cache (`stats`, `check`) and run the SIGKILL
//! storm against a scratch cache on this machine (`torture`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use consort_cache::{torture, Cache, Config};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Print a cache's counters (summed over every process) and fill.
    Stats(NameArgs),
    /// Check every invariant of a cache (recovering what a dead writer left open).
    Check(NameArgs),
    /// SIGKILL writer processes every 5-50 ms while a reader checks every value.
    Torture(TortureArgs),
    /// One torture writer (started by `torture`).
    #[command(hide = true)]
    TortureWriter {
        #[command(flatten)]
        name: NameArgs,
        #[arg(long)]
        seed: u64,
    },
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The cache's name.
    name: String,
    /// Its directory (default: `$CONSORT_CACHE_DIR`, else `/dev/shm/consort-cache-<uid>`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TortureArgs {
    #[command(flatten)]
    name: NameArgs,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Writer processes.
    #[arg(long, default_value_t = 2)]
    writers: usize,
}

/// The storm's cache: 1,024 entries, 16-byte keys, 64-byte self-checking values.
fn torture_config(dir: Option<PathBuf>) -> Config {
    torture::config(dir, 1024, 4)
}

/// Runs a `consort cache` command. A verdict that a cache file is corrupt, from any of them,
/// exits 1 naming what is wrong; every other error exits 2.
pub fn run(cmd: CacheCmd) -> anyhow::Result<u8> {
    match run_command(cmd) {
        Err(err) if is_corrupt(&err) => {
            eprintln!("consort: {err:#}");
            Ok(1)
        }
        other => other,
    }
}

fn is_corrupt(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<consort_cache::Error>(),
        Some(consort_cache::Error::Corrupt { .. })
    )
}

/// Attaches to an existing cache and runs the cheap checks (size, superblock, each shard's
/// header), so that nothing is reported from a file that is not a sound cache.
fn attach_checked(args: &NameArgs) -> Result<Cache, consort_cache::Error> {
    let cache = Cache::attach(&args.name, args.dir.as_deref())?;
    cache.check_headers()?;
    Ok(cache)
}

fn run_command(cmd: CacheCmd) -> anyhow::Result<u8> {
    match cmd {
        CacheCmd::Stats(args) => {
            let cache = attach_checked(&args)?;
            let s = cache.stats();
            if args.json {
                println!(
                    "{}",
                    json!({"hits": s.hits, "misses": s.misses, "inserts": s.inserts,
                        "evictions": s.evictions, "expirations": s.expirations,
                        "recoveries": s.recoveries, "len": s.len, "capacity": s.capacity})
                );
            } else {
                println!("{}", cache.path().display());
                println!("entries      {} of {}", s.len, s.capacity);
                println!("hits         {}", s.hits);
                println!("misses       {}", s.misses);
                println!("inserts      {}", s.inserts);
                println!("evictions    {}", s.evictions);
                println!("expirations  {}", s.expirations);
                println!("recoveries   {}", s.recoveries);
            }
            Ok(0)
        }
        CacheCmd::Check(args) => {
            match attach_checked(&args).and_then(|cache| cache.check_invariants()) {
                Ok(report) => {
                    if args.json {
                        println!(
                            "{}",
                            json!({"ok": true, "shards": report.shards, "live": report.live, "free": report.free})
                        );
                    } else {
                        println!(
                            "ok: {} shards, {} live entries, {} free slots",
                            report.shards, report.live, report.free
                        );
                    }
                    Ok(0)
                }
                Err(err @ consort_cache::Error::Corrupt { .. }) => {
                    if args.json {
                        println!("{}", json!({"ok": false, "error": err.to_string()}));
                    } else {
                        println!("CORRUPT: {err}");
                    }
                    Ok(1)
                }
                Err(err) => Err(err.into()),
            }
        }
        CacheCmd::Torture(args) => torture_run(&args),
        CacheCmd::TortureWriter { name, seed } => {
            let config = torture_config(name.dir);
            let cache = Cache::open(&name.name, &config)?;
            torture::writer_loop(&cache, 2 * config.capacity as u64, seed)?;
            Ok(0)
        }
    }
}

fn torture_run(args: &TortureArgs) -> anyhow::Result<u8> {
    if args.writers == 0 || args.writers > torture::MAX_WRITERS {
        bail!(
            "--writers {}: give 1 to {} (a cache has {} handles, and the storm's checking \
             reader holds one)",
            args.writers,
            torture::MAX_WRITERS,
            consort_cache::MAX_HANDLES
        );
    }
    if !args.seconds.is_finite() || args.seconds <= 0.0 {
        bail!(
            "--seconds {:?}: give a number of seconds greater than 0",
            args.seconds
        );
    }
    let duration = Duration::try_from_secs_f64(args.seconds)
        .with_context(|| format!("--seconds {:?}: too large", args.seconds))?;
    let config = torture_config(args.name.dir.clone());
    let cache = match Cache::open(&args.name.name, &config) {
        Ok(cache) => cache,
        // Only a cache of another shape is a reason to pick another name; any other error
        // (a directory that is not ours, a corrupt file) says what it is.
        Err(err @ consort_cache::Error::Mismatch { .. }) => {
            return Err(anyhow::Error::new(err).context(format!(
                "torture needs a scratch cache of its own shape; pick a new NAME instead of {:?}",
                args.name.name
            )))
        }
        Err(err) => return Err(err.into()),
    };
    let exe = std::env::current_exe().context("cannot find the consort binary")?;
    let mut spawn = |i: usize| {
        let mut cmd = Command::new(&exe);
        cmd.args(["cache", "torture-writer", &args.name.name, "--seed"])
            .arg((((i as u64 + 1) * 0x9E37_79B9) ^ u64::from(std::process::id())).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(dir) = &args.name.dir {
            cmd.arg("--dir").arg(dir);
        }
        cmd.spawn()
    };
    let keys = 2 * config.capacity as u64;
    let report =
        torture::storm(&cache, keys, args.writers, duration, &mut spawn).context("torture")?;
    if args.name.json {
        println!(
            "{}",
            json!({"kills": report.kills, "violations": report.violations,
                "wrong_values": report.wrong_values, "max_recovery_ms": report.max_recovery_ms,
                "ops": report.ops, "recoveries": report.recoveries})
        );
    } else {
        println!("kills            {}", report.kills);
        println!("recoveries       {}", report.recoveries);
        println!("violations       {}", report.violations);
        println!("wrong values     {}", report.wrong_values);
        println!("max recovery     {:.2} ms", report.max_recovery_ms);
        println!("ops              {}", report.ops);
    }
    Ok(u8::from(report.violations > 0 || report.wrong_values > 0))
}
