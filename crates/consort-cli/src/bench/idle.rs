//! `consort bench idle`: what doing nothing costs. For `--secs` each, (a) a `Service`
//! whose one task sleeps through the whole period, then (b) a `Pool` of `--workers` idle
//! workers with no task; for each phase, the CPU time this (supervising) process spent,
//! user and system, and the CPU time its workers spent, from `/proc` (Linux).
//!
//! Self-contained on purpose: this file uses nothing else from this crate, and from the
//! library only `Service`, `ServiceBuilder`, `Pool`, `PoolStats::pids`, `Task` and
//! `EventKind`, as they were at commit d470a7a, so that the same file dropped into an
//! older `consort-cli` measures a "before" (its caller passes the worker's recipe).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::{EventKind, Pool, ServiceBuilder};
use serde_json::json;

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// How long each phase lasts, in seconds.
    #[arg(long, default_value_t = 60.0)]
    secs: f64,
    /// Workers in the idle pool.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Print one JSON object: secs, workers, service_cpu_s, service_worker_cpu_s,
    /// pool_cpu_s, pool_workers_cpu_s, and more.
    #[arg(long)]
    json: bool,
}

/// How long a worker gets to start, and a warm-up task to end.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Runs both phases with workers made from `recipe`; `python_worker` says whether its
/// tasks are Python scripts (else examples/echo_worker's `sleep` is used), `label` names
/// the worker in the report.
///
/// # Errors
/// Bad arguments, a worker that does not start, or no `/proc`.
pub fn run(
    args: &IdleArgs,
    recipe: &ServiceBuilder,
    python_worker: bool,
    label: &str,
) -> anyhow::Result<()> {
    let period = match Duration::try_from_secs_f64(args.secs) {
        Ok(period) if period > Duration::ZERO => period,
        _ => bail!("--secs must be a number of seconds > 0, not {}", args.secs),
    };
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let ticks = clock_ticks_per_second();
    // The task outlasts the period, so the worker is mid-task throughout.
    let sleep_secs = args.secs.ceil() + 60.0;
    let (script, seconds) = if python_worker {
        (format!("import time; time.sleep({sleep_secs})"), None)
    } else {
        ("sleep".to_owned(), Some(sleep_secs))
    };

    // (a) One service, one sleeping task.
    let service = recipe.start().context("starting the worker")?;
    let (launched_tx, launched) = mpsc::channel();
    let mut task = service.task(script.as_str()).listen(move |event| {
        if event.kind == EventKind::Launch {
            let _ = launched_tx.send(());
        }
    });
    if let Some(seconds) = seconds {
        task = task.input("seconds", seconds);
    }
    let task = task.submit()?;
    if launched.recv_timeout(START_LIMIT).is_err() {
        bail!(
            "the sleeping task did not start within {START_LIMIT:?} (state {:?})",
            task.state()
        );
    }
    let worker_pids = [service.pid()];
    let service_phase = measure(period, &worker_pids, ticks)?;
    service.kill();

    // (b) An idle pool, every worker started and warmed up by a task before the clock.
    let pool = Pool::new(recipe.clone(), args.workers)
        .start()
        .context("starting the pool")?;
    let deadline = Instant::now() + START_LIMIT;
    while pool.stats().pids.iter().flatten().count() < args.workers {
        if Instant::now() > deadline {
            bail!("the pool's workers did not all start within {START_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Short sleeps in flight together spread over the workers, so each has run one.
    let warm_up: Vec<_> = (0..args.workers * 2)
        .map(|_| {
            let task = if python_worker {
                pool.task("import time; time.sleep(0.05)")
            } else {
                pool.task("sleep").input("seconds", 0.05)
            };
            task.submit()
        })
        .collect::<Result<_, _>>()?;
    for task in &warm_up {
        task.wait_timeout(START_LIMIT)
            .context("a warm-up task did not complete")?;
    }
    let pool_pids: Vec<u32> = pool.stats().pids.iter().flatten().copied().collect();
    let pool_phase = measure(period, &pool_pids, ticks)?;
    pool.close();

    if args.json {
        println!(
            "{}",
            json!({
                "secs": args.secs,
                "workers": args.workers,
                "worker": label,
                "service_cpu_s": service_phase.own_cpu_s,
                "service_worker_cpu_s": service_phase.workers_cpu_s,
                "service_threads": service_phase.threads,
                "pool_cpu_s": pool_phase.own_cpu_s,
                "pool_workers_cpu_s": pool_phase.workers_cpu_s,
                "pool_threads": pool_phase.threads,
                "pool_workers_measured": pool_phase.n_workers,
                "clock_ticks_per_s": ticks,
            })
        );
        return Ok(());
    }
    println!(
        "{} s idle each, on `{label}` (CPU from /proc, 1/{ticks} s ticks):",
        args.secs
    );
    println!(
        "  one service, one sleeping task: consort {:.3} s CPU ({} threads), the worker {:.3} s",
        service_phase.own_cpu_s, service_phase.threads, service_phase.workers_cpu_s
    );
    println!(
        "  a pool of {} idle workers:       consort {:.3} s CPU ({} threads), the workers {:.3} s",
        args.workers, pool_phase.own_cpu_s, pool_phase.threads, pool_phase.workers_cpu_s
    );
    Ok(())
}

/// The CPU spent during one idle period.
#[derive(Debug)]
struct Phase {
    /// This process's user + system CPU, in seconds.
    own_cpu_s: f64,
    /// The workers' user + system CPU, in seconds (those alive at both ends).
    workers_cpu_s: f64,
    /// How many workers that sum covers.
    n_workers: usize,
    /// This process's threads at the end of the period.
    threads: usize,
}

/// Sleeps through `period` and returns what this process and `worker_pids` spent in it.
fn measure(period: Duration, worker_pids: &[u32], ticks: f64) -> anyhow::Result<Phase> {
    let own_before = cpu_ticks("self").context("bench idle reads /proc (Linux)")?;
    let workers_before: Vec<Option<u64>> = worker_pids
        .iter()
        .map(|pid| cpu_ticks(&pid.to_string()).ok())
        .collect();
    std::thread::sleep(period);
    let own_after = cpu_ticks("self")?;
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |dir| dir.count());
    let mut workers = 0;
    let mut n_workers = 0;
    for (pid, before) in worker_pids.iter().zip(workers_before) {
        if let (Some(before), Ok(after)) = (before, cpu_ticks(&pid.to_string())) {
            workers += after.saturating_sub(before);
            n_workers += 1;
        }
    }
    Ok(Phase {
        own_cpu_s: own_after.saturating_sub(own_before) as f64 / ticks,
        workers_cpu_s: workers as f64 / ticks,
        n_workers,
        threads,
    })
}

/// User + system CPU of `/proc/<pid>` (`self` for this process, every thread, those
/// ended too), in clock ticks: fields 14 and 15 of its `stat`.
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the
    // last `)`, after which field 3 (the state) comes first.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |number: usize| -> anyhow::Result<u64> {
        fields
            .get(number - 3)
            .and_then(|text| text.parse().ok())
            .with_context(|| format!("field {number} of {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know
/// of, which is also the fallback).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .filter(|ticks: &f64| *ticks > 0.0)
        .unwrap_or(100.0)
}
