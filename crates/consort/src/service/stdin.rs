//! The worker's stdin: one writer at a time. A submitting thread writes its request itself
//! while the non-blocking pipe takes it; what the pipe does not take is queued for the
//! **writer** thread, which waits for room, and which closes stdin on `close`.
//!
//! # Invariants
//! 1. Lines never interleave: every write happens under one lock, and a line the pipe took
//!    only in part is finished (by the writer) before any other line is written.
//! 2. Submitting never blocks on a full pipe; the writer's waits are bounded, so it sees
//!    `close` and the worker's exit even when the worker never reads again.
//! 3. Nothing is lost by not writing: once the pipe is gone the worker is gone or going,
//!    and the monitor crashes every registered task.
//! 4. Whether the worker read any request ([`Stdin::worker_read`]) is fixed while our end
//!    of the pipe is still open: when the worker exits, or when we let go of the pipe.

use std::io;
use std::os::fd::AsFd;
use std::process::ChildStdin;
use std::sync::{Condvar, Mutex, MutexGuard};

use rustix::event::{PollFd, PollFlags, Timespec};

/// The worker's stdin, shared by the submitting threads and the writer.
pub(crate) struct Stdin {
    state: Mutex<StdinState>,
    /// Wakes the writer: bytes pending, `close`, the worker's exit, a failed write.
    ready: Condvar,
}

struct StdinState {
    /// Non-blocking; `None` once closed (EOF sent) or given up.
    pipe: Option<ChildStdin>,
    /// Bytes the pipe has not taken yet, in order; written before any new line.
    pending: Vec<u8>,
    /// `close` was asked for: write what is pending, then close the pipe (EOF).
    close: bool,
    /// The worker has exited: drop what is pending and close the pipe.
    exited: bool,
    /// A write failed (the worker closed its stdin): the writer decides what it means.
    failed: Option<io::Error>,
    /// Bytes the pipe took.
    written: u64,
    /// Whether the worker read any of them, once that is fixed (see `latch_read`).
    read: Option<bool>,
}

impl StdinState {
    /// Whether the worker has read any byte written: fewer bytes wait in the pipe than it
    /// took. Linux answers `FIONREAD` on the write end too; elsewhere this says `false`.
    fn measure_read(&self) -> bool {
        let Some(pipe) = self.pipe.as_ref() else {
            return false;
        };
        if self.written == 0 || !cfg!(target_os = "linux") {
            return false;
        }
        rustix::io::ioctl_fionread(pipe).is_ok_and(|unread| unread < self.written)
    }

    /// Fixes `read` before the pipe goes (or the worker is gone: nothing more is read).
    fn latch_read(&mut self) {
        if self.read.is_none() {
            self.read = Some(self.measure_read());
        }
    }

    /// Lets go of the pipe (the worker sees EOF once nothing else holds it).
    fn release(&mut self) {
        self.latch_read();
        self.pipe = None;
    }
}

/// How a non-blocking write went.
enum Wrote {
    All,
    Part(usize),
    Failed(io::Error),
}

/// Writes what the pipe takes of `bytes`, counting it into `written`.
fn write_nonblocking(pipe: &ChildStdin, bytes: &[u8], written: &mut u64) -> Wrote {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::write(pipe, &bytes[done..]) {
            Ok(n_written) => {
                done += n_written;
                *written += n_written as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Wrote::Part(done),
            Err(errno) => return Wrote::Failed(errno.into()),
        }
    }
    Wrote::All
}

impl Stdin {
    /// `pipe` must be non-blocking.
    pub(crate) fn new(pipe: ChildStdin) -> Stdin {
        Stdin {
            state: Mutex::new(StdinState {
                pipe: Some(pipe),
                pending: Vec::new(),
                close: false,
                exited: false,
                failed: None,
                written: 0,
                read: None,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StdinState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Writes one line (with its newline): directly when the pipe takes it, else queued
    /// for the writer. Dropped once `close` was asked or the pipe is gone.
    pub(crate) fn send(&self, line: &[u8]) {
        let mut stdin = self.lock();
        let state = &mut *stdin;
        let Some(pipe) = state.pipe.as_ref() else {
            return;
        };
        if state.close || state.failed.is_some() {
            return;
        }
        if !state.pending.is_empty() {
            state.pending.extend_from_slice(line);
            return;
        }
        match write_nonblocking(pipe, line, &mut state.written) {
            Wrote::All => return,
            Wrote::Part(n_written) => state.pending.extend_from_slice(&line[n_written..]),
            Wrote::Failed(err) => state.failed = Some(err),
        }
        self.ready.notify_one();
    }

    /// Asks the writer to write what is pending, then close stdin (the worker sees EOF).
    pub(crate) fn close(&self) {
        self.lock().close = true;
        self.ready.notify_one();
    }

    /// The worker has exited: the writer drops what is pending and ends.
    pub(crate) fn worker_exited(&self) {
        let mut stdin = self.lock();
        stdin.latch_read();
        stdin.exited = true;
        drop(stdin);
        self.ready.notify_one();
    }

    /// Whether the worker read any of the requests written to it: a worker that did got
    /// going, even if it never wrote a line (pools tell a death at start by this).
    pub(crate) fn worker_read(&self) -> bool {
        let stdin = self.lock();
        stdin.read.unwrap_or_else(|| stdin.measure_read())
    }

    /// The writer thread: writes what the pipe did not take at once and closes stdin on
    /// `close`. Returns the error of a write that failed before `close` was asked (the
    /// worker closed its stdin): the caller decides what it means.
    pub(crate) fn run_writer(&self) -> Option<io::Error> {
        // A second handle on the pipe, to wait for room without holding the lock; closed
        // with the pipe, so that the worker sees EOF.
        let mut poll_fd = None;
        let mut stdin = self.lock();
        loop {
            if stdin.exited {
                stdin.release();
                stdin.pending = Vec::new();
                return None;
            }
            if let Some(err) = stdin.failed.take() {
                stdin.release();
                stdin.pending = Vec::new();
                return (!stdin.close).then_some(err);
            }
            let state = &mut *stdin;
            let pipe = state.pipe.as_ref()?;
            if !state.pending.is_empty() {
                match write_nonblocking(pipe, &state.pending, &mut state.written) {
                    Wrote::All => state.pending.clear(),
                    Wrote::Failed(err) => state.failed = Some(err),
                    Wrote::Part(n_written) => {
                        state.pending.drain(..n_written);
                        if poll_fd.is_none() {
                            match pipe.as_fd().try_clone_to_owned() {
                                Ok(fd) => poll_fd = Some(fd),
                                Err(err) => {
                                    state.failed = Some(err);
                                    continue;
                                }
                            }
                        }
                        drop(stdin);
                        if let Some(fd) = &poll_fd {
                            // Bounded, so that `exited` and `close` are seen even if the
                            // worker never reads again.
                            let mut fds = [PollFd::new(fd, PollFlags::OUT)];
                            let timeout = Timespec {
                                tv_sec: 0,
                                tv_nsec: 50_000_000,
                            };
                            let _ = rustix::event::poll(&mut fds, Some(&timeout));
                        }
                        stdin = self.lock();
                    }
                }
                continue;
            }
            if stdin.close {
                stdin.release();
                return None;
            }
            stdin = self
                .ready
                .wait(stdin)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }
}
