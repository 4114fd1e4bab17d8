//! The pool's manager: the one thread that owns the workers. It starts them (the first is
//! started by `Pool::start`, the others here, one per turn of its loop, so that `close`
//! is heard while a thousand start), dispatches queued jobs to the least-loaded worker,
//! settles each attempt's end (finish, rerun alone, retry, time out), restarts dead
//! workers (with backoff under a per-minute cap after deaths at start), recycles leaky ones
//! between tasks, keeps the optional spare, kills wedged workers, and closes everything on
//! shutdown.
//!
//! It sleeps on its inbox ([`Msg`]) until a message comes or its next timer is due: a
//! running job's deadline, a slot's restart, a heartbeat check. Workers report their exit
//! through an exit hook, so nothing is polled.
//!
//! # Invariants
//! 1. Only this thread changes the slots, the retirees and the spare.
//! 2. Every timer the manager keeps is in `next_due`, so no deadline, restart or wedged
//!    worker waits for an unrelated wake-up.
//! 3. A crash is charged to a job only when the job was alone on the worker that died
//!    ([`Death`]); a job that ran beside others when its worker died is a suspect, rerun
//!    alone and uncharged (unless `rerun_suspects` is off), and a job the worker refused
//!    (it had ended) did not run at all: it goes back where it waited, uncharged.
//! 4. A job that must run alone is sent only to a worker running nothing, and that worker
//!    takes nothing else until it ends; while such jobs wait, as many workers take no new
//!    task as there are such jobs, so that they drain and free up.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// Attempt `attempt` of `job`, on service `service`, ended; the attempt holds the
    /// result. (A refused attempt's end also comes: it is not the job's attempt, and
    /// ignored.)
    Ended {
        job: Arc<PoolJob>,
        service: u64,
        attempt: TaskId,
    },
    /// The worker of service `service` has ended, and its tasks with it.
    Exited { service: u64 },
    /// The pool is closing.
    Close,
}

/// Starts the manager thread with `first`, the worker `Pool::start` already started (so
/// that a recipe that cannot start fails `start` itself); the thread starts the others.
/// Returns the thread and its wake-up channel.
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
        next_first_start: 1,
        retiring: Vec::new(),
        running: HashMap::new(),
        alone: VecDeque::new(),
        deaths: HashMap::new(),
        closers: Vec::new(),
        restarts: 0,
        recycled: 0,
        wedged: 0,
        closing: false,
        spare: None,
        want_spare: false,
    };
    manager.install(0, first);
    manager.want_spare = manager.settings.spare;
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
    /// Attempts sent to it whose end the manager has not settled.
    running: usize,
    n_tasks: u64,
    finished_a_task: bool,
    base_rss: Option<u64>,
    /// Being killed (wedged, a hard cancel, a refused task): takes no new task.
    killed: bool,
    /// The job whose hard cancel is killing it: it was on the worker at its death.
    killed_for: Option<TaskId>,
    /// Runs a job that must run alone: takes no other task until it is idle.
    alone: bool,
    /// Kept for a job that must run alone: takes no new task, so it drains.
    reserved: bool,
}

/// The jobs a worker's death ended, while the manager settles them one by one.
struct Death {
    /// Every job that was on the worker when it died.
    jobs: Vec<TaskId>,
    /// Those whose end the manager has not settled yet.
    unsettled: HashSet<TaskId>,
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
    /// The next slot to start for the first time: until every slot has had its first
    /// start, the manager starts one per turn and dispatches nothing (so that tasks spread
    /// over all the workers), but hears `close`.
    next_first_start: usize,
    /// Workers replaced between tasks (or dead), closed once idle.
    retiring: Vec<Member>,
    /// Jobs sent to a worker, by task id, with the service running them.
    running: HashMap<TaskId, (Arc<PoolJob>, u64)>,
    /// Jobs that must run alone (they were on a worker that died), oldest first: they
    /// pass before the queue.
    alone: VecDeque<Arc<PoolJob>>,
    /// Deaths whose jobs are being settled, by service.
    deaths: HashMap<u64, Death>,
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
                    Msg::Ended {
                        job,
                        service,
                        attempt,
                    } => self.on_ended(job, service, &attempt),
                    Msg::Exited { service } => self.on_exited(service),
                    Msg::Close => closing = true,
                }
                next = self.messages.try_recv().ok();
            }
            if closing {
                break;
            }
            self.check_workers();
            if self.next_first_start < self.slots.len() {
                // One first start per turn, so that `close` is heard between them.
                self.start_slot(self.next_first_start);
                self.next_first_start += 1;
            }
            // The turn of the last first start dispatches too: jobs queued meanwhile sent
            // their one wake-up already.
            if self.next_first_start >= self.slots.len() {
                self.check_deadlines();
                self.dispatch();
                if self.want_spare && !self.any_slot_due() {
                    self.want_spare = false;
                    self.start_spare();
                }
            }
            self.publish();
        }
        self.shutdown();
    }

    /// Whether a slot waits to start and its time has come.
    fn any_slot_due(&self) -> bool {
        let now = Instant::now();
        self.slots
            .iter()
            .any(|slot| slot.member.is_none() && slot.restart_at.is_some_and(|at| at <= now))
    }

    /// When the manager must look again without a message: now while slots wait for their
    /// first start or a spare is wanted, else the earliest deadline of a running job, restart of a waiting slot,
    /// or silence limit of a worker.
    fn next_due(&self) -> Option<Instant> {
        if self.next_first_start < self.slots.len() || self.want_spare {
            return Some(Instant::now());
        }
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
        stats.queued_alone = self.alone.len();
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
            killed_for: None,
            alone: false,
            reserved: false,
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
    /// got going (whatever its task then did to it), with a doubling delay after
    /// consecutive deaths at start, and never more than `max_restarts_per_minute` times in
    /// a minute after deaths at start. A worker that dies of its tasks is paid for by them
    /// (each such death is charged to a task or makes suspects that then run alone), so
    /// its restarts need no cap; a worker that never gets going has no task to pay.
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
        while slot
            .restart_times
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60))
        {
            slot.restart_times.pop_front();
        }
        if died_at_start {
            slot.restart_times.push_back(now);
        }
        slot.capped = died_at_start && slot.restart_times.len() > settings.max_restarts_per_minute;
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
                capped: slot.capped,
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
        // Silent on stdout, read no request and short-lived: it never got going. A worker
        // that read a request started a task (consort's Python worker holds a LAUNCH back
        // for a millisecond, so a task that kills it at once leaves stdout silent).
        let at_start = !member.finished_a_task
            && !member.service.link.heard_anything()
            && !member.service.link.read_a_request()
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

    /// Kills wedged workers, starts slots whose wait is over (one per turn: see `run`),
    /// closes idle retirees.
    fn check_workers(&mut self) {
        let mut started = false;
        for slot_idx in 0..self.slots.len() {
            if let Some(wedged_after) = self.wedged_after() {
                self.check_wedged(slot_idx, wedged_after);
            }
            let slot = &self.slots[slot_idx];
            if !started
                && slot.member.is_none()
                && slot.restart_at.is_some_and(|at| at <= Instant::now())
            {
                self.start_slot(slot_idx);
                started = true;
            }
        }
        // Close retirees with no task left, off this thread (close may take seconds). A dead
        // one too, once the ends of its attempts are settled: they need it (`Death`).
        let mut idx = 0;
        while idx < self.retiring.len() {
            if self.retiring[idx].running == 0 {
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

    /// Sends jobs that must run alone to idle workers, then queued jobs to the
    /// least-loaded workers that have room (invariant 4).
    fn dispatch(&mut self) {
        self.dispatch_alone();
        self.dispatch_queued();
    }

    /// Picks a member for a job: the least loaded (fewest running, then fewest run) that
    /// `fits`, and not being killed. A member found dead (its exit hook has not come yet:
    /// a task sent to it would end CRASHED at once, without having run) is emptied first.
    fn pick(&mut self, fits: impl Fn(&Member) -> bool) -> Option<usize> {
        loop {
            let slot_idx = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot_idx, slot)| {
                    let member = slot.member.as_ref()?;
                    (!member.killed && fits(member)).then_some((
                        member.running,
                        member.n_tasks,
                        slot_idx,
                    ))
                })
                .min()
                .map(|(_, _, slot_idx)| slot_idx)?;
            let member = self.slots[slot_idx].member.as_ref()?;
            if member.service.is_alive() {
                return Some(slot_idx);
            }
            let service_id = member.service.id();
            self.on_exited(service_id);
        }
    }

    fn dispatch_alone(&mut self) {
        // Jobs cancelled while they waited have ended: drop them.
        self.alone.retain(|job| !job.core.state().is_finished());
        while !self.alone.is_empty() {
            let Some(slot_idx) = self.pick(|member| member.running == 0 && !member.alone) else {
                break;
            };
            let Some(job) = self.alone.pop_front() else {
                break;
            };
            self.send(slot_idx, job, true);
        }
        // Keep as many workers from taking new tasks as jobs wait to run alone, so that they
        // drain: the least loaded, chosen again each time (a reserved worker's load only
        // falls, so it stays chosen).
        for member in self
            .slots
            .iter_mut()
            .filter_map(|slot| slot.member.as_mut())
        {
            member.reserved = false;
        }
        for _ in 0..self.alone.len() {
            let Some(slot_idx) = self.pick(|member| !member.reserved && !member.alone) else {
                break;
            };
            if let Some(member) = self.slots[slot_idx].member.as_mut() {
                member.reserved = true;
            }
        }
    }

    fn dispatch_queued(&mut self) {
        let cap = self.settings.tasks_per_worker;
        loop {
            let Some(slot_idx) =
                self.pick(|member| member.running < cap && !member.alone && !member.reserved)
            else {
                return;
            };
            let Some(job) = self.queue.pop() else {
                return;
            };
            self.send(slot_idx, job, false);
        }
    }

    /// Puts a job back where it waited, first in line: it was submitted before what waits.
    fn requeue(&mut self, job: Arc<PoolJob>, alone: bool) {
        if alone {
            self.alone.push_front(job);
        } else {
            self.queue.push_front(job);
        }
    }

    /// Sends one attempt of `job` to the worker in `slot_idx`; `alone` (the job must run
    /// alone) keeps any other task from that worker until it ends.
    fn send(&mut self, slot_idx: usize, job: Arc<PoolJob>, alone: bool) {
        let Some(member) = self.slots[slot_idx].member.as_mut() else {
            self.requeue(job, alone);
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
                if let Some(Err(TaskError::Crashed(report))) = attempt.core.peek_result() {
                    if !report.sent {
                        // Refused: the worker had ended (its exit is on its way here) or is
                        // being closed. The job never ran, so this is no attempt: it goes
                        // back, uncharged, and the worker takes nothing more. The refused
                        // attempt's end message, if any, names an attempt the job does not
                        // hold and is ignored.
                        drop(state);
                        member.killed = true;
                        self.requeue(job, alone);
                        return;
                    }
                }
                if !listened {
                    let ended = Arc::clone(&job);
                    let wake = self.wake.clone();
                    let attempt_id = attempt.id().clone();
                    // Takes no pool lock (invariant 2 of `pool.rs`): it may run right here.
                    attempt.core.on_end(Box::new(move || {
                        let _ = wake.send(Msg::Ended {
                            job: ended,
                            service: service_id,
                            attempt: attempt_id,
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
                if alone {
                    member.alone = true;
                    member.reserved = false;
                }
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

    fn on_ended(&mut self, job: Arc<PoolJob>, service_id: u64, attempt_id: &TaskId) {
        let attempt = {
            let mut state = job.state();
            if state
                .attempt
                .as_ref()
                .is_some_and(|attempt| attempt.id() == attempt_id)
            {
                state.attempt.take()
            } else {
                None
            }
        };
        let Some(attempt) = attempt else {
            // A refused attempt's end (see `send`): the job was put back, or runs again.
            return;
        };
        self.running.remove(&job.core.id);
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
        let job_id = job.core.id.clone();
        if let Some((slot_idx, member)) = self.member_mut(service_id) {
            member.running = member.running.saturating_sub(1);
            if member.running == 0 {
                member.alone = false;
            }
            // A hard cancel is killing it: it must take no task meanwhile.
            if forced {
                member.killed = true;
                member.killed_for.get_or_insert(job_id);
            }
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
        let beside = self.beside(service_id, &job, state == TaskState::Crashed);
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
        self.settle(job, state, result, beside);
    }

    /// For a job whose attempt crashed: the other jobs that were on its worker when it
    /// died. The first crash of a death finds them: the jobs still running there whose
    /// attempt had not finished before the death (those that completed just before have
    /// a result, even if their end message is still on its way), and the job whose hard
    /// cancel killed it. The others of the death look them up. Any other end only leaves
    /// the death's list of jobs to settle.
    fn beside(&mut self, service_id: u64, job: &PoolJob, crashed: bool) -> Option<Vec<TaskId>> {
        let job_id = &job.core.id;
        if let Some(death) = self.deaths.get_mut(&service_id) {
            let known = death.unsettled.remove(job_id) || death.jobs.contains(job_id);
            let beside = (crashed && known).then(|| {
                death
                    .jobs
                    .iter()
                    .filter(|id| *id != job_id)
                    .cloned()
                    .collect()
            });
            if death.unsettled.is_empty() {
                self.deaths.remove(&service_id);
            }
            if !crashed || known {
                return beside;
            }
        }
        if !crashed {
            return None;
        }
        let mut jobs = vec![job_id.clone()];
        let mut unsettled = HashSet::new();
        for (other_id, (other, other_service)) in &self.running {
            if *other_service != service_id {
                continue;
            }
            let on_it_at_death =
                other
                    .state()
                    .attempt
                    .as_ref()
                    .is_some_and(|attempt| match attempt.state() {
                        TaskState::Crashed => true,
                        TaskState::Canceled => matches!(
                            attempt.core.peek_result(),
                            Some(Err(TaskError::Canceled { forced: true }))
                        ),
                        other => !other.is_finished(),
                    });
            if on_it_at_death {
                jobs.push(other_id.clone());
                unsettled.insert(other_id.clone());
            }
        }
        let killed_for = self
            .member_mut(service_id)
            .and_then(|(_, member)| member.killed_for.clone());
        if let Some(killed_for) = killed_for.filter(|id| !jobs.contains(id)) {
            jobs.push(killed_for);
        }
        let beside = jobs[1..].to_vec();
        if !unsettled.is_empty() {
            self.deaths.insert(service_id, Death { jobs, unsettled });
        }
        Some(beside)
    }

    /// Ends the pool task from its attempt's end, or sends it again. `beside` (for a crash)
    /// names the other jobs its worker's death ended: with none, the crash is charged to
    /// this job, against its retries; with some, it is a suspect, rerun alone, uncharged
    /// (unless `rerun_suspects` is off: then every job of the death is charged).
    fn settle(
        &mut self,
        job: Arc<PoolJob>,
        state: TaskState,
        result: Result<Args, TaskError>,
        beside: Option<Vec<TaskId>>,
    ) {
        let result = match (result, &beside) {
            (Err(TaskError::Crashed(mut report)), Some(beside)) => {
                report.beside = Some(beside.clone());
                Err(TaskError::Crashed(report))
            }
            (result, _) => result,
        };
        let rerun_suspects = self.settings.rerun_suspects;
        let (timed_out, retry) = {
            let mut job_state = job.state();
            job_state.dispatched_at = None;
            let mut retry = None;
            if state == TaskState::Crashed
                && !job_state.timed_out
                && !job_state.cancel_requested
                && !self.queue.is_closed()
            {
                let suspect = rerun_suspects && beside.as_ref().is_some_and(|b| !b.is_empty());
                if !suspect {
                    job_state.n_charged += 1;
                }
                if suspect || job_state.n_charged <= job.spec.retries {
                    // It was on a worker that died: from now on it runs alone, so that it
                    // takes no other task down if it is the one that kills.
                    job_state.alone |= rerun_suspects;
                    retry = Some((job_state.n_attempts + 1, job_state.alone, !suspect));
                }
            }
            (job_state.timed_out, retry)
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
        if let Some((attempt, alone, charged)) = retry {
            if job.core.has_listeners() {
                let mut event = TaskEvent::new(job.core.id.clone(), EventKind::Retry);
                event.error = result.as_ref().err().map(ToString::to_string);
                event.progress.info = Some(json!({
                    "attempt": attempt,
                    "alone": alone,
                    "charged": charged,
                }));
                job.core.deliver(&event);
            }
            if alone {
                self.alone.push_back(job);
            } else {
                // Retries go to the front: they were submitted before what waits.
                self.queue.push_front(job);
            }
            return;
        }
        job.finish(state, result);
    }

    fn shutdown(mut self) {
        self.closing = true;
        let mut queued = self.queue.drain();
        queued.extend(self.alone.drain(..));
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
            if let Msg::Ended {
                job,
                service,
                attempt,
            } = msg
            {
                self.on_ended(job, service, &attempt);
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
                attempt: event.task.clone(),
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
