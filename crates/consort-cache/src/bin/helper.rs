//! Test helper for consort-cache's own tests (not a user tool): runs one cache operation
//! in its own process, optionally SIGKILLing (or SIGSTOPping) itself after its Nth
//! shared-memory store, so the tests can kill a writer anywhere.
//!
//! `consort-cache-helper DIR NAME CAPACITY OP [ARG] [--crash N | --stop N]`
//! where OP is `insert KEY`, `replace KEY`, `remove KEY`, `purge`, `clear`, `recover`,
//! `fill N` (keys k0..kN) or `storm SEED` (the torture writer loop, forever; it prints
//! `storming` once the cache is open).

use std::process::ExitCode;
use std::time::Duration;

use consort_cache::{torture, Cache};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("consort-cache-helper: {err}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [dir, name, capacity, op, rest @ ..] = args else {
        return Err("usage: DIR NAME CAPACITY[/SHARDS] OP [ARG] [--crash N | --stop N]".into());
    };
    let (capacity, shards) = capacity.split_once('/').unwrap_or((capacity, "1"));
    let cache = Cache::open(
        name,
        &torture::config(Some(dir.into()), capacity.parse()?, shards.parse()?),
    )?;
    let mut arg = None;
    let mut rest = rest.iter();
    while let Some(word) = rest.next() {
        match word.as_str() {
            "--crash" | "--stop" => {
                let n: u64 = rest.next().ok_or("--crash needs N")?.parse()?;
                #[cfg(all(feature = "fault", not(loom)))]
                if word == "--crash" {
                    consort_cache::crash_after(n);
                } else {
                    consort_cache::stop_after(n);
                }
                #[cfg(any(not(feature = "fault"), loom))]
                return Err(format!("{word} {n}: built without the `fault` feature").into());
            }
            other => arg = Some(other.to_owned()),
        }
    }
    let arg = arg.unwrap_or_default();
    match op.as_str() {
        "insert" => {
            cache.insert(arg.as_bytes(), format!("value-of-{arg}").as_bytes(), None)?;
        }
        "replace" => {
            cache.insert(
                arg.as_bytes(),
                format!("new-value-of-{arg}").as_bytes(),
                None,
            )?;
        }
        "expiring" => {
            cache.insert(
                arg.as_bytes(),
                b"short-lived",
                Some(Duration::from_nanos(1)),
            )?;
        }
        "remove" => {
            cache.remove(arg.as_bytes())?;
        }
        "purge" => {
            cache.purge_expired(usize::MAX)?;
        }
        "clear" => cache.clear()?,
        "recover" => cache.recover()?,
        "storm" => {
            // The cache is open: a test may now change it under this writer.
            println!("storming");
            std::io::Write::flush(&mut std::io::stdout())?;
            torture::writer_loop(&cache, 2 * cache.capacity() as u64, arg.parse()?)?;
        }
        other => return Err(format!("unknown op {other:?}").into()),
    }
    println!("{}", points());
    Ok(())
}

#[cfg(all(feature = "fault", not(loom)))]
fn points() -> u64 {
    consort_cache::points_passed()
}

#[cfg(any(not(feature = "fault"), loom))]
fn points() -> u64 {
    0
}
