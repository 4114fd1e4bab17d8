//! consort runs tasks in worker processes, in any language, and outlives them.
//!
//! It speaks the [Appose](https://github.com/apposed/appose) protocol: JSON lines over a
//! worker's stdin and stdout. A [`Service`] supervises one worker; every [`Task`] sent to
//! it ends exactly once, even when the worker hangs, floods, or dies.
//!
//! ```no_run
//! use std::time::Duration;
//! use consort::Service;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = Service::appose_python("python3").with_init("import math").start()?;
//! let task = service
//!     .task("task.update('half', current=1, maximum=2)\nx * 7")
//!     .input("x", 6)
//!     .listen(|event| println!("{event:?}"))
//!     .submit()?;
//! let outputs = task.wait_timeout(Duration::from_secs(10))?;
//! assert_eq!(outputs["result"], 42);
//! # Ok(()) }
//! ```
//!
//! Modules, lowest first (each imports only modules above it; see ARCHITECTURE.md):
//! - [`protocol`]: Appose messages, task ids and the line codec; pure, no I/O.
//! - [`cancel`]: `CancelToken`, one-way, with child tokens; there is no reset.
//! - [`sys`]: thin wrappers over process system calls.
//! - [`python`]: the commands that start consort's own Python worker (embedded) and
//!   Appose's.
//! - [`task`]: task states, events, errors, and the one-terminal-state machine.
//! - [`shm`]: named shared-memory blocks and zero-copy n-d arrays that Python and Appose
//!   attach to; `.npy` files; the creator registry behind `consort shm ls` and `shm gc`.
//! - [`worker`]: the worker SDK: serve Appose requests with a Rust function.
//! - [`service`]: the supervisor: spawn, route, detect crashes, terminate within a bound.
//! - [`env`](mod@env): Python environments (uv, pixi, micromamba, a venv, the system's) to run
//!   workers in, built once and rebuilt when their recipe changes.
//! - [`pool`]: many workers from one recipe: least-loaded routing, restarts with backoff,
//!   recycling, deadlines, retries, a bounded queue, wedged-worker detection.
//!
//! `unsafe` is confined to `sys` (`pre_exec`), `shm` (`mmap`) and `shm::array` (typed views).

#[cfg(not(unix))]
compile_error!("consort supports Unix (Linux and macOS) only for now");

pub mod cancel;
pub mod env;
pub mod pool;
pub mod protocol;
pub mod python;
pub mod service;
pub mod shm;
pub mod sys;
pub mod task;
pub mod worker;

pub use cancel::CancelToken;
pub use env::{EnvError, Environment};
pub use pool::{MapError, Pool, PoolBuilder, PoolError, PoolEvent, PoolStats, PoolTaskBuilder};
pub use protocol::{Args, TaskId};
pub use service::{DebugLine, DebugStream, Service, ServiceBuilder, StartError, SubmitError};
pub use shm::{DType, NDArray, SharedMemory};
pub use task::{CrashReport, EventKind, ExitStatus, Task, TaskError, TaskEvent, TaskState};
