//! The stderr reader: one thread keeps a bounded tail of what the worker writes to stderr,
//! for crash reports and `Service::stderr_lines`. [`Tail`] is also the stdout reader's
//! record of non-protocol lines.
//!
//! # Invariants
//! 1. A tail never holds more than its byte limit, whatever the worker writes: a line over
//!    the limit is cut (at a character boundary) and says how long it was.
//! 2. stderr is read to its end, however much comes: the worker never blocks on a full
//!    stderr pipe, and the monitor sees the EOF.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::process::ChildStderr;
use std::sync::{Mutex, MutexGuard};

use super::config::{DebugOut, DebugStream};
use super::drain::Drain;
use crate::protocol::{Frame, Framer};

/// A bounded tail of lines, by bytes.
pub(crate) struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
}

impl Tail {
    pub(crate) fn new(limit: usize) -> Tail {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub(crate) fn push(&mut self, line: String) {
        let line = if line.len() > self.limit {
            let mut cut = self.limit;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}... ({} bytes)", &line[..cut], line.len())
        } else {
            line
        };
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > self.limit {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

/// The worker's stderr, as its last lines.
pub(crate) struct Stderr {
    tail: Mutex<Tail>,
}

impl Stderr {
    pub(crate) fn new(tail_bytes: usize) -> Stderr {
        Stderr {
            tail: Mutex::new(Tail::new(tail_bytes)),
        }
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The last lines the worker wrote to stderr.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.tail().snapshot()
    }

    /// The stderr thread: reads `stderr` to its end.
    pub(crate) fn run(
        &self,
        mut stderr: ChildStderr,
        max_line: usize,
        drain: &Drain,
        debug: &DebugOut,
    ) {
        let mut framer = Framer::new(max_line);
        let mut buf = vec![0u8; 16 * 1024];
        let mut on_frame = |frame: Frame<'_>| {
            let line = match frame {
                Frame::Line(line) => {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    String::from_utf8_lossy(line).into_owned()
                }
                Frame::Oversize { len } => format!("<stderr line of {len} bytes dropped>"),
            };
            debug.emit(DebugStream::Stderr, || line.clone());
            self.tail().push(line);
        };
        loop {
            match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n_read) => {
                    framer.push(&buf[..n_read], &mut on_frame);
                    drain.progress(n_read);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        framer.finish(&mut on_frame);
        debug.note(|| "<worker stderr closed>".to_owned());
        drain.stderr_ended();
    }
}
