//! The task table and the **dispatcher**: which tasks the worker is running, how a response
//! reaches its task, and the thread that calls the listeners, so that a slow or panicking
//! listener never stalls reading.
//!
//! # Invariants
//! 1. "The worker has exited" (its report) and the task table share one lock: a task is
//!    either in the table when the monitor empties it, or sees the exit when submitted.
//! 2. A task's events reach its listeners in the order they were read, on the dispatcher
//!    thread; a task without listeners has no event sent anywhere.
//! 3. Waiters are released only after the listeners saw the terminal event (an
//!    [`Ending`] is delivered whole, on the dispatcher or, once it is gone, on the thread
//!    that ended the task).

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::config::{lock, DebugOut};
use crate::protocol::{Args, ResponseKind, TaskId};
use crate::task::{
    CrashReport, Ending, EventKind, ExitStatus, TaskCore, TaskError, TaskEvent, TaskState,
};

/// One message for the dispatcher thread.
pub(crate) enum Dispatch {
    /// A LAUNCH or an UPDATE for a task's listeners.
    Event(Arc<TaskCore>, TaskEvent),
    /// A task's end: its listeners, then its waiters.
    End(Ending),
    /// Everything sent before it was delivered (see [`Tasks::wait_delivered`]).
    Flushed(Sender<()>),
}

/// The tasks sent to the worker and not ended, and how the worker ended.
pub(crate) struct Tasks {
    registry: Mutex<Registry>,
    /// Signalled when the worker has ended and its tasks with it (`settled`).
    exited: Condvar,
    /// `None` once the worker ended: events are then delivered on the thread that has them.
    dispatcher: Mutex<Option<Sender<Dispatch>>>,
}

struct Registry {
    tasks: HashMap<TaskId, Arc<TaskCore>>,
    /// Set once, when the worker has ended and been reaped.
    report: Option<Arc<CrashReport>>,
    /// Set after the report, once every task pending then has ended.
    settled: bool,
    /// `close` (or a kill) began: no task is admitted any more.
    closing: bool,
}

/// Why a task was not admitted.
pub(crate) enum Refused {
    /// The worker has ended, as this report says.
    Ended(Arc<CrashReport>),
    /// The service is closing.
    Closing,
}

impl Tasks {
    pub(crate) fn new(dispatcher: Sender<Dispatch>) -> Tasks {
        Tasks {
            registry: Mutex::new(Registry {
                tasks: HashMap::new(),
                report: None,
                settled: false,
                closing: false,
            }),
            exited: Condvar::new(),
            dispatcher: Mutex::new(Some(dispatcher)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Enters `core` in the table, unless the worker ended or the service is closing.
    pub(crate) fn admit(&self, core: &Arc<TaskCore>) -> Result<(), Refused> {
        let mut registry = self.lock();
        match (&registry.report, registry.closing) {
            (Some(report), _) => Err(Refused::Ended(Arc::clone(report))),
            (None, true) => Err(Refused::Closing),
            (None, false) => {
                registry.tasks.insert(core.id.clone(), Arc::clone(core));
                Ok(())
            }
        }
    }

    /// Takes `id` out of the table (its end is being decided elsewhere).
    pub(crate) fn remove(&self, id: &TaskId) {
        self.lock().tasks.remove(id);
    }

    /// Whether no task is pending.
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().tasks.is_empty()
    }

    /// Marks the service closing; returns the exit status if the worker already ended.
    pub(crate) fn start_closing(&self) -> Option<ExitStatus> {
        let mut registry = self.lock();
        if let Some(report) = &registry.report {
            return Some(report.status);
        }
        registry.closing = true;
        None
    }

    /// Whether `close` (or a kill) began.
    pub(crate) fn is_closing(&self) -> bool {
        self.lock().closing
    }

    pub(crate) fn report(&self) -> Option<Arc<CrashReport>> {
        self.lock().report.clone()
    }

    /// Waits up to `timeout` for the worker to have ended, been reaped, and its tasks to
    /// have ended.
    pub(crate) fn wait_settled(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now().checked_add(timeout);
        let mut registry = self.lock();
        loop {
            if let (Some(report), true) = (&registry.report, registry.settled) {
                return Some(report.status);
            }
            let remaining = match deadline {
                Some(deadline) => deadline.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            registry = self
                .exited
                .wait_timeout(registry, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// Records how the worker ended and takes every pending task out of the table (under
    /// one lock: invariant 1). The caller ends them, then calls `settle`.
    pub(crate) fn worker_ended(&self, report: &Arc<CrashReport>) -> Vec<Arc<TaskCore>> {
        let mut registry = self.lock();
        registry.report = Some(Arc::clone(report));
        registry.tasks.drain().map(|(_, core)| core).collect()
    }

    /// The tasks pending when the worker ended have ended: wakes `wait_settled`.
    pub(crate) fn settle(&self) {
        self.lock().settled = true;
        self.exited.notify_all();
    }

    /// Takes every pending task out of the table.
    pub(crate) fn take_all(&self) -> Vec<Arc<TaskCore>> {
        self.lock().tasks.drain().map(|(_, core)| core).collect()
    }

    /// Waits, up to `bound`, until the dispatcher has delivered everything sent so far
    /// (listeners called, waiters released).
    pub(crate) fn wait_delivered(&self, bound: Duration) {
        let (flushed, delivered) = mpsc::channel();
        let sent = match lock(&self.dispatcher).as_ref() {
            Some(dispatcher) => dispatcher.send(Dispatch::Flushed(flushed)).is_ok(),
            None => false,
        };
        if sent {
            let _ = delivered.recv_timeout(bound);
        }
    }

    /// The dispatcher runs out once its queue is empty; later events are delivered on the
    /// thread that has them.
    pub(crate) fn stop_dispatcher(&self) {
        lock(&self.dispatcher).take();
    }

    /// Routes one response from the worker to its task; returns whether the task was
    /// pending.
    pub(crate) fn route(&self, task: TaskId, kind: ResponseKind, debug: &DebugOut) -> bool {
        let core = if kind.is_terminal() {
            self.lock().tasks.remove(&task)
        } else {
            self.lock().tasks.get(&task).cloned()
        };
        let Some(core) = core else {
            debug.note(|| format!("<no such task: {task}>"));
            return false;
        };
        match kind {
            ResponseKind::Launch => {
                if core.launch() && core.has_listeners() {
                    self.send(Dispatch::Event(
                        Arc::clone(&core),
                        TaskEvent::new(task, EventKind::Launch),
                    ));
                }
            }
            ResponseKind::Update(progress) => {
                if core.has_listeners() && !core.state().is_finished() {
                    let mut event = TaskEvent::new(task, EventKind::Update);
                    event.progress = progress;
                    self.send(Dispatch::Event(Arc::clone(&core), event));
                }
            }
            ResponseKind::Completion(outputs) => {
                self.end(&core, TaskState::Complete, Ok(outputs));
            }
            ResponseKind::Cancelation => {
                self.end(
                    &core,
                    TaskState::Canceled,
                    Err(TaskError::Canceled { forced: false }),
                );
            }
            ResponseKind::Failure(error) => {
                let message = error.unwrap_or_else(|| "unknown error".to_owned());
                self.end(&core, TaskState::Failed, Err(TaskError::Failed { message }));
            }
        }
        true
    }

    /// Ends a task (the first end wins) and delivers its end: through the dispatcher when
    /// it has listeners, here when it has none.
    pub(crate) fn end(
        &self,
        core: &Arc<TaskCore>,
        state: TaskState,
        result: Result<Args, TaskError>,
    ) {
        if let Some(ending) = core.end(state, result) {
            self.deliver(ending);
        }
    }

    /// Delivers an end as [`Tasks::end`] does.
    pub(crate) fn deliver(&self, ending: Ending) {
        if ending.core().has_listeners() {
            self.send(Dispatch::End(ending));
        } else {
            ending.deliver();
        }
    }

    fn send(&self, message: Dispatch) {
        let unsent = match lock(&self.dispatcher).as_ref() {
            Some(dispatcher) => dispatcher.send(message).err().map(|err| err.0),
            None => Some(message),
        };
        if let Some(message) = unsent {
            // The dispatcher is gone (the service ended): deliver here.
            deliver(message);
        }
    }
}

/// The dispatcher thread: delivers messages in order until every sender is gone.
pub(crate) fn run_dispatcher(messages: Receiver<Dispatch>) {
    for message in messages {
        deliver(message);
    }
}

fn deliver(message: Dispatch) {
    match message {
        Dispatch::Event(core, event) => core.deliver(&event),
        Dispatch::End(ending) => ending.deliver(),
        Dispatch::Flushed(flushed) => {
            let _ = flushed.send(());
        }
    }
}
