//! `consort bench roundtrip`: N tiny tasks on one service, at most C in flight: the rate,
//! the latency, and how each task ended, beside a pipe ping-pong and a bare interpreter's
//! start measured in the same run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::TaskError;
use serde_json::json;

use super::reference::{bare_python_start, percentile, pipe_ping_pong};
use crate::args::{EnvArgs, ScriptArgs, WorkerArgs};

#[derive(Debug, Args)]
#[command(mut_arg("script", |arg| arg.help(
    "The task script (default: `task.outputs['result'] = 1` for Python workers, `echo` \
     otherwise, as examples/echo_worker understands it)"
)))]
pub struct RoundtripArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// How many tasks to time.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// At most this many tasks in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Give up on tasks still running after this many seconds (they count as hung).
    #[arg(long, default_value_t = 60.0)]
    give_up: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    script: ScriptArgs,
}

pub fn run(args: &RoundtripArgs) -> anyhow::Result<()> {
    if args.tasks == 0 || args.concurrency == 0 {
        bail!("--tasks and --concurrency must be at least 1");
    }
    // Negative counts as 0 (give up at once), as it always has; too large is refused
    // rather than a panic in Duration or Instant.
    let give_up_after = Duration::try_from_secs_f64(args.give_up.max(0.0))
        .ok()
        .filter(|after| Instant::now().checked_add(*after).is_some())
        .with_context(|| format!("--give-up {:?}: too large", args.give_up))?;
    let recipe = args.worker.recipe(Some(&args.env))?;
    let script = args.script.read(false)?.unwrap_or_else(|| {
        if recipe.is_python() {
            "task.outputs['result'] = 1".to_owned()
        } else {
            "echo".to_owned()
        }
    });
    let started = Instant::now();
    let service = recipe.builder.start().context("starting the worker")?;
    service
        .task(script.clone())
        .submit()?
        .wait_timeout(Duration::from_secs(60))
        .context("the warm-up task")?;
    let start_ms = started.elapsed().as_secs_f64() * 1e3;

    let give_up = Instant::now() + give_up_after;
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(args.tasks));
    let counts = Mutex::new([0usize; 4]); // complete, failed, crashed, hung
    let began = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.min(args.tasks) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < args.tasks {
                    let submitted = Instant::now();
                    let slot = match service.task(script.clone()).submit() {
                        Ok(task) => {
                            let left = give_up.saturating_duration_since(Instant::now());
                            match task.wait_timeout(left) {
                                Ok(_) => {
                                    lock(&latencies).push(submitted.elapsed());
                                    0
                                }
                                Err(TaskError::Crashed(_)) => 2,
                                Err(TaskError::NotFinished(_)) => 3,
                                Err(_) => 1,
                            }
                        }
                        Err(_) => 1,
                    };
                    lock(&counts)[slot] += 1;
                }
            });
        }
    });
    let elapsed = began.elapsed();
    let [complete, failed, crashed, hung] = *lock(&counts);
    let mut latencies = std::mem::take(&mut *lock(&latencies));
    latencies.sort_unstable();
    let tasks_per_s = complete as f64 / elapsed.as_secs_f64();
    let p50_us = percentile(&latencies, 0.50).as_secs_f64() * 1e6;
    let p99_us = percentile(&latencies, 0.99).as_secs_f64() * 1e6;
    service.close();

    // References measured in the same run.
    let pipe_p50_us = pipe_ping_pong(2000)?.as_secs_f64() * 1e6;
    let python_start_ms = match recipe.python_command() {
        Some(_) => Some(bare_python_start(&recipe, 5)?.as_secs_f64() * 1e3),
        None => None,
    };

    if args.json {
        let mut object = json!({
            "tasks_per_s": tasks_per_s, "p50_us": p50_us, "p99_us": p99_us,
            "complete": complete, "failed": failed, "crashed": crashed, "hung": hung,
            "start_ms": start_ms, "pipe_p50_us": pipe_p50_us,
        });
        if let Some(ms) = python_start_ms {
            object["python_start_ms"] = json!(ms);
        }
        println!("{object}");
    } else {
        println!(
            "{} tasks ({} in flight) on `{}`: {tasks_per_s:.0} tasks/s, p50 {p50_us:.1} µs, p99 {p99_us:.1} µs",
            args.tasks, args.concurrency, recipe.label
        );
        println!("complete {complete}, failed {failed}, crashed {crashed}, hung {hung}");
        println!("start to first completion: {start_ms:.1} ms");
        println!("reference, pipe ping-pong between two processes: p50 {pipe_p50_us:.1} µs");
        if let Some(ms) = python_start_ms {
            println!("reference, bare `python -c pass`: {ms:.1} ms");
        }
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
