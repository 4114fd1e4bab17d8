//! The supervisor: start one worker process, run tasks on it, report its death, and end
//! it within a bound.
//!
//! A [`ServiceBuilder`] is a recipe (command, environment, init script, time limits) that
//! can start any number of workers; [`ServiceBuilder::start`] starts one and returns a
//! [`Service`]. [`Service::task`] submits tasks; [`Service::close`] (or dropping the
//! service) ends the worker: stdin EOF, then SIGTERM to its process group, then SIGKILL.
//!
//! The supervisor behind a `Service` is in `service/supervisor.rs`, a file per thread
//! beside it (see its header, and docs/design/supervisor.md).
//!
//! # Invariants
//! 1. Every task ends exactly once (see `task`), and every task ends: when the worker dies
//!    each pending task ends CRASHED, and a task submitted after that ends CRASHED at once.
//! 2. A crash is declared only once stdout has been read to its end (or has stayed silent
//!    for `drain_silence`), so a response written just before exit is never lost.
//! 3. Nothing waits without a bound: not `close`, not `drop`, not a hard cancel.
//! 4. This module (with `sys`) is the only one that creates or signals processes.

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::protocol::{Args, DEFAULT_MAX_LINE};
use crate::python;
use crate::task::{CrashReport, ExitStatus, Listener, Task, TaskEvent};

mod config;
mod dispatch;
mod drain;
mod exit;
mod spawner;
mod stderr;
mod stdin;
mod stdout;
mod supervisor;

pub use config::{DebugLine, DebugSink, DebugStream, StartError};
pub(crate) use supervisor::ServiceLink;

use config::Config;

/// Why a task could not be submitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// An input could not be encoded as JSON.
    #[error("input {name:?} cannot be encoded as JSON: {source}")]
    Input {
        /// The input's name.
        name: String,
        /// The encoder's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// A recipe for a worker process: command, environment, init script and time limits.
///
/// Cheap to clone; [`ServiceBuilder::start`] can be called any number of times.
#[derive(Clone)]
pub struct ServiceBuilder {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("ServiceBuilder")
            .field("program", &config.program)
            .field("args", &config.args)
            .field("cwd", &config.cwd)
            .field("env", &config.env)
            .field("init_script", &config.init_script)
            .field("close_grace", &config.close_grace)
            .field("kill_grace", &config.kill_grace)
            .field("max_line", &config.max_line)
            .finish_non_exhaustive()
    }
}

/// A running worker process and the tasks sent to it.
///
/// `Service` is `Send + Sync`: share it by reference or in an `Arc`, and submit tasks from
/// any thread. Dropping it does what [`Service::close`] does.
pub struct Service {
    pub(crate) link: ServiceLink,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("id", &self.id())
            .field("pid", &self.pid())
            .finish()
    }
}

impl Service {
    /// A recipe for a worker started from `command` (program, arguments, working directory
    /// and environment are taken from it).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(command: Command) -> ServiceBuilder {
        let env = command
            .get_envs()
            .map(|(key, value)| (key.to_owned(), value.map(OsStr::to_owned)))
            .collect();
        ServiceBuilder {
            config: Arc::new(Config {
                program: command.get_program().to_owned(),
                args: command.get_args().map(OsStr::to_owned).collect(),
                cwd: command.get_current_dir().map(PathBuf::from),
                env,
                init_script: None,
                close_grace: Duration::from_secs(2),
                kill_grace: Duration::from_secs(1),
                drain_silence: Duration::from_millis(200),
                max_line: DEFAULT_MAX_LINE,
                tail_bytes: 64 * 1024,
                debug: None,
            }),
        }
    }

    /// A recipe for Appose's own Python worker (`appose` must be installed for `python`):
    /// `python -c "import appose.python_worker; appose.python_worker.main()"`, with the
    /// conda variables removed from its environment, as appose-python does.
    pub fn appose_python(python: impl AsRef<OsStr>) -> ServiceBuilder {
        Service::new(python::appose_worker_command(python))
    }

    /// A recipe for consort's own Python worker, shipped inside this library: it needs
    /// nothing installed but `python` (3.9 or newer). See [`crate::python`].
    pub fn consort_python(python: impl AsRef<OsStr>) -> ServiceBuilder {
        Service::new(python::consort_worker_command(python))
    }

    /// This service's number, unique in this process (as in debug lines).
    pub fn id(&self) -> u64 {
        self.link.id()
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.link.pid()
    }

    /// Starts describing a task that runs `script`.
    pub fn task(&self, script: impl Into<String>) -> TaskBuilder<'_> {
        TaskBuilder {
            service: self,
            spec: TaskSpec::new(script.into()),
        }
    }

    /// Whether the worker process is still running.
    pub fn is_alive(&self) -> bool {
        self.link.exit_status().is_none()
    }

    /// How the worker ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.link.exit_status()
    }

    /// The report given to tasks that crashed, once the worker has ended.
    pub fn crash_report(&self) -> Option<CrashReport> {
        self.link.crash_report()
    }

    /// The last lines the worker wrote to stderr (bounded by `with_tail_bytes`).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.link.stderr_lines()
    }

    /// The last non-protocol lines the worker wrote to stdout (bounded likewise).
    pub fn invalid_lines(&self) -> Vec<String> {
        self.link.invalid_lines()
    }

    /// Waits up to `timeout` for the worker to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.link.wait_exit(timeout)
    }

    /// Ends the worker within a bound and returns how it ended.
    ///
    /// Closes the worker's stdin and waits `close_grace` (2 s) for it to exit; then sends
    /// SIGTERM to its process group and waits `kill_grace` (1 s); then SIGKILL. Tasks still
    /// pending end CRASHED with the cause "service closed". Calling it again returns the
    /// same status at once.
    pub fn close(&self) -> ExitStatus {
        self.link.close()
    }

    /// Kills the worker's process group now (SIGKILL) and reaps it.
    pub fn kill(&self) -> ExitStatus {
        self.link.kill_now("killed by Service::kill")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.link.close();
    }
}

impl ServiceBuilder {
    /// Runs `script` in the worker before any task, through `APPOSE_INIT_SCRIPT` (written
    /// to a private temporary file, as Appose does). Replaces any earlier init script.
    pub fn with_init(mut self, script: impl Into<String>) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).init_script = Some(script.into());
        self
    }

    /// Sets an environment variable for the worker.
    pub fn with_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ServiceBuilder {
        let config = Arc::make_mut(&mut self.config);
        let key = key.as_ref().to_owned();
        config.env.retain(|(existing, _)| *existing != key);
        config.env.push((key, Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable from the worker's environment.
    pub fn with_env_remove(mut self, key: impl AsRef<OsStr>) -> ServiceBuilder {
        let config = Arc::make_mut(&mut self.config);
        let key = key.as_ref().to_owned();
        config.env.retain(|(existing, _)| *existing != key);
        config.env.push((key, None));
        self
    }

    /// Sets the worker's working directory.
    pub fn with_cwd(mut self, dir: impl Into<PathBuf>) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).cwd = Some(dir.into());
        self
    }

    /// How long [`Service::close`] waits after closing stdin before SIGTERM (default 2 s).
    pub fn with_close_grace(mut self, grace: Duration) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).close_grace = grace;
        self
    }

    /// How long [`Service::close`] waits after SIGTERM before SIGKILL (default 1 s).
    pub fn with_kill_grace(mut self, grace: Duration) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).kill_grace = grace;
        self
    }

    /// How long, once the worker has exited, its stdout may stay silent before a crash is
    /// declared anyway (default 200 ms). This only matters when a process that escaped the
    /// worker's process group and its lineage (it cleared its environment) still holds its
    /// stdout open. It is also how long a worker whose stdout reached EOF has to be seen
    /// exiting before it counts as a worker that closed its stdout and lives on, and is
    /// ended.
    pub fn with_drain_silence(mut self, silence: Duration) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).drain_silence = silence;
        self
    }

    /// The longest stdout line accepted from the worker (default 16 MiB). A longer line
    /// fails the worker's pending tasks, and is dropped without being held in memory.
    pub fn with_max_line(mut self, bytes: usize) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).max_line = bytes;
        self
    }

    /// How many bytes of stderr and of non-protocol stdout to keep for crash reports
    /// (default 64 KiB each).
    pub fn with_tail_bytes(mut self, bytes: usize) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).tail_bytes = bytes;
        self
    }

    /// Sends every line in and out, every stderr line and lifecycle notes to `sink`.
    ///
    /// The same lines go to `tracing` at TRACE level (target `consort::service`) whether or
    /// not a sink is set.
    ///
    /// `sink` runs on the thread that handles the line: for a stdout line, the service's
    /// stdout thread or a thread in [`Task::wait`](crate::Task::wait) that reads its own
    /// answer. A slow sink slows that reading, so keep it quick.
    pub fn with_debug(
        mut self,
        sink: impl Fn(&DebugLine) + Send + Sync + 'static,
    ) -> ServiceBuilder {
        Arc::make_mut(&mut self.config).debug = Some(Arc::new(sink));
        self
    }

    /// The program this recipe runs.
    pub fn program(&self) -> &OsStr {
        &self.config.program
    }

    /// Starts a worker process.
    ///
    /// # Errors
    /// [`StartError::Spawn`] when the program cannot be run (the reason names it). A worker
    /// that starts and then dies at once is not an error here: its first task ends CRASHED
    /// with the exit status and the last lines of its stderr.
    pub fn start(&self) -> Result<Service, StartError> {
        let link = supervisor::start(Arc::clone(&self.config))?;
        Ok(Service { link })
    }
}

/// What a task is, as its builder gathers it: shared by [`TaskBuilder`] and the pool's
/// task builder, so that inputs are encoded (and their errors kept) in one place.
pub(crate) struct TaskSpec {
    pub(crate) script: String,
    pub(crate) inputs: Args,
    pub(crate) queue: Option<String>,
    pub(crate) listeners: Vec<Listener>,
    /// The first input that could not be encoded: `submit` returns it.
    pub(crate) error: Option<SubmitError>,
}

impl TaskSpec {
    pub(crate) fn new(script: String) -> TaskSpec {
        TaskSpec {
            script,
            inputs: Args::new(),
            queue: None,
            listeners: Vec::new(),
            error: None,
        }
    }

    pub(crate) fn input(&mut self, name: String, value: impl Serialize) {
        match serde_json::to_value(value) {
            Ok(value) => {
                self.inputs.insert(name, value);
            }
            Err(source) => {
                self.error
                    .get_or_insert(SubmitError::Input { name, source });
            }
        }
    }
}

/// A task being described; [`TaskBuilder::submit`] sends it.
pub struct TaskBuilder<'a> {
    service: &'a Service,
    spec: TaskSpec,
}

impl fmt::Debug for TaskBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("script", &self.spec.script)
            .field("inputs", &self.spec.inputs)
            .field("queue", &self.spec.queue)
            .finish_non_exhaustive()
    }
}

impl TaskBuilder<'_> {
    /// Binds an input variable. A value that cannot be encoded makes `submit` fail.
    pub fn input(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        self.spec.input(name.into(), value);
        self
    }

    /// Binds every entry of `inputs` as an input variable.
    pub fn inputs(mut self, inputs: impl IntoIterator<Item = (String, Value)>) -> Self {
        self.spec.inputs.extend(inputs);
        self
    }

    /// Runs the task on the named queue: `"main"` is the worker's main thread.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.spec.queue = Some(queue.into());
        self
    }

    /// Adds a listener that receives every event of the task, in order, on a supervisor
    /// thread. A panicking listener is caught and the task carries on.
    pub fn listen(mut self, listener: impl Fn(&TaskEvent) + Send + Sync + 'static) -> Self {
        self.spec.listeners.push(Box::new(listener));
        self
    }

    /// Sends the task to the worker.
    ///
    /// # Errors
    /// [`SubmitError::Input`] when an input could not be encoded. A dead or closed worker
    /// is not an error here: the task is returned already CRASHED, with the reason.
    pub fn submit(self) -> Result<Task, SubmitError> {
        let TaskSpec {
            script,
            inputs,
            queue,
            listeners,
            error,
        } = self.spec;
        if let Some(err) = error {
            return Err(err);
        }
        Ok(self.service.link.submit(script, inputs, queue, listeners))
    }
}

#[cfg(test)]
mod tests;
