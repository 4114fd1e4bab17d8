//! The pool's manager: the one thread that owns the workers. It dispatches queued jobs to
//! the least-loaded worker, settles each attempt's end (finish, retry, time out), restarts
//! dead workers with backoff under a per-minute cap, recycles leaky ones between tasks,
//! keeps the optional spare, kills wedged workers, and closes everything on shutdown.
//!
//! It sleeps on its inbox ([`Msg`]) until a message comes or its next timer is due: a
//! running job's deadline, a slot's restart, a heartbeat check. Workers report their exit
//! through an exit hook, so nothing is polled.
//!
//! # Invariants
//! 1. Only this thread changes the slots, the retirees and the spare.
//! 2. Every timer the manager keeps is in `next_due`, so no deadline, restart or wedged
//!    worker waits for an unrelated wake-up.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::events::{Monitor, PoolEvent, PoolStats};
use super::queue::{lock, JobQueue, PoolJob};
use super::settings::{Settings, QUICK_DEATH};
use crate::protocol::{Args, TaskId};
use crate::service::{Service, ServiceBuilder};
use crate::task::{CrashReport, EventKind, ExitStatus, Task, TaskError, TaskEvent, TaskState};

/// What wakes the manager.
pub(crate) enum Msg {
    /// A job was queued on an empty queue.
    Queued,
    /// An attempt of `job` on service `service` ended; the attempt holds the result.
    Ended { job: Arc<PoolJob>, service: u64 },
    /// The worker of service `service` has ended, and its tasks with it.
    Exited { service: u64 },
    /// The pool is closing.
    Close,
}

/// Starts the manager thread with `first`, the worker `Pool::start` already started (so
/// that a recipe that cannot start fails `start` itself). Returns the thread and its
/// wake-up channel.
pub(crate) fn spawn(
    settings: Settings,
    queue: Arc<JobQueue>,
    stats: Arc<Mutex<PoolStats>>,
    recipe: ServiceBuilder,
    monitor: Option<Monitor>,
    first: Service,
) -> io::Result<(JoinHandle<()>, Sender<Msg>)> {
    let workers = settings.workers;
    let (wake, messages) = mpsc::channel();
    let mut manager = Manager {
        settings,
        queue,
        stats,
        recipe,
        monitor,
        messages,
        wake: wake.clone(),
        slots: (0..workers).map(|_| Slot::default()).collect(),
        retiring: Vec::new(),
        running: HashMap::new(),
        closers: Vec::new(),
        restarts: 0,
        recycled: 0,
        wedged: 0,
        closing: false,
        spare: None,
        want_spare: false,
    };
    manager.install(0, first);
    for slot_idx in 1..workers {
        manager.start_slot(slot_idx);
    }
    manager.start_spare();
    manager.publish();
    let handle = std::thread::Builder::new()
        .name("consort-pool".to_owned())
        .spawn(move || manager.run())?;
    Ok((handle, wake))
}

#[derive(Default)]
struct Slot {
    member: Option<Member>,
    /// Consecutive deaths at start.
    failures: u32,
    /// When the slot may start its next worker, if it waits.
    restart_at: Option<Instant>,
    /// Recent restarts, for the per-minute cap.
    restart_times: VecDeque<Instant>,
    /// Waiting because of the per-minute cap.
    capped: bool,
    last_error: String,
}

/// A worker of the pool: its service and what the pool knows of it.
struct Member {
    service: Service,
    started: Instant,
    running: usize,
    n_tasks: u64,
    finished_a_task: bool,
    base_rss: Option<u64>,
    /// Being killed (wedged, or a hard cancel): takes no new task.
    killed: bool,
}

struct Manager {
    settings: Settings,
    queue: Arc<JobQueue>,
    stats: Arc<Mutex<PoolStats>>,
    recipe: ServiceBuilder,
    monitor: Option<Monitor>,
    messages: Receiver<Msg>,
    wake: Sender<Msg>,
    slots: Vec<Slot>,
    /// Workers replaced between tasks, closed once idle.
    retiring: Vec<Member>,
    /// Jobs sent to a worker, by task id, with the service running them.
    running: HashMap<TaskId, (Arc<PoolJob>, u64)>,
    closers: Vec<JoinHandle<()>>,
    restarts: u64,
    recycled: u64,
    wedged: u64,
    closing: bool,
    /// A started, idle worker that replaces the next one to go (`with_spare`).
    spare: Option<Service>,
    want_spare: bool,
}

impl Manager {
    fn run(mut self) {
        loop {
            let msg = match self.next_due() {
                None => self
                    .messages
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => self
                    .messages
                    .recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            let msg = match msg {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut closing = false;
            let mut next = msg;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Queued => {}
                    Msg::Ended { job, service } => self.on_ended(job, service),
                    Msg::Exited { service } => self.on_exited(service),
                    Msg::Close => closing = true,
                }
                next = self.messages.try_recv().ok();
            }
            if closing {
                break;
            }
            self.check_workers();
            self.check_deadlines();
            self.dispatch();
            if std::mem::take(&mut self.want_spare) {
                self.start_spare();
            }
            self.publish();
        }
        self.shutdown();
    }

    /// When the manager must look again without a message: the earliest deadline of a
    /// running job, restart of a waiting slot, or silence limit of a worker.
    fn next_due(&self) -> Option<Instant> {
        let deadlines = self.running.values().filter_map(|(job, _)| {
            let deadline = job.spec.deadline?;
            let state = job.state();
            let at = state.dispatched_at.filter(|_| !state.timed_out)?;
            Some(at + deadline)
        });
        let restarts = self
            .slots
            .iter()
            .filter(|slot| slot.member.is_none())
            .filter_map(|slot| slot.restart_at);
        let wedged = self.wedged_after().into_iter().flat_map(|wedged_after| {
            self.slots
                .iter()
                .filter_map(|slot| slot.member.as_ref())
                .filter(|member| !member.killed)
                .map(move |member| member.service.link.last_heard() + wedged_after)
        });
        deadlines.chain(restarts).chain(wedged).min()
    }

    fn emit(&self, event: PoolEvent) {
        tracing::debug!(target: "consort::pool", "{event:?}");
        if let Some(monitor) = &self.monitor {
            if catch_unwind(AssertUnwindSafe(|| monitor(&event))).is_err() {
                tracing::warn!("the pool monitor panicked; the pool carries on");
            }
        }
    }

    fn publish(&self) {
        let mut stats = lock(&self.stats);
        stats.pids = self
            .slots
            .iter()
            .map(|slot| slot.member.as_ref().map(|member| member.service.pid()))
            .collect();
        stats.busy = self
            .slots
            .iter()
            .filter_map(|slot| slot.member.as_ref())
            .filter(|member| member.running > 0)
            .map(|member| member.service.pid())
            .collect();
        stats.running = self.running.len();
        stats.restarts = self.restarts;
        stats.recycled = self.recycled;
        stats.wedged = self.wedged;
        stats.failing = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.failures > 1 || (slot.capped && slot.member.is_none()))
            .map(|(slot_idx, _)| slot_idx)
            .collect();
    }

    fn install(&mut self, slot_idx: usize, service: Service) {
        let pid = service.pid();
        let wake = self.wake.clone();
        let service_id = service.id();
        service.link.on_exit(Box::new(move || {
            let _ = wake.send(Msg::Exited {
                service: service_id,
            });
        }));
        self.slots[slot_idx].member = Some(Member {
            service,
            started: Instant::now(),
            running: 0,
            n_tasks: 0,
            finished_a_task: false,
            base_rss: None,
            killed: false,
        });
        self.emit(PoolEvent::WorkerStarted {
            slot: slot_idx,
            pid,
        });
    }

    /// Starts a worker in an empty slot, now; a spawn failure counts as a death at start.
    fn start_slot(&mut self, slot_idx: usize) {
        self.slots[slot_idx].restart_at = None;
        if let Some(spare) = self.spare.take() {
            if spare.is_alive() {
                self.install(slot_idx, spare);
                // Its replacement starts after this round's dispatch, off the task's path.
                self.want_spare = true;
                return;
            }
            // It died idle: fall back to a plain start, and do not replace it (a recipe
            // that dies at start must not start twice per restart).
            self.close_in_background(spare);
        }
        match self.recipe.start() {
            Ok(service) => self.install(slot_idx, service),
            Err(err) => {
                let message = err.to_string();
                self.schedule_restart(slot_idx, true, message);
            }
        }
    }

    /// Starts the standby worker, when the pool keeps one.
    fn start_spare(&mut self) {
        if !self.settings.spare || self.closing || self.spare.is_some() {
            return;
        }
        match self.recipe.start() {
            Ok(service) => self.spare = Some(service),
            Err(err) => {
                tracing::warn!(target: "consort::pool", "cannot start a spare worker: {err}")
            }
        }
    }

    /// Decides when an empty slot starts its next worker: at once after a worker that
    /// lived, with a doubling delay after consecutive deaths at start, and never more than
    /// `max_restarts_per_minute` times in a minute.
    fn schedule_restart(&mut self, slot_idx: usize, died_at_start: bool, error: String) {
        let settings = &self.settings;
        let slot = &mut self.slots[slot_idx];
        slot.failures = if died_at_start { slot.failures + 1 } else { 0 };
        slot.last_error = error;
        let mut delay = match slot.failures {
            0 | 1 => Duration::ZERO,
            n => settings
                .backoff_initial
                .saturating_mul(1 << (n - 2).min(20))
                .min(settings.backoff_max),
        };
        let now = Instant::now();
        slot.restart_times.push_back(now);
        while slot
            .restart_times
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60))
        {
            slot.restart_times.pop_front();
        }
        slot.capped = slot.restart_times.len() > settings.max_restarts_per_minute;
        if slot.capped {
            if let Some(oldest) = slot.restart_times.front() {
                let window_end = *oldest + Duration::from_secs(60);
                delay = delay.max(window_end.saturating_duration_since(now));
            }
        }
        slot.restart_at = Some(now + delay);
        if slot.failures > 1 || !delay.is_zero() {
            let event = PoolEvent::WorkerFailing {
                slot: slot_idx,
                consecutive: slot.failures,
                delay_ms: delay.as_millis() as u64,
                last_error: slot.last_error.clone(),
            };
            tracing::warn!(
                target: "consort::pool",
                "worker slot {slot_idx} keeps failing ({} in a row); next start in {delay:?}: {}",
                slot.failures,
                slot.last_error
            );
            self.emit(event);
        }
    }

    /// The worker of `service_id` has ended (its exit hook said so, or `dispatch` found it
    /// dead first): its slot is emptied and scheduled to restart. A retiree that ended is
    /// closed by `check_workers`; a worker no longer in a slot is left alone.
    fn on_exited(&mut self, service_id: u64) {
        let Some(slot_idx) = slot_idx_of(&self.slots, service_id) else {
            return;
        };
        let Some(member) = self.slots[slot_idx].member.take() else {
            return;
        };
        let report = member.service.crash_report().map_or_else(
            || "the worker ended".to_owned(),
            |report| report.to_string(),
        );
        // Silent on stdout and short-lived: it never got going.
        let at_start = !member.finished_a_task
            && !member.service.link.heard_anything()
            && member.started.elapsed() < QUICK_DEATH;
        self.emit(PoolEvent::WorkerExited {
            slot: slot_idx,
            pid: member.service.pid(),
            report: report.clone(),
        });
        self.retire(member);
        self.restarts += 1;
        self.schedule_restart(slot_idx, at_start, report);
    }

    /// Kills wedged workers, starts slots whose wait is over, closes idle retirees.
    fn check_workers(&mut self) {
        for slot_idx in 0..self.slots.len() {
            if let Some(wedged_after) = self.wedged_after() {
                self.check_wedged(slot_idx, wedged_after);
            }
            let slot = &self.slots[slot_idx];
            if slot.member.is_none() && slot.restart_at.is_some_and(|at| at <= Instant::now()) {
                self.start_slot(slot_idx);
            }
        }
        // Close retirees with no task left, off this thread (close may take seconds).
        let mut idx = 0;
        while idx < self.retiring.len() {
            if self.retiring[idx].running == 0 || !self.retiring[idx].service.is_alive() {
                let member = self.retiring.swap_remove(idx);
                self.close_in_background(member.service);
            } else {
                idx += 1;
            }
        }
        self.closers.retain(|closer| !closer.is_finished());
    }

    fn wedged_after(&self) -> Option<Duration> {
        self.settings.heartbeat.map(|_| self.settings.wedged_after)
    }

    fn check_wedged(&mut self, slot_idx: usize, wedged_after: Duration) {
        let Some(member) = &mut self.slots[slot_idx].member else {
            return;
        };
        let silent = member.service.link.last_heard().elapsed();
        if silent < wedged_after || member.killed {
            return;
        }
        member.killed = true;
        let pid = member.service.pid();
        let link = member.service.link.clone();
        let cause = format!(
            "the worker stopped answering: nothing heard for {:.1} s (heartbeats expected \
             every {:.1} s), so it was killed as wedged or stopped",
            silent.as_secs_f64(),
            self.settings.heartbeat.unwrap_or_default().as_secs_f64()
        );
        self.wedged += 1;
        self.emit(PoolEvent::WorkerWedged {
            slot: slot_idx,
            pid,
            silent_ms: silent.as_millis() as u64,
        });
        // The kill is immediate; the monitor then crashes its tasks with this cause, and
        // the worker's exit hook brings the slot back here to restart it.
        let fallback = link.clone();
        let spawned = std::thread::Builder::new()
            .name("consort-pool-kill".to_owned())
            .spawn(move || {
                link.kill_now(&cause);
            });
        match spawned {
            Ok(handle) => self.closers.push(handle),
            Err(_) => {
                fallback.kill_now("the worker stopped answering");
            }
        }
    }

    fn retire(&mut self, member: Member) {
        self.retiring.push(member);
    }

    fn close_in_background(&mut self, service: Service) {
        let spawned = std::thread::Builder::new()
            .name("consort-pool-close".to_owned())
            .spawn(move || drop(service));
        match spawned {
            Ok(handle) => self.closers.push(handle),
            // No thread: close here; bounded, only slower.
            Err(err) => tracing::warn!("cannot start a thread to close a worker: {err}"),
        }
    }

    /// Hard-cancels running jobs past their deadline.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for (job, _) in self.running.values() {
            let Some(deadline) = job.spec.deadline else {
                continue;
            };
            let attempt = {
                let mut state = job.state();
                match state.dispatched_at {
                    Some(at) if !state.timed_out && now.duration_since(at) >= deadline => {
                        state.timed_out = true;
                        state.attempt.as_ref().map(Task::clone_handle)
                    }
                    _ => None,
                }
            };
            if let Some(attempt) = attempt {
                attempt.cancel_hard(job.spec.cancel_grace);
            }
        }
    }

    /// Sends queued jobs to the least-loaded workers that have room.
    fn dispatch(&mut self) {
        let cap = self.settings.tasks_per_worker;
        loop {
            let Some(slot_idx) = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot_idx, slot)| {
                    let member = slot.member.as_ref()?;
                    (member.running < cap && !member.killed).then_some((
                        member.running,
                        member.n_tasks,
                        slot_idx,
                    ))
                })
                .min()
                .map(|(_, _, slot_idx)| slot_idx)
            else {
                return;
            };
            // Its exit hook may not have come yet: a task sent to a dead worker would end
            // CRASHED at once, without having run.
            if let Some(dead) = self.slots[slot_idx]
                .member
                .as_ref()
                .filter(|member| !member.service.is_alive())
            {
                let service_id = dead.service.id();
                self.on_exited(service_id);
                continue;
            }
            let Some(job) = self.queue.pop() else {
                return;
            };
            self.send(slot_idx, job);
        }
    }

    /// Sends one attempt of `job` to the worker in `slot_idx`.
    fn send(&mut self, slot_idx: usize, job: Arc<PoolJob>) {
        let Some(member) = self.slots[slot_idx].member.as_mut() else {
            return;
        };
        let service_id = member.service.id();
        let mut state = job.state();
        if job.core.state().is_finished() || state.cancel_requested {
            // Cancelled while queued (its cancel ends it, if it has not yet).
            return;
        }
        let mut builder = member
            .service
            .task(job.spec.script.clone())
            .inputs(job.spec.inputs.clone());
        // With listeners, the attempt's events are forwarded; without, only its end
        // matters, and a hook reports it without the dispatcher's thread hop.
        let listened = job.core.has_listeners();
        if listened {
            let forward = Arc::clone(&job);
            let wake = self.wake.clone();
            builder =
                builder.listen(move |event| forward_event(&forward, &wake, service_id, event));
        }
        if let Some(queue) = &job.spec.queue {
            builder = builder.queue(queue.clone());
        }
        match builder.submit() {
            Ok(attempt) => {
                if !listened {
                    let ended = Arc::clone(&job);
                    let wake = self.wake.clone();
                    // Takes no pool lock (invariant 2 of `pool.rs`): it may run right here.
                    attempt.core.on_end(Box::new(move || {
                        let _ = wake.send(Msg::Ended {
                            job: ended,
                            service: service_id,
                        });
                    }));
                    attempt.wake_reader();
                }
                if !listened {
                    // Nobody watches the LAUNCH (see `Pool::task`).
                    job.core.launch();
                }
                state.n_attempts += 1;
                state.dispatched_at = Some(Instant::now());
                state.attempt = Some(attempt);
                member.running += 1;
                drop(state);
                self.running
                    .insert(job.core.id.clone(), (Arc::clone(&job), service_id));
            }
            Err(err) => {
                // Inputs were checked when the job was built; stay total regardless.
                drop(state);
                job.finish(
                    TaskState::Failed,
                    Err(TaskError::Failed {
                        message: err.to_string(),
                    }),
                );
            }
        }
    }

    fn member_mut(&mut self, service_id: u64) -> Option<(Option<usize>, &mut Member)> {
        if let Some(slot_idx) = slot_idx_of(&self.slots, service_id) {
            return self.slots[slot_idx]
                .member
                .as_mut()
                .map(|member| (Some(slot_idx), member));
        }
        self.retiring
            .iter_mut()
            .find(|member| member.service.id() == service_id)
            .map(|member| (None, member))
    }

    fn on_ended(&mut self, job: Arc<PoolJob>, service_id: u64) {
        self.running.remove(&job.core.id);
        let Some(attempt) = job.state().attempt.take() else {
            debug_assert!(false, "an attempt ended twice");
            return;
        };
        let state = attempt.state();
        let result = attempt.core.peek_result().unwrap_or_else(|| {
            Err(TaskError::Failed {
                message: "internal error: the attempt ended without a result".to_owned(),
            })
        });
        let max_tasks = self.settings.max_tasks;
        let max_growth = self.settings.max_rss_growth;
        let mut recycle = None;
        let forced = matches!(result, Err(TaskError::Canceled { forced: true }));
        if let Some((slot_idx, member)) = self.member_mut(service_id) {
            member.running = member.running.saturating_sub(1);
            // A hard cancel is killing it: it must take no task meanwhile.
            member.killed |= forced;
            if state != TaskState::Crashed {
                member.n_tasks += 1;
                member.finished_a_task = true;
                if let Some(slot_idx) = slot_idx {
                    let pid = member.service.pid();
                    if max_tasks.is_some_and(|max| member.n_tasks >= max) {
                        recycle = Some((slot_idx, format!("ran {} tasks", member.n_tasks)));
                    } else if let Some(max_growth) = max_growth {
                        if let Some(rss) = rss_bytes(pid) {
                            let base = *member.base_rss.get_or_insert(rss);
                            if rss > base.saturating_add(max_growth) {
                                recycle = Some((
                                    slot_idx,
                                    format!(
                                        "resident memory {} MB, over {} MB above its start",
                                        rss / 1_000_000,
                                        max_growth / 1_000_000
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if state != TaskState::Crashed {
            if let Some(slot_idx) = slot_idx_of(&self.slots, service_id) {
                self.slots[slot_idx].failures = 0;
            }
        }
        if let Some((slot_idx, reason)) = recycle.filter(|_| !self.closing) {
            if let Some(member) = self.slots[slot_idx].member.take() {
                self.recycled += 1;
                self.emit(PoolEvent::WorkerRecycled {
                    slot: slot_idx,
                    pid: member.service.pid(),
                    reason,
                });
                self.retire(member);
                self.start_slot(slot_idx);
            }
        }
        self.settle(job, state, result);
    }

    /// Ends the pool task from its attempt's end, or sends it again.
    fn settle(&mut self, job: Arc<PoolJob>, state: TaskState, result: Result<Args, TaskError>) {
        let (timed_out, retry) = {
            let mut job_state = job.state();
            job_state.dispatched_at = None;
            let retry = state == TaskState::Crashed
                && !job_state.timed_out
                && !job_state.cancel_requested
                && job_state.n_attempts <= job.spec.retries
                && !self.queue.is_closed();
            (
                job_state.timed_out,
                retry.then_some(job_state.n_attempts + 1),
            )
        };
        if timed_out && state != TaskState::Complete && state != TaskState::Failed {
            let deadline = job.spec.deadline.unwrap_or_default();
            job.finish(
                TaskState::TimedOut,
                Err(TaskError::DeadlinePassed(deadline)),
            );
            return;
        }
        if state == TaskState::Crashed && job.core.hard_cancel_asked() {
            // Its own hard cancel was under way (another task's kill may have come first).
            job.finish(
                TaskState::Canceled,
                Err(TaskError::Canceled { forced: true }),
            );
            return;
        }
        if let Some(attempt) = retry {
            if job.core.has_listeners() {
                let mut event = TaskEvent::new(job.core.id.clone(), EventKind::Retry);
                event.error = result.as_ref().err().map(ToString::to_string);
                event.progress.info = Some(json!({ "attempt": attempt }));
                job.core.deliver(&event);
            }
            // Retries go to the front: they were submitted before what waits.
            self.queue.push_front(job);
            return;
        }
        job.finish(state, result);
    }

    fn shutdown(mut self) {
        self.closing = true;
        let queued = self.queue.drain();
        for job in queued {
            job.finish(
                TaskState::Canceled,
                Err(TaskError::Canceled { forced: false }),
            );
        }
        let mut services = Vec::new();
        for slot in &mut self.slots {
            if let Some(member) = slot.member.take() {
                services.push(member.service);
            }
        }
        services.extend(self.retiring.drain(..).map(|member| member.service));
        services.extend(self.spare.take());
        for service in services {
            self.close_in_background(service);
        }
        for closer in self.closers.drain(..) {
            let _ = closer.join();
        }
        // Every service is closed: the attempts' last events are in the channel.
        while let Ok(msg) = self.messages.try_recv() {
            if let Msg::Ended { job, service } = msg {
                self.on_ended(job, service);
            }
        }
        for (_, (job, _)) in self.running.drain() {
            // The attempt's listener holds the job: break the cycle.
            let attempt = job.state().attempt.take();
            drop(attempt);
            let report = CrashReport {
                pid: 0,
                status: ExitStatus::Unknown,
                cause: Some("the pool closed before the task ended".to_owned()),
                stderr: Vec::new(),
                stdout: Vec::new(),
                sent: true,
                beside: None,
            };
            job.finish(
                TaskState::Crashed,
                Err(TaskError::Crashed(Box::new(report))),
            );
        }
        self.publish();
    }
}

fn slot_idx_of(slots: &[Slot], service_id: u64) -> Option<usize> {
    slots.iter().position(|slot| {
        slot.member
            .as_ref()
            .is_some_and(|member| member.service.id() == service_id)
    })
}

/// An attempt's listener: LAUNCH and UPDATE go to the pool task's listeners; the end goes
/// to the manager. Takes no pool lock (invariant 2 of `pool.rs`).
fn forward_event(job: &Arc<PoolJob>, wake: &Sender<Msg>, service: u64, event: &TaskEvent) {
    match event.kind {
        EventKind::Launch => {
            if job.core.launch() && job.core.has_listeners() {
                let mut event = event.clone();
                event.task = job.core.id.clone();
                job.core.deliver(&event);
            }
        }
        EventKind::Update => {
            if job.core.has_listeners() && !job.core.state().is_finished() {
                let mut event = event.clone();
                event.task = job.core.id.clone();
                job.core.deliver(&event);
            }
        }
        _ => {
            // The manager reads the result from the attempt: it stored the attempt before
            // it reads this message, even when the end was delivered during `submit`.
            let _ = wake.send(Msg::Ended {
                job: Arc::clone(job),
                service,
            });
        }
    }
}

/// The resident memory of `pid`, from `/proc` (Linux).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}
