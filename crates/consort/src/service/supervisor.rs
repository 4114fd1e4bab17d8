//! The threads that run one worker: a writer, two readers, a monitor and a dispatcher.
//!
//! - Requests are written to the worker's stdin by the submitting thread itself, through a
//!   non-blocking pipe under one lock, so lines never interleave and a round trip costs no
//!   thread handoff. What the pipe does not take at once is queued for the **writer**,
//!   which waits for the pipe to drain: submitting never blocks on a full pipe.
//! - The **stdout reader** frames and decodes lines and routes responses to tasks. Whoever
//!   holds the `stdout` lock reads: this thread, or a thread waiting for a task without
//!   listeners (`ServiceLink::read_for`), which then reads its own answer (and routes any
//!   other line it meets) with no thread hop in between, as a pipe ping-pong does.
//! - The **stderr reader** keeps a bounded tail of stderr.
//! - The **monitor** waits for the process to exit (without reaping it), kills what is left
//!   of its process group, waits for both pipes to drain, reaps, and crashes pending tasks.
//! - The **dispatcher** calls task listeners, so a slow or panicking listener never stalls
//!   reading; a task's waiters are released after its listeners have seen its last event.
//!
//! Besides the worker, one more process: the **guardian** (`spawn_guardian`), a `sh` in the
//! worker's process group that SIGKILLs the group if this process dies, so the worker's own
//! children do not outlive the supervisor either.
//!
//! # Invariants
//! 1. The worker's process group is signalled only while the leader is unreaped
//!    (`Proc::reaped` is checked under the same lock the monitor reaps under).
//! 2. The registry lock covers both "the worker has exited" and the task table, so a task
//!    is either in the table when the monitor empties it, or sees the exit when submitted.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::protocol::{
    decode_line, Args, Decoded, Frame, Framer, Request, ResponseKind, TaskId, HEARTBEAT_LINE,
};
use crate::service::{spawner, Config, DebugLine, DebugStream, StartError};
use crate::sys::{self, signals, Pgid, Pid};
use crate::task::{
    CrashReport, EventKind, ExitStatus, Listener, Task, TaskCore, TaskError, TaskEvent, TaskLink,
    TaskState,
};

static NEXT_SERVICE: AtomicU64 = AtomicU64::new(1);
static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

/// A per-process random prefix, so task ids never collide across processes.
fn task_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        sys::random_u64().unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        })
    })
}

pub(crate) fn new_task_id() -> TaskId {
    let serial = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
    // As `format!("{:016x}{:016x}")`, without the formatting machinery (a tenth of a
    // round trip's instructions went there).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for word in [task_prefix(), serial] {
        for shift in (0..16).rev() {
            id.push(char::from(HEX[((word >> (shift * 4)) & 0xf) as usize]));
        }
    }
    TaskId::new(id)
}

/// A handle on a running worker's shared state, held by the `Service`, its tasks and its
/// threads.
#[derive(Clone)]
pub(crate) struct ServiceLink {
    shared: Arc<Shared>,
}

struct Shared {
    id: u64,
    pid: Pid,
    config: Arc<Config>,
    registry: Mutex<Registry>,
    /// Signalled when the worker has been reaped.
    exited: Condvar,
    /// Guards signalling the group against reaping its leader.
    proc: Mutex<Proc>,
    /// The worker's lifeline (see `spawn_guardian`), reaped by the monitor.
    guardian: Mutex<Option<Child>>,
    /// The worker's stdin and what is queued for it; `stdin_ready` wakes the writer.
    stdin: Mutex<StdinState>,
    stdin_ready: Condvar,
    dispatcher: Mutex<Option<Sender<Dispatch>>>,
    drain: Mutex<Drain>,
    drained: Condvar,
    stderr_tail: Mutex<Tail>,
    stdout_tail: Mutex<Tail>,
    /// The worker's stdout and the framing state: whoever holds this lock reads.
    stdout: Mutex<StdoutReader>,
    /// Why consort ended the worker, when it did; the first cause is kept.
    kill_cause: Mutex<Option<String>>,
    threads: Mutex<usize>,
    threads_done: Condvar,
    /// The init script's temporary file, removed when the worker ends.
    init_file: Mutex<Option<tempfile_path::TempPath>>,
    /// When the worker was started, and when its last stdout line arrived (milliseconds
    /// after `born`, plus one; 0: never). Pools use it to find wedged workers.
    born: Instant,
    heard: AtomicU64,
    /// Until when (nanoseconds after `born`) the stdout thread leaves stdout to waiters;
    /// `u64::MAX` while one is reading (see `run_stdout`).
    waiters_read_until: AtomicU64,
    /// The stdout thread, to wake it early.
    stdout_thread: OnceLock<std::thread::Thread>,
}

struct Registry {
    tasks: HashMap<TaskId, Arc<TaskCore>>,
    /// Set once, when the worker has ended and been reaped.
    report: Option<Arc<CrashReport>>,
    closing: bool,
}

struct Proc {
    child: Option<Child>,
    reaped: bool,
}

#[derive(Default)]
struct Drain {
    stdout_eof: bool,
    stderr_eof: bool,
    /// Bytes read from both pipes; the monitor watches it to tell silence from progress.
    bytes: u64,
    /// The stdout reader is handling bytes it has read (decoding a long line can take a
    /// while): that is progress too, not silence.
    stdout_busy: bool,
    /// The worker has exited (not yet reaped); set by the monitor as soon as it knows.
    exited: bool,
}

/// The worker's stdout, read by the stdout thread or by a waiter (see `read_for`).
struct StdoutReader {
    /// Our end, non-blocking; `None` once the stdout thread is done with it.
    pipe: Option<ChildStdout>,
    framer: Framer,
    buf: Vec<u8>,
    decoded: Vec<Decoded>,
    /// EOF or a read error was met: only the stdout thread reads any more, to finish up.
    ended: bool,
}

/// A waiter holding stdout (see `ServiceLink::read_for`). Dropped however reading ends,
/// a panic included, it gives stdout back.
struct WaiterReading<'a> {
    link: &'a ServiceLink,
    core: &'a TaskCore,
    reader: MutexGuard<'a, StdoutReader>,
}

impl Drop for WaiterReading<'_> {
    fn drop(&mut self) {
        let shared = &self.link.shared;
        // Leave stdout to the next waiter for a moment only when nothing else can be
        // waiting for a line: this task got its answer and no other is pending. Marked
        // while the lock is held, so the next waiter's mark is never overwritten.
        if self.core.is_delivered() && lock(&shared.registry).tasks.is_empty() {
            let until = shared.born.elapsed() + LEAVE_TO_WAITERS;
            shared
                .waiters_read_until
                .store(until.as_nanos() as u64, Ordering::Release);
        } else {
            // The lock is still held: the stdout thread's `try_lock` fails and it polls
            // again, by which time the lock is free.
            self.link.wake_reader();
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
const LEAVE_TO_WAITERS: Duration = Duration::from_millis(1);

/// The longest the monitor waits for the pipes to drain after the worker exited, however
/// much they keep producing (a process that escaped the group may flood them forever).
const MAX_DRAIN: Duration = Duration::from_secs(10);

/// The worker's stdin, shared by the submitting threads and the writer.
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
}

/// How a non-blocking write went.
enum Wrote {
    All,
    Part(usize),
    Failed(io::Error),
}

fn write_nonblocking(pipe: &ChildStdin, bytes: &[u8]) -> Wrote {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::write(pipe, &bytes[done..]) {
            Ok(n_written) => done += n_written,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Wrote::Part(done),
            Err(errno) => return Wrote::Failed(errno.into()),
        }
    }
    Wrote::All
}

struct Dispatch {
    core: Arc<TaskCore>,
    event: TaskEvent,
    terminal: bool,
}

/// A bounded tail of lines, by bytes.
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
}

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    fn push(&mut self, line: String) {
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

    fn snapshot(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

/// Keeps track of running supervisor threads, so `close` can wait for them (bounded).
struct ThreadGuard(Arc<Shared>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let mut alive = lock(&self.0.threads);
        *alive -= 1;
        if *alive == 0 {
            self.0.threads_done.notify_all();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks (listeners and debug sinks run outside them
    // and are caught); recover rather than cascade if that ever changes.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

mod tempfile_path {
    //! A temporary file removed on drop, written with mode 0600.
    use std::io::{self, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    pub(crate) struct TempPath(PathBuf);

    impl TempPath {
        pub(crate) fn write(prefix: &str, contents: &str) -> io::Result<TempPath> {
            let dir = std::env::temp_dir();
            for _ in 0..16 {
                let name = format!("{prefix}{:016x}.txt", crate::sys::random_u64()?);
                let path = dir.join(name);
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(mut file) => {
                        file.write_all(contents.as_bytes())?;
                        return Ok(TempPath(path));
                    }
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(err) => return Err(err),
                }
            }
            Err(io::Error::other("cannot find a free temporary file name"))
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            // The worker deletes it after reading it; this covers a worker that never did.
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Spawns the worker and its supervisor threads.
pub(crate) fn start(config: Arc<Config>) -> Result<ServiceLink, StartError> {
    let id = NEXT_SERVICE.fetch_add(1, Ordering::Relaxed);
    let init_file = match &config.init_script {
        Some(script) => Some(
            tempfile_path::TempPath::write("appose-init-", script)
                .map_err(StartError::InitScript)?,
        ),
        None => None,
    };
    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &config.cwd {
        command.current_dir(dir);
    }
    for (key, value) in &config.env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    if let Some(file) = &init_file {
        command.env("APPOSE_INIT_SCRIPT", file.path());
    }
    let mut child = spawner::spawn(command).map_err(|source| StartError::Spawn {
        program: config.program.clone(),
        source,
    })?;
    let pid = Pid(child.id());
    let guardian = spawn_guardian(pid);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };
    // Our ends only (the worker's ends are other open file descriptions): a full stdin
    // makes a write return EAGAIN instead of blocking the submitting thread, and an empty
    // stdout makes a read return EAGAIN, so whoever reads it never blocks holding the lock.
    let nonblocking = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(fd)?;
        rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(())
    };
    let poll_stdout = nonblocking(stdin.as_fd())
        .and_then(|()| nonblocking(stdout.as_fd()))
        .and_then(|()| stdout.as_fd().try_clone_to_owned());
    let poll_stdout = match poll_stdout {
        Ok(fd) => fd,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::Thread(err));
        }
    };
    let (dispatch_tx, dispatch_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        id,
        pid,
        registry: Mutex::new(Registry {
            tasks: HashMap::new(),
            report: None,
            closing: false,
        }),
        exited: Condvar::new(),
        proc: Mutex::new(Proc {
            child: Some(child),
            reaped: false,
        }),
        guardian: Mutex::new(guardian),
        stdin: Mutex::new(StdinState {
            pipe: Some(stdin),
            pending: Vec::new(),
            close: false,
            exited: false,
            failed: None,
        }),
        stdin_ready: Condvar::new(),
        dispatcher: Mutex::new(Some(dispatch_tx)),
        drain: Mutex::new(Drain::default()),
        drained: Condvar::new(),
        stderr_tail: Mutex::new(Tail::new(config.tail_bytes)),
        stdout_tail: Mutex::new(Tail::new(config.tail_bytes)),
        stdout: Mutex::new(StdoutReader {
            pipe: Some(stdout),
            framer: Framer::new(config.max_line),
            buf: vec![0u8; 64 * 1024],
            decoded: Vec::new(),
            ended: false,
        }),
        kill_cause: Mutex::new(None),
        threads: Mutex::new(0),
        threads_done: Condvar::new(),
        init_file: Mutex::new(init_file),
        born: Instant::now(),
        heard: AtomicU64::new(0),
        waiters_read_until: AtomicU64::new(0),
        stdout_thread: OnceLock::new(),
        config,
    });
    let link = ServiceLink { shared };
    link.debug(DebugStream::Note, || {
        format!("<worker process {} started>", pid.get())
    });
    let spawned = link
        .spawn_thread("monitor", |link| link.run_monitor())
        .and_then(|()| link.spawn_thread("stdout", move |link| link.run_stdout(poll_stdout)))
        .and_then(|()| link.spawn_thread("stderr", move |link| link.run_stderr(stderr)))
        .and_then(|()| link.spawn_thread("writer", |link| link.run_writer()))
        .and_then(|()| link.spawn_thread("dispatch", move |link| link.run_dispatcher(dispatch_rx)));
    if let Err(err) = spawned {
        link.kill_now("a supervisor thread could not be started");
        return Err(StartError::Thread(err));
    }
    Ok(link)
}

/// Starts the worker's lifeline: a `sh` that joins the worker's process group and waits for
/// EOF on a pipe that only this process writes to, then SIGKILLs the whole group.
///
/// The parent-death signal ends the worker when this process dies, however it dies, but not
/// the worker's own children, and nothing of this process is left to signal their group. The
/// kernel closes the pipe when this process dies, and the guardian does it. As long as the
/// guardian lives, the group id cannot be reused, so its `kill` never hits another group.
/// Without `/bin/sh` the worker runs without a lifeline (logged).
fn spawn_guardian(pid: Pid) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("read -r _; kill -9 0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(i32::try_from(pid.get()).ok()?);
    match command.spawn() {
        Ok(guardian) => Some(guardian),
        Err(err) => {
            tracing::warn!(
                "cannot start the lifeline of worker {}: its children may outlive this \
                 process if it is killed: {err}",
                pid.get()
            );
            None
        }
    }
}

impl ServiceLink {
    fn spawn_thread(
        &self,
        role: &str,
        body: impl FnOnce(&ServiceLink) + Send + 'static,
    ) -> io::Result<()> {
        let link = self.clone();
        *lock(&self.shared.threads) += 1;
        let result = std::thread::Builder::new()
            .name(format!("consort-{}-{role}", self.shared.id))
            .spawn(move || {
                let _guard = ThreadGuard(Arc::clone(&link.shared));
                body(&link);
            });
        match result {
            Ok(_detached) => Ok(()),
            Err(err) => {
                *lock(&self.shared.threads) -= 1;
                Err(err)
            }
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid.get()
    }

    /// When the worker's last stdout line (a heartbeat counts) arrived, or its start.
    pub(crate) fn last_heard(&self) -> Instant {
        let heard = self.shared.heard.load(Ordering::Relaxed).saturating_sub(1);
        self.shared.born + Duration::from_millis(heard)
    }

    /// Whether the worker ever wrote a line on stdout.
    pub(crate) fn heard_anything(&self) -> bool {
        self.shared.heard.load(Ordering::Relaxed) > 0
    }

    fn debug(&self, stream: DebugStream, text: impl FnOnce() -> String) {
        let sink = self.shared.config.debug.as_ref();
        let traced = tracing::enabled!(target: "consort::service", tracing::Level::TRACE);
        if sink.is_none() && !traced {
            return;
        }
        let line = DebugLine {
            service: self.shared.id,
            stream,
            text: text(),
        };
        if traced {
            tracing::trace!(target: "consort::service", service = line.service, stream = ?line.stream, "{}", line.text);
        }
        if let Some(sink) = sink {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&line))).is_err() {
                tracing::warn!("the debug callback panicked; debug output carries on");
            }
        }
    }

    // -- submitting --------------------------------------------------------------------

    pub(crate) fn submit(
        &self,
        script: String,
        inputs: Args,
        queue: Option<String>,
        listeners: Vec<Listener>,
    ) -> Task {
        let id = new_task_id();
        let core = TaskCore::new(id.clone(), listeners);
        let task = Task {
            core: Arc::clone(&core),
            link: TaskLink::Service(self.clone()),
        };
        let refused = {
            let mut registry = lock(&self.shared.registry);
            match (&registry.report, registry.closing) {
                (Some(report), _) => Some((**report).clone()),
                (None, true) => Some(self.provisional_report("the service is closing")),
                (None, false) => {
                    registry.tasks.insert(id.clone(), Arc::clone(&core));
                    None
                }
            }
        };
        match refused {
            Some(report) => {
                // The same text as a task the monitor crashes (`finish_task`).
                let error = TaskError::Crashed(Box::new(report));
                let text = error.to_string();
                if core.finish(TaskState::Crashed, Err(error)) {
                    let mut event = TaskEvent::new(id, EventKind::Crash);
                    event.error = Some(text);
                    // No dispatcher may be left: deliver on this thread.
                    core.deliver(&event);
                    core.release_waiters();
                }
            }
            None => {
                self.send(Request::Execute {
                    task: id,
                    script,
                    inputs,
                    queue,
                });
                if core.has_listeners() {
                    // Its events come through the stdout thread, not a waiter.
                    self.wake_reader();
                }
            }
        }
        task
    }

    fn provisional_report(&self, cause: &str) -> CrashReport {
        CrashReport {
            pid: self.shared.pid.get(),
            status: ExitStatus::Unknown,
            cause: Some(cause.to_owned()),
            stderr: lock(&self.shared.stderr_tail).snapshot(),
            stdout: lock(&self.shared.stdout_tail).snapshot(),
        }
    }

    /// Writes one request line: directly when the pipe takes it, else queued for the writer.
    ///
    /// Nothing is lost by not writing: once the pipe is gone, the worker is gone or going,
    /// and the monitor crashes every registered task.
    fn send(&self, request: Request) {
        let mut line = request.encode();
        self.debug(DebugStream::Stdin, || line.clone());
        line.push('\n');
        let mut stdin = lock(&self.shared.stdin);
        let state = &mut *stdin;
        let Some(pipe) = state.pipe.as_ref() else {
            return;
        };
        if state.close || state.failed.is_some() {
            return;
        }
        if !state.pending.is_empty() {
            state.pending.extend_from_slice(line.as_bytes());
            return;
        }
        match write_nonblocking(pipe, line.as_bytes()) {
            Wrote::All => return,
            Wrote::Part(n_written) => state
                .pending
                .extend_from_slice(&line.as_bytes()[n_written..]),
            Wrote::Failed(err) => state.failed = Some(err),
        }
        self.shared.stdin_ready.notify_one();
    }

    pub(crate) fn cancel(&self, task: &TaskId) {
        self.send(Request::Cancel { task: task.clone() });
    }

    /// Ends `core` CANCELED (forced) and kills the worker, unless the task ended first.
    pub(crate) fn hard_cancel(&self, core: &Arc<TaskCore>) {
        lock(&self.shared.registry).tasks.remove(&core.id);
        if !core.finish(
            TaskState::Canceled,
            Err(TaskError::Canceled { forced: true }),
        ) {
            return;
        }
        self.debug(DebugStream::Note, || {
            format!("<hard cancel of task {}: killing the worker>", core.id)
        });
        self.dispatch(
            core,
            TaskEvent::new(core.id.clone(), EventKind::Cancelation),
            true,
        );
        self.signal_group(
            signals::KILL,
            Some(format!(
                "the worker was killed to hard-cancel task {}",
                core.id
            )),
        );
    }

    // -- ending ------------------------------------------------------------------------

    /// Signals the worker's process group, unless it was reaped already. Records `cause`
    /// as the reason the worker ended, unless an earlier cause was recorded.
    fn signal_group(&self, signal: i32, cause: Option<String>) {
        if let Some(cause) = cause {
            lock(&self.shared.kill_cause).get_or_insert(cause);
        }
        let proc = lock(&self.shared.proc);
        if proc.reaped {
            return;
        }
        // The leader is unreaped, so its pid still names this group and nothing else.
        let pgid = Pgid(self.shared.pid.get());
        if let Err(err) = pgid.signal(signal) {
            // ESRCH: the whole group is gone already; nothing to do.
            tracing::debug!("signal {signal} to process group {}: {err}", pgid.0);
        }
    }

    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.shared.registry)
            .report
            .as_ref()
            .map(|report| report.status)
    }

    pub(crate) fn crash_report(&self) -> Option<CrashReport> {
        lock(&self.shared.registry)
            .report
            .as_ref()
            .map(|report| (**report).clone())
    }

    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        lock(&self.shared.stderr_tail).snapshot()
    }

    pub(crate) fn invalid_lines(&self) -> Vec<String> {
        lock(&self.shared.stdout_tail).snapshot()
    }

    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now().checked_add(timeout);
        let mut registry = lock(&self.shared.registry);
        loop {
            if let Some(report) = &registry.report {
                return Some(report.status);
            }
            let remaining = match deadline {
                Some(deadline) => deadline.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            registry = self
                .shared
                .exited
                .wait_timeout(registry, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// The bounded escalation: stdin EOF, SIGTERM, SIGKILL.
    pub(crate) fn close(&self) -> ExitStatus {
        {
            let mut registry = lock(&self.shared.registry);
            if let Some(report) = &registry.report {
                return report.status;
            }
            registry.closing = true;
            self.wake_reader();
        }
        let config = Arc::clone(&self.shared.config);
        lock(&self.shared.kill_cause).get_or_insert_with(|| "service closed".to_owned());
        self.debug(DebugStream::Note, || "<closing worker stdin>".to_owned());
        lock(&self.shared.stdin).close = true;
        self.shared.stdin_ready.notify_one();
        if let Some(status) = self.wait_exit(config.close_grace) {
            self.wait_threads(config.kill_grace);
            return status;
        }
        self.debug(DebugStream::Note, || {
            format!(
                "<worker did not exit within {:?} of stdin EOF: SIGTERM to its process group>",
                config.close_grace
            )
        });
        self.signal_group(signals::TERM, None);
        // A stopped worker cannot act on SIGTERM until it is continued.
        self.signal_group(signals::CONT, None);
        if let Some(status) = self.wait_exit(config.kill_grace) {
            self.wait_threads(config.kill_grace);
            return status;
        }
        self.kill_now("service closed; the worker ignored stdin EOF and SIGTERM")
    }

    /// SIGKILL to the group, then a bounded wait for the reap.
    pub(crate) fn kill_now(&self, cause: &str) -> ExitStatus {
        lock(&self.shared.registry).closing = true;
        self.wake_reader();
        self.debug(DebugStream::Note, || {
            "<SIGKILL to the worker's process group>".to_owned()
        });
        self.signal_group(signals::KILL, Some(cause.to_owned()));
        // After SIGKILL the exit is immediate unless the process is stuck in the kernel
        // (uninterruptible sleep); never wait for that without a bound.
        let bound = self.shared.config.kill_grace.max(Duration::from_secs(1));
        let deadline = Instant::now() + bound;
        let status = self.wait_exit(bound).unwrap_or(ExitStatus::Unknown);
        // One bound for both waits, so that close stays within close_grace + kill_grace +
        // max(kill_grace, 1 s) even when a supervisor thread is stuck (in a debug sink).
        self.wait_threads(deadline.saturating_duration_since(Instant::now()));
        status
    }

    /// Waits, bounded, for the supervisor threads to end.
    fn wait_threads(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut alive = lock(&self.shared.threads);
        while *alive > 0 {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!(
                    "{} supervisor thread(s) of service {} still running after close",
                    *alive,
                    self.shared.id
                );
                return;
            };
            alive = self
                .shared
                .threads_done
                .wait_timeout(alive, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    // -- the threads -------------------------------------------------------------------

    /// Writes what the pipe did not take at once, closes stdin on `close`, and decides
    /// what a failed write means.
    fn run_writer(&self) {
        // A second handle on the pipe, to wait for room without holding the lock; closed
        // with the pipe, so that the worker sees EOF.
        let mut poll_fd = None;
        let mut stdin = lock(&self.shared.stdin);
        loop {
            if stdin.exited {
                stdin.pipe = None;
                stdin.pending = Vec::new();
                return;
            }
            if let Some(err) = stdin.failed.take() {
                stdin.pipe = None;
                stdin.pending = Vec::new();
                let closing = stdin.close;
                drop(stdin);
                drop(poll_fd);
                if !closing && !self.exited_by_itself() {
                    // The worker closed its stdin while alive: it can take no more tasks,
                    // and those it was sent may never run. End it so they end too.
                    self.debug(DebugStream::Note, || {
                        format!("<cannot write to the worker: {err}>")
                    });
                    self.signal_group(
                        signals::KILL,
                        Some(format!("the worker stopped reading its stdin ({err})")),
                    );
                }
                return;
            }
            let state = &mut *stdin;
            let Some(pipe) = state.pipe.as_ref() else {
                return;
            };
            if !state.pending.is_empty() {
                match write_nonblocking(pipe, &state.pending) {
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
                        stdin = lock(&self.shared.stdin);
                    }
                }
                continue;
            }
            if stdin.close {
                stdin.pipe = None;
                drop(poll_fd);
                return;
            }
            stdin = self
                .shared
                .stdin_ready
                .wait(stdin)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    /// Whether the worker has exited, waiting briefly: a worker that exits closes its stdin a
    /// moment before the monitor sees it exit, so a broken pipe alone does not tell a worker
    /// that exited (its tasks will crash with its own status) from one that closed its stdin
    /// and lives on (which must be killed, or its tasks would wait forever).
    fn exited_by_itself(&self) -> bool {
        let bound = self.shared.config.drain_silence;
        let deadline = Instant::now() + bound;
        let mut drain = lock(&self.shared.drain);
        while !drain.exited {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            drain = self
                .shared
                .drained
                .wait_timeout(drain, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        true
    }

    /// Reads stdout whenever it has bytes and waiters do not read it, and finishes up at
    /// EOF. `poll_fd` is a second handle on the pipe, to wait for bytes without the lock.
    fn run_stdout(&self, poll_fd: OwnedFd) {
        let _ = self.shared.stdout_thread.set(std::thread::current());
        loop {
            let now = self.shared.born.elapsed().as_nanos() as u64;
            let until = self.shared.waiters_read_until.load(Ordering::Acquire);
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
                    self.debug(DebugStream::Note, || {
                        format!("<polling worker stdout: {err}>")
                    });
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let mut reader = match self.shared.stdout.try_lock() {
                Ok(reader) => reader,
                Err(TryLockError::Poisoned(poison)) => poison.into_inner(),
                // A waiter is reading, and these bytes woke it too.
                Err(TryLockError::WouldBlock) => {
                    std::thread::yield_now();
                    continue;
                }
            };
            if self.pump(&mut reader) == Pumped::Ended {
                break;
            }
        }
        let mut reader = lock(&self.shared.stdout);
        self.set_stdout_busy(Some(0));
        let StdoutReader {
            framer, decoded, ..
        } = &mut *reader;
        framer.finish(|frame| self.on_frame(frame, decoded));
        reader.pipe = None;
        drop(reader);
        self.debug(DebugStream::Note, || "<worker stdout closed>".to_owned());
        let mut drain = lock(&self.shared.drain);
        drain.stdout_eof = true;
        drain.stdout_busy = false;
        self.shared.drained.notify_all();
    }

    /// Reads and handles what stdout holds now, without blocking.
    fn pump(&self, reader: &mut StdoutReader) -> Pumped {
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
                    self.set_stdout_busy(Some(n_read));
                    framer.push(&buf[..n_read], |frame| self.on_frame(frame, decoded));
                    self.set_stdout_busy(None);
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
                    self.debug(DebugStream::Note, || format!("<worker stdout: {err}>"));
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
    pub(crate) fn read_for(&self, core: &TaskCore, deadline: Option<Instant>) {
        let now = Instant::now();
        let until = match deadline {
            Some(deadline) => deadline.min(now + READ_FOR),
            None => now + READ_FOR,
        };
        let spin_until = until.min(now + SPIN_READING);
        let Ok(reader) = self.shared.stdout.try_lock() else {
            return;
        };
        let mut reading = WaiterReading {
            link: self,
            core,
            reader,
        };
        self.shared
            .waiters_read_until
            .store(u64::MAX, Ordering::Release);
        loop {
            if self.pump(&mut reading.reader) == Pumped::Ended || core.is_delivered() {
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

    /// Hands stdout back to the stdout thread now (see `LEAVE_TO_WAITERS`).
    pub(crate) fn wake_reader(&self) {
        if self.shared.waiters_read_until.swap(0, Ordering::AcqRel) != 0 {
            if let Some(thread) = self.shared.stdout_thread.get() {
                thread.unpark();
            }
        }
    }

    fn note_progress(&self, n_read: usize) {
        lock(&self.shared.drain).bytes += n_read as u64;
    }

    /// `Some(n_read)`: the stdout reader read `n_read` bytes and is handling them; `None`:
    /// it is done and about to read again.
    fn set_stdout_busy(&self, read: Option<usize>) {
        let mut drain = lock(&self.shared.drain);
        drain.stdout_busy = read.is_some();
        drain.bytes += read.unwrap_or(0) as u64;
    }

    fn on_frame(&self, frame: Frame<'_>, decoded: &mut Vec<Decoded>) {
        match frame {
            Frame::Line(line) => {
                let heard = self.shared.born.elapsed().as_millis() as u64 + 1;
                self.shared.heard.store(heard, Ordering::Relaxed);
                if line == HEARTBEAT_LINE {
                    return;
                }
                self.debug(DebugStream::Stdout, || {
                    String::from_utf8_lossy(line).into_owned()
                });
                decode_line(line, decoded);
                for item in decoded.drain(..) {
                    match item {
                        Decoded::Response(response) => self.route(response.task, response.kind),
                        Decoded::Noise(noise) => {
                            self.debug(DebugStream::Note, || format!("<INVALID> {noise}"));
                            lock(&self.shared.stdout_tail).push(noise);
                        }
                    }
                }
            }
            Frame::Oversize { len } => self.on_oversize(len),
        }
    }

    fn on_oversize(&self, len: usize) {
        let message = format!(
            "the worker wrote a stdout line of {len} bytes, over the limit of {} bytes; \
             its pending tasks cannot be trusted to get their responses",
            self.shared.config.max_line
        );
        self.debug(DebugStream::Note, || format!("<{message}>"));
        lock(&self.shared.stdout_tail).push(format!("<line of {len} bytes dropped>"));
        let pending: Vec<_> = lock(&self.shared.registry)
            .tasks
            .drain()
            .map(|(_, core)| core)
            .collect();
        for core in pending {
            self.finish_task(
                &core,
                TaskState::Failed,
                Err(TaskError::Failed {
                    message: message.clone(),
                }),
            );
        }
    }

    fn route(&self, task: TaskId, kind: ResponseKind) {
        let core = if kind.is_terminal() {
            lock(&self.shared.registry).tasks.remove(&task)
        } else {
            lock(&self.shared.registry).tasks.get(&task).cloned()
        };
        let Some(core) = core else {
            self.debug(DebugStream::Note, || format!("<no such task: {task}>"));
            return;
        };
        match kind {
            ResponseKind::Launch => {
                if core.launch() && core.has_listeners() {
                    self.dispatch(&core, TaskEvent::new(task, EventKind::Launch), false);
                }
            }
            ResponseKind::Update(progress) => {
                if core.has_listeners() && !core.state().is_finished() {
                    let mut event = TaskEvent::new(task, EventKind::Update);
                    event.progress = progress;
                    self.dispatch(&core, event, false);
                }
            }
            ResponseKind::Completion(outputs) => {
                self.finish_task(&core, TaskState::Complete, Ok(outputs));
            }
            ResponseKind::Cancelation => {
                self.finish_task(
                    &core,
                    TaskState::Canceled,
                    Err(TaskError::Canceled { forced: false }),
                );
            }
            ResponseKind::Failure(error) => {
                let message = error.unwrap_or_else(|| "unknown error".to_owned());
                self.finish_task(&core, TaskState::Failed, Err(TaskError::Failed { message }));
            }
        }
    }

    /// Ends a task (first terminal transition wins) and delivers its last event.
    fn finish_task(&self, core: &Arc<TaskCore>, state: TaskState, result: Result<Args, TaskError>) {
        let mut event = TaskEvent::new(
            core.id.clone(),
            match state {
                TaskState::Complete => EventKind::Completion,
                TaskState::Canceled => EventKind::Cancelation,
                TaskState::Failed => EventKind::Failure,
                _ => EventKind::Crash,
            },
        );
        match &result {
            Ok(outputs) if core.has_listeners() => event.outputs = Some(outputs.clone()),
            Ok(_) => {}
            Err(TaskError::Failed { message }) => event.error = Some(message.clone()),
            Err(err @ TaskError::Crashed(_)) => event.error = Some(err.to_string()),
            Err(_) => {}
        }
        if core.finish(state, result) {
            self.dispatch(core, event, true);
        }
    }

    fn dispatch(&self, core: &Arc<TaskCore>, event: TaskEvent, terminal: bool) {
        if !core.has_listeners() {
            if terminal {
                core.release_waiters();
            }
            return;
        }
        let message = Dispatch {
            core: Arc::clone(core),
            event,
            terminal,
        };
        let unsent = match lock(&self.shared.dispatcher).as_ref() {
            Some(dispatcher) => dispatcher.send(message).err().map(|err| err.0),
            None => Some(message),
        };
        if let Some(message) = unsent {
            // The dispatcher is gone (the service ended): deliver here.
            deliver(message);
        }
    }

    fn run_dispatcher(&self, events: Receiver<Dispatch>) {
        for message in events {
            deliver(message);
        }
    }

    fn run_stderr(&self, mut stderr: ChildStderr) {
        let max_line = self.shared.config.max_line;
        let mut framer = Framer::new(max_line);
        let mut buf = vec![0u8; 16 * 1024];
        let on_frame = |frame: Frame<'_>| {
            let line = match frame {
                Frame::Line(line) => {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    String::from_utf8_lossy(line).into_owned()
                }
                Frame::Oversize { len } => format!("<stderr line of {len} bytes dropped>"),
            };
            self.debug(DebugStream::Stderr, || line.clone());
            lock(&self.shared.stderr_tail).push(line);
        };
        let mut on_frame = on_frame;
        loop {
            match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n_read) => {
                    framer.push(&buf[..n_read], &mut on_frame);
                    self.note_progress(n_read);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        framer.finish(&mut on_frame);
        self.debug(DebugStream::Note, || "<worker stderr closed>".to_owned());
        let mut drain = lock(&self.shared.drain);
        drain.stderr_eof = true;
        self.shared.drained.notify_all();
    }

    fn run_monitor(&self) {
        let pid = self.shared.pid;
        if let Err(err) = pid.wait_exited_keep_zombie() {
            tracing::error!("waiting for worker {}: {err}", pid.get());
        }
        lock(&self.shared.drain).exited = true;
        self.shared.drained.notify_all();
        self.wake_reader();
        // Whatever is left of the group (grandchildren) would hold our pipes open and
        // outlive the worker: end it before the leader is reaped and its id freed.
        self.signal_group(signals::KILL, None);
        self.wait_drained();
        let status = {
            let mut proc = lock(&self.shared.proc);
            let status = proc.child.as_mut().map(Child::wait);
            proc.reaped = true;
            proc.child = None;
            match status {
                Some(Ok(status)) => match (status.code(), status.signal()) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal),
                    (None, None) => ExitStatus::Unknown,
                },
                _ => ExitStatus::Unknown,
            }
        };
        let report = Arc::new(CrashReport {
            pid: pid.get(),
            status,
            cause: lock(&self.shared.kill_cause).clone(),
            stderr: lock(&self.shared.stderr_tail).snapshot(),
            stdout: lock(&self.shared.stdout_tail).snapshot(),
        });
        let pending: Vec<_> = {
            let mut registry = lock(&self.shared.registry);
            registry.report = Some(Arc::clone(&report));
            registry.tasks.drain().map(|(_, core)| core).collect()
        };
        self.debug(DebugStream::Note, || {
            format!(
                "<worker process terminated with {status}; {} pending task(s)>",
                pending.len()
            )
        });
        for core in pending {
            if core.hard_cancel_asked() {
                // Its own hard cancel was under way: the death is the kill it asked for.
                self.finish_task(
                    &core,
                    TaskState::Canceled,
                    Err(TaskError::Canceled { forced: true }),
                );
            } else {
                self.finish_task(
                    &core,
                    TaskState::Crashed,
                    Err(TaskError::Crashed(Box::new((*report).clone()))),
                );
            }
        }
        self.shared.exited.notify_all();
        // Let the writer and the dispatcher run out once their queues are empty.
        lock(&self.shared.stdin).exited = true;
        self.shared.stdin_ready.notify_one();
        lock(&self.shared.dispatcher).take();
        // The init script's file, if the worker never removed it, goes with the worker.
        lock(&self.shared.init_file).take();
        // The group SIGKILL above ended the guardian; reaped last, off the crash's path.
        self.reap_guardian();
    }

    /// Reaps the guardian, which the group SIGKILL just ended (bounded: a process stuck in
    /// the kernel is left behind rather than waited for).
    fn reap_guardian(&self) {
        let Some(mut guardian) = lock(&self.shared.guardian).take() else {
            return;
        };
        drop(guardian.stdin.take());
        let deadline = Instant::now() + self.shared.config.kill_grace.max(Duration::from_secs(1));
        loop {
            match guardian.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!("the lifeline of worker {} did not exit", self.pid());
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Waits until both pipes reached EOF, or stayed silent for `drain_silence`, or
    /// `MAX_DRAIN` passed.
    ///
    /// Silence means no bytes read *and* the stdout reader idle: a reader still decoding the
    /// last (possibly 16 MiB) line it read is making progress, and declaring the crash then
    /// would lose the COMPLETION in that line.
    fn wait_drained(&self) {
        let silence = self.shared.config.drain_silence;
        let started = Instant::now();
        let mut drain = lock(&self.shared.drain);
        let mut seen = drain.bytes;
        let mut quiet_since = Instant::now();
        while !(drain.stdout_eof && drain.stderr_eof) {
            let remaining = silence
                .checked_sub(quiet_since.elapsed())
                .filter(|_| started.elapsed() < MAX_DRAIN);
            let Some(remaining) = remaining else {
                self.debug(DebugStream::Note, || {
                    "<worker pipes still open after exit (held by an escaped process?)>".to_owned()
                });
                return;
            };
            drain = self
                .shared
                .drained
                .wait_timeout(drain, remaining.min(Duration::from_millis(20)))
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
            if drain.bytes != seen || drain.stdout_busy {
                seen = drain.bytes;
                quiet_since = Instant::now();
            }
        }
    }
}

fn deliver(message: Dispatch) {
    message.core.deliver(&message.event);
    if message.terminal {
        message.core.release_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_the_prefix_and_serial_in_32_hex_digits() {
        let first = new_task_id();
        let second = new_task_id();
        for id in [&first, &second] {
            let text = id.to_string();
            assert_eq!(text.len(), 32, "{text}");
            assert!(text
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')));
            assert_eq!(text[..16], format!("{:016x}", task_prefix()));
        }
        let serial = |id: &TaskId| u64::from_str_radix(&id.to_string()[16..], 16).unwrap();
        assert!(serial(&second) > serial(&first));
    }
}
