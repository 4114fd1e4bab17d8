//! `consort bench ndarray`: hand an N MiB `float32` array to a Python worker that sums it,
//! through shared memory and, for comparison, inlined as a JSON list, with the worker's
//! copy out of shared memory measured against a plain `memcpy` in the same run.
//!
//! Each timing is the best of `--repeats` runs. The worker's Python needs numpy.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::{Args as Outputs, DType, NDArray, Service};
use serde_json::{json, Value};

use super::reference::memcpy_gbps;
use crate::args::{EnvArgs, WorkerArgs};

#[derive(Debug, Args)]
pub struct NdarrayArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// The array's size in MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// How many times each measurement runs; the best run counts.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Skip the inline JSON handoff above this many MiB (it costs gigabytes: Python holds
    /// each float as a 24-byte object); `inline_ms` is then null.
    #[arg(long, default_value_t = 64)]
    inline_max_mib: usize,
    /// Print one JSON object: mib, shm_ms, inline_ms, copy_gbps, memcpy_gbps, and more.
    #[arg(long)]
    json: bool,
}

/// The bound on any one task.
const TASK_LIMIT: Duration = Duration::from_secs(600);

const SUM_SCRIPT: &str = "import time
started = time.perf_counter()
view = data.ndarray()
total = float(view.sum())
del view
task.outputs['seconds'] = time.perf_counter() - started
total";

const COPY_SCRIPT: &str = "import time, numpy
view = data.ndarray()
copy = numpy.empty_like(view)
copy.fill(1)
best = float('inf')
for _ in range(repeats):
    started = time.perf_counter()
    numpy.copyto(copy, view)
    best = min(best, time.perf_counter() - started)
del view
best";

const INLINE_SCRIPT: &str = "import numpy
float(numpy.asarray(data, dtype='float32').sum())";

/// The measurements, printed with these names as keys by `--json`.
#[derive(Debug)]
struct Report {
    /// The array's size in MiB.
    mib: usize,
    /// Submit to completion of a task that sums the array, handed over as an Appose
    /// `ndarray` in shared memory.
    shm_ms: f64,
    /// The worker's own pass over the data inside that task (attach, view, sum), as timed
    /// by the worker: `shm_ms - worker_sum_ms` is the handoff's overhead.
    worker_sum_ms: f64,
    /// The same with the array inlined as a JSON list (encode, send, parse, convert, sum);
    /// `None` above `--inline-max-mib`.
    inline_ms: Option<f64>,
    /// The worker copying the array out of shared memory into its own memory, GB/s.
    copy_gbps: f64,
    /// A plain `memcpy` of the same size in this process, GB/s.
    memcpy_gbps: f64,
}

pub fn run(args: &NdarrayArgs) -> anyhow::Result<()> {
    if args.mib == 0 || args.repeats == 0 {
        bail!("--mib and --repeats must be at least 1");
    }
    if !args.worker.is_python() {
        bail!("--worker must be `consort` or `appose`: the benchmark's tasks are Python scripts");
    }
    let recipe = args.worker.recipe(Some(&args.env))?;
    let service = recipe.builder.start().context("starting the worker")?;
    let report = measure(&service, args);
    service.close();
    // What the worker said on stderr (Python's resource tracker complains there about
    // blocks it believes leaked), so that a benchmark that leaks is seen to.
    for line in service.stderr_lines() {
        eprintln!("consort: the worker's stderr: {line}");
    }
    let report = report?;

    let copy_vs_memcpy = report.copy_gbps / report.memcpy_gbps;
    let inline_vs_shm = report.inline_ms.map(|inline_ms| inline_ms / report.shm_ms);
    if args.json {
        println!(
            "{}",
            json!({
                "mib": report.mib,
                "shm_ms": report.shm_ms,
                "worker_sum_ms": report.worker_sum_ms,
                "inline_ms": report.inline_ms,
                "copy_gbps": report.copy_gbps,
                "memcpy_gbps": report.memcpy_gbps,
                "worker": recipe.label,
                "repeats": args.repeats,
                "copy_vs_memcpy": copy_vs_memcpy,
                "inline_vs_shm": inline_vs_shm,
            })
        );
        return Ok(());
    }
    println!(
        "{} MiB float32 array, summed by `{}`, best of {}:",
        report.mib, recipe.label, args.repeats
    );
    println!(
        "  shared memory: {:10.1} ms  (the worker's own pass over the data: {:.1} ms)",
        report.shm_ms, report.worker_sum_ms
    );
    match (report.inline_ms, inline_vs_shm) {
        (Some(inline_ms), Some(ratio)) => println!(
            "  inline JSON:   {inline_ms:10.1} ms  ({ratio:.1}x the shared-memory handoff)"
        ),
        _ => println!(
            "  inline JSON:   skipped above --inline-max-mib {}",
            args.inline_max_mib
        ),
    }
    println!(
        "  worker copying out of shared memory: {:.2} GB/s = {:.0}% of a memcpy here ({:.2} GB/s)",
        report.copy_gbps,
        copy_vs_memcpy * 100.0,
        report.memcpy_gbps
    );
    Ok(())
}

/// Runs the measurements against `service`, a Python worker (Appose's or consort's) whose
/// Python has numpy.
fn measure(service: &Service, args: &NdarrayArgs) -> anyhow::Result<Report> {
    let repeats = args.repeats.max(1);
    let n_elements = args.mib * (1 << 20) / 4;
    let mut array = NDArray::create(DType::Float32, &[n_elements])?;
    {
        let mut view = array.view_mut::<f32>()?;
        for (idx, element) in view.iter_mut().enumerate() {
            *element = (idx % 16) as f32;
        }
    }
    let expected: f64 = (0..n_elements).map(|idx| (idx % 16) as f64).sum();

    // Warm up: numpy imported, Python's resource tracker (Appose's worker) started.
    let warm = NDArray::create(DType::Float32, &[16])?;
    run_task(
        service,
        "warm-up",
        SUM_SCRIPT,
        vec![("data", warm.to_json())],
    )?;

    let mut shm_ms = f64::INFINITY;
    let mut worker_sum_ms = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        let outputs = run_task(
            service,
            "shm sum",
            SUM_SCRIPT,
            vec![("data", array.to_json())],
        )?;
        shm_ms = shm_ms.min(millis(started.elapsed()));
        check_sum("shm sum", &outputs["result"], expected)?;
        if let Some(seconds) = outputs.get("seconds").and_then(Value::as_f64) {
            worker_sum_ms = worker_sum_ms.min(seconds * 1e3);
        }
    }

    let outputs = run_task(
        service,
        "copy",
        COPY_SCRIPT,
        vec![("data", array.to_json()), ("repeats", Value::from(repeats))],
    )?;
    let copy_seconds = outputs["result"].as_f64().unwrap_or(f64::INFINITY);
    let copy_gbps = array.n_bytes() as f64 / copy_seconds / 1e9;
    let memcpy_gbps = memcpy_gbps(array.as_bytes(), repeats);

    let inline_ms = if args.mib <= args.inline_max_mib {
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let started = Instant::now();
            let list: Vec<Value> = array
                .view::<f32>()?
                .iter()
                .map(|element| Value::from(f64::from(*element)))
                .collect();
            let outputs = run_task(
                service,
                "inline sum",
                INLINE_SCRIPT,
                vec![("data", Value::Array(list))],
            )?;
            best = best.min(millis(started.elapsed()));
            check_sum("inline sum", &outputs["result"], expected)?;
        }
        Some(best)
    } else {
        None
    };

    Ok(Report {
        mib: args.mib,
        shm_ms,
        worker_sum_ms,
        inline_ms,
        copy_gbps,
        memcpy_gbps,
    })
}

/// Runs one task to completion (bounded by [`TASK_LIMIT`]) and returns its outputs.
fn run_task(
    service: &Service,
    what: &'static str,
    script: &str,
    inputs: Vec<(&str, Value)>,
) -> anyhow::Result<Outputs> {
    let task = service
        .task(script)
        .inputs(
            inputs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        )
        .submit()?;
    task.wait_timeout(TASK_LIMIT).with_context(|| {
        format!("the {what} task did not complete (does the worker's Python have numpy?)")
    })
}

/// Checks the worker's sum, so that a wrong answer never passes for a measurement.
fn check_sum(what: &'static str, answer: &Value, expected: f64) -> anyhow::Result<()> {
    let close = answer
        .as_f64()
        .is_some_and(|answer| (answer - expected).abs() <= expected.abs() * 1e-3);
    if !close {
        bail!("the {what} task answered {answer}, expected {expected}");
    }
    Ok(())
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}
