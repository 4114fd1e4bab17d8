//! The worker SDK: write an Appose worker in Rust as one function.
//!
//! [`serve`] reads requests from stdin and writes responses to stdout. Each task runs on a
//! bounded pool of threads (or, with `queue: "main"`, in order on the thread that called
//! `serve`), with a fresh [`CancelToken`] that a CANCEL request, stdin EOF or SIGTERM
//! cancels. The handler returns the outputs, or a [`Failure`]; a panic fails the task and
//! the worker lives on.
//!
//! ```no_run
//! use consort::worker::{self, Failure, TaskContext};
//!
//! fn main() -> std::io::Result<()> {
//!     worker::serve(|task: &TaskContext| {
//!         task.update(Some("working"), Some(1), Some(2));
//!         if task.is_cancelled() {
//!             return Err(Failure::Cancelled);
//!         }
//!         Ok(task.inputs().clone())
//!     })
//! }
//! ```
//!
//! # Invariants
//! 1. Every accepted EXECUTE gets exactly one terminal response, written by the task's own
//!    thread when the handler returns or panics. No janitor decides a task is dead: the
//!    task itself says so (the appose "thread death" TOCTOU cannot happen).
//! 2. Each response is one `write_all` of a whole line under the output lock, so lines
//!    never interleave. Stray `println!`s go to stderr: stdout is moved to a private fd.
//! 3. Cancellation tokens are one-way and per task (children of the worker's root token).
//! 4. A bad request never stops the reader: it fails its task, or is reported on stderr.
//! 5. After stdin EOF or SIGTERM, every token is cancelled and `serve` returns within
//!    `shutdown_grace`, whatever the handlers do.
//!
//! # Latency
//! A task runs on the thread that read its request, and that thread looks for the next
//! request for 50 µs, yielding, before its read blocks: a client that sends a request as
//! soon as it has an answer finds it awake, and no CPU has to come out of its halt. An idle
//! worker costs those 50 µs once, then sleeps.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cancel::CancelToken;
use crate::protocol::{decode_request, Args, Progress, Request, Response, ResponseKind, TaskId};

/// Why a task did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The task failed; the text becomes the FAILURE's `error`.
    Failed(String),
    /// The task stopped because it was asked to (answered with CANCELATION).
    Cancelled,
}

impl<T: fmt::Display> From<T> for Failure {
    fn from(error: T) -> Failure {
        Failure::Failed(error.to_string())
    }
}

/// The code that runs tasks.
pub trait Handler: Send + Sync + 'static {
    /// Runs one task and returns its outputs.
    ///
    /// # Errors
    /// [`Failure::Failed`] to fail the task, [`Failure::Cancelled`] to acknowledge a cancel.
    fn run(&self, task: &TaskContext) -> Result<Args, Failure>;
}

impl<F> Handler for F
where
    F: Fn(&TaskContext) -> Result<Args, Failure> + Send + Sync + 'static,
{
    fn run(&self, task: &TaskContext) -> Result<Args, Failure> {
        self(task)
    }
}

/// What a handler sees of its task.
pub struct TaskContext {
    id: TaskId,
    script: String,
    inputs: Args,
    queue: Option<String>,
    token: CancelToken,
    session: Arc<Session>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("script", &self.script)
            .field("queue", &self.queue)
            .field("cancelled", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The task's identifier.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// The script the service sent.
    pub fn script(&self) -> &str {
        &self.script
    }

    /// The inputs, as sent.
    pub fn inputs(&self) -> &Args {
        &self.inputs
    }

    /// One input, decoded as `T`.
    ///
    /// # Errors
    /// A [`Failure::Failed`] naming the input when it is missing or of another type.
    pub fn input<T: DeserializeOwned>(&self, name: &str) -> Result<T, Failure> {
        let value = self
            .inputs
            .get(name)
            .ok_or_else(|| Failure::Failed(format!("missing input {name:?}")))?;
        T::deserialize(value).map_err(|err| Failure::Failed(format!("input {name:?}: {err}")))
    }

    /// The queue the task was sent to (`Some("main")` for the main thread).
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// Reports progress (an UPDATE); every field is optional.
    pub fn update(&self, message: Option<&str>, current: Option<i64>, maximum: Option<i64>) {
        self.report(Progress {
            message: message.map(str::to_owned),
            current,
            maximum,
            info: None,
        });
    }

    /// Reports progress with every field, `info` included.
    pub fn report(&self, progress: Progress) {
        self.session
            .respond(&self.id, ResponseKind::Update(progress));
    }

    /// Whether the task was asked to stop (CANCEL, stdin EOF or SIGTERM).
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Blocks until the task is asked to stop or `timeout` passes; returns whether it was.
    pub fn wait_cancelled(&self, timeout: Duration) -> bool {
        self.token.wait_timeout(timeout)
    }

    /// The task's token, to hand to code that should stop with it (take a child token
    /// for sub-work).
    pub fn cancel_token(&self) -> &CancelToken {
        &self.token
    }

    /// Stores a value for later tasks (Appose's `task.export`).
    ///
    /// # Errors
    /// When the value cannot be represented as JSON.
    pub fn export(&self, name: &str, value: impl Serialize) -> Result<(), Failure> {
        let value = serde_json::to_value(value)?;
        lock(&self.session.exports).insert(name.to_owned(), value);
        Ok(())
    }

    /// A value exported by an earlier task, if any.
    pub fn exported(&self, name: &str) -> Option<Value> {
        lock(&self.session.exports).get(name).cloned()
    }
}

/// Worker settings; [`Worker::serve`] runs the loop.
#[derive(Debug, Clone)]
pub struct Worker {
    threads: usize,
    shutdown_grace: Duration,
    protect_stdout: bool,
}

impl Default for Worker {
    fn default() -> Worker {
        Worker {
            threads: 64,
            shutdown_grace: Duration::from_secs(1),
            protect_stdout: true,
        }
    }
}

/// Serves tasks with default settings; see [`Worker`].
///
/// # Errors
/// When stdout cannot be set up for the protocol.
pub fn serve(handler: impl Handler) -> io::Result<()> {
    Worker::new().serve(handler)
}

impl Worker {
    /// Default settings: up to 64 task threads, 1 s of grace at shutdown.
    pub fn new() -> Worker {
        Worker::default()
    }

    /// The most tasks that run at once (threads are started as needed); more wait, FIFO.
    pub fn with_threads(mut self, threads: usize) -> Worker {
        self.threads = threads.max(1);
        self
    }

    /// How long, after stdin EOF or SIGTERM, running tasks get to end before `serve`
    /// returns without them.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Worker {
        self.shutdown_grace = grace;
        self
    }

    /// Whether to move the protocol to a private fd and send fd 1 to stderr, so stray
    /// prints cannot corrupt the protocol (default true).
    pub fn with_protected_stdout(mut self, protect: bool) -> Worker {
        self.protect_stdout = protect;
        self
    }

    /// Reads requests from stdin until EOF or SIGTERM, running tasks with `handler`.
    ///
    /// Main-queue tasks run on the calling thread, in the order they arrived.
    ///
    /// # Errors
    /// When stdout cannot be duplicated or the SIGTERM handler cannot be installed.
    pub fn serve(self, handler: impl Handler) -> io::Result<()> {
        let out = protocol_output(self.protect_stdout)?;
        let root = CancelToken::new();
        let (events, incoming) = mpsc::channel();
        let session = Arc::new(Session {
            out: Mutex::new(io::BufWriter::with_capacity(64 * 1024, out)),
            root: root.clone(),
            running: Mutex::new(HashMap::new()),
            idle: Condvar::new(),
            exports: Mutex::new(Args::new()),
            events: events.clone(),
        });
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let task_threads = TaskThreads {
            inner: Arc::new(TaskThreadsInner {
                state: Mutex::new(TaskThreadsState {
                    queue: VecDeque::new(),
                    threads: 0,
                    starting: 0,
                    free: 0,
                    watching: false,
                    vacant: None,
                    busy: None,
                }),
                seat: Condvar::new(),
                reader: Mutex::new(Reader {
                    // Our own buffer on fd 0, so the reader knows when it is empty.
                    stdin: io::BufReader::new(File::from(
                        io::stdin().as_fd().try_clone_to_owned()?,
                    )),
                }),
                reading: AtomicBool::new(false),
                eof: AtomicBool::new(false),
                max: self.threads,
                session: Arc::clone(&session),
                handler,
                events,
            }),
        };
        watch_sigterm(task_threads.inner.events.clone())?;
        start_heartbeat(&session);
        {
            // A reader, and a follower to read on while the first task runs.
            let mut state = lock(&task_threads.inner.state);
            task_threads.start_thread(&mut state)?;
            task_threads.start_thread(&mut state)?;
        }
        // The main thread: main-queue tasks in FIFO order, until shutdown.
        for event in incoming.iter() {
            match event {
                Event::Main(accepted) => accepted.run(),
                Event::Shutdown(reason) => {
                    eprintln!("consort worker: {reason}; cancelling running tasks");
                    break;
                }
            }
        }
        root.cancel();
        // Main-queue tasks still queued get their one answer (CANCELATION), not silence.
        for event in incoming.try_iter() {
            if let Event::Main(accepted) = event {
                accepted.run();
            }
        }
        session.wait_idle(self.shutdown_grace);
        let _ = lock(&session.out).flush();
        Ok(())
    }
}

enum Event {
    Main(Accepted),
    Shutdown(&'static str),
}

struct Session {
    out: Mutex<io::BufWriter<File>>,
    root: CancelToken,
    /// Tokens of accepted tasks that have not answered yet.
    running: Mutex<HashMap<TaskId, CancelToken>>,
    idle: Condvar,
    exports: Mutex<Args>,
    events: Sender<Event>,
}

impl Session {
    fn respond(&self, task: &TaskId, kind: ResponseKind) {
        let response = Response {
            task: task.clone(),
            kind,
        };
        let mut line = response.encode();
        line.push('\n');
        let mut out = lock(&self.out);
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            // The supervisor is gone (EPIPE): nobody can receive results any more.
            drop(out);
            let _ = self.events.send(Event::Shutdown(
                "cannot write to stdout; the supervisor is gone",
            ));
            self.root.cancel();
            eprintln!("consort worker: writing a response failed: {err}");
        }
    }

    fn finish(&self, task: &TaskId, kind: ResponseKind) {
        self.respond(task, kind);
        let mut running = lock(&self.running);
        running.remove(task);
        if running.is_empty() {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut running = lock(&self.running);
        while !running.is_empty() {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                eprintln!(
                    "consort worker: {} task(s) still running after {grace:?}; exiting without them",
                    running.len()
                );
                return;
            };
            running = self
                .idle
                .wait_timeout(running, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }
}

/// One accepted task, ready to run on some thread.
struct Accepted {
    context: TaskContext,
    handler: Arc<dyn Handler>,
}

impl Accepted {
    fn run(self) {
        let Accepted { context, handler } = self;
        let session = Arc::clone(&context.session);
        if context.token.is_cancelled() {
            // Cancelled before it started (a CANCEL while queued, or shutdown): it still
            // gets its one terminal response.
            session.finish(&context.id, ResponseKind::Cancelation);
            return;
        }
        session.respond(&context.id, ResponseKind::Launch);
        let outcome = catch_unwind(AssertUnwindSafe(|| handler.run(&context)));
        let kind = match outcome {
            Ok(Ok(outputs)) => ResponseKind::Completion(outputs),
            Ok(Err(Failure::Failed(message))) => ResponseKind::Failure(Some(message)),
            Ok(Err(Failure::Cancelled)) => ResponseKind::Cancelation,
            Err(panic) => ResponseKind::Failure(Some(format!(
                "the task panicked: {}",
                panic_message(panic.as_ref())
            ))),
        };
        session.finish(&context.id, kind);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Reads one line from stdin; `None` at EOF (or an error, reported).
fn read_line(stdin: &mut io::BufReader<File>) -> Option<Vec<u8>> {
    if stdin.buffer().is_empty() {
        await_input(stdin.get_ref());
    }
    let mut line = Vec::new();
    loop {
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => return Some(line),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("consort worker: reading stdin: {err}");
                return None;
            }
        }
    }
}

/// Acts on one request line. Returns the accepted task to run on a task thread; main-queue
/// tasks go to the main thread, the rest is done here.
fn handle_line(
    session: &Arc<Session>,
    handler: &Arc<dyn Handler>,
    events: &Sender<Event>,
    line: &[u8],
) -> Option<Accepted> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    {
        match decode_request(line) {
            Ok(Request::Execute {
                task,
                script,
                inputs,
                queue,
            }) => {
                let token = session.root.child_token();
                let duplicate = {
                    let mut running = lock(&session.running);
                    if running.contains_key(&task) {
                        true
                    } else {
                        running.insert(task.clone(), token.clone());
                        false
                    }
                };
                if duplicate {
                    eprintln!("consort worker: task {task} is already running; request ignored");
                    return None;
                }
                let on_main = queue.as_deref() == Some("main");
                let accepted = Accepted {
                    context: TaskContext {
                        id: task,
                        script,
                        inputs,
                        queue,
                        token,
                        session: Arc::clone(session),
                    },
                    handler: Arc::clone(handler),
                };
                if on_main {
                    if let Err(mpsc::SendError(Event::Main(accepted))) =
                        events.send(Event::Main(accepted))
                    {
                        // The main loop has shut down: answer rather than drop the task.
                        session.finish(&accepted.context.id, ResponseKind::Cancelation);
                    }
                } else {
                    return Some(accepted);
                }
            }
            Ok(Request::Cancel { task }) => match lock(&session.running).get(&task) {
                Some(token) => token.cancel(),
                None => eprintln!("No such task: {task}"),
            },
            Err((Some(task), reason)) => {
                if lock(&session.running).contains_key(&task) {
                    eprintln!("consort worker: bad request for running task {task}: {reason}");
                } else {
                    session.respond(
                        &task,
                        ResponseKind::Failure(Some(format!("bad request: {reason}"))),
                    );
                }
            }
            Err((None, reason)) => {
                eprintln!("consort worker: bad request ignored: {reason}");
            }
        }
    }
    None
}

/// How long the reader looks for the next request before its read blocks. A client that
/// sends a request as soon as it has an answer (most do) finds this thread awake: waking a
/// sleeping one costs a cross-CPU interrupt, which on a virtual machine is most of a round
/// trip. Yielding meanwhile, it takes no CPU that another thread wants.
const SPIN_FOR_REQUEST: Duration = Duration::from_micros(50);

/// Waits up to `SPIN_FOR_REQUEST` for stdin to be readable, without blocking.
fn await_input(stdin: &File) {
    let until = Instant::now() + SPIN_FOR_REQUEST;
    loop {
        let mut fds = [rustix::event::PollFd::new(
            stdin,
            rustix::event::PollFlags::IN,
        )];
        let ready = rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()));
        if ready.map_or(true, |n| n > 0) || Instant::now() >= until {
            return;
        }
        std::thread::yield_now();
    }
}

/// The task threads. They take turns reading stdin, and the reader runs the task it read
/// itself, at once: handing a request to another thread would put a wake-up, tens of
/// microseconds on a virtual machine, on the critical path of every task.
///
/// While the reader runs its task, nobody reads stdin: the reader's seat is *vacant*. A
/// free thread watches the seat and takes it once it has been vacant for [`VACANCY`], so a
/// CANCEL, or the next task, waits at most that long behind a long task; a reader whose
/// task ends sooner takes its own seat back, so a stream of short tasks runs on one thread
/// and starting a task wakes nobody. The watcher polls only while tasks keep coming.
///
/// At most `max` tasks run at once; past that, tasks wait in a FIFO queue that finishing
/// threads take from, and the reader keeps reading (a CANCEL is always read).
#[derive(Clone)]
struct TaskThreads {
    inner: Arc<TaskThreadsInner>,
}

/// How long the reader's seat may stay vacant before a free thread takes it.
const VACANCY: Duration = Duration::from_millis(1);

/// How long after the last task the watcher keeps polling rather than waiting to be woken.
const BUSY: Duration = Duration::from_millis(50);

struct TaskThreadsInner {
    state: Mutex<TaskThreadsState>,
    /// Free threads wait here for the seat.
    seat: Condvar,
    /// Held by the thread reading stdin (the seat).
    reader: Mutex<Reader>,
    /// Whether a thread holds `reader`.
    reading: AtomicBool,
    eof: AtomicBool,
    max: usize,
    session: Arc<Session>,
    handler: Arc<dyn Handler>,
    events: Sender<Event>,
}

struct Reader {
    stdin: io::BufReader<File>,
}

struct TaskThreadsState {
    /// Tasks read while `max` others ran.
    queue: VecDeque<Accepted>,
    threads: usize,
    /// Threads started that have not yet looked at the seat.
    starting: usize,
    /// Threads waiting for the seat.
    free: usize,
    /// A free thread waits with a timeout, watching the seat.
    watching: bool,
    /// Since when the seat is vacant (its reader runs a task), if it is.
    vacant: Option<Instant>,
    /// When the last task was taken.
    busy: Option<Instant>,
}

impl TaskThreads {
    fn start_thread(&self, state: &mut TaskThreadsState) -> io::Result<()> {
        let task_threads = self.clone();
        std::thread::Builder::new()
            .name("consort-worker-task".to_owned())
            .spawn(move || task_threads.serve())?;
        state.threads += 1;
        state.starting += 1;
        Ok(())
    }

    fn serve(&self) {
        let inner = &self.inner;
        lock(&inner.state).starting -= 1;
        // A new thread, too, waits for the seat to be free (or vacant long enough).
        let mut seated = self.await_seat();
        while seated {
            let mut reader = match inner.reader.try_lock() {
                Ok(reader) => reader,
                Err(TryLockError::Poisoned(poison)) => poison.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    seated = self.await_seat();
                    continue;
                }
            };
            inner.reading.store(true, Ordering::Release);
            lock(&inner.state).vacant = None;
            if inner.eof.load(Ordering::Acquire) {
                inner.reading.store(false, Ordering::Release);
                break;
            }
            // The request is acted on before the next one is read, as by a single reader:
            // a task is registered before its CANCEL is looked up, and main-queue tasks
            // reach the main thread in the order they came. Only running is left for after.
            let Some(line) = read_line(&mut reader.stdin) else {
                inner.eof.store(true, Ordering::Release);
                inner.reading.store(false, Ordering::Release);
                drop(reader);
                let _ = inner.events.send(Event::Shutdown("stdin closed"));
                let _state = lock(&inner.state);
                inner.seat.notify_all();
                break;
            };
            let mut accepted = handle_line(&inner.session, &inner.handler, &inner.events, &line)
                .and_then(|accepted| self.take(accepted));
            inner.reading.store(false, Ordering::Release);
            // Nobody waits on this lock (free threads wait on `seat`): no wake-up here.
            drop(reader);
            while let Some(next) = accepted {
                next.run();
                accepted = lock(&inner.state).queue.pop_front();
            }
        }
        lock(&inner.state).threads -= 1;
    }

    /// Waits as a free thread until the seat may be taken; false when stdin is closed.
    fn await_seat(&self) -> bool {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        state.free += 1;
        let take = loop {
            if inner.eof.load(Ordering::Acquire) {
                break false;
            }
            let now = Instant::now();
            let due = state.vacant.map(|since| since + VACANCY);
            if !inner.reading.load(Ordering::Acquire) && due.map_or(true, |due| due <= now) {
                break true;
            }
            let busy = state.busy.is_some_and(|busy| now < busy + BUSY);
            if state.watching || (due.is_none() && !busy) {
                state = inner
                    .seat
                    .wait(state)
                    .unwrap_or_else(|poison| poison.into_inner());
                continue;
            }
            state.watching = true;
            let timeout = due.map_or(VACANCY, |due| due.saturating_duration_since(now));
            state = inner
                .seat
                .wait_timeout(state, timeout)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
            state.watching = false;
        };
        state.free -= 1;
        take
    }

    /// The reader accepted a task: returns it to run on this thread (leaving the seat vacant),
    /// or queues it.
    fn take(&self, accepted: Accepted) -> Option<Accepted> {
        let mut state = lock(&self.inner.state);
        let now = Instant::now();
        state.busy = Some(now);
        if state.free + state.starting == 0 {
            if state.threads > self.inner.max {
                state.queue.push_back(accepted);
                return None;
            }
            if let Err(err) = self.start_thread(&mut state) {
                // Not fatal while another thread can take the seat; otherwise run the task
                // here rather than leave it unanswered (a CANCEL waits until it ends).
                eprintln!("consort worker: cannot start a task thread: {err}");
                if state.threads > 1 {
                    state.queue.push_back(accepted);
                    return None;
                }
            }
        } else if !state.watching {
            // The free threads all wait to be woken: one must watch the seat.
            self.inner.seat.notify_one();
        }
        state.vacant = Some(now);
        Some(accepted)
    }
}

/// Moves the protocol to a private copy of stdout and points fd 1 at stderr, so that
/// whatever else prints cannot corrupt it.
fn protocol_output(protect: bool) -> io::Result<File> {
    let private = rustix::io::dup(io::stdout())?;
    if protect {
        rustix::stdio::dup2_stdout(io::stderr())?;
    }
    Ok(File::from(private))
}

/// consort's heartbeat extension: only when the supervisor set `CONSORT_HEARTBEAT_SECS`
/// (an Appose supervisor never does), a thread writes [`crate::protocol::HEARTBEAT_LINE`]
/// that often, until shutdown, so the supervisor can tell a stopped process from a busy one.
fn start_heartbeat(session: &Arc<Session>) {
    let Some(secs) = std::env::var(crate::protocol::HEARTBEAT_ENV)
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
    else {
        return;
    };
    let interval = Duration::from_secs_f64(secs.max(0.01));
    let session = Arc::clone(session);
    let spawned = std::thread::Builder::new()
        .name("consort-worker-heartbeat".to_owned())
        .spawn(move || {
            while !session.root.wait_timeout(interval) {
                let mut out = lock(&session.out);
                let written = out
                    .write_all(crate::protocol::HEARTBEAT_LINE)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush());
                if written.is_err() {
                    return;
                }
            }
        });
    if let Err(err) = spawned {
        eprintln!("consort worker: cannot start the heartbeat thread: {err}");
    }
}

fn watch_sigterm(events: Sender<Event>) -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])?;
    std::thread::Builder::new()
        .name("consort-worker-signals".to_owned())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = events.send(Event::Shutdown("SIGTERM"));
            }
        })?;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
