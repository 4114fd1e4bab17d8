//! `consort bench`: task round trips and crash detection, measured with reference points
//! taken in the same run (a plain pipe ping-pong, a bare interpreter start), since these
//! machines are shared and only side-by-side ratios mean anything.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use consort::{EventKind, TaskError, TaskState};
use serde_json::json;

use crate::args::{EnvArgs, Recipe, WorkerArgs};

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Tiny and 1 ms-CPU tasks through consort's pool vs ProcessPoolExecutor and loky;
    /// SIGKILL to the replacement taking a task.
    Pool(crate::bench_pool::PoolArgs),
    /// N tiny tasks on one service, at most C in flight: rate, latency, final states.
    Roundtrip(RoundtripArgs),
    /// N times: start a worker, run a task that waits, SIGKILL the worker, time the CRASH.
    Crash(CrashArgs),
    /// An N MiB float32 array handed to a worker through shared memory, then inline as JSON.
    Ndarray(crate::bench_ndarray::NdarrayArgs),
    /// consort-cache gets and inserts against LMDB, moka and Redis, side by side.
    Cache(crate::bench_cache::CacheBenchArgs),
}

#[derive(Debug, Args)]
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
    /// The task script (default: `task.outputs['result'] = 1` for Python workers, `echo`
    /// otherwise, as examples/echo_worker understands it).
    #[arg(long)]
    script: Option<String>,
    /// Give up on tasks still running after this many seconds (they count as hung).
    #[arg(long, default_value_t = 60.0)]
    give_up: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CrashArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// How many kills.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// The waiting task's script (default: a long sleep, for Python workers and for
    /// examples/echo_worker's `sleep`).
    #[arg(long)]
    script: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Pool(args) => crate::bench_pool::run(&args),
        BenchCmd::Roundtrip(args) => roundtrip(&args),
        BenchCmd::Crash(args) => crash(&args),
        BenchCmd::Ndarray(args) => crate::bench_ndarray::run(&args),
        BenchCmd::Cache(args) => crate::bench_cache::run(&args),
    }
}

fn roundtrip(args: &RoundtripArgs) -> anyhow::Result<()> {
    if args.tasks == 0 || args.concurrency == 0 {
        bail!("--tasks and --concurrency must be at least 1");
    }
    let recipe = args.worker.recipe(Some(&args.env))?;
    let script = args.script.clone().unwrap_or_else(|| {
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

    let give_up = Instant::now() + Duration::from_secs_f64(args.give_up.max(0.0));
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
                                Err(TaskError::Timeout(_)) => 3,
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

fn crash(args: &CrashArgs) -> anyhow::Result<()> {
    if args.kills == 0 {
        bail!("--kills must be at least 1");
    }
    let recipe = args.worker.recipe(Some(&args.env))?;
    let (script, inputs) = match &args.script {
        Some(script) => (script.clone(), json!({})),
        None if recipe.is_python() => ("import time\ntime.sleep(3600)".to_owned(), json!({})),
        None => ("sleep".to_owned(), json!({"seconds": 3600})),
    };
    let inputs = inputs.as_object().cloned().unwrap_or_default();
    let builder = &recipe.builder;
    let mut delays = Vec::with_capacity(args.kills);
    for _ in 0..args.kills {
        let service = builder.start().context("starting the worker")?;
        let launched = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let crashed_at = Arc::new(Mutex::new(None));
        let task = {
            let launched = Arc::clone(&launched);
            let crashed_at = Arc::clone(&crashed_at);
            service
                .task(script.clone())
                .inputs(inputs.clone())
                .listen(move |event| match event.kind {
                    EventKind::Launch => {
                        *lock(&launched.0) = true;
                        launched.1.notify_all();
                    }
                    EventKind::Crash => *lock(&crashed_at) = Some(Instant::now()),
                    _ => {}
                })
                .submit()?
        };
        {
            let (flag, cv) = &*launched;
            let guard = lock(flag);
            let (guard, _) = cv
                .wait_timeout_while(guard, Duration::from_secs(60), |up| !*up)
                .unwrap_or_else(|poison| poison.into_inner());
            if !*guard {
                bail!(
                    "the waiting task did not start within 60 s (state {:?})",
                    task.state()
                );
            }
        }
        let killed_at = Instant::now();
        consort::sys::Pid::new(service.pid())
            .signal(consort::sys::signals::KILL)
            .context("SIGKILL to the worker")?;
        let _ = task.wait_timeout(Duration::from_secs(60));
        if task.state() != TaskState::Crashed {
            bail!("the task ended {:?}, not crashed", task.state());
        }
        let crashed_at = lock(&crashed_at).context("no CRASH event")?;
        delays.push(crashed_at.saturating_duration_since(killed_at));
        service.close();
    }
    delays.sort_unstable();
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let (p50, p99, max) = (
        ms(percentile(&delays, 0.50)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap_or(&Duration::ZERO)),
    );
    // The floor, in the same run: SIGKILL to reap of a bare interpreter (or of `sleep`),
    // with no supervisor in between. Most of a crash's latency is the kernel ending the
    // process, which grows with the process.
    let floor_ms = kill_to_reap_floor(&recipe, args.kills.min(20))?.as_secs_f64() * 1e3;
    if args.json {
        println!(
            "{}",
            json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "kills": delays.len(),
                   "floor_p50_ms": floor_ms})
        );
    } else {
        println!(
            "{} kills of `{}`: SIGKILL to CRASHED p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
            delays.len(),
            recipe.label
        );
        println!(
            "reference, SIGKILL to reap of a bare process, no supervisor: p50 {floor_ms:.3} ms"
        );
    }
    Ok(())
}

/// The median time from SIGKILL to `waitpid` returning, for a bare process that waits:
/// `python -c 'import time; time.sleep(3600)'` for Python workers, `sleep 3600` otherwise.
fn kill_to_reap_floor(recipe: &Recipe, runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let mut command = if let Some(mut command) = recipe.python_command() {
            command.args([
                "-c",
                "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(3600)",
            ]);
            command
        } else {
            let mut command = Command::new("sh");
            command.args(["-c", "echo up; exec sleep 3600"]);
            command
        };
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the reference process")?;
        let mut up = String::new();
        BufReader::new(child.stdout.take().context("reference stdout")?).read_line(&mut up)?;
        let begin = Instant::now();
        child.kill()?;
        child.wait()?;
        times.push(begin.elapsed());
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.5))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Round trips of a 32-byte line through `cat`: the floor for any pipe protocol here.
fn pipe_ping_pong(rounds: usize) -> anyhow::Result<Duration> {
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `cat` for the pipe reference")?;
    let mut input = child.stdin.take().context("cat stdin")?;
    let mut output = BufReader::new(child.stdout.take().context("cat stdout")?);
    let message = b"0123456789abcdef0123456789abcde\n";
    let mut line = Vec::with_capacity(64);
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let begin = Instant::now();
        input.write_all(message)?;
        input.flush()?;
        line.clear();
        output.read_until(b'\n', &mut line)?;
        times.push(begin.elapsed());
    }
    drop(input);
    child.wait()?;
    times.sort_unstable();
    Ok(percentile(&times, 0.5))
}

/// The median time to start and end `python -c pass`, with the worker's interpreter.
pub(crate) fn bare_python_start(recipe: &Recipe, runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut command = recipe
            .python_command()
            .context("the worker has no Python interpreter")?;
        command.args(["-c", "pass"]);
        let begin = Instant::now();
        let status = command
            .status()
            .with_context(|| format!("running {:?} -c pass", command.get_program()))?;
        if !status.success() {
            bail!("{:?} -c pass failed: {status}", command.get_program());
        }
        times.push(begin.elapsed());
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.5))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
