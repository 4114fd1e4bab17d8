//! The worker's stdout: framed, decoded, and routed to tasks by whoever holds the stdout
//! lock: the **stdout thread**, or a thread waiting for a task without listeners
//! ([`Stdout::read_for`]), which then reads its own answer (and routes any other line it
//! meets) with no thread hop in between, as a pipe ping-pong does.
//!
//! After a waiter got its answer with no other task pending, the stdout thread leaves
//! stdout to waiters for [`LEAVE_TO_WAITERS`]; anything that needs it sooner wakes it
//! ([`Stdout::wake_reader`]).
//!
//! # Invariants
//! 1. stdout is read by one thread at a time, under one lock that a waiter only ever
//!    `try_lock`s, so a waiter never waits for the stdout thread.
//! 2. The stdout thread never leaves stdout unread for more than [`LEAVE_TO_WAITERS`] while
//!    anything but a waiter that reads could need a line.
//! 3. A reading waiter's deadline holds whatever the worker writes: one pump reads at most
//!    [`READS_PER_PUMP`] full buffers, and the waiter gives stdout back however it stops
//!    reading, a panic included.
//! 4. Every line ends up routed to its task, in the stdout tail as noise, or (over
//!    `max_line`) failing the pending tasks: nothing is dropped silently. A line is cut
//!    at the limit: the tasks pending when it passes `max_line`, and any submitted while
//!    it goes on, fail then, so a line that never ends cannot keep a task waiting. A
//!    response that names a pending task but cannot be decoded fails that task with the
//!    reason, unless it is the unterminated last line at EOF: a write cut short by the
//!    worker's end, whose task the crash ends.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::process::ChildStdout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use super::config::{lock, DebugOut, DebugStream};
use super::dispatch::Tasks;
use super::drain::Drain;
use super::stderr::Tail;
use crate::protocol::{decode_line, Decoded, Frame, Framer, ResponseKind, HEARTBEAT_LINE};
use crate::task::{TaskCore, TaskError, TaskState};

/// The longest a waiter reads stdout for its task before it leaves the reading to the
/// stdout thread and parks: long enough for a quick task's round trip, short enough that
/// the stdout thread is never kept out for long.
const READ_FOR: Duration = Duration::from_millis(1);

/// How long a reading waiter looks for its answer without sleeping (see `read_for`).
const SPIN_READING: Duration = Duration::from_micros(50);

/// The most full reads one `pump` makes (1 MiB): a worker that floods stdout cannot keep a
/// reading waiter from its deadline.
const READS_PER_PUMP: usize = 16;

/// How long the stdout thread leaves stdout to waiters after one got its answer with no
/// other task pending: a thread that waits for one task after another then reads every
/// answer itself, and the stdout thread does not wake for each line. Anything that needs
/// the stdout thread sooner (a task with listeners, a future, a pool's task, a waiter that
/// gave up reading, the worker's exit) wakes it (`wake_reader`).
pub(crate) const LEAVE_TO_WAITERS: Duration = Duration::from_millis(1);

/// The worker's stdout and what is known of it.
pub(crate) struct Stdout {
    /// The pipe and the framing state: whoever holds this lock reads.
    reader: Mutex<StdoutReader>,
    /// The last non-protocol lines.
    tail: Mutex<Tail>,
    max_line: usize,
    /// When the worker was started, and when its last stdout line arrived (milliseconds
    /// after `born`, plus one; 0: never). Pools use it to find wedged workers.
    born: Instant,
    heard: AtomicU64,
    /// Until when (nanoseconds after `born`) the stdout thread leaves stdout to waiters;
    /// `u64::MAX` while one is reading (see `run`).
    waiters_read_until: AtomicU64,
    /// The stdout thread, to wake it early.
    thread: OnceLock<std::thread::Thread>,
}

/// The pipe and its framing state, read by the stdout thread or by a waiter.
struct StdoutReader {
    /// Our end, non-blocking; `None` once the stdout thread is done with it.
    pipe: Option<ChildStdout>,
    framer: Framer,
    buf: Vec<u8>,
    decoded: Vec<Decoded>,
    /// EOF or a read error was met: only the stdout thread reads any more, to finish up.
    ended: bool,
}

/// Where what is read goes: the task table, the drain bookkeeping, the debug lines.
#[derive(Clone, Copy)]
pub(crate) struct Sinks<'a> {
    pub(crate) tasks: &'a Tasks,
    pub(crate) drain: &'a Drain,
    pub(crate) debug: &'a DebugOut,
}

/// A waiter holding stdout (see [`Stdout::read_for`]). Dropped however reading ends, a
/// panic included, it gives stdout back.
struct WaiterReading<'a> {
    stdout: &'a Stdout,
    tasks: &'a Tasks,
    core: &'a TaskCore,
    reader: MutexGuard<'a, StdoutReader>,
}

impl Drop for WaiterReading<'_> {
    fn drop(&mut self) {
        // Leave stdout to the next waiter for a moment only when nothing else can be
        // waiting for a line: this task got its answer and no other is pending. Marked
        // while the lock is held, so the next waiter's mark is never overwritten.
        if self.core.is_delivered() && self.tasks.is_idle() {
            let until = self.stdout.born.elapsed() + LEAVE_TO_WAITERS;
            self.stdout
                .waiters_read_until
                .store(until.as_nanos() as u64, Ordering::Release);
        } else {
            // The lock is still held: the stdout thread's `try_lock` fails and it polls
            // again, by which time the lock is free.
            self.stdout.wake_reader();
        }
    }
}

/// How `pump` left the pipe.
#[derive(PartialEq)]
enum Pumped {
    /// Nothing more to read for now.
    Drained,
    /// EOF or a read error.
    Ended,
}

impl Stdout {
    /// `pipe` must be non-blocking.
    pub(crate) fn new(pipe: ChildStdout, max_line: usize, tail_bytes: usize) -> Stdout {
        Stdout {
            reader: Mutex::new(StdoutReader {
                pipe: Some(pipe),
                framer: Framer::new(max_line),
                buf: vec![0u8; 64 * 1024],
                decoded: Vec::new(),
                ended: false,
            }),
            tail: Mutex::new(Tail::new(tail_bytes)),
            max_line,
            born: Instant::now(),
            heard: AtomicU64::new(0),
            waiters_read_until: AtomicU64::new(0),
            thread: OnceLock::new(),
        }
    }

    /// When the worker's last stdout line (a heartbeat counts) arrived, or its start.
    pub(crate) fn last_heard(&self) -> Instant {
        let heard = self.heard.load(Ordering::Relaxed).saturating_sub(1);
        self.born + Duration::from_millis(heard)
    }

    /// Whether the worker ever wrote a line on stdout.
    pub(crate) fn heard_anything(&self) -> bool {
        self.heard.load(Ordering::Relaxed) > 0
    }

    /// The last non-protocol lines the worker wrote to stdout.
    pub(crate) fn noise_lines(&self) -> Vec<String> {
        lock(&self.tail).snapshot()
    }

    /// Hands stdout back to the stdout thread now (see [`LEAVE_TO_WAITERS`]).
    pub(crate) fn wake_reader(&self) {
        if self.waiters_read_until.swap(0, Ordering::AcqRel) != 0 {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// The stdout thread: reads stdout whenever it has bytes and waiters do not read it,
    /// and finishes up at EOF. `poll_fd` is a second handle on the pipe, to wait for bytes
    /// without the lock.
    pub(crate) fn run(&self, poll_fd: OwnedFd, sinks: Sinks<'_>) {
        let _ = self.thread.set(std::thread::current());
        loop {
            let now = self.born.elapsed().as_nanos() as u64;
            let until = self.waiters_read_until.load(Ordering::Acquire);
            if until > now {
                // Bounded, so a waiter that forgot to wake this thread costs a delay only.
                let left = Duration::from_nanos(until - now);
                std::thread::park_timeout(left.min(LEAVE_TO_WAITERS));
                continue;
            }
            let mut fds = [PollFd::new(&poll_fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => {
                    // Cannot happen with one valid fd, short of ENOMEM: retry, bounded.
                    sinks
                        .debug
                        .note(|| format!("<polling worker stdout: {err}>"));
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let mut reader = match self.reader.try_lock() {
                Ok(reader) => reader,
                Err(TryLockError::Poisoned(poison)) => poison.into_inner(),
                // A waiter is reading, and these bytes woke it too.
                Err(TryLockError::WouldBlock) => {
                    std::thread::yield_now();
                    continue;
                }
            };
            if self.pump(&mut reader, sinks) == Pumped::Ended {
                break;
            }
        }
        let mut reader = lock(&self.reader);
        sinks.drain.stdout_busy(Some(0));
        let StdoutReader {
            framer, decoded, ..
        } = &mut *reader;
        framer.finish(|frame| self.on_frame(frame, true, decoded, sinks));
        reader.pipe = None;
        drop(reader);
        sinks.debug.note(|| "<worker stdout closed>".to_owned());
        sinks.drain.stdout_ended();
    }

    /// Reads and handles what stdout holds now, without blocking.
    fn pump(&self, reader: &mut StdoutReader, sinks: Sinks<'_>) -> Pumped {
        let StdoutReader {
            pipe,
            framer,
            buf,
            decoded,
            ended,
        } = reader;
        let Some(pipe) = pipe.as_mut().filter(|_| !*ended) else {
            return Pumped::Ended;
        };
        let mut reads = 0;
        loop {
            match pipe.read(buf) {
                Ok(0) => break,
                Ok(n_read) => {
                    sinks.drain.stdout_busy(Some(n_read));
                    framer.push(&buf[..n_read], |frame| {
                        self.on_frame(frame, false, decoded, sinks)
                    });
                    if let Some(dropped) = framer.dropping() {
                        self.on_line_cut(dropped, sinks);
                    }
                    sinks.drain.stdout_busy(None);
                    reads += 1;
                    if n_read < buf.len() || reads == READS_PER_PUMP {
                        // All there was, most likely, or enough for one go: a poll tells
                        // if more is there.
                        return Pumped::Drained;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Pumped::Drained,
                Err(err) => {
                    sinks.debug.note(|| format!("<worker stdout: {err}>"));
                    break;
                }
            }
        }
        *ended = true;
        Pumped::Ended
    }

    /// Called by a thread about to wait for `core` (a task without listeners): reads stdout
    /// itself for up to `READ_FOR` (or until `deadline`), unless another thread is reading
    /// it. The worker's answer then reaches the waiter directly, without the stdout
    /// thread's hop. Lines for other tasks are routed as the stdout thread would route them.
    ///
    /// It first looks for the answer without sleeping, for `SPIN_READING`, as a lock spins
    /// before it parks: a sleeping thread's CPU halts, and on a virtual machine waking it
    /// again costs more than a quick task's whole round trip.
    pub(crate) fn read_for(&self, core: &TaskCore, deadline: Option<Instant>, sinks: Sinks<'_>) {
        let now = Instant::now();
        let until = match deadline {
            Some(deadline) => deadline.min(now + READ_FOR),
            None => now + READ_FOR,
        };
        let spin_until = until.min(now + SPIN_READING);
        let Ok(reader) = self.reader.try_lock() else {
            return;
        };
        let mut reading = WaiterReading {
            stdout: self,
            tasks: sinks.tasks,
            core,
            reader,
        };
        self.waiters_read_until.store(u64::MAX, Ordering::Release);
        loop {
            if self.pump(&mut reading.reader, sinks) == Pumped::Ended || core.is_delivered() {
                return;
            }
            let now = Instant::now();
            let Some(left) = until.checked_duration_since(now) else {
                return;
            };
            if now < spin_until {
                std::thread::yield_now();
                continue;
            }
            let Some(pipe) = reading.reader.pipe.as_ref() else {
                return;
            };
            let mut fds = [PollFd::new(pipe, PollFlags::IN)];
            // `left` is under READ_FOR: the conversion cannot fail (were it to, a zero
            // timeout still ends at `until`).
            let timeout = Timespec::try_from(left).unwrap_or_default();
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Handles one line; `at_eof` when it is the unterminated last one.
    fn on_frame(
        &self,
        frame: Frame<'_>,
        at_eof: bool,
        decoded: &mut Vec<Decoded>,
        sinks: Sinks<'_>,
    ) {
        match frame {
            Frame::Line(line) => {
                let heard = self.born.elapsed().as_millis() as u64 + 1;
                self.heard.store(heard, Ordering::Relaxed);
                if line == HEARTBEAT_LINE {
                    return;
                }
                sinks.debug.emit(DebugStream::Stdout, || {
                    String::from_utf8_lossy(line).into_owned()
                });
                decode_line(line, decoded);
                for item in decoded.drain(..) {
                    match item {
                        Decoded::Response(response) => {
                            sinks.tasks.route(response.task, response.kind, sinks.debug);
                        }
                        Decoded::Undecodable {
                            task, reason, text, ..
                        } => {
                            let failed = !at_eof
                                && sinks.tasks.route(
                                    task.clone(),
                                    ResponseKind::Failure(Some(reason.clone())),
                                    sinks.debug,
                                );
                            if failed {
                                sinks
                                    .debug
                                    .note(|| format!("<task {task} failed: {reason}>"));
                                lock(&self.tail).push(format!("<task {task}: {reason}>"));
                            } else {
                                // No pending task lost it, or the worker's end cut it short
                                // (and crashes its task): noise.
                                sinks.debug.note(|| format!("<INVALID> {reason}"));
                                lock(&self.tail).push(text);
                            }
                        }
                        Decoded::Noise(noise) => {
                            sinks.debug.note(|| format!("<INVALID> {noise}"));
                            lock(&self.tail).push(noise);
                        }
                    }
                }
            }
            Frame::Oversize { len } => self.on_oversize(len, sinks),
        }
    }

    /// A line past `max_line` that has not ended (it may never end) fails every pending
    /// task now: whatever it holds is dropped, a response included.
    fn on_line_cut(&self, dropped: usize, sinks: Sinks<'_>) {
        let pending = sinks.tasks.take_all();
        if pending.is_empty() {
            return;
        }
        let message = format!(
            "the worker is writing a stdout line over the limit of {} bytes ({dropped} bytes \
             so far, dropped as they come); its pending tasks cannot be trusted to get their \
             responses",
            self.max_line
        );
        sinks.debug.note(|| format!("<{message}>"));
        for core in pending {
            sinks.tasks.end(
                &core,
                TaskState::Failed,
                Err(TaskError::Failed {
                    message: message.clone(),
                }),
            );
        }
    }

    /// A line over `max_line` fails every pending task: one of them lost its response.
    fn on_oversize(&self, len: usize, sinks: Sinks<'_>) {
        let message = format!(
            "the worker wrote a stdout line of {len} bytes, over the limit of {} bytes; \
             its pending tasks cannot be trusted to get their responses",
            self.max_line
        );
        sinks.debug.note(|| format!("<{message}>"));
        lock(&self.tail).push(format!("<line of {len} bytes dropped>"));
        for core in sinks.tasks.take_all() {
            sinks.tasks.end(
                &core,
                TaskState::Failed,
                Err(TaskError::Failed {
                    message: message.clone(),
                }),
            );
        }
    }
}
