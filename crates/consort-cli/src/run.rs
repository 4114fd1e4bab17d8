//! `consort run`: one task, its progress, its outputs, and an exit code that says how it ended.
//!
//! Ctrl-C is never swallowed: the first one hard-cancels the task (CANCEL, then a kill
//! after a grace period), a second kills the worker at once; either way the exit code is
//! 130 and the worker is reaped before we exit.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::{EventKind, TaskError, TaskEvent};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{input_name_problem, parse_timeout, EnvArgs, ScriptArgs, WorkerArgs};
use crate::exit;

mod arrays;

/// `consort run --help`, with the exit codes.
pub const LONG_ABOUT: &str = "\
Run one task and print its outputs as one JSON object on stdout (compact, one line).

Progress goes to stderr: a bar on a terminal, plain lines otherwise. With --events,
every event is printed as a JSON line on stdout instead (the COMPLETION event carries
the outputs).

--timeout SECS takes a number of seconds greater than 0 (fractions allowed, e.g. 0.5);
0, a negative number, nan, inf or a number too large for a timeout is a usage error.

Exit codes:
    0    the task completed
    1    the task failed (or its script cancelled it)
    2    usage error, or the worker could not be started
    3    the worker crashed before the task ended
  124    --timeout passed; the task was cancelled, with the kill escalation
  130    interrupted: the first Ctrl-C cancels the task (killing the worker if it does
         not stop within 2 s), a second Ctrl-C kills the worker at once; SIGTERM and
         SIGHUP (the terminal closed) count as a Ctrl-C";

/// How long a cancelled task gets to stop before its worker is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
#[command(mut_arg("script", |arg| arg.required_unless_present_any(["file", "script_option"])))]
pub struct RunArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// An input variable, as NAME=JSON (e.g. `--input x=5 --input names='["a","b"]'`), or
    /// NAME=@FILE.npy: the array is loaded into a new shared-memory block, passed as an
    /// Appose NDArray, and unlinked when the run ends. NAME is an identifier (ASCII
    /// letters, digits, `_`), not a Python keyword, `task` or a `__dunder__`, and is given
    /// once.
    #[arg(long = "input", value_name = "NAME=JSON|NAME=@FILE.npy")]
    inputs: Vec<String>,
    /// Also save each n-d array output as DIR/NAME.npy (exit 2 if one cannot be saved).
    /// Either way, output blocks the worker made for the task are unlinked when the run
    /// ends (the service cleans up, as in Appose); other blocks an output names are left
    /// alone, with a warning that says why.
    #[arg(long, value_name = "DIR")]
    save_arrays: Option<PathBuf>,
    /// Run on the worker's main thread (`main`).
    #[arg(long)]
    queue: Option<String>,
    /// Cancel the task after SECS seconds (a number > 0, e.g. 0.5), with the kill
    /// escalation; exit 124.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, allow_negative_numbers = true)]
    timeout: Option<Duration>,
    /// Print every event as a JSON line on stdout instead of progress and outputs.
    #[arg(long)]
    events: bool,
    #[command(flatten)]
    script: ScriptArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let script = args.script.read(false)?.context("no script given")?;
    let timeout = args.timeout;
    if let Some(dir) = &args.save_arrays {
        arrays::check_save_dir(dir)?;
    }

    // Before any block exists: from here on a Ctrl-C is counted, never fatal, so every
    // way out returns through the drop of `input_arrays`, which unlinks them.
    let interrupts = Arc::new(AtomicUsize::new(0));
    crate::interrupts::watch(Arc::clone(&interrupts))?;
    let (inputs, input_arrays) = parse_inputs(&args.inputs)?;
    if interrupts.load(Ordering::SeqCst) > 0 {
        return Ok(exit::INTERRUPTED);
    }

    // Output blocks count as the task's only if created from here on (`shm::claim`); the
    // worker's leftovers are reclaimed when this drops, after the service (declared later).
    let claim_start = consort::shm::claim::Start::now();
    let mut worker_blocks = arrays::WorkerBlocks::default();
    let service = args
        .worker
        .recipe(Some(&args.env))?
        .builder
        .start()
        .context("starting the worker")?;
    worker_blocks.watch(service.pid());
    let (events_tx, events) = mpsc::channel::<TaskEvent>();
    let mut task = service.task(script).inputs(inputs);
    if let Some(queue) = &args.queue {
        task = task.queue(queue.clone());
    }
    let task = task
        .listen(move |event| {
            let _ = events_tx.send(event.clone());
        })
        .submit()?;

    let mut display = Display::new(args.events);
    let started = Instant::now();
    let mut timed_out = false;
    let mut seen_interrupts = 0;
    loop {
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(event) => {
                let terminal = !matches!(event.kind, EventKind::Launch | EventKind::Update);
                display.show(&event)?;
                if terminal {
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let n_interrupts = interrupts.load(Ordering::SeqCst);
        if n_interrupts > seen_interrupts {
            if seen_interrupts == 0 {
                display.note("interrupted: cancelling the task (Ctrl-C again to kill the worker)");
                task.cancel_hard(CANCEL_GRACE);
            }
            if n_interrupts >= 2 {
                display.note("interrupted again: killing the worker");
                service.kill();
            }
            seen_interrupts = n_interrupts;
        }
        if let Some(timeout) = timeout {
            if !timed_out && started.elapsed() >= timeout {
                timed_out = true;
                display.note(&format!("timed out after {timeout:?}: cancelling the task"));
                task.cancel_hard(CANCEL_GRACE);
            }
        }
    }
    display.finish();
    // The task has ended; wait() returns at once with its result.
    let result = task.wait();
    // A Ctrl-C that arrived with the terminal event still counts; one after this snapshot
    // is caught by the teardown below.
    let n_interrupts = interrupts.load(Ordering::SeqCst);
    // Output blocks the worker made for the task are ours to unlink, whatever the exit
    // code; they are saved only when the outputs are reported.
    let taken = match &result {
        Ok(outputs) => {
            let save_dir = args.save_arrays.as_deref().filter(|_| n_interrupts == 0);
            let claim = consort::shm::Claim::new(claim_start, service.pid());
            arrays::take_outputs(outputs, &input_arrays, save_dir, &claim)
        }
        Err(_) => arrays::TakenOutputs::default(),
    };
    for warning in &taken.warnings {
        eprintln!("consort: warning: {warning}");
    }
    let code = if n_interrupts > 0 {
        exit::INTERRUPTED
    } else if timed_out && result.is_err() {
        exit::TIMED_OUT
    } else {
        match &result {
            Ok(outputs) => {
                if !args.events {
                    let mut stdout = std::io::stdout().lock();
                    serde_json::to_writer(&mut stdout, outputs)?;
                    writeln!(stdout)?;
                    stdout.flush()?;
                }
                for error in &taken.errors {
                    eprintln!("consort: {error}");
                }
                if taken.errors.is_empty() {
                    exit::COMPLETE
                } else {
                    exit::USAGE
                }
            }
            Err(TaskError::Failed { message }) => {
                eprintln!("consort: the task failed:\n{}", message.trim_end());
                exit::FAILED
            }
            Err(TaskError::Canceled { .. }) => {
                eprintln!("consort: the task was cancelled by its script");
                exit::FAILED
            }
            Err(TaskError::Crashed(report)) => {
                eprintln!("consort: the worker crashed: {report}");
                for line in &report.stderr {
                    eprintln!("  stderr: {line}");
                }
                for line in &report.stdout {
                    eprintln!("  stdout: {line}");
                }
                exit::CRASHED
            }
            Err(other) => {
                eprintln!("consort: {other}");
                exit::FAILED
            }
        }
    };
    if close_or_kill_on_interrupt(&service, &interrupts, n_interrupts) {
        return Ok(exit::INTERRUPTED);
    }
    Ok(code)
}

/// Closes the service (stdin EOF, then SIGTERM, then SIGKILL, up to about 3 s), killing it
/// at once if a new Ctrl-C arrives meanwhile, so that a teardown never swallows the user's
/// interrupt. Returns whether one did (one counted after `seen`).
fn close_or_kill_on_interrupt(
    service: &consort::Service,
    interrupts: &AtomicUsize,
    seen: usize,
) -> bool {
    std::thread::scope(|scope| {
        let closing = scope.spawn(|| service.close());
        while !closing.is_finished() {
            if interrupts.load(Ordering::SeqCst) > seen {
                // Safe alongside close: both end in the same reaped exit status.
                service.kill();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The worker is gone either way; a Ctrl-C during the last slice still counts.
        interrupts.load(Ordering::SeqCst) > seen
    })
}

/// Task inputs, by name.
type Inputs = Vec<(String, serde_json::Value)>;

/// The inputs, and the arrays loaded for `NAME=@FILE.npy` (their blocks live as long as
/// the returned arrays).
///
/// # Errors
/// A usage error naming the input: no `=`, a name that [`input_name_problem`] refuses, a
/// name given twice, JSON that does not parse, an array file that cannot be loaded.
fn parse_inputs(specs: &[String]) -> anyhow::Result<(Inputs, Vec<consort::NDArray>)> {
    let mut inputs: Inputs = Vec::new();
    let mut input_arrays = Vec::new();
    for spec in specs {
        let (name, json) = spec
            .split_once('=')
            .with_context(|| format!("--input {spec:?}: expected NAME=JSON"))?;
        if let Some(problem) = input_name_problem(name) {
            bail!("--input {name:?}: {problem}");
        }
        if inputs.iter().any(|(seen, _)| seen == name) {
            bail!("--input {name:?}: given twice (give each input once)");
        }
        let value = match json.strip_prefix('@') {
            Some(path) => {
                let array = arrays::load_input(name, path)?;
                let value = array.to_json();
                input_arrays.push(array);
                value
            }
            None => serde_json::from_str(json)
                .with_context(|| format!("--input {name}: {json:?} is not valid JSON"))?,
        };
        inputs.push((name.to_owned(), value));
    }
    Ok((inputs, input_arrays))
}

/// Shows events: JSON lines (`--events`), a bar on a terminal, or plain lines.
struct Display {
    events: bool,
    bar: Option<ProgressBar>,
}

impl Display {
    fn new(events: bool) -> Display {
        let bar = (!events && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Display { events, bar }
    }

    fn show(&mut self, event: &TaskEvent) -> anyhow::Result<()> {
        if self.events {
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, event)?;
            writeln!(stdout)?;
            stdout.flush()?;
            return Ok(());
        }
        if event.kind != EventKind::Update {
            return Ok(());
        }
        match &self.bar {
            Some(bar) => {
                if let Some(maximum) = event.maximum() {
                    bar.set_length(u64::try_from(maximum).unwrap_or(0));
                }
                if let Some(current) = event.current() {
                    bar.set_position(u64::try_from(current).unwrap_or(0));
                }
                if let Some(message) = event.message() {
                    bar.set_message(message.to_owned());
                }
            }
            None => {
                let mut line = String::from("progress:");
                if let Some(message) = event.message() {
                    line.push(' ');
                    line.push_str(message);
                }
                match (event.current(), event.maximum()) {
                    (Some(current), Some(maximum)) => {
                        line.push_str(&format!(" [{current}/{maximum}]"))
                    }
                    (Some(current), None) => line.push_str(&format!(" [{current}]")),
                    _ => {}
                }
                eprintln!("{line}");
            }
        }
        Ok(())
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("consort: {text}")),
            None => eprintln!("consort: {text}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
