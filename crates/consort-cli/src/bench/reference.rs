//! The reference points every benchmark measures in its own run, beside its figures: a
//! pipe ping-pong, a bare interpreter's start, the kill-to-reap floor of the very worker
//! under test and of a bare process, a `memcpy`, and the percentile that reports them.
//!
//! These machines are shared and their speed varies by 2× from one minute to the next, so
//! only ratios to a reference taken in the same run mean anything.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use consort::protocol::{Request, TaskId};
use consort::Args;
use serde_json::Value;

use crate::args::Recipe;

/// The element at `fraction` (0 to 1) of `sorted`, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The median of a 32-byte line's round trip through `cat`: the floor for any pipe
/// protocol here.
pub fn pipe_ping_pong(rounds: usize) -> anyhow::Result<Duration> {
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

/// The median time to start and end `python -c pass` with the worker's interpreter.
///
/// # Errors
/// When the worker is not a Python worker, or the interpreter does not run.
pub fn bare_python_start(recipe: &Recipe, runs: usize) -> anyhow::Result<Duration> {
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

/// Kill-to-reap times of the very worker command the service runs, with no supervisor:
/// plain pipes, one EXECUTE request of `script` written to its stdin, its LAUNCH line
/// awaited on stdout, `settle` left to pass, then SIGKILL, timed until `waitpid` returns.
/// Sorted.
///
/// This is the physical limit of crash detection for that worker: the kernel ending the
/// process, which grows with the process (Appose's worker takes longer to die than a bare
/// interpreter). The settling matters: right after its LAUNCH a worker may still be
/// starting a thread (Appose's worker runs each task on a new one; the Rust SDK hands
/// stdin to a new reader after 1 ms), and a kill then takes up to twice as long
/// (measured here: Appose's worker 3.4-5.0 ms at once against 1.9-2.3 ms 5-20 ms later,
/// `echo_worker` 0.7-1.5 ms against 0.15-0.3 ms), a moment a real task spends little of.
///
/// # Errors
/// When the worker cannot be started or does not send LAUNCH within `launch_limit`.
pub fn worker_kill_to_reap(
    recipe: &Recipe,
    script: &str,
    inputs: &Args,
    runs: usize,
    launch_limit: Duration,
    settle: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let request = Request::Execute {
        task: TaskId::new("consort-bench-floor"),
        script: script.to_owned(),
        inputs: inputs.clone(),
        queue: None,
    };
    let mut line = request.encode();
    line.push('\n');
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let mut command = recipe.command();
        command.stdin(Stdio::piped()).stderr(Stdio::null());
        let mut child = Reaped(spawn_with_stdout(command, "the worker")?);
        let mut stdin = child.0.stdin.take().context("the worker's stdin")?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()?;
        let stdout = child.0.stdout.take().context("the worker's stdout")?;
        await_line(stdout, launch_limit, |line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|response| response["responseType"] == "LAUNCH")
        })
        .context("the worker did not LAUNCH the waiting task")?;
        std::thread::sleep(settle);
        times.push(kill_and_reap(&mut child.0)?);
        // The worker's stdin stays open until it is dead, as under a service.
        drop(stdin);
    }
    times.sort_unstable();
    Ok(times)
}

/// The median kill-to-reap time of a bare process that waits, with no supervisor:
/// `python -c 'import time; time.sleep(3600)'` with the worker's interpreter for Python
/// workers, `sleep 3600` otherwise. (What `floor_p50_ms` measured before it was taken on
/// the worker itself.)
pub fn bare_kill_to_reap(recipe: &Recipe, runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let command = match recipe.python_command() {
            Some(mut command) => {
                command.args([
                    "-c",
                    "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(3600)",
                ]);
                command
            }
            None => {
                let mut command = Command::new("sh");
                command.args(["-c", "echo up; exec sleep 3600"]);
                command
            }
        };
        let mut child = Reaped(spawn_with_stdout(command, "the reference process")?);
        let stdout = child.0.stdout.take().context("reference stdout")?;
        await_line(stdout, Duration::from_secs(60), |line| line == "up")?;
        times.push(kill_and_reap(&mut child.0)?);
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.5))
}

/// The best of `repeats` copies of `source` in this process, in GB/s: the reference for a
/// worker's copy out of shared memory. The target is written once first, so that every
/// page is present before timing, as the worker's is.
pub fn memcpy_gbps(source: &[u8], repeats: usize) -> f64 {
    let mut target = vec![1u8; source.len()];
    let mut best = Duration::MAX;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        target.copy_from_slice(std::hint::black_box(source));
        std::hint::black_box(&mut target);
        best = best.min(started.elapsed());
    }
    source.len() as f64 / best.as_secs_f64() / 1e9
}

/// A child killed and reaped when dropped, so that no reference process outlives an
/// error (it is also in a process group of its own and dies with this process on Linux).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `command` with stdout piped, dying with this process.
fn spawn_with_stdout(mut command: Command, what: &str) -> anyhow::Result<Child> {
    command.stdout(Stdio::piped());
    consort::sys::isolate_child(&mut command);
    command
        .spawn()
        .with_context(|| format!("starting {what} ({:?})", command.get_program()))
}

/// Reads lines of `stdout` on a thread until one satisfies `wanted`, for up to `limit`.
/// The thread ends when the child's stdout closes, that is when the child dies.
fn await_line(
    stdout: std::process::ChildStdout,
    limit: Duration,
    wanted: impl Fn(&str) -> bool + Send + 'static,
) -> anyhow::Result<()> {
    let (found_tx, found) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if wanted(line.trim_end()) {
                let _ = found_tx.send(());
                // Keep reading, so the child never blocks on a full pipe before its kill.
                continue;
            }
        }
    });
    match found.recv_timeout(limit) {
        Ok(()) => Ok(()),
        Err(_) => bail!("no such line within {limit:?}"),
    }
}

/// SIGKILL, then `waitpid`: the time between the two.
fn kill_and_reap(child: &mut Child) -> anyhow::Result<Duration> {
    let begin = Instant::now();
    child.kill()?;
    child.wait()?;
    Ok(begin.elapsed())
}
