//! A worker's recipe as the supervisor reads it ([`Config`]), the debug lines a service
//! gives out ([`DebugLine`], and [`DebugOut`], which sends them), and why a start fails.
//!
//! # Invariants
//! 1. A [`Config`] does not change once a worker started from it: builders copy it on
//!    write (`Arc::make_mut`).
//! 2. A debug sink that panics is caught: debug output carries on, and so does the service.
//! 3. No supervisor code panics while it holds a lock (listeners and debug sinks run
//!    outside them, and are caught): [`lock`] recovers a poisoned lock rather than cascade,
//!    should that ever change.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

/// A line of debug output from a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugLine {
    /// The service's number, unique in this process.
    pub service: u64,
    /// Where the line comes from.
    pub stream: DebugStream,
    /// The text.
    pub text: String,
}

/// The source of a [`DebugLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DebugStream {
    /// A request written to the worker's stdin.
    Stdin,
    /// A line read from the worker's stdout.
    Stdout,
    /// A line read from the worker's stderr.
    Stderr,
    /// A lifecycle note from the supervisor.
    Note,
}

impl fmt::Display for DebugLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.stream {
            DebugStream::Stdin => "SERVICE",
            DebugStream::Stdout => "WORKER-OUT",
            DebugStream::Stderr => "WORKER",
            DebugStream::Note => "SERVICE",
        };
        write!(f, "[{tag}-{}] {}", self.service, self.text)
    }
}

/// A debug callback.
pub type DebugSink = Arc<dyn Fn(&DebugLine) + Send + Sync>;

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The process could not be spawned (missing program, permissions, ...).
    #[error("cannot start worker {program:?}: {source}")]
    Spawn {
        /// The program that was to run.
        program: OsString,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The init script could not be written to a temporary file.
    #[error("cannot write the init script: {0}")]
    InitScript(#[source] std::io::Error),
    /// A supervisor thread could not be started.
    #[error("cannot start a supervisor thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What a worker is started from and the supervisor's limits for it.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) init_script: Option<String>,
    pub(crate) close_grace: Duration,
    pub(crate) kill_grace: Duration,
    pub(crate) drain_silence: Duration,
    pub(crate) max_line: usize,
    pub(crate) tail_bytes: usize,
    pub(crate) debug: Option<DebugSink>,
}

/// Where one service's debug lines go: its sink, if any, and `tracing` at TRACE level
/// (target `consort::service`). The text is made only when someone will read it.
pub(crate) struct DebugOut {
    service: u64,
    sink: Option<DebugSink>,
}

impl DebugOut {
    pub(crate) fn new(service: u64, sink: Option<DebugSink>) -> DebugOut {
        DebugOut { service, sink }
    }

    pub(crate) fn emit(&self, stream: DebugStream, text: impl FnOnce() -> String) {
        let traced = tracing::enabled!(target: "consort::service", tracing::Level::TRACE);
        if self.sink.is_none() && !traced {
            return;
        }
        let line = DebugLine {
            service: self.service,
            stream,
            text: text(),
        };
        if traced {
            tracing::trace!(target: "consort::service", service = line.service, stream = ?line.stream, "{}", line.text);
        }
        if let Some(sink) = &self.sink {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&line))).is_err() {
                tracing::warn!("the debug callback panicked; debug output carries on");
            }
        }
    }

    /// A lifecycle note.
    pub(crate) fn note(&self, text: impl FnOnce() -> String) {
        self.emit(DebugStream::Note, text);
    }
}

/// Locks `mutex`, recovering it if poisoned (invariant 3).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
