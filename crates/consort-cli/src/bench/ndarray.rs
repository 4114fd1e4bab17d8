//! `consort bench ndarray`: hand an N MiB `float32` array to a Python worker that sums it,
//! through shared memory and, for comparison, inlined as a JSON list, with the worker's
//! copy out of shared memory measured against a plain `memcpy` in the same run.
//!
//! The measuring is `consort::shm::bench::ndarray`; this module is its command line.

use anyhow::{bail, Context};
use clap::Args;
use consort::shm::bench::{self, NdarrayOptions};
use serde_json::json;

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

pub fn run(args: &NdarrayArgs) -> anyhow::Result<()> {
    if args.mib == 0 || args.repeats == 0 {
        bail!("--mib and --repeats must be at least 1");
    }
    if !args.worker.is_python() {
        bail!("--worker must be `consort` or `appose`: the benchmark's tasks are Python scripts");
    }
    let mut options = NdarrayOptions::new(args.mib);
    options.repeats = args.repeats;
    options.inline_max_mib = args.inline_max_mib;
    let recipe = args.worker.recipe(Some(&args.env))?;
    let service = recipe.builder.start().context("starting the worker")?;
    let report = bench::ndarray(&service, &options)?;
    service.close();

    let copy_vs_memcpy = report.copy_gbps / report.memcpy_gbps;
    let inline_vs_shm = report.inline_ms.map(|inline_ms| inline_ms / report.shm_ms);
    if args.json {
        let mut object = serde_json::to_value(&report)?;
        object["worker"] = json!(recipe.label);
        object["repeats"] = json!(args.repeats);
        object["copy_vs_memcpy"] = json!(copy_vs_memcpy);
        object["inline_vs_shm"] = json!(inline_vs_shm);
        println!("{object}");
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
