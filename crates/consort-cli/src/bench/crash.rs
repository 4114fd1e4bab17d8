//! `consort bench crash`: N times, start a worker, run a task that waits, SIGKILL the
//! worker and time its task's CRASH event, beside the floor measured in the same run: the
//! same worker command, mid-task and without a supervisor, from SIGKILL to `waitpid`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::{EventKind, TaskState};
use serde_json::json;

use super::reference::{bare_kill_to_reap, percentile, worker_kill_to_reap};
use crate::args::{EnvArgs, ScriptArgs, WorkerArgs};

/// How long a worker gets to start and LAUNCH the waiting task.
const LAUNCH_LIMIT: Duration = Duration::from_secs(60);

/// How long the floor's worker runs its task before the kill: long enough to be past the
/// threads a worker starts at a task's launch (see `worker_kill_to_reap`).
const FLOOR_SETTLE: Duration = Duration::from_millis(10);

#[derive(Debug, Args)]
#[command(mut_arg("script", |arg| arg.help(
    "The waiting task's script (default: a long sleep, for Python workers and for \
     examples/echo_worker's `sleep`)"
)))]
pub struct CrashArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// How many kills.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    script: ScriptArgs,
}

pub fn run(args: &CrashArgs) -> anyhow::Result<()> {
    if args.kills == 0 {
        bail!("--kills must be at least 1");
    }
    let recipe = args.worker.recipe(Some(&args.env))?;
    let (script, inputs) = match args.script.read(false)? {
        Some(script) => (script, json!({})),
        None if recipe.is_python() => ("import time\ntime.sleep(3600)".to_owned(), json!({})),
        None => ("sleep".to_owned(), json!({"seconds": 3600})),
    };
    let inputs = inputs.as_object().cloned().unwrap_or_default();
    let builder = &recipe.builder;
    let mut delays = Vec::with_capacity(args.kills);
    for _ in 0..args.kills {
        let service = builder.start().context("starting the worker")?;
        let launched = Arc::new((Mutex::new(false), Condvar::new()));
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
                .wait_timeout_while(guard, LAUNCH_LIMIT, |up| !*up)
                .unwrap_or_else(|poison| poison.into_inner());
            if !*guard {
                bail!(
                    "the waiting task did not start within {LAUNCH_LIMIT:?} (state {:?})",
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
    // The floor, in the same run: SIGKILL to reap of the very worker command, mid-task
    // (FLOOR_SETTLE after its LAUNCH), with no supervisor in between. Most of a crash's latency is the kernel ending the
    // process, which grows with the process; what is above the floor is consort's.
    let n_floor = args.kills.min(20);
    let floor = worker_kill_to_reap(
        &recipe,
        &script,
        &inputs,
        n_floor,
        LAUNCH_LIMIT,
        FLOOR_SETTLE,
    )?;
    let (floor_p50, floor_p99) = (ms(percentile(&floor, 0.50)), ms(percentile(&floor, 0.99)));
    // And of a bare process that waits (an interpreter, or `sleep`): the floor as it was
    // measured before, to show what the worker's own size adds.
    let bare_p50 = ms(bare_kill_to_reap(&recipe, n_floor)?);
    let program = recipe
        .command()
        .get_program()
        .to_string_lossy()
        .into_owned();
    if args.json {
        println!(
            "{}",
            json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "kills": delays.len(),
                   "floor_p50_ms": floor_p50, "floor_p99_ms": floor_p99,
                   "floor_worker": recipe.label, "floor_program": program,
                   "floor_settle_ms": ms(FLOOR_SETTLE),
                   "floor_bare_p50_ms": bare_p50, "above_floor_p50_ms": p50 - floor_p50})
        );
    } else {
        println!(
            "{} kills of `{}`: SIGKILL to CRASHED p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
            delays.len(),
            recipe.label
        );
        println!(
            "floor, SIGKILL to reap of the same worker mid-task, no supervisor: p50 {floor_p50:.3} ms, \
             p99 {floor_p99:.3} ms (consort adds {:.3} ms at p50)",
            p50 - floor_p50
        );
        println!("reference, SIGKILL to reap of a bare process that waits: p50 {bare_p50:.3} ms");
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
