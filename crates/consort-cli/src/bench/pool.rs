//! `consort bench pool`: consort's pool of Python workers against Python's own pools
//! (`concurrent.futures.ProcessPoolExecutor` and `loky`), same worker count, same run, and
//! the time from a worker's SIGKILL to its replacement taking a task.
//!
//! The Python side is `pool.py` beside this file, embedded and run with the worker's
//! interpreter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::{Args as Inputs, EventKind, Pool, TaskState};
use serde_json::{json, Value};

use super::reference::bare_python_start;
use crate::args::{EnvArgs, Recipe, WorkerArgs};

const PYTHON_SIDE: &str = include_str!("pool.py");

/// Scripts for the consort side, the same work as `pool.py`'s functions.
const TINY: &str = "task.outputs['result'] = 1";
const CPU_1MS: &str = "import time\nend = time.perf_counter() + 0.001\n\
                       while time.perf_counter() < end:\n    pass\ntask.outputs['result'] = 1";

#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// Workers in each pool.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Tasks of each kind (tiny, 1 ms of CPU) through each pool.
    #[arg(long, default_value_t = 5000)]
    tasks: usize,
    /// SIGKILL-to-replacement measurements.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &PoolArgs) -> anyhow::Result<()> {
    if args.workers == 0 || args.tasks == 0 || args.kills == 0 {
        bail!("--workers, --tasks and --kills must be at least 1");
    }
    if !args.worker.is_python() {
        bail!("bench pool compares Python pools: --worker must be consort or appose");
    }
    let recipe = args.worker.recipe(Some(&args.env))?;
    let pool = Pool::new(recipe.builder.clone(), args.workers)
        .start()
        .context("starting consort's pool")?;
    rate(&pool, CPU_1MS, args.workers * 8)?;
    let consort_tiny = rate(&pool, TINY, args.tasks)?;
    let consort_cpu = rate(&pool, CPU_1MS, args.tasks)?;
    pool.close();
    let respawn_plain = respawn(args, &recipe, false)?;
    let respawn_spare = respawn(args, &recipe, true)?;
    let python_start = bare_python_start(&recipe, 10)?;
    let python_side = python_pools(args, &recipe)?;
    let get = |key: &str| python_side.get(key).and_then(Value::as_f64);
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let (ppe_tiny, loky_tiny) = (get("ppe_tiny"), get("loky_tiny"));
    if args.json {
        println!(
            "{}",
            json!({
                "workers": args.workers,
                "tasks": args.tasks,
                "consort_tasks_per_s": consort_tiny,
                "ppe_tasks_per_s": ppe_tiny,
                "loky_tasks_per_s": loky_tiny,
                "consort_cpu_tasks_per_s": consort_cpu,
                "ppe_cpu_tasks_per_s": get("ppe_cpu"),
                "loky_cpu_tasks_per_s": get("loky_cpu"),
                "respawn_ms": ms(respawn_plain),
                "respawn_spare_ms": ms(respawn_spare),
                "python_start_ms": ms(python_start),
            })
        );
        return Ok(());
    }
    let ratio = |theirs: Option<f64>| match theirs {
        Some(theirs) if theirs > 0.0 => format!("{:.2}x", consort_tiny / theirs),
        _ => "n/a".to_owned(),
    };
    let show = |rate: Option<f64>| rate.map_or("not installed".to_owned(), |r| format!("{r:.0}/s"));
    println!(
        "{} workers, {} tasks of each kind",
        args.workers, args.tasks
    );
    println!(
        "tiny tasks:   consort {consort_tiny:.0}/s, ProcessPoolExecutor {} (consort {}), loky {} (consort {})",
        show(ppe_tiny),
        ratio(ppe_tiny),
        show(loky_tiny),
        ratio(loky_tiny)
    );
    println!(
        "1 ms of CPU:  consort {consort_cpu:.0}/s, ProcessPoolExecutor {}, loky {}",
        show(get("ppe_cpu")),
        show(get("loky_cpu"))
    );
    println!(
        "SIGKILL to the replacement taking a task: median {:.1} ms ({:.1} ms with_spare); \
         a bare `python -c pass`: {:.1} ms",
        ms(respawn_plain),
        ms(respawn_spare),
        ms(python_start)
    );
    Ok(())
}

/// Tasks per second for `n_tasks` runs of `script`, all submitted through `map`.
fn rate(pool: &Pool, script: &str, n_tasks: usize) -> anyhow::Result<f64> {
    let begin = Instant::now();
    let mut n_done = 0;
    for result in pool.map(script, (0..n_tasks).map(|_| Inputs::new())) {
        result.context("a benchmark task did not complete")?;
        n_done += 1;
    }
    Ok(n_done as f64 / begin.elapsed().as_secs_f64())
}

/// The median time from SIGKILL of a busy worker to a queued task's LAUNCH on its
/// replacement (one isolated worker, so the task can only run there), with or without a
/// spare worker standing by.
fn respawn(args: &PoolArgs, recipe: &Recipe, spare: bool) -> anyhow::Result<Duration> {
    let pool = Pool::new(recipe.builder.clone(), 1)
        .with_isolated(true)
        .with_spare(spare)
        .with_max_restarts_per_minute(usize::MAX)
        .start()
        .context("starting the respawn pool")?;
    let mut times = Vec::with_capacity(args.kills);
    for _ in 0..args.kills {
        // Kills are spaced as in life, not back to back: a spare started at the last kill
        // has finished starting by the next.
        std::thread::sleep(Duration::from_millis(300));
        let busy = pool.task("import time\ntime.sleep(3600)").submit()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while busy.state() != TaskState::Running || pool.stats().busy.is_empty() {
            if Instant::now() > deadline {
                bail!("the waiting task did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let pid = pool.stats().busy[0];
        let launched = Arc::new(Mutex::new(None));
        let probe = {
            let launched = Arc::clone(&launched);
            pool.task("1")
                .listen(move |event| {
                    if event.kind == EventKind::Launch {
                        *launched.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    }
                })
                .submit()?
        };
        let killed_at = Instant::now();
        consort::sys::Pid::new(pid)
            .signal(consort::sys::signals::KILL)
            .context("SIGKILL to the worker")?;
        probe
            .wait_timeout(Duration::from_secs(60))
            .context("the probe task did not complete on the replacement")?;
        let launched_at = launched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .context("no LAUNCH event")?;
        times.push(launched_at.saturating_duration_since(killed_at));
    }
    pool.close();
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// The Python pools' rates, from `pool.py`.
fn python_pools(args: &PoolArgs, recipe: &Recipe) -> anyhow::Result<Value> {
    let mut command = recipe
        .python_command()
        .context("the worker has no Python interpreter")?;
    let output = command
        .arg("-c")
        .arg(PYTHON_SIDE)
        .args(["--workers", &args.workers.to_string()])
        .args(["--tasks", &args.tasks.to_string()])
        .output()
        .with_context(|| format!("running {:?} for the Python pools", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "the Python pools' benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading the Python pools' JSON")
}
