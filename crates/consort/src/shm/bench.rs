//! The n-d array handoff benchmark behind `consort bench ndarray`: an N MiB `float32` array
//! handed to a Python worker that sums it, through shared memory and, for comparison, as
//! an inline JSON list, with a plain `memcpy` of the same size as the reference point.
//!
//! Everything is measured in one run on one machine, since only side-by-side ratios mean
//! anything on shared machines. Each timing is the best of `repeats` runs.
#![deny(unsafe_code)]

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{DType, NDArray, ShmError};
use crate::{Service, SubmitError, TaskError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct NdarrayOptions {
    /// The array's size, in MiB (`mib * 262144` `float32` elements).
    pub mib: usize,
    /// How many times each measurement runs; the best run counts.
    pub repeats: usize,
    /// The inline JSON handoff runs only up to this size: beyond it, a JSON list costs
    /// gigabytes in both processes (Python holds each float as a 24-byte object).
    pub inline_max_mib: usize,
    /// The bound on any one task.
    pub timeout: Duration,
}

impl NdarrayOptions {
    /// Defaults for an array of `mib` MiB: 3 repeats, inline up to 64 MiB, 10 minutes per
    /// task.
    pub fn new(mib: usize) -> NdarrayOptions {
        NdarrayOptions {
            mib,
            repeats: 3,
            inline_max_mib: 64,
            timeout: Duration::from_secs(600),
        }
    }
}

/// The measurements, with the keys `consort bench ndarray --json` prints.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NdarrayReport {
    /// The array's size in MiB.
    pub mib: usize,
    /// Submit to completion of a task that sums the array, handed over as an Appose
    /// `ndarray` in shared memory.
    pub shm_ms: f64,
    /// The worker's own pass over the data inside that task (attach, view, sum), as timed
    /// by the worker: `shm_ms - worker_sum_ms` is the handoff's overhead.
    pub worker_sum_ms: f64,
    /// The same with the array inlined as a JSON list (encode, send, parse, convert, sum);
    /// `None` above `inline_max_mib`.
    pub inline_ms: Option<f64>,
    /// The worker copying the array out of shared memory into its own memory, GB/s.
    pub copy_gbps: f64,
    /// A plain `memcpy` of the same size in this process, GB/s.
    pub memcpy_gbps: f64,
}

/// Why the benchmark could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The array could not be made.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// A task could not be sent.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A task did not complete (does the worker's Python have numpy?).
    #[error("the {what} task did not complete: {source}")]
    Task {
        /// Which measurement.
        what: &'static str,
        /// Why.
        #[source]
        source: TaskError,
    },
    /// The worker's answer is not the right sum: the measurement would mean nothing.
    #[error("the {what} task answered {answer}, expected {expected}")]
    WrongResult {
        /// Which measurement.
        what: &'static str,
        /// What the worker said.
        answer: Value,
        /// The sum computed here.
        expected: f64,
    },
}

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

/// Runs the benchmark against `service`, a Python worker (Appose's or consort's) whose
/// Python has numpy.
///
/// # Errors
/// [`BenchError`] when the array cannot be made or a task fails or answers wrong.
pub fn ndarray(service: &Service, options: &NdarrayOptions) -> Result<NdarrayReport, BenchError> {
    let repeats = options.repeats.max(1);
    let n_elements = options.mib * (1 << 20) / 4;
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
    run(
        service,
        "warm-up",
        SUM_SCRIPT,
        vec![("data", warm.to_json())],
        options,
    )?;

    let mut shm_ms = f64::INFINITY;
    let mut worker_sum_ms = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        let outputs = run(
            service,
            "shm sum",
            SUM_SCRIPT,
            vec![("data", array.to_json())],
            options,
        )?;
        shm_ms = shm_ms.min(millis(started.elapsed()));
        check_sum("shm sum", &outputs["result"], expected)?;
        if let Some(seconds) = outputs.get("seconds").and_then(Value::as_f64) {
            worker_sum_ms = worker_sum_ms.min(seconds * 1e3);
        }
    }

    let outputs = run(
        service,
        "copy",
        COPY_SCRIPT,
        vec![("data", array.to_json()), ("repeats", Value::from(repeats))],
        options,
    )?;
    let copy_seconds = outputs["result"].as_f64().unwrap_or(f64::INFINITY);
    let bytes = array.n_bytes() as f64;
    let copy_gbps = bytes / copy_seconds / 1e9;

    let memcpy_gbps = {
        let source = array.as_bytes();
        // Written once so that every page is present before timing, as the worker's is.
        let mut target = vec![1u8; source.len()];
        let mut best = Duration::MAX;
        for _ in 0..repeats {
            let started = Instant::now();
            target.copy_from_slice(std::hint::black_box(source));
            std::hint::black_box(&mut target);
            best = best.min(started.elapsed());
        }
        bytes / best.as_secs_f64() / 1e9
    };

    let inline_ms = if options.mib <= options.inline_max_mib {
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let started = Instant::now();
            let list: Vec<Value> = array
                .view::<f32>()?
                .iter()
                .map(|element| Value::from(f64::from(*element)))
                .collect();
            let outputs = run(
                service,
                "inline sum",
                INLINE_SCRIPT,
                vec![("data", Value::Array(list))],
                options,
            )?;
            best = best.min(millis(started.elapsed()));
            check_sum("inline sum", &outputs["result"], expected)?;
        }
        Some(best)
    } else {
        None
    };

    Ok(NdarrayReport {
        mib: options.mib,
        shm_ms,
        worker_sum_ms,
        inline_ms,
        copy_gbps,
        memcpy_gbps,
    })
}

fn run(
    service: &Service,
    what: &'static str,
    script: &str,
    inputs: Vec<(&str, Value)>,
    options: &NdarrayOptions,
) -> Result<crate::Args, BenchError> {
    let task = service
        .task(script)
        .inputs(
            inputs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        )
        .submit()?;
    task.wait_timeout(options.timeout)
        .map_err(|source| BenchError::Task { what, source })
}

fn check_sum(what: &'static str, answer: &Value, expected: f64) -> Result<(), BenchError> {
    let close = answer
        .as_f64()
        .is_some_and(|answer| (answer - expected).abs() <= expected.abs() * 1e-3);
    if close {
        Ok(())
    } else {
        Err(BenchError::WrongResult {
            what,
            answer: answer.clone(),
            expected,
        })
    }
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}
