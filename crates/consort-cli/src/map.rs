//! `consort map`: one task per input line, on a pool of workers, one output line per input
//! line, in input order.
//!
//! Memory stays bounded whatever the input's length: stdin is read ahead by at most a
//! window of lines, a line is read up to `--max-line` bytes (16 MiB by default; a longer
//! one fails, is skipped to its newline without being held, and reading goes on), and an
//! output line is written as soon as it and every line before it have ended. A line that
//! is not UTF-8, not a JSON object, or whose keys are not input names fails on its own.
//! The first Ctrl-C stops reading, hard-cancels what is queued or running and writes the
//! lines already read (each with the status it ended with), then exits 130; a second one
//! closes the pool at once. The summary on stderr counts the statuses written. The pool
//! starts its first worker before the loop and the others while it runs, so a Ctrl-C
//! during a long start is heard; when the pool waits to restart workers that keep dying at
//! start, stderr says so and why.

use std::collections::VecDeque;
use std::io::{BufRead, BufWriter, IsTerminal, Read, Write};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use consort::{Pool, PoolError, PoolEvent, Task, TaskError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::args::{input_name_problem, parse_timeout, EnvArgs, ScriptArgs, WorkerArgs};
use crate::exit;

/// How long a cancelled task gets to stop before its worker is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// The longest input line read by default: the limit on a worker's output line.
const DEFAULT_MAX_LINE: usize = consort::protocol::DEFAULT_MAX_LINE;

#[derive(Debug, Args)]
#[command(
    mut_arg("script", |arg| arg
        .required_unless_present_any(["file", "script_option"])
        .help("The script; each input line's keys are its variables")),
    mut_arg("file", |arg| arg.help("Read the script from FILE (not stdin: it carries the input lines)")),
)]
pub struct MapArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    env: EnvArgs,
    /// How many workers (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Send a task lost to a worker crash again, up to R more times (never a task that
    /// failed in its script). A crash counts against a line only when it ran alone on the
    /// worker: lines that ran beside others are run again alone, without counting.
    #[arg(long, value_name = "R", default_value_t = 0)]
    retries: u32,
    /// Do not run again, alone, the lines that were running beside others on a worker
    /// that died: they end `crashed` with it, unless --retries sends them again.
    #[arg(long)]
    no_rerun_suspects: bool,
    /// End a task that runs longer than SECS seconds (a number > 0, e.g. 0.5; status
    /// `timeout`; the kill escalation).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, allow_negative_numbers = true)]
    timeout: Option<Duration>,
    /// One task per worker at a time, so a crash or a kill touches no other line.
    #[arg(long)]
    isolated: bool,
    /// The longest input line, in bytes (default 16 MiB, the limit on a worker's output
    /// line); a longer line fails and is skipped to its newline without being held.
    #[arg(long, value_name = "BYTES", default_value_t = NonZeroUsize::new(DEFAULT_MAX_LINE).expect("not 0"))]
    max_line: NonZeroUsize,
    #[command(flatten)]
    script: ScriptArgs,
}

/// One input line on its way to an output line.
enum Item {
    /// Sent to the pool.
    Task(Task),
    /// Decided without a worker: the output line's status and error.
    Done(&'static str, String),
}

struct Line {
    index: u64,
    bytes: u64,
    item: Item,
}

pub fn run(args: MapArgs) -> anyhow::Result<u8> {
    let script = args.script.read(true)?.context("no script given")?;
    let deadline = args.timeout;
    let n_workers = match args.workers {
        Some(0) => bail!("--workers must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let tasks_per_worker = if args.isolated { 1 } else { 4 };
    let window = (n_workers * tasks_per_worker * 4).max(16);

    let interrupts = Arc::new(AtomicUsize::new(0));
    crate::interrupts::watch(Arc::clone(&interrupts))?;

    let mut builder = Pool::new(args.worker.recipe(Some(&args.env))?.builder, n_workers)
        .with_tasks_per_worker(tasks_per_worker)
        .with_queue_limit(window)
        .with_retries(args.retries)
        .with_rerun_suspects(!args.no_rerun_suspects)
        .with_cancel_grace(CANCEL_GRACE);
    if let Some(deadline) = deadline {
        builder = builder.with_deadline(deadline);
    }
    let notes = Arc::new(Mutex::new(PoolNotes::default()));
    {
        let notes = Arc::clone(&notes);
        builder = builder.with_monitor(move |event| {
            lock(&notes).record(event);
        });
    }
    // Starts the first worker only: the pool starts the others while the loop below runs
    // (and hears interrupts).
    let pool = match builder.start() {
        Ok(pool) => pool,
        Err(PoolError::Config(problem)) => bail!("--workers {n_workers}: {problem}"),
        Err(err) => return Err(err).context("starting the workers"),
    };

    let total_bytes = stdin_file_len();
    let lines = read_lines(window, args.max_line.get());
    let mut progress = Progress::new(total_bytes);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut pending: VecDeque<Line> = VecDeque::new();
    let mut n_read = 0u64;
    let mut input_done = false;
    let mut all_complete = true;
    let mut seen_interrupts = 0;
    let mut n_complete = 0u64;
    loop {
        // Read ahead, up to the window.
        while !input_done && pending.len() < window {
            let next = if pending.is_empty() {
                match lines.recv_timeout(Duration::from_millis(50)) {
                    Ok(line) => Some(line),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            } else {
                match lines.try_recv() {
                    Ok(line) => Some(line),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            let Some(line) = next else {
                input_done = true;
                break;
            };
            let (bytes, item) = match line {
                Input::Line { text, bytes } => (bytes, submit(&pool, &script, &text)),
                Input::Refused { bytes, reason } => (bytes, Item::Done("failed", reason)),
                Input::Failed(err) => (
                    0,
                    Item::Done("failed", format!("cannot read the input: {err}")),
                ),
            };
            pending.push_back(Line {
                index: n_read,
                bytes,
                item,
            });
            n_read += 1;
        }
        // Write every line that has ended, in order.
        while let Some(front) = pending.front() {
            let ended = match &front.item {
                Item::Task(task) => ended(task),
                Item::Done(..) => true,
            };
            if !ended {
                break;
            }
            let Some(line) = pending.pop_front() else {
                break;
            };
            let complete = write_line(&mut out, &line)?;
            all_complete &= complete;
            n_complete += u64::from(complete);
            progress.advance(line.bytes, complete);
        }
        if pending.is_empty() {
            out.flush()?;
            if input_done {
                break;
            }
        }
        // Why the pool waits, if it does (the lock is not held while printing).
        let note = lock(&notes).due_note();
        if let Some(text) = note {
            progress.note(&text);
        }
        // Interrupts.
        let n_interrupts = interrupts.load(Ordering::SeqCst);
        if n_interrupts > seen_interrupts {
            seen_interrupts = n_interrupts;
            progress.note("interrupted: cancelling every task (Ctrl-C again to kill the workers)");
            break;
        }
        // Workers that never got going: every slot keeps dying at start and no line has
        // completed. Give up rather than crash the input line by line, slower and slower.
        if n_complete == 0 && pool.stats().failing.len() == n_workers {
            let reason = lock(&notes).start_failure.clone().unwrap_or_default();
            drop(lines);
            // Bounded; it ends every task, so each line read gets its output line.
            pool.close();
            for line in pending.drain(..) {
                let complete = write_line(&mut out, &line)?;
                progress.advance(line.bytes, complete);
            }
            out.flush()?;
            progress.finish();
            bail!("the workers keep dying at start; the last one: {reason}");
        }
        // Wait a little for the oldest line, so this loop does not spin.
        if let Some(Line {
            item: Item::Task(task),
            ..
        }) = pending.front()
        {
            out.flush()?;
            let _ = task.wait_timeout(Duration::from_millis(20));
        }
        progress.tick();
    }
    if seen_interrupts > 0 {
        drop(lines);
        for line in &pending {
            if let Item::Task(task) = &line.item {
                task.cancel_hard(CANCEL_GRACE);
            }
        }
        // Drain: every read line gets its output line; a second Ctrl-C closes the pool now.
        let mut closed = false;
        while let Some(line) = pending.pop_front() {
            if let Item::Task(task) = &line.item {
                while !ended(task) {
                    if !closed && interrupts.load(Ordering::SeqCst) > seen_interrupts {
                        progress.note("interrupted again: closing the workers now");
                        // Bounded; it ends every task.
                        pool.close();
                        closed = true;
                    }
                    let _ = task.wait_timeout(Duration::from_millis(20));
                }
            }
            // A line that completed before the interrupt reached it says so, and counts so.
            let complete = write_line(&mut out, &line)?;
            progress.advance(line.bytes, complete);
        }
        out.flush()?;
        progress.finish();
        pool.close();
        return Ok(exit::INTERRUPTED);
    }
    out.flush()?;
    progress.finish();
    pool.close();
    Ok(if all_complete {
        exit::COMPLETE
    } else {
        exit::FAILED
    })
}

/// What the pool's monitor saw that stderr should tell: why the pool waits to start
/// workers. One note a second at most, the latest.
#[derive(Default)]
struct PoolNotes {
    /// The last reason a worker died at start, for the message when every slot keeps
    /// failing.
    start_failure: Option<String>,
    /// The latest wait worth telling, not told yet.
    waiting: Option<String>,
    told_at: Option<Instant>,
}

impl PoolNotes {
    fn record(&mut self, event: &PoolEvent) {
        let PoolEvent::WorkerFailing {
            slot,
            consecutive,
            delay_ms,
            capped,
            last_error,
            ..
        } = event
        else {
            return;
        };
        self.start_failure = Some(last_error.clone());
        // Shorter waits pass unnoticed; these are what would look like a stall.
        if *delay_ms < 1000 && !capped {
            return;
        }
        let secs = *delay_ms as f64 / 1000.0;
        let why = if *capped {
            "and reached its cap of restarts a minute"
        } else {
            "(backoff)"
        };
        self.waiting = Some(format!(
            "worker slot {slot} died at start {consecutive} time(s) in a row {why}: its next \
             start waits {secs:.1} s; the last: {last_error}"
        ));
    }

    /// The note to print now, if one waits and none was printed in the last second.
    fn due_note(&mut self) -> Option<String> {
        if self
            .told_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        let note = self.waiting.take()?;
        self.told_at = Some(Instant::now());
        Some(note)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Whether the task has ended and its listeners have seen it (so its result is final).
fn ended(task: &Task) -> bool {
    !matches!(
        task.wait_timeout(Duration::ZERO),
        Err(TaskError::NotFinished(_))
    )
}

/// Sends one input line to the pool, or decides it when it is not a JSON object.
fn submit(pool: &Pool, script: &str, line: &str) -> Item {
    let inputs: Map<String, Value> = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(inputs)) => inputs,
        Ok(other) => {
            return Item::Done(
                "failed",
                format!(
                    "the input line is not a JSON object but {}",
                    json_kind(&other)
                ),
            )
        }
        Err(err) => {
            return Item::Done("failed", format!("the input line is not valid JSON: {err}"))
        }
    };
    // The keys become the script's variables: the same rule as `run --input`.
    for key in inputs.keys() {
        if let Some(problem) = input_name_problem(key) {
            return Item::Done("failed", format!("the input line's key {key:?}: {problem}"));
        }
    }
    match pool.task(script).inputs(inputs).submit() {
        Ok(task) => Item::Task(task),
        Err(err) => Item::Done("failed", format!("cannot submit the task: {err}")),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes the output line of an ended input line; returns whether it completed.
fn write_line(out: &mut impl Write, line: &Line) -> anyhow::Result<bool> {
    let (status, outputs, error) = match &line.item {
        Item::Done(status, error) => (*status, Map::new(), Some(error.clone())),
        Item::Task(task) => match task.wait_timeout(Duration::ZERO) {
            Ok(outputs) => ("complete", outputs, None),
            Err(TaskError::Failed { message }) => ("failed", Map::new(), Some(message)),
            Err(err @ TaskError::Crashed(_)) => ("crashed", Map::new(), Some(err.to_string())),
            Err(err @ TaskError::DeadlinePassed(_)) => {
                ("timeout", Map::new(), Some(err.to_string()))
            }
            Err(err @ TaskError::Canceled { .. }) => {
                ("canceled", Map::new(), Some(err.to_string()))
            }
            Err(err) => ("failed", Map::new(), Some(err.to_string())),
        },
    };
    let record = json!({
        "index": line.index,
        "status": status,
        "outputs": outputs,
        "error": error,
    });
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")?;
    Ok(status == "complete")
}

/// What the stdin reader hands over: one per input line that is not blank.
enum Input {
    /// A line of text (newline and a trailing `\r` removed) and its length in the input.
    Line { text: String, bytes: u64 },
    /// A line that cannot be a task: its length in the input, and why.
    Refused { bytes: u64, reason: String },
    /// Reading stdin failed; nothing more comes.
    Failed(std::io::Error),
}

/// Reads stdin on a thread, at most `ahead` lines ahead of the consumer, each line up to
/// `max_line` bytes.
fn read_lines(ahead: usize, max_line: usize) -> Receiver<Input> {
    let (lines_tx, lines) = mpsc::sync_channel(ahead);
    let spawned = std::thread::Builder::new()
        .name("consort-map-stdin".to_owned())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut reader = stdin.lock();
            loop {
                let input = match next_line(&mut reader, max_line) {
                    Ok(None) => return,
                    Ok(Some(Ok(line))) => match decode_line(line) {
                        Some(input) => input,
                        None => continue, // blank
                    },
                    Ok(Some(Err(len))) => Input::Refused {
                        bytes: len + 1,
                        reason: format!(
                            "the input line is {len} bytes long, over the limit of {max_line} \
                             bytes (--max-line)"
                        ),
                    },
                    Err(err) => Input::Failed(err),
                };
                let failed = matches!(input, Input::Failed(_));
                if lines_tx.send(input).is_err() || failed {
                    return;
                }
            }
        });
    if let Err(err) = spawned {
        eprintln!("consort: cannot start the stdin reader: {err}");
    }
    lines
}

/// Reads the next line, newline excluded, holding at most `max_line + 1` bytes of it:
/// `None` at the end of the input, `Err(len)` for a line longer than `max_line`, which is
/// then read to its newline (or the end of the input) and dropped as it comes.
fn next_line(
    reader: &mut impl BufRead,
    max_line: usize,
) -> std::io::Result<Option<Result<Vec<u8>, u64>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(max_line)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    if reader.by_ref().take(limit).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Some(Ok(line)));
    }
    if line.len() <= max_line {
        return Ok(Some(Ok(line))); // the last line, without a newline
    }
    // Over the limit: skip to the newline without holding any of it.
    let mut len = line.len() as u64;
    drop(line);
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if chunk.is_empty() {
            return Ok(Some(Err(len)));
        }
        match chunk.iter().position(|&byte| byte == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(Some(Err(len + at as u64)));
            }
            None => {
                let n = chunk.len();
                len += n as u64;
                reader.consume(n);
            }
        }
    }
}

/// A line as the consumer gets it: its text, or why it fails; `None` for a blank line.
fn decode_line(mut line: Vec<u8>) -> Option<Input> {
    let bytes = line.len() as u64 + 1;
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    match String::from_utf8(line) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(Input::Line { text, bytes }),
        Err(err) => {
            let utf8 = err.utf8_error();
            let offset = utf8.valid_up_to();
            let byte = err.as_bytes()[offset];
            let what = match utf8.error_len() {
                Some(_) => format!("invalid byte 0x{byte:02x}"),
                None => format!("an incomplete sequence (from byte 0x{byte:02x}) at its end"),
            };
            Some(Input::Refused {
                bytes,
                reason: format!(
                    "the input line is not valid UTF-8: {what} at byte offset {offset}"
                ),
            })
        }
    }
}

/// The size of stdin when it is a regular file (`< inputs.jsonl`), for the ETA.
fn stdin_file_len() -> Option<u64> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    meta.is_file().then_some(meta.len())
}

/// A bar on a terminal (bytes of input done when stdin is a file, for the ETA; lines and
/// rate always); a summary line otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    n_lines: u64,
    n_complete: u64,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total_bytes {
                Some(total) => (
                    ProgressBar::new(total),
                    "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg} ETA {eta}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} [{elapsed_precise}] {msg}",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            n_lines: 0,
            n_complete: 0,
        }
    }

    fn advance(&mut self, bytes: u64, complete: bool) {
        self.n_lines += 1;
        self.n_complete += u64::from(complete);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.summary());
        }
    }

    fn summary(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} lines ({} not complete), {:.0} lines/s",
            self.n_lines,
            self.n_lines - self.n_complete,
            self.n_lines as f64 / secs
        )
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
        eprintln!("consort map: {}", self.summary());
    }
}

pub const LONG_ABOUT: &str = "\
Run SCRIPT once per line of stdin on a pool of workers, and print one JSON line per input
line on stdout, in input order:

  {\"index\": i, \"status\": \"complete\"|\"failed\"|\"crashed\"|\"timeout\"|\"canceled\",
   \"outputs\": {...}, \"error\": \"...\" or null}

Each input line is a JSON object whose keys become the script's variables, so each key is
an identifier (ASCII letters, digits and `_`, not starting with a digit), not a Python
keyword, not `task` and not a `__dunder__`. A line that is not valid UTF-8, not a JSON
object, has such a key, or is longer than --max-line BYTES (default 16 MiB; it is skipped
to its newline without being held) gets a `failed` output line naming the problem, and
the run goes on. Blank lines are skipped and get no output line: `index` counts the
non-blank lines from 0. Workers that die are replaced. A line whose worker died while it
ran beside other lines is run again alone, and the crash does not count against it (none
of them is known to have killed the worker; --no-rerun-suspects turns this off); a crash
counts against a line only when it ran alone, and --retries R sends such a line again, up
to R times. A `crashed` line's error says whether it ran alone. Workers that die at start
are restarted with a backoff and at most 60 times a minute, and stderr says when the pool
waits. On a terminal, stderr shows a bar with the rate (and the ETA when stdin is a file);
at the end it prints how many lines were written and how many of them did not complete.

--timeout SECS takes a number of seconds greater than 0 (fractions allowed, e.g. 0.5);
0, a negative number, nan, inf or a number too large for a timeout is a usage error.

Exit codes:
    0    every line completed
    1    some line did not complete
    2    usage error (--workers more than the machine can hold names the limit), or the
         workers could not be started, or every worker kept dying at start before any
         line completed (the lines read so far get their output lines)
  130    interrupted: the first Ctrl-C stops reading, cancels every task (killing its
         worker if it does not stop within 2 s) and writes the lines read so far, each
         with the status it ended with; a second Ctrl-C closes the workers at once";
